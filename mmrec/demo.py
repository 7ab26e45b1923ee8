"""`mmrec demo`: the whole pipeline on the synthetic tri-modal catalogue, on a CPU in a few minutes.

    catalogue (DIR/catalogue) -> shards + cold-items split (DIR/data) -> train configs tiny (DIR/run)
    -> embed every item and user (DIR/emb) -> evaluation report on the test split (DIR/report)

Each step is a library call whose result is checked before the next one starts, so a demo that
finishes has produced every file it names.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from mmrec.config import load_run_config
from mmrec.data.sharding import ShardOptions, shard_catalogue
from mmrec.data.splits import SplitConfig
from mmrec.data.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
from mmrec.embedding import embed
from mmrec.eval.evaluation import evaluate_run
from mmrec.training import train

DEMO_CONFIG = "tiny"  # preset shipped in mmrec/configs/
DEMO_SPLIT = dict(protocol="cold-items", warm_holdout=0.1)  # 20% of items held out, 10% of each user's warm rows


def _check(condition: bool, step: str, what: str) -> None:
    if not condition:
        raise RuntimeError(f"demo step {step} did not produce {what}")


def run_demo(out: Path, seed: int = 0) -> dict:
    """Run every step into `out`; returns the report dict. Prints a summary as it goes."""
    started = time.perf_counter()
    catalogue, data, run, emb, report_dir = out / "catalogue", out / "data", out / "run", out / "emb", out / "report"
    print(f"[1/5] synthetic tri-modal catalogue -> {catalogue}")
    info = write_synthetic_catalogue(catalogue, SyntheticCatalogueConfig(seed=seed))
    _check(info["num_items"] > 0 and info["num_ratings"] > 0, "1", "items and ratings")
    print(f"      {info['num_items']} items, {info['num_users']} users, {info['num_ratings']} ratings")

    print(f"[2/5] shards + cold-items split (20% of items held out, plus 10% of each user's warm rows) -> {data}")
    shards = shard_catalogue(catalogue / "items.jsonl", catalogue / "interactions.csv", data,
                             SplitConfig(seed=seed, **DEMO_SPLIT),
                             ShardOptions(items_per_shard=125, progress=False, overwrite=True))
    print(shards.summary())
    _check(shards.manifest["num_items"] > 0, "2", "a dataset folder with items")

    print(f"[3/5] train the '{DEMO_CONFIG}' preset on CPU -> {run}")
    cfg = load_run_config(DEMO_CONFIG, [f"train.seed={seed}"])
    if run.exists():
        shutil.rmtree(run)  # the demo always starts fresh
    state = train(cfg, data, run)
    _check((run / "model" / "model.safetensors").is_file(), "3", "a trained model")
    print(f"      {state.step} steps; best validation {cfg.train.selection_metric} {state.best_metric:.4f} "
          f"at step {state.best_step}")

    print(f"[4/5] embed every item and user -> {emb}")
    summary = embed(run, data, emb, progress=False)
    _check(summary.get("items") == shards.manifest["num_items"], "4", "one embedding per item")
    print(f"      {summary['items']} items and {summary['users']} users (dim {summary['dim']}) in {summary['seconds']} s")

    print(f"[5/5] evaluate on the test split -> {report_dir}")
    rep, paths = evaluate_run(run, data, report_dir, split="test", ks=[10, 20, 50], emb=emb)
    _check((report_dir / "report.json").is_file(), "5", "report.json")
    rows = [("warm items (among warm)", rep["slices"]["warm_items"], rep["baselines"]["popularity"]["slices"]["warm_items"]),
            ("cold items (among cold)", rep["slices"]["cold_items"], rep["baselines"]["popularity"]["slices"]["cold_items"])]
    print(f"\n  test split, cold-items protocol, seed {seed}  |  NDCG@10: mmrec  popularity  |  Recall@10: mmrec  popularity")
    for name, ours, pop in rows:
        print(f"  {name:<40s}  |  {ours.get('ndcg@10', float('nan')):.4f}  {pop.get('ndcg@10', float('nan')):.4f}"
              f"      |  {ours.get('recall@10', float('nan')):.4f}  {pop.get('recall@10', float('nan')):.4f}")
    print(f"  rating RMSE on all test rows: mmrec {rep['rating']['rmse']:.4f}, bias-only "
          f"{rep['baselines']['bias_only']['rating']['rmse']:.4f}")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s. Report: {paths.get('md', report_dir)}")
    return rep
