"""Training throughput (items/s) and peak memory per configuration, each as a ratio to the raw
encoders' own forward+backward throughput measured in the same run. Writes JSON.

Configurations:
- CPU (always): configs/tiny.yaml end to end from media shards, and with frozen encoders from a
  feature cache (`mmrec cache`);
- GPU (when CUDA is available): configs/base.yaml in bf16 with frozen encoders via the cache, with
  the top 2 layers of each encoder trainable, and fully trainable, on full-size media (320 px JPEG
  posters, 10.24 s FLAC clips: `--data` or a synthetic catalogue written here).

The reference ("encoders only") runs the same encoders' forward and backward (frozen: forward only)
on preprocessed batches already on the device, so the ratio says how much of the encoders' speed
the whole training step (data loading, fusion, heads, optimizer) keeps.

    python benchmarks/train_throughput.py [--items 512] [--steps 20] [--data DIR] [--workers N] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch

from mmrec.config import load_run_config
from mmrec.data.batch import BatchCollator, ExampleBuilder
from mmrec.data.reader import ReaderConfig, item_loader
from mmrec.shard.protocols import SplitConfig
from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
from mmrec.shard.writer import ShardOptions, shard_catalogue
from mmrec.training.cache import build_frozen_model, cache_features
from mmrec.training.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
FROZEN = [f"model.encoders.{m}.trainable_layers=0" for m in ("text", "image", "audio")]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def encoder_reference(trainer: Trainer, batches: int) -> float:
    """items/s of the encoders alone (forward + backward of the trainable part) on device-resident batches."""
    model, device = trainer.model, trainer.accelerator.device
    loader = item_loader(trainer.data_dir, "eval", ReaderConfig(batch_size=trainer.cfg.data.batch_size),
                         transform=ExampleBuilder(trainer.preprocessors, [], catalogue=None), collate=BatchCollator(trainer.preprocessors),
                         rank=0, world_size=1)
    ready = [b.to(device) for _, b in zip(range(batches + 1), loader)]
    trainable = any(p.requires_grad for p in model.encoders.parameters())
    autocast = trainer.accelerator.mixed_precision == "bf16"
    model.train()
    n_items, elapsed = 0, 0.0
    for i, batch in enumerate(ready):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(trainable):
            out = [model.encoders[m](**batch.inputs[m]) for m in model.modalities if m in batch.inputs]
            loss = sum(o.pooled.float().pow(2).mean() + o.tokens.float().pow(2).mean() for o in out)
        if trainable:
            loss.backward()
            model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first batch warms up
            elapsed += time.perf_counter() - start
            n_items += batch.size
    return n_items / elapsed


def measure(name: str, config: Path, overrides: list[str], data: Path, work: Path, steps: int, use_cache: bool) -> dict:
    cfg = load_run_config(config, overrides + [f"data.steps_per_epoch={steps}", "train.epochs=1", "train.log_every=1"])
    if use_cache:
        model, pre = build_frozen_model(cfg, data)
        cache_features(model, pre, data, work / f"{name}-feats", device="cuda" if torch.cuda.is_available() else "cpu",
                       num_workers=cfg.data.num_workers, progress=False)
        cfg.data.features = str(work / f"{name}-feats")
        del model
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, data, work / f"{name}-run")
    reference = encoder_reference(trainer, batches=min(steps, 10))
    trainer.fit()
    logs = [json.loads(line) for line in (work / f"{name}-run" / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [r for r in logs if "loss/total" in r]
    # from the end of step 1 to the last step: excludes start-up and the first batch's warm-up
    seconds = steps_logged[-1]["seconds"] - steps_logged[0]["seconds"]
    items_per_s = (len(steps_logged) - 1) * cfg.data.batch_size / seconds
    return {
        "config": name,
        "overrides": overrides,
        "feature_cache": use_cache,
        "batch_size": cfg.data.batch_size,
        "steps_timed": len(steps_logged) - 1,
        "train_items_per_s": round(items_per_s, 1),
        "encoders_fwd_bwd_items_per_s": round(reference, 1),
        "ratio_to_encoders": round(items_per_s / reference, 3),
        "peak_memory_mb": round(peak_memory_mb(trainer.accelerator.device), 1),
        "mixed_precision": trainer.accelerator.mixed_precision,
        "trainable_encoder_params": sum(p.numel() for p in trainer.model.encoders.parameters() if p.requires_grad),
    }


def write_shards(folder: Path, config: SyntheticCatalogueConfig) -> Path:
    info = write_synthetic_catalogue(folder / "catalogue", config)
    shard_catalogue(info["items"], info["interactions"], folder / "data", SplitConfig(protocol="random"),
                    ShardOptions(items_per_shard=64, progress=False))
    return folder / "data"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=512, help="synthetic catalogue size")
    p.add_argument("--steps", type=int, default=20, help="training steps timed per configuration")
    p.add_argument("--data", type=Path, default=None,
                   help="shards for the base.yaml runs (default: a full-size synthetic catalogue of --items)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for base.yaml (default: its own)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if gpu else "cpu"
    out = args.out or REPO / "benchmarks" / "results" / f"train_throughput_{device_name.replace(' ', '_')}.json"
    runs: list[dict] = []
    result = {"benchmark": "train_throughput", "device": device_name,
              "data": {"tiny": f"synthetic, {args.items} items, demo media (64 px, 0.5 s)",
                       "base": str(args.data) if args.data else f"synthetic, {args.items} items, full-size media"},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "note": "" if gpu else "no GPU on this machine: base.yaml configurations not measured", "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(run: dict) -> None:  # written after every configuration: a run cut short keeps what it measured
        runs.append(run)
        out.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = write_shards(work / "small", SyntheticCatalogueConfig(
            num_items=args.items, num_users=100, num_ratings=args.items * 10))
        tiny, base = REPO / "configs" / "tiny.yaml", REPO / "configs" / "base.yaml"
        if gpu:  # the figures the GPU is for come first
            full_size = args.data.resolve() if args.data else write_shards(
                work / "full", SyntheticCatalogueConfig.full_size_media(
                    num_items=args.items, num_users=100, num_ratings=args.items * 10))
            workers = [] if args.workers is None else [f"data.num_workers={args.workers}"]
            everything = [f"model.encoders.{m}.trainable_layers=-1" for m in ("text", "image", "audio")]
            for name, overrides, cache in (("base-top2", [], False), ("base-frozen-cache", FROZEN, True),
                                           ("base-full", everything, False)):
                record(measure(name, base, overrides + workers, full_size, work, args.steps, use_cache=cache))
        record(measure("tiny", tiny, [], small, work, args.steps, use_cache=False))
        record(measure("tiny-frozen-cache", tiny, FROZEN, small, work, args.steps, use_cache=True))
    for r in runs:
        print(f"{r['config']:20s} train {r['train_items_per_s']:8.1f} items/s  encoders {r['encoders_fwd_bwd_items_per_s']:8.1f} "
              f"items/s  ratio {r['ratio_to_encoders']:.3f}  peak {r['peak_memory_mb']:.0f} MB")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
