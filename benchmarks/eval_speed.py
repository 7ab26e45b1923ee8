"""Full-ranking evaluation speed: users x items scored and ranked per second, written as JSON.

Random float32 user/item vectors (the exported shape, d = E + 2), about 20 masked items per user,
top-K with the engine's `mmrec.metrics.top_k` (deterministic tie-breaking, chunked over users).
Default size 100k users x 50k items; on CPU and, when CUDA is available, on the GPU.

    python benchmarks/eval_speed.py [--users 100000] [--items 50000] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from mmrec.metrics import UserItems, top_k

REPO = Path(__file__).resolve().parents[1]


def run(users: int, items: int, dim: int, k: int, device: str, chunk_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(users, dim, generator=g)
    i = torch.randn(items, dim, generator=g)
    rng = np.random.default_rng(0)
    exclude = UserItems.from_pairs(np.repeat(np.arange(users), 20), rng.integers(0, items, users * 20), users)
    if device == "cuda":
        u, i = u.cuda(), i.cuda()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    top = top_k(u, i, k, exclude=exclude, chunk_size=chunk_size)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert top.shape == (users, k)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"users": users, "items": items, "dim": dim, "k": k, "chunk_size": chunk_size, "seconds": round(seconds, 3),
            "pairs_scored_per_s": round(users * items / seconds), "users_per_s": round(users / seconds, 1),
            "peak_memory_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=66)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--chunk-size", type=int, default=1024, help="users scored per block (memory: chunk x items x 4 B)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="10k users x 5k items, a smoke run")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.items = 10_000, 5_000
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    result = {"benchmark": "eval_speed", "device": name, "threads": torch.get_num_threads(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              **run(args.users, args.items, args.dim, args.k, args.device, args.chunk_size)}
    out = args.out or REPO / "benchmarks" / "results" / f"eval_speed_{name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name}: {result['users']} users x {result['items']} items, top-{result['k']}: {result['seconds']} s "
          f"({result['pairs_scored_per_s']:.3g} pairs/s, {result['users_per_s']:.0f} users/s), "
          f"peak {result['peak_memory_mb']:.0f} MB -> {out}")
    return result


if __name__ == "__main__":
    main()
