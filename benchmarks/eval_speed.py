"""Full-ranking evaluation speed: users x items scored and ranked per second, written as JSON.

Random float32 user/item vectors (the exported shape, d = E + 2), about 20 masked items per user,
top-K with the engine's `mmrec.evaluate.metrics.top_k` (deterministic tie-breaking, chunked over users).
Default size 100k users x 50k items, on the CPU and, when CUDA is available, on the GPU (one JSON
file per device). Each timed run follows a warm-up on one chunk of users. On the GPU the result is
also checked against the CPU on integer-valued vectors, whose scores are exact and full of ties.

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

from mmrec.evaluate.metrics import SCORE_BLOCK_BYTES, UserItems, top_k

REPO = Path(__file__).resolve().parents[1]
EXCLUDED_PER_USER = 20


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_mb() -> float:
    """Resident memory now (Linux), for the baseline the peak is read against."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(users: int, items: int, dim: int, k: int, device: str, chunk_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(users, dim, generator=g)  # (U, d)
    i = torch.randn(items, dim, generator=g)  # (N, d)
    rng = np.random.default_rng(0)
    exclude = UserItems.from_pairs(np.repeat(np.arange(users), EXCLUDED_PER_USER),
                                   rng.integers(0, items, users * EXCLUDED_PER_USER), users)
    u, i = u.to(device), i.to(device)
    warm = min(users, chunk_size)  # kernels, thread pools and the score block's first touch
    top_k(u[:warm], i, k, exclude=UserItems(exclude.offsets[: warm + 1], exclude.indices), chunk_size=chunk_size)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    rss_before = _rss_mb()
    start = time.perf_counter()
    top = top_k(u, i, k, exclude=exclude, chunk_size=chunk_size)
    _sync(device)
    seconds = time.perf_counter() - start
    assert top.shape == (users, min(k, items)) and top.device.type == "cpu"
    memory = ({"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if device == "cuda" else {})
    return {"users": users, "items": items, "dim": dim, "k": k, "excluded_per_user": EXCLUDED_PER_USER,
            "chunk_size": chunk_size, "score_block_mb": round(min(chunk_size, users) * items * 4 / 2**20, 1),
            "seconds": round(seconds, 3), "pairs_scored_per_s": round(users * items / seconds),
            "users_per_s": round(users / seconds, 1), **memory,
            # ru_maxrss is KiB on Linux and covers the whole process (vectors and masks included)
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_ranking_mb": round(rss_before, 1)}


def gpu_matches_cpu() -> bool:
    """Same ranking on GPU and CPU for integer-valued vectors (exact scores, many ties)."""
    g = torch.Generator().manual_seed(1)
    u = torch.randint(-2, 3, (3000, 4), generator=g).float()
    i = torch.randint(-2, 3, (2000, 4), generator=g).float()
    rng = np.random.default_rng(1)
    exclude = UserItems.from_pairs(np.repeat(np.arange(3000), 50), rng.integers(0, 2000, 3000 * 50), 3000)
    want = top_k(u, i, 100, exclude=exclude, chunk_size=512)
    return bool(torch.equal(top_k(u.cuda(), i.cuda(), 100, exclude=exclude, chunk_size=512), want))


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            # other work on the machine slows both matmul and topk: a load near the core count is noise
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, StopIteration, ValueError):
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info |= {"cuda": torch.version.cuda, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}
    return info


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=66)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--chunk-size", type=int, default=None,
                   help=f"users per score block; default: top_k's ({SCORE_BLOCK_BYTES // 2**20} MB per block)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="one device; default: the CPU, then the GPU when CUDA is available")
    p.add_argument("--quick", action="store_true", help="10k users x 5k items, a smoke run")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (one device only); default benchmarks/results/eval_speed_<cpu or GPU name>.json")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.items = 10_000, 5_000
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here; use --device cpu")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.out and len(devices) > 1:
        p.error("--out names one file: pick one --device")
    # the same rule as top_k's default, so the chunk size can be reported
    chunk_size = args.chunk_size or max(1, SCORE_BLOCK_BYTES // (4 * args.items))
    results = []
    for device in devices:
        name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
        result = {"benchmark": "eval_speed", "device": name, "machine": machine(device),
                  **run(args.users, args.items, args.dim, args.k, device, chunk_size)}
        if device == "cuda":
            result["gpu_matches_cpu_on_ties"] = gpu_matches_cpu()
        out = args.out or REPO / "benchmarks" / "results" / f"eval_speed_{name.replace(' ', '_')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        peak = result.get("peak_gpu_memory_mb", result["peak_rss_mb"])
        print(f"{name}: {result['users']} users x {result['items']} items, top-{result['k']}: {result['seconds']} s "
              f"({result['pairs_scored_per_s']:.3g} pairs/s, {result['users_per_s']:.0f} users/s), "
              f"chunk {chunk_size}, peak {peak:.0f} MB -> {out}")
        results.append(result)
    return results


if __name__ == "__main__":
    main()
