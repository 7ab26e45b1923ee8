"""`mmrec demo`: the whole pipeline on the synthetic tri-modal catalogue, on a CPU in a few minutes.

    catalogue (DIR/catalogue) -> shards + cold-items split (DIR/data) -> train configs tiny (DIR/run)
    -> embed every item and user (DIR/emb) -> evaluation report on the test split (DIR/report)

Each step is a library call whose result is checked before the next one starts, so a demo that
finishes has produced every file it names. The steps report through logging (stderr); the results, and
the next commands to try on the demo's run (real ids, answered before they are printed), go to stdout.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from pathlib import Path

import torch

from mmrec.config import load_run_config
from mmrec.data.dataset import Dataset, index_of
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import embed
from mmrec.evaluate.evaluation import evaluate_run
from mmrec.serve.embeddings import Embeddings, recommend, search, seen_by_user, similar
from mmrec.shard.protocols import SplitConfig
from mmrec.shard.synthetic import THEMES, SyntheticCatalogueConfig, write_synthetic_catalogue
from mmrec.shard.writer import ShardOptions, shard_catalogue
from mmrec.training.loop import train

DEMO_CONFIG = "tiny"  # preset shipped in mmrec/configs/
DEMO_SPLIT = dict(protocol="cold-items", warm_holdout=0.1)  # 20% of items held out, 10% of each user's warm rows

logger = logging.getLogger(__name__)


def _check(condition: bool, step: str, what: str) -> None:
    if not condition:
        raise RuntimeError(f"demo step {step} did not produce {what}")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def liked_style_share(emb: Embeddings, catalogue: Path, data: Dataset | Path, k: int = 10) -> dict:
    """Do the recommendations follow the tastes the catalogue was generated with (`users.jsonl`)?

    For each user: the share of their top-k among items they never rated (in any split of `data`, the
    catalogue's dataset) whose style they like, against `chance`, that share for a random never-rated item;
    both averaged over users.
    """
    style = {r["item_id"]: r["style"] for r in _jsonl(catalogue / "items.jsonl")}
    rated = seen_by_user(data, emb.item_ids)  # rows of emb.item_ids
    item_style = torch.tensor([style[i] for i in emb.item_ids])
    user_row = index_of(emb.user_ids)
    shares, chances = [], []
    for user in _jsonl(catalogue / "users.jsonl"):
        if user["user_id"] not in user_row:
            continue
        liked = torch.isin(item_style, torch.tensor(user["liked_styles"]))
        unrated = torch.ones(len(emb.item_ids), dtype=torch.bool)
        if user["user_id"] in rated:
            unrated[torch.from_numpy(rated[user["user_id"]])] = False
        scores = (emb.items @ emb.users[user_row[user["user_id"]]]).masked_fill(~unrated, float("-inf"))
        top = scores.topk(min(k, int(unrated.sum()))).indices
        shares.append(liked[top].float().mean().item())
        chances.append(liked[unrated].float().mean().item())
    share, chance = sum(shares) / len(shares), sum(chances) / len(chances)
    return {"users": len(shares), "k": k, "share": share, "chance": chance, "ratio": share / chance}


def cold_similar_check(emb: Embeddings, catalogue: Path, cold_ids: list[str], k: int = 5) -> dict:
    """`similar` on cold items: the share of their top-k of the same style; the median over cold items of
    the cosine to their nearest other cold item; and the mean cosine between cold items of different
    styles (near 1 would mean their content vectors collapsed onto one)."""
    style = {r["item_id"]: r["style"] for r in _jsonl(catalogue / "items.jsonl")}
    same = []
    for item in cold_ids:
        same += [style[emb.item_ids[j]] == style[item] for j, _ in similar(emb, item, k)]
    q = emb.similarity_vectors()[[emb.row_of(i) for i in cold_ids]]
    cos = q @ q.T
    styles = torch.tensor([style[i] for i in cold_ids])
    other = styles[:, None] != styles[None, :]
    return {"items": len(cold_ids), "k": k, "same_style": sum(same) / max(1, len(same)),
            "chance": _same_style_chance(style, emb.item_ids),
            "median_nearest_cosine": float(cos.fill_diagonal_(-1.0).max(1).values.median()),
            "other_style_mean_cosine": float(cos[other].mean())}


def _same_style_chance(style: dict[str, int], item_ids: list[str]) -> float:
    counts = torch.bincount(torch.tensor([style[i] for i in item_ids])).float()
    return float((counts / counts.sum()).square().sum())


def next_commands(run: Path, emb: Embeddings, catalogue: Path, cold_ids: list[str]) -> list[list[str]]:
    """`mmrec recommend`, `similar` and `search` on the demo's run, as argument lists: a user of the run, a cold
    item (nobody rated it: `similar` works from its content alone) and words of that item's style. Each is
    answered here first, so a printed command works when pasted."""
    style = {r["item_id"]: r["style"] for r in _jsonl(catalogue / "items.jsonl")}
    item = next((i for i in cold_ids if style[i] < len(THEMES)), cold_ids[0])  # a style with readable words
    _, adjectives, nouns = THEMES[style[item] % len(THEMES)]
    user, query = emb.user_ids[0], f"{adjectives.split()[0]} {nouns.split()[0]}"
    _check(bool(recommend(emb, user, 5)) and bool(similar(emb, item, 5)) and bool(search(run, emb, query, 5)),
           "next commands", "answers for its sample user, item and query")
    return [["recommend", "--run", str(run), "--user", user], ["similar", "--run", str(run), "--item", item],
            ["search", "--run", str(run), query]]


def run_demo(out: Path, seed: int = 0) -> dict:
    """Run every step into `out`; returns the report dict. Logs each step, prints the results."""
    started = time.perf_counter()
    catalogue, data, run, emb, report_dir = out / "catalogue", out / "data", out / "run", out / "emb", out / "report"
    logger.info(f"[1/5] synthetic tri-modal catalogue -> {catalogue}")
    info = write_synthetic_catalogue(catalogue, SyntheticCatalogueConfig(seed=seed))
    _check(info["num_items"] > 0 and info["num_ratings"] > 0, "1", "items and ratings")
    logger.info(f"      {info['num_items']} items, {info['num_users']} users, {info['num_ratings']} ratings")

    logger.info(f"[2/5] shards + cold-items split (20% of items held out, plus 10% of each user's warm rows) -> {data}")
    shards = shard_catalogue(catalogue / "items.jsonl", catalogue / "interactions.csv", data,
                             SplitConfig(seed=seed, **DEMO_SPLIT),
                             ShardOptions(items_per_shard=125, overwrite=True))
    logger.info(shards.summary())
    _check(shards.manifest["num_items"] > 0, "2", "a dataset folder with items")

    logger.info(f"[3/5] train the '{DEMO_CONFIG}' preset on CPU -> {run}")
    cfg = load_run_config(DEMO_CONFIG, [f"train.seed={seed}"])
    if run.exists():
        shutil.rmtree(run)  # the demo always starts fresh
    state = train(cfg, data, run)
    _check((run / "model" / "model.safetensors").is_file(), "3", "a trained model")
    logger.info(f"      {state.step} steps; best validation {cfg.train.selection_metric} {state.best_metric:.4f} "
          f"at step {state.best_step}")

    logger.info(f"[4/5] embed every item and user -> {emb}")
    summary = embed(run, data, emb)
    _check(summary.get("items") == shards.manifest["num_items"], "4", "one embedding per item")
    logger.info(f"      {summary['items']} items and {summary['users']} users (dim {summary['dim']}) in {summary['seconds']} s")

    logger.info(f"[5/5] evaluate on the test split -> {report_dir}")
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
    # the synthetic catalogue knows every user's tastes and every item's style: does the model follow them?
    vectors, dataset = Embeddings.load(emb), Dataset(data)
    taste = liked_style_share(vectors, catalogue, dataset)
    cold_ids = [vectors.item_ids[i] for i in RunSplits(dataset, RunVocabulary.from_data(dataset)).cold_items()]
    looks = cold_similar_check(vectors, catalogue, cold_ids)
    print(f"  liked styles in each user's top-{taste['k']} of unrated items: {taste['share']:.1%} "
          f"(a random unrated item: {taste['chance']:.1%}, {taste['ratio']:.2f}x)")
    print(f"  `similar` on the {looks['items']} cold items: {looks['same_style']:.1%} of the top-{looks['k']} share "
          f"the item's style (chance {looks['chance']:.1%}); cosine to the nearest cold item (median) "
          f"{looks['median_nearest_cosine']:.4f}, between cold items of different styles (mean) "
          f"{looks['other_style_mean_cosine']:.4f}")
    rep["demo_checks"] = {"liked_style_share": taste, "cold_similar": looks}
    (report_dir / "demo_checks.json").write_text(json.dumps(rep["demo_checks"], indent=2) + "\n")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s. Report: {paths.get('md', report_dir)}")
    print("Next, try these on the demo's run (a user, an item nobody rated, a query in words of its style):")
    for argv in next_commands(run, vectors, catalogue, cold_ids):
        print("  mmrec " + shlex.join(argv))
    return rep
