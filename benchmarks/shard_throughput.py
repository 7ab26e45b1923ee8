"""`mmrec shard` throughput: items/s, shard bytes and quarantine counts, written as JSON.

Catalogues: MovieLens latest-small with posters (text + image, from ../shared/data; skipped when
absent) and the synthetic tri-modal demo catalogue (text + image + audio). Each is sharded with 1
and 2 worker processes (and with --audio-rate 8000 for the synthetic one, which resamples and re-encodes every clip).

    python benchmarks/shard_throughput.py [--out benchmarks/results/shard_throughput_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from mmrec.shard.protocols import SplitConfig
from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
from mmrec.shard.writer import ShardOptions, shard_catalogue

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def measure(name: str, items: Path, interactions: Path, work: Path, **options) -> dict:
    out = work / f"{name}-{'-'.join(f'{k}{v}' for k, v in options.items())}"
    started = time.perf_counter()
    report = shard_catalogue(items, interactions, out, SplitConfig(protocol="random", seed=0),
                             ShardOptions(progress=False, **options))
    seconds = time.perf_counter() - started
    m = report.manifest
    return {
        "catalogue": name,
        "options": options,
        "items_written": m["counts"]["items_written"],
        "seconds": round(seconds, 3),
        "items_per_s": round(m["counts"]["items_written"] / seconds, 1),
        "shards": len(m["shards"]),
        "shard_bytes": sum(s["bytes"] for s in m["shards"]),
        "coverage": {k: v["count"] for k, v in m["modalities"].items()},
        "counts": m["counts"],
        "quarantine_by_kind": dict(Counter(e.kind for e in report.quarantine)),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shard_throughput_cpu.json")
    args = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if (SHARED / "ml-latest-small").is_dir():
            subprocess.run([sys.executable, str(REPO / "datasets" / "movielens.py"), "--out", str(work / "ml"),
                            "--no-shard"], check=True, stdout=subprocess.DEVNULL)
            cat = work / "ml" / "catalogue"
            for workers in (1, 2):
                runs.append(measure("movielens-latest-small+posters", cat / "items.jsonl",
                                    cat / "interactions.csv", work, workers=workers))
        else:
            print(f"skipping MovieLens: {SHARED} not found", file=sys.stderr)
        info = write_synthetic_catalogue(work / "synth", SyntheticCatalogueConfig(seed=0))
        for options in ({"workers": 1}, {"workers": 2}, {"workers": 2, "audio_rate": 8000}):
            runs.append(measure("synthetic-demo", Path(info["items"]), Path(info["interactions"]), work, **options))
    result = {
        "benchmark": "shard_throughput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['catalogue']:32s} {str(r['options']):40s} {r['items_per_s']:8.1f} items/s  "
              f"{r['shard_bytes'] / 1e6:6.1f} MB  quarantine {r['quarantine_by_kind']}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
