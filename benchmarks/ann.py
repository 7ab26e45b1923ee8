"""ANN indexes for `mmrec recommend` (mmrec/serve/ann.py): recall against exact search, latency, build time, memory.

Synthetic vectors in the exported shape (E + 2 = 66 columns: item [q, b, 1], user [p, 1, mu + b]), drawn
around sqrt(N) cluster centres with log-normal norms, so near neighbours crowd together and norms vary as
they do in trained embeddings (uniform random vectors would make every index look good). Each query is a
user with 20 random excluded ("seen") items, searched the way `recommend` searches: over-fetch, filter,
exact re-scoring (`ItemIndex.search`). Ground truth is exact top-K by a matrix product.

Per size and kind: build seconds, index file size, resident memory added by the build; per search setting
(hnsw ef_search, ivfpq nprobe): recall@10 / recall@100 against exact, single-query latency p50 / p95
(`ItemIndex.top`, one query at a time, as `mmrec recommend` asks), batch latency per query (all queries
in one call at k=100, faiss's threads) and how many queries fell back to exact scoring because the index
returned too few items. `exact` is the engine's exact path (matrix-vector product + top-k).

    python benchmarks/ann.py                         # 100k and 1M items -> benchmarks/results/ann_cpu.json
    python benchmarks/ann.py --sizes 20000 --out /tmp/ann.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmrec.serve.ann import IndexConfig, ItemIndex, build_index

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import machine

REPO = Path(__file__).resolve().parents[1]
DIM = 64  # E: the exported vectors have E + 2 columns
EXCLUDED = 20  # seen items per query


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def synthetic(items: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """Item rows (N, 66), user rows (Q, 66) and each user's excluded items."""
    rng = np.random.default_rng(seed)
    clusters = max(16, int(np.sqrt(items)))
    centres = rng.normal(size=(clusters, DIM)).astype(np.float32)
    q = np.empty((items, DIM), dtype=np.float32)
    for start in range(0, items, 100_000):  # in blocks: at 1M, float64 temporaries would double the memory
        stop = min(items, start + 100_000)
        spread = rng.normal(size=(stop - start, DIM)).astype(np.float32)
        q[start:stop] = (centres[rng.integers(0, clusters, stop - start)] + 0.7 * spread) * \
            rng.lognormal(0, 0.4, (stop - start, 1)).astype(np.float32) * 0.2
    item_rows = np.hstack([q, rng.normal(0, 0.3, (items, 1)), np.ones((items, 1))]).astype(np.float32)
    p = (centres[rng.integers(0, clusters, queries)] + rng.normal(size=(queries, DIM))) * 0.2
    user_rows = np.hstack([p, np.ones((queries, 1)), 3.5 + rng.normal(0, 0.3, (queries, 1))]).astype(np.float32)
    excluded = [set(rng.choice(items, EXCLUDED, replace=False).tolist()) for _ in range(queries)]
    return item_rows, user_rows, excluded


def exact_top(items: torch.Tensor, users: torch.Tensor, excluded: list[set[int]], k: int) -> np.ndarray:
    """Exact top-k item indices per user, excluded items removed, in blocks of users."""
    out = []
    for start in range(0, len(users), 64):
        scores = users[start:start + 64] @ items.T  # (b, N)
        for row, ex in enumerate(excluded[start:start + 64]):
            scores[row, list(ex)] = float("-inf")
        out.append(torch.topk(scores, k).indices.numpy())
    return np.concatenate(out)


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def single_latency(top, users: np.ndarray, excluded: list[set[int]], k: int, n: int) -> dict:
    times = []
    for user, ex in zip(users[:n], excluded[:n]):
        start = time.perf_counter()
        top(user, k, ex)
        times.append(time.perf_counter() - start)
    ms = 1000 * np.array(times)
    return {f"single_ms_p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 95)}


def exact_row(items: torch.Tensor, users: torch.Tensor, excluded: list[set[int]], single: int) -> dict:
    def top(user, k, ex):  # the exact path of `mmrec recommend` (`mmrec.serve.embeddings.top_k_items`)
        scores = items @ torch.from_numpy(user)
        scores[list(ex)] = float("-inf")
        return torch.topk(scores, k)

    start = time.perf_counter()
    exact_top(items, users, excluded, 100)
    batch = time.perf_counter() - start
    return {"kind": "exact", "recall@10": 1.0, "recall@100": 1.0,
            **single_latency(top, users.numpy(), excluded, 10, single),
            "batch_ms_per_query": round(1000 * batch / len(users), 3)}


def run_kind(kind: str, settings: list[int], items: np.ndarray, users: np.ndarray, excluded: list[set[int]],
             truth: np.ndarray, single: int) -> dict:
    cfg = IndexConfig(kind=kind).resolve(len(items), items.shape[1])
    rss = _rss_mb()
    start = time.perf_counter()
    faiss_index = build_index(items, cfg)
    build = time.perf_counter() - start
    grown = _rss_mb() - rss
    import faiss

    with tempfile.NamedTemporaryFile(suffix=".faiss") as f:
        faiss.write_index(faiss_index, f.name)
        size = os.path.getsize(f.name)
    index = ItemIndex(faiss_index, items, cfg)
    knob = {"hnsw": "ef_search", "ivfpq": "nprobe"}.get(kind)
    rows = []
    for value in settings if knob else [None]:
        if knob:
            index.set_search(**{knob: value})
        index.exact_fallbacks = 0
        start = time.perf_counter()
        top100, _ = index.search(users, 100, excluded)
        batch = time.perf_counter() - start
        fallbacks, index.exact_fallbacks = index.exact_fallbacks, 0
        top10, _ = index.search(users, 10, excluded)
        rows.append({**({knob: value} if knob else {}), "recall@10": round(recall(top10, truth, 10), 4),
                     "recall@100": round(recall(top100, truth, 100), 4),
                     # queries the index returned too few items for, answered exactly (`ItemIndex.search`)
                     "exact_fallbacks@10": index.exact_fallbacks, "exact_fallbacks@100": fallbacks,
                     **single_latency(index.top, users, excluded, 10, single),
                     "batch_ms_per_query": round(1000 * batch / len(users), 3)})
        print(f"  {kind} {knob or ''}{'=' + str(value) if knob else ''}: {rows[-1]}", flush=True)
    params = {k: v for k, v in vars(cfg).items() if k not in ("kind", "flat_below")}
    return {"kind": kind, "params": params, "build_seconds": round(build, 2), "index_mb": round(size / 2**20, 1),
            "rss_growth_mb": round(grown, 1), "search": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=_ints, default=[100_000, 1_000_000], help="catalogue sizes, comma-separated")
    p.add_argument("--kinds", default="flat,hnsw,ivfpq", help="index kinds, comma-separated")
    p.add_argument("--queries", type=int, default=1000, help="users per size (recall and batch latency)")
    p.add_argument("--single", type=int, default=200, help="of which timed one at a time")
    p.add_argument("--ef-search", type=_ints, default=[32, 64, 128, 256], help="hnsw settings to measure")
    p.add_argument("--nprobe", type=_ints, default=[8, 32, 128], help="ivfpq settings to measure")
    p.add_argument("--threads", type=int, default=None, help="faiss and torch threads (default: all cores)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ann_cpu.json")
    args = p.parse_args(argv)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    result = {"benchmark": "ann", "machine": {**machine("cpu"), "faiss": faiss.__version__,
                                              "faiss_threads": faiss.omp_get_max_threads()},
              "dim": DIM + 2, "queries": args.queries, "single_queries": args.single,
              "excluded_per_query": EXCLUDED, "score": "recommend (inner product)", "sizes": []}
    for n in args.sizes:
        print(f"{n} items:", flush=True)
        items, users, excluded = synthetic(n, args.queries)
        truth = exact_top(torch.from_numpy(items), torch.from_numpy(users), excluded, 100)
        rows = [exact_row(torch.from_numpy(items), torch.from_numpy(users), excluded, args.single)]
        print(f"  exact: {rows[0]}", flush=True)
        settings = {"hnsw": args.ef_search, "ivfpq": args.nprobe, "flat": []}
        for kind in args.kinds.split(","):
            rows.append(run_kind(kind, settings[kind], items, users, excluded, truth, args.single))
        result["sizes"].append({"items": n, "auto_kind": IndexConfig().resolve(n, DIM + 2).kind, "kinds": rows})
        # ru_maxrss is KiB on Linux and covers the whole process (vectors, ground truth and every index)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")  # after each size: a long run keeps what it has
    print(f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
