"""Diversity re-ranking on real data: the accuracy / intra-list diversity trade-off of MMR on MovieLens.

    .venv/bin/python benchmarks/diversity.py                                     # trains once: ~15 min on 2 cores
    .venv/bin/python benchmarks/diversity.py --run /tmp/mmrec-movielens/runs/ranking-text+image   # no training

MovieLens latest-small with text and posters, the ranking protocol of benchmarks/movielens.py (random 8:1:1
per user, seed 0; full ranking over all movies, train (+ valid on test) masked, every held-out rating
relevant). Our model is `configs/movielens-ranking.yaml` with text (frozen all-MiniLM-L6-v2) and image
(frozen EfficientNet-Lite0) from the shared feature cache, trained once (or a trained run of that dataset
reused with --run). Then each user's top-200 is re-ranked by MMR (`mmrec.serve.rerank`, as `mmrec eval
--diversify` does) at every LAMBDA of a grid:

- on VALID: the curve, and the LAMBDA chosen: the largest that loses at most 5% NDCG@10 against the plain
  ranking (LAMBDA 0, no cap);
- on TEST: the same curve, and the goal read at the chosen LAMBDA only: intra-list diversity@10 up by at
  least 20% while NDCG@10 drops by at most 5% (met or not). No test number chooses anything.

`--max-per-attribute K` adds a genre cap (MovieLens genres are the items' attributes) to every LAMBDA; the
changes are still read against the plain, uncapped ranking.
Writes benchmarks/results/diversity_<device>.json (`--out`) and prints the curves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from movielens import (  # noqa: E402
    CONFIGS,
    PROTOCOLS,
    SHARED,
    build_datasets,
    efficientnet_file,
    feature_cache,
    log,
    minilm_folder,
    run_splits,
    with_modalities,
)

from mmrec.config import load_run_config  # noqa: E402
from mmrec.data.features import decode_features  # noqa: E402
from mmrec.data.fingerprint import check_dataset  # noqa: E402
from mmrec.data.reader import load_manifest  # noqa: E402
from mmrec.embedding import assemble, embed_items  # noqa: E402
from mmrec.evaluate.protocol import EvalProtocol  # noqa: E402
from mmrec.evaluate.scoring import Evaluator  # noqa: E402
from mmrec.model.factory import load_model  # noqa: E402
from mmrec.model.history import UserHistory  # noqa: E402
from mmrec.model.model import user_vectors  # noqa: E402
from mmrec.serve.rerank import DEFAULT_POOL, attribute_table, check_cap, check_lambda, item_attributes  # noqa: E402
from mmrec.serve.run import check_run_folder  # noqa: E402
from mmrec.training.loop import train  # noqa: E402

MODALITIES = ("text", "image")
KS = [10, 20]
LAMBDAS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8)
MAX_NDCG_LOSS, MIN_DIVERSITY_GAIN = 0.05, 0.20  # the goal, relative to LAMBDA 0


def parse_lambdas(text: str) -> list[float]:
    try:
        values = sorted({check_lambda(float(t)) for t in text.split(",")} | {0.0})
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--lambdas: comma-separated numbers in [0, 1], got {text!r} ({e})") from None
    return values


def trained_model(args, data: Path, feats: Path, base: list[str]) -> tuple:
    """(model, item vectors, info): the --run given, else one training run of the ranking config."""
    if args.run is not None:
        try:
            check_run_folder(args.run)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        check_dataset(args.run, data)  # the run must have trained on this very split
        run, info = args.run, {"reused_run": str(args.run)}
    else:
        cfg = with_modalities(load_run_config(CONFIGS["ranking"], [*base, f"data.features={feats}", *args.overrides]),
                              MODALITIES)
        run = args.work / "runs" / "diversity-text+image"
        shutil.rmtree(run, ignore_errors=True)
        started = time.perf_counter()
        state = train(cfg, data, run)
        info = {"epochs": state.epoch, "best_step": state.best_step,
                "train_seconds": round(time.perf_counter() - started, 1), "overrides": list(args.overrides)}
    model, pre, _ = load_model(run / "model")
    splits = run_splits(data)
    part = embed_items(model.eval(), feats, pre, splits.vocab.attributes, decode=decode_features, batch_size=512)
    return model, assemble([part], splits.num_items), info


def curve(model, item_vecs: torch.Tensor, data: Path, split: str, lambdas: list[float], pool: int,
          cap: int | None) -> dict:
    """`mmrec eval --diversify`'s section for `split`: one row per LAMBDA."""
    splits = run_splits(data)
    history = None
    if model.history_tower:
        history = UserHistory.from_rows(splits["train"], splits.num_users + 1, model.config.history_length)
    ev = Evaluator(splits, EvalProtocol.for_split(split, load_manifest(data)["split"]), KS)
    attributes = attribute_table(item_attributes(data, splits.vocab.item_ids))[0] if cap is not None else None
    users = user_vectors(model, item_vecs, history)
    id_terms = model.item_seen.cpu()[: len(item_vecs)]  # as `mmrec eval` passes them
    out = ev.diversify(users, item_vecs, id_terms, lambdas, pool, attributes, cap)
    if cap is not None:  # changes are read against the plain ranking, not against the capped one
        out["plain_ranking"] = ev.diversify(users, item_vecs, id_terms, [0.0], pool)["rows"][0]
    ev.bar.close()
    return out


def relative(row: dict, base: dict, key: str) -> float:
    return (row[key] - base[key]) / base[key]


def plain(section: dict) -> dict:
    """The row every change is read against: the plain ranking (LAMBDA 0 without a cap)."""
    return section.get("plain_ranking") or section["rows"][0]


def choose(valid: dict) -> dict | None:
    """The largest LAMBDA whose valid NDCG@10 is within MAX_NDCG_LOSS of the plain ranking's; None when no
    LAMBDA is (a cap alone can cost more)."""
    base = plain(valid)
    ok = [r for r in valid["rows"] if relative(r, base, "ndcg@10") >= -MAX_NDCG_LOSS]
    return max(ok, key=lambda r: r["lambda"]) if ok else None


def goal(test: dict, lam: float) -> dict:
    base, row = plain(test), next(r for r in test["rows"] if r["lambda"] == lam)
    ndcg, div = relative(row, base, "ndcg@10"), relative(row, base, "diversity@10")
    return {"lambda_chosen_on_valid": lam, "test_ndcg@10": row["ndcg@10"], "test_ndcg@10_lambda_0": base["ndcg@10"],
            "ndcg@10_change": ndcg, "test_diversity@10": row["diversity@10"],
            "test_diversity@10_lambda_0": base["diversity@10"], "diversity@10_change": div,
            "goal": f"diversity@10 +{MIN_DIVERSITY_GAIN:.0%} or more at an NDCG@10 loss of {MAX_NDCG_LOSS:.0%} or less",
            "met": div >= MIN_DIVERSITY_GAIN and ndcg >= -MAX_NDCG_LOSS}


def print_curve(name: str, section: dict) -> None:
    base = plain(section)
    print(f"\n{name} ({section['users']} users, pool {section['pool']}, max_per_attribute {section['max_per_attribute']})")
    print("| LAMBDA | NDCG@10 | Δ NDCG@10 | Recall@10 | diversity@10 | Δ diversity@10 | coverage@10 | avg popularity@10 |")
    print("|---" * 8 + "|")
    for r in section["rows"]:
        print(f"| {r['lambda']:g} | {r['ndcg@10']:.4f} | {relative(r, base, 'ndcg@10'):+.1%} | {r['recall@10']:.4f} | "
              f"{r['diversity@10']:.4f} | {relative(r, base, 'diversity@10'):+.1%} | {r['coverage@10']:.4f} | "
              f"{r['avg_popularity@10']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="folder with ml-latest-small/ and movielens-posters/")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmrec-movielens"), help="datasets, caches and runs")
    p.add_argument("--run", type=Path, default=None,
                   help="reuse this trained run of the ranking dataset (e.g. WORK/runs/ranking-text+image)")
    p.add_argument("--lambdas", type=parse_lambdas, default=list(LAMBDAS), help="comma-separated LAMBDAs (0 added)")
    p.add_argument("--pool", type=int, default=DEFAULT_POOL, help="candidates re-ranked per user (default 200)")
    p.add_argument("--max-per-attribute", type=int, default=None, help="also cap items per genre")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("overrides", nargs="*", help="key=value config overrides for the training run")
    args = p.parse_args(argv)
    try:
        check_cap(args.max_per_attribute)
    except ValueError as e:
        p.error(str(e))
    if args.pool < max(KS):
        p.error(f"--pool must be at least {max(KS)} (the largest K)")
    if args.run is not None and args.overrides:
        p.error("overrides configure the training run; --run reuses one that is already trained")
    if not (args.shared / "ml-latest-small" / "ratings.csv").is_file():
        sys.exit(f"MovieLens not found under {args.shared} (see ../shared/data/SOURCES.md)")
    started = time.perf_counter()
    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    data = build_datasets(args.work, args.shared, {"ranking": PROTOCOLS["ranking"]})["ranking"]
    base = [f"model.encoders.text.pretrained={minilm_folder()}", f"model.encoders.image.pretrained={efficientnet_file()}"]
    feats = feature_cache(args.work, "features", data, base, MODALITIES)
    log("our model (text + image)" + (f": reusing {args.run}" if args.run else ": training"))
    model, item_vecs, info = trained_model(args, data, feats, base)
    curves = {}
    for split in ("valid", "test"):
        t0 = time.perf_counter()
        curves[split] = curve(model, item_vecs, data, split, args.lambdas, args.pool, args.max_per_attribute)
        curves[split]["seconds"] = round(time.perf_counter() - t0, 2)
        print_curve(split, curves[split])
    chosen = choose(curves["valid"])
    manifest = load_manifest(data)
    report = {
        "benchmark": "diversity re-ranking (MovieLens latest-small, ranking protocol)",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{torch.get_num_threads()}threads",
        "protocol": {"split": manifest["split"], "rows": {s: v["rows"] for s, v in manifest["interactions"].items()},
                     "notes": "random 8:1:1 per user, seed 0; full ranking, train (+valid on test) masked; each user's "
                              "top-pool re-ranked by MMR; LAMBDA chosen on valid, the goal read on test"},
        "config": str(CONFIGS["ranking"].relative_to(REPO)), "modalities": list(MODALITIES), "model": info,
        "valid": curves["valid"], "test": curves["test"],
        "chosen_on_valid": {"lambda": chosen and chosen["lambda"], "rule": f"largest LAMBDA with valid NDCG@10 "
                                                                          f"within {MAX_NDCG_LOSS:.0%} of LAMBDA 0's"},
        "goal": goal(curves["test"], chosen["lambda"]) if chosen else {
            "lambda_chosen_on_valid": None, "met": False,
            "why": f"no LAMBDA keeps valid NDCG@10 within {MAX_NDCG_LOSS:.0%} of the plain ranking's"},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"diversity_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["goal"], indent=2))
    log(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
