"""Embedding throughput: the encoders alone vs the whole `mmrec embed` path, measured in one run. Writes JSON.

    python benchmarks/embed_throughput.py                      # CPU: configs/tiny.yaml
    python benchmarks/embed_throughput.py --config configs/base.yaml --items 4096 --workers 12   # a GPU

Three figures on the same shards, model and batch size, so their ratios explain where the time goes:

- `encoders_items_per_s`: every encoder's forward on preprocessed batches already on the device (bf16
  autocast on a GPU that has it), the reference the issue sets the goal against;
- `loader_items_per_s`: reading shards, decoding media and preprocessing (tokenise, resize, fbank)
  in the DataLoader workers, with no model at all: the input pipeline's ceiling;
- `end_to_end_items_per_s`: `mmrec.inference.embed_items`, the core of `mmrec embed` (loader + copy
  to the device + encoders + fusion + export vectors).

`ratio_to_encoders` = end to end / encoders (goal on a GPU: >= 0.9). When the loader's ceiling is
below the encoders' speed, the input pipeline is the bottleneck and more workers (or GPU-side
preprocessing) is the fix; otherwise the gap is in the model path. Both are measured twice: with the
audio fbank computed per clip in the workers, and batched inside the encoder
(`model.encoders.audio.features_on_device=true`, on the GPU when there is one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mmrec.batch import BatchCollator, ExampleBuilder
from mmrec.config import load_run_config
from mmrec.data.reader import ReaderConfig, item_loader
from mmrec.data.sharding import ShardOptions, shard_catalogue
from mmrec.data.splits import SplitConfig
from mmrec.factory import ModelSizes, create_model
from mmrec.inference import RunVocabulary, embed_items
from mmrec.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(data: Path, pre: dict, batch_size: int, workers: int) -> float:
    """items/s of shard reading + decoding + preprocessing alone (no model)."""
    loader = item_loader(data, "eval", ReaderConfig(batch_size=batch_size, num_workers=workers),
                         transform=ExampleBuilder(pre, []), collate=BatchCollator(pre), rank=0, world_size=1)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += batch.size
    return n / (time.perf_counter() - start)


def encoder_rate(model, data: Path, pre: dict, batch_size: int, device: torch.device, autocast: bool,
                 batches: int) -> float:
    """items/s of the encoders' forward on preprocessed batches already on the device (first batch: warm-up)."""
    loader = item_loader(data, "eval", ReaderConfig(batch_size=batch_size), transform=ExampleBuilder(pre, []),
                         collate=BatchCollator(pre), rank=0, world_size=1)
    ready = [b.to(device) for _, b in zip(range(batches + 1), loader)]
    elapsed, n = 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(ready):
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                for m in model.modalities:
                    if m in batch.inputs:
                        model.encoders[m](**batch.inputs[m])
            _sync(device)
            if i:
                elapsed += time.perf_counter() - start
                n += batch.size
    return n / elapsed


def end_to_end_rate(model, data: Path, pre: dict, attributes: list[str], batch_size: int, workers: int,
                    device: torch.device, autocast: bool) -> tuple[float, int]:
    _sync(device)
    start = time.perf_counter()
    idx, _ = embed_items(model, data, pre, attributes, batch_size=batch_size, num_workers=workers, device=device,
                         autocast=autocast)
    _sync(device)
    return len(idx) / (time.perf_counter() - start), len(idx)


def measure(config: Path, overrides: list[str], data: Path, args, device: torch.device, autocast: bool) -> dict:
    cfg = load_run_config(config, overrides)
    vocab = RunVocabulary.from_data(data)
    torch.manual_seed(0)
    model, pre = create_model(cfg.model, ModelSizes(len(vocab.user_ids), len(vocab.item_ids), vocab.attributes,
                                                    vocab.global_mean))
    model.to(device).eval()
    loader = loader_rate(data, pre, args.batch_size, args.workers)
    encoders = encoder_rate(model, data, pre, args.batch_size, device, autocast,
                            batches=max(2, min(10, args.items // args.batch_size - 1)))
    e2e, n = end_to_end_rate(model, data, pre, vocab.attributes, args.batch_size, args.workers, device, autocast)
    return {"overrides": overrides, "items": n, "encoders_items_per_s": round(encoders, 1),
            "loader_items_per_s": round(loader, 1), "end_to_end_items_per_s": round(e2e, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, help="default: base.yaml on a GPU, tiny.yaml on CPU")
    p.add_argument("--items", type=int, default=1024, help="synthetic tri-modal items to embed")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    config = (args.config or REPO / "configs" / ("base.yaml" if gpu else "tiny.yaml")).resolve()
    autocast = gpu and torch.cuda.is_bf16_supported()
    device_name = torch.cuda.get_device_name(0) if gpu else "cpu"
    # audio features in the workers (Kaldi fbank per clip on the CPU) and on the device (batched fbank)
    variants = {"fbank in workers": [], "fbank on device": ["model.encoders.audio.features_on_device=true"]}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        info = write_synthetic_catalogue(work / "cat", SyntheticCatalogueConfig(
            num_items=args.items, num_users=100, num_ratings=args.items * 4))
        shard_catalogue(info["items"], info["interactions"], work / "data", SplitConfig(protocol="random"),
                        ShardOptions(items_per_shard=max(1, args.items // 16), progress=False))
        for name, overrides in variants.items():
            runs[name] = measure(config, overrides, work / "data", args, device, autocast)
    reference = runs["fbank in workers"]["encoders_items_per_s"]  # the encoders alone, fbank excluded
    for r in runs.values():
        r["ratio_to_encoders"] = round(r["end_to_end_items_per_s"] / reference, 3)
        r["bottleneck"] = ("input pipeline (decode + preprocessing)" if r["loader_items_per_s"] < reference
                           else "model path")
    result = {
        "benchmark": "embed_throughput", "device": device_name, "config": str(config.relative_to(REPO)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "batch_size": args.batch_size, "workers": args.workers, "bf16_autocast": autocast,
        "encoders_items_per_s": reference, "runs": runs,
        "note": "" if gpu else "no GPU on this machine: the GPU figures (base.yaml, bf16) are still to be measured",
    }
    out = args.out or REPO / "benchmarks" / "results" / f"embed_throughput_{device_name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
