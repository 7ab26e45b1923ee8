"""Speed of diversity re-ranking: 10,000 users' top-200 pools re-ranked to 10 items by MMR (`mmrec.serve.rerank`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rerank_speed.py      # about a minute on one CPU core

The pools are each user's exact top-200 from random vectors (E = 64, 20,000 items): the timing does not
depend on the values, only on users x pool x width x k. Measured: MMR alone at LAMBDA 0.3 (the pool given,
as serving and `mmrec eval --diversify` hand it over), the same with a per-attribute cap (19 attributes,
1-3 per item, as MovieLens genres), and, for scale, the full ranking that produced the pools. Each is
timed REPEATS times; the JSON keeps every time.

Writes benchmarks/results/rerank_speed_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a checkout without `pip install -e .`

from mmrec.evaluate.metrics import top_k  # noqa: E402
from mmrec.serve.rerank import diversity_vectors, intra_list_diversity, mmr  # noqa: E402

USERS, ITEMS, DIM, POOL, K, LAMBDA = 10_000, 20_000, 64, 200, 10, 0.3
ATTRIBUTES, CAP, REPEATS = 19, 3, 3


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(round(time.perf_counter() - t0, 3))
    return times, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=USERS)
    p.add_argument("--items", type=int, default=ITEMS)
    p.add_argument("--pool", type=int, default=POOL)
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    item_vecs = torch.randn(args.items, DIM + 2, generator=g)
    user_vecs = torch.randn(args.users, DIM + 2, generator=g)
    # 1-3 attributes per item out of ATTRIBUTES, padded with -1
    n_attr = torch.randint(1, 4, (args.items, 1), generator=g)
    attributes = torch.where(torch.arange(3) < n_attr, torch.randint(0, ATTRIBUTES, (args.items, 3), generator=g), -1)

    ranking_s, top = timed(lambda: top_k(user_vecs, item_vecs, args.pool), 1)
    scores = torch.cat([torch.einsum("ue,upe->up", user_vecs[s : s + 1000], item_vecs[top[s : s + 1000]])
                        for s in range(0, args.users, 1000)])  # (U, P) the pool's scores, best first
    q = diversity_vectors(item_vecs, None)  # random vectors: one kind of item
    plain_s, plain = timed(lambda: mmr(top, scores, q, K, 0.0), args.repeats)
    assert torch.equal(plain, top[:, :K])  # LAMBDA 0 is the plain ranking
    mmr_s, diverse = timed(lambda: mmr(top, scores, q, K, LAMBDA), args.repeats)
    cap_s, _ = timed(lambda: mmr(top, scores, q, K, LAMBDA, attributes, CAP), args.repeats)
    report = {
        "benchmark": "MMR re-ranking speed (mmrec.serve.rerank.mmr)",
        "device": f"cpu-{torch.get_num_threads()}threads",
        "setup": {"users": args.users, "items": args.items, "dim": DIM, "pool": args.pool, "k": K, "lambda": LAMBDA,
                  "attributes": ATTRIBUTES, "max_per_attribute": CAP},
        "seconds": {"mmr_lambda_0": plain_s, f"mmr_lambda_{LAMBDA}": mmr_s,
                    f"mmr_lambda_{LAMBDA}_max_per_attribute_{CAP}": cap_s, "full_ranking_top_pool": ranking_s},
        "diversity@10": {"plain": float(intra_list_diversity(plain, q).mean()),
                         f"lambda_{LAMBDA}": float(intra_list_diversity(diverse, q).mean())},
        "goal": "10k users' top-200 re-ranked in seconds on 2 cores",
        "met": max(mmr_s + cap_s) < 10.0,
    }
    out = args.out or REPO / "benchmarks" / "results" / "rerank_speed_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["seconds"]), f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
