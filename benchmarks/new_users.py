"""New users and new interactions on MovieLens latest-small: the history user tower against the baselines
that serve a user from a history, in one run.

    .venv/bin/python benchmarks/new_users.py       # reads ../shared/data; about 40 minutes on 2 CPU cores

Two protocols, sharded from the same catalogue by `datasets/movielens.py` (seed 0):

- cold users: `cold-users` (20% of the users held out entirely, half valid, half test); each held-out
  user's first 5 interactions by time are given as history, the rest are to be found among all items
  (the history masked) -> Recall@10/20, NDCG@10/20. Also with only the first 1 and 3 given (the same
  items to find), so the table reads by history length;
- warm users: `random` 8:1:1 per user (the ranking protocol of benchmarks/movielens.py): the history
  tower against today's ID tower, with the report's slices by history length (1, 2-5, 6-20, 21+).

Our model: the `movielens-ranking` config (frozen MiniLM text + EfficientNet-Lite0 posters, from the
feature cache) with `model.user_tower=history`, unchanged otherwise; model selection on the valid
split (its held-out users, on the cold-users split). Baselines on the same split: popularity; item-kNN
(summed item-item cosine of the history items, from training co-occurrence); MF fold-in (implicit ALS,
the new user's factors solved by least squares with the item factors fixed; grid picked on valid);
EASE on the history row (lambda picked on valid).

Update speed: the trained model recomputes the vectors of 10,000 users with 50-interaction histories
over the catalogue, from the exported item vectors (the `mmrec embed-users` path), 3 times.

Writes benchmarks/results/new_users_<device>.json and prints the tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from movielens import (  # noqa: E402
    ALS_GRID,
    CONFIGS,
    EASE_GRID,
    KS,
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
from mmrec.data.reader import load_manifest  # noqa: E402
from mmrec.data.splits import HeldOutUsers, SplitArrays  # noqa: E402
from mmrec.embedding import assemble, embed_items  # noqa: E402
from mmrec.evaluate.baselines import (  # noqa: E402
    als_fold_in_vectors,
    ease_history_vectors,
    ease_vectors,
    implicit_als_vectors,
    item_cosine,
    popularity_vectors,
)
from mmrec.evaluate.protocol import EvalProtocol, evaluate_held_out_users  # noqa: E402
from mmrec.evaluate.scoring import Evaluator  # noqa: E402
from mmrec.model.factory import load_model  # noqa: E402
from mmrec.model.history import UserHistory  # noqa: E402
from mmrec.model.model import history_user_vectors, user_vectors, vectors_for_histories  # noqa: E402
from mmrec.training.loop import train  # noqa: E402

COLD = {"cold-users": ["--split", "cold-users", "--cold-fraction", "0.2", "--given", "5", "--seed", "0"]}
GIVEN = (1, 3, 5)  # history lengths scored on the cold users (the first n of the 5 given)
MODALITIES = ("text", "image")
SPEED_USERS, SPEED_HISTORY, SPEED_REPEATS = 10_000, 50, 3


def first_given(users: HeldOutUsers, n: int) -> HeldOutUsers:
    """The same users and items to find, with only the first n of each user's given history (file order
    of the history split is input order; the split wrote each user's history oldest first)."""
    h = users.history
    order = np.lexsort((np.nan_to_num(h.timestamps, nan=0.0), h.users))
    rank = np.empty(len(order), dtype=np.int64)
    starts = np.searchsorted(h.users[order], h.users[order], side="left")
    rank[order] = np.arange(len(order)) - starts
    return HeldOutUsers(users.user_ids, h.subset(rank < n), users.held)


def ranking(result: dict) -> dict:
    r = result["ranking"]
    return {k: v for k, v in r.items() if k.split("@")[0] in ("recall", "ndcg") or k in ("users", "candidates")}


def cold_scores(make_users, item_vecs: torch.Tensor, users: HeldOutUsers) -> dict:
    """Metrics for each history length in GIVEN; make_users(history SplitArrays, C) -> (C, d)."""
    out = {}
    for n in GIVEN:
        given = first_given(users, n)
        out[f"given {n}"] = ranking(evaluate_held_out_users(make_users(given.history, len(users.user_ids)), item_vecs,
                                                            given, KS, implicit=True))
    return out


def pick_on_valid(valid: HeldOutUsers, candidates: dict) -> tuple:
    """The candidate (name -> (make_users, item_vecs)) with the best valid Recall@20 at 5 given."""
    tried = {name: ranking(evaluate_held_out_users(make(valid.history, len(valid.user_ids)), items, valid, KS,
                                                   implicit=True))["recall@20"] for name, (make, items) in candidates.items()}
    best = max(tried, key=tried.get)
    return best, tried[best]


def cold_baselines(data: Path) -> dict:
    splits = run_splits(data)
    train_rows, U, N = splits["train"], splits.num_users, splits.num_items
    test, valid = splits.held_out_users("test"), splits.held_out_users("valid")
    out = {}
    _, pop_items = popularity_vectors(train_rows, U, N)
    out["popularity"] = cold_scores(lambda h, c: torch.ones(c, 1), pop_items, test)
    multi_hot = functools.partial(ease_history_vectors, num_items=N)  # (C, N) rows of the given history
    knn_items = item_cosine(train_rows, N).T.contiguous()  # item i's vector: S[:, i]
    out["item-kNN"] = cold_scores(lambda h, c: multi_hot(h, c), knn_items, test)

    def fold_in(y: torch.Tensor, reg: float, alpha: float):
        return lambda h, c: als_fold_in_vectors(y, h, c, reg, alpha)

    als = {}
    for f, r, a in ALS_GRID:
        items = implicit_als_vectors(train_rows, U, N, f, r, a, iterations=10)[1]
        als[(f, r, a)] = (fold_in(items, r, a), items)
    best, valid_recall = pick_on_valid(valid, als)
    out["MF fold-in (implicit ALS)"] = {**cold_scores(als[best][0], als[best][1], test),
                                         "chosen_on_valid": dict(zip(("factors", "reg", "alpha"), best)),
                                         "valid_recall@20": valid_recall}
    ease = {lam: (lambda h, c: multi_hot(h, c), ease_vectors(train_rows, U, N, lam)[1]) for lam in EASE_GRID}
    best, valid_recall = pick_on_valid(valid, ease)
    out["EASE"] = {**cold_scores(ease[best][0], ease[best][1], test), "chosen_on_valid": {"lambda": best},
                   "valid_recall@20": valid_recall}
    return out


def train_model(name: str, data: Path, feats: Path, base: list[str], work: Path, extra: list[str]):
    cfg = with_modalities(load_run_config(CONFIGS["ranking"], [*base, f"data.features={feats}", *extra]), MODALITIES)
    run = work / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    state = train(cfg, data, run)
    model, pre, _ = load_model(run / "model")
    splits = run_splits(data)
    part = embed_items(model.eval(), feats, pre, splits.vocab.attributes, decode=decode_features, batch_size=512)
    info = {"epochs": state.epoch, "best_step": state.best_step, "train_seconds": round(time.perf_counter() - started, 1),
            "overrides": extra}
    return model, assemble([part], splits.num_items), info


def warm_scores(model, item_vecs: torch.Tensor, data: Path) -> dict:
    splits = run_splits(data)
    history = None
    if model.history_tower:
        history = UserHistory.from_rows(splits["train"], splits.num_users + 1, model.config.history_length)
    ev = Evaluator(splits, EvalProtocol.for_split("test", load_manifest(data)["split"]), list(KS))
    scored = ev.score(user_vectors(model, item_vecs, history), item_vecs)
    return {**ranking(scored), "by_history_length": {k: ranking({"ranking": v})
                                                     for k, v in scored["slices"]["user_activity"].items()}}


def update_speed(model, item_vecs: torch.Tensor) -> dict:
    """Seconds to recompute SPEED_USERS users' vectors from SPEED_HISTORY-interaction histories."""
    rng = np.random.default_rng(0)
    n = SPEED_USERS * SPEED_HISTORY
    rows = SplitArrays(np.repeat(np.arange(SPEED_USERS), SPEED_HISTORY), rng.integers(0, len(item_vecs), n),
                       rng.integers(1, 11, n).astype(np.float32) / 2, np.arange(n, dtype=np.float64))
    times = []
    for _ in range(SPEED_REPEATS):
        t0 = time.perf_counter()
        table = UserHistory.from_rows(rows, SPEED_USERS, model.config.history_length)
        vecs = history_user_vectors(model, item_vecs, table)
        times.append(time.perf_counter() - t0)
    assert vecs.shape == (SPEED_USERS, item_vecs.shape[1])
    return {"users": SPEED_USERS, "history_length": SPEED_HISTORY, "seconds": [round(t, 3) for t in times],
            "threads": torch.get_num_threads()}


def goals_of(cold: dict, warm: dict, speed: dict) -> dict:
    """The issue's goals, from whichever parts were run."""
    goals = {}
    if cold:
        best_baseline = max(("item-kNN", "MF fold-in (implicit ALS)"), key=lambda n: cold[n]["given 5"]["ndcg@20"])
        ours = cold["mmrec history tower (text + image)"]["given 5"]["ndcg@20"]
        ratio = ours / cold[best_baseline]["given 5"]["ndcg@20"]
        goals["cold_users_5_given"] = {"ndcg@20": ours, "better_of_item_knn_and_fold_in": best_baseline,
                                       "baseline_ndcg@20": cold[best_baseline]["given 5"]["ndcg@20"],
                                       "ratio": ratio, "goal_ratio": 1.1, "met": ratio >= 1.1}
        goals["update_10k_users_seconds"] = {"max_of_runs": max(speed["seconds"]), "goal": 10.0,
                                             "met": max(speed["seconds"]) < 10.0}
    if warm:
        id_r = warm["mmrec ID tower (text + image)"]["recall@20"]
        hist_r = warm["mmrec history tower (text + image)"]["recall@20"]
        goals["warm_users"] = {"id_tower_recall@20": id_r, "history_tower_recall@20": hist_r,
                               "relative": hist_r / id_r, "met": hist_r >= 0.98 * id_r}
    return goals


def merge(paths: list[Path], out: Path) -> dict:
    """One report from a cold-only and a warm-only run (`--part`), made side by side."""
    parts = [json.loads(p.read_text()) for p in paths]
    report = {**parts[0], "parts": [str(p) for p in paths]}
    for part in parts[1:]:
        for key in ("cold_users", "warm_users", "update_speed"):
            report[key] = part[key] or report[key]
        report["protocols"].update(part["protocols"])
        report["seconds"] = max(report["seconds"], part["seconds"])
    report["goals"] = goals_of(report["cold_users"], report["warm_users"], report["update_speed"])
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_tables(report: dict) -> None:
    cold, warm = report["cold_users"], report["warm_users"]
    print("| cold users | " + " | ".join(f"NDCG@20, {n} given" for n in GIVEN) + " | Recall@20, 5 given |")
    print("|---" * (len(GIVEN) + 2) + "|")
    for name, r in cold.items():
        print(f"| {name} | " + " | ".join(f"{r[f'given {n}']['ndcg@20']:.4f}" for n in GIVEN)
              + f" | {r['given 5']['recall@20']:.4f} |")
    for name, r in warm.items():
        print(f"warm {name}: Recall@20 {r['recall@20']:.4f} NDCG@20 {r['ndcg@20']:.4f}")
    print(json.dumps(report["goals"], indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=SHARED)
    p.add_argument("--work", type=Path, default=Path("/tmp/mmrec-movielens"), help="datasets, caches and runs")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--part", choices=("all", "cold", "warm"), default="all",
                   help="run one protocol only (two processes side by side, then --merge)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="merge --part reports into --out")
    p.add_argument("overrides", nargs="*", help="key=value overrides for the history-tower runs (tuning on valid)")
    args = p.parse_args(argv)
    default_out = REPO / "benchmarks" / "results" / f"new_users_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    if args.merge:
        print_tables(merge(args.merge, args.out or default_out))
        return 0
    if not (args.shared / "ml-latest-small" / "ratings.csv").is_file():
        sys.exit(f"MovieLens not found under {args.shared} (see ../shared/data/SOURCES.md)")
    started = time.perf_counter()
    (args.work / "runs").mkdir(parents=True, exist_ok=True)
    datasets = build_datasets(args.work, args.shared, {"ranking": PROTOCOLS["ranking"], **COLD})
    base = [f"model.encoders.text.pretrained={minilm_folder()}", f"model.encoders.image.pretrained={efficientnet_file()}"]
    feats = feature_cache(args.work, "features", datasets["ranking"], base, MODALITIES)
    history = ["model.user_tower=history", *args.overrides]

    cold, warm, speed = {}, {}, {}
    if args.part in ("all", "cold"):
        data = datasets["cold-users"]
        log("cold users: baselines")
        cold = cold_baselines(data)
        log("cold users: history tower (text + image)")
        model, item_vecs, info = train_model("cold-users-history", data, feats, base, args.work, history)
        test = run_splits(data).held_out_users("test")
        cold["mmrec history tower (text + image)"] = {
            **cold_scores(lambda h, c: vectors_for_histories(model, item_vecs, h, c), item_vecs, test), **info}
        speed = update_speed(model, item_vecs)
        log(f"   {json.dumps(cold['mmrec history tower (text + image)']['given 5'])}; update {speed['seconds']} s")

    if args.part in ("all", "warm"):
        data = datasets["ranking"]
        shared = [o for o in args.overrides if not o.startswith("model.history")]  # the ID tower has no history keys
        for name, extra in (("mmrec ID tower (text + image)", shared),
                            ("mmrec history tower (text + image)", history)):
            log(f"warm users: {name}")
            model, item_vecs, info = train_model(name.split()[1] + "-warm", data, feats, base, args.work, extra)
            warm[name] = {**warm_scores(model, item_vecs, data), **info}
            log(f"   recall@20 {warm[name]['recall@20']:.4f}")

    manifest = {n: load_manifest(d) for n, d in datasets.items()}
    report = {
        "benchmark": "new users (MovieLens latest-small)",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{torch.get_num_threads()}threads",
        "protocols": {n: {"split": {k: v for k, v in m["split"].items() if k not in ("cold_users",)},
                          "rows": {s: v["rows"] for s, v in m["interactions"].items()}} for n, m in manifest.items()},
        "protocol_notes": {
            "cold-users": "20% of users held out (half valid, half test), their first 5 interactions by time given; "
                          "the rest found among all items, the given history masked, every held-out rating relevant; "
                          "'given n': only the first n of the 5, same items to find",
            "ranking": "random 8:1:1 per user, seed 0, train+valid masked (as benchmarks/movielens.py)",
        },
        "config": str(CONFIGS["ranking"].relative_to(REPO)), "history_overrides": history,
        "cold_users": cold, "warm_users": warm, "update_speed": speed, "goals": goals_of(cold, warm, speed),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out or default_out
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    log(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
