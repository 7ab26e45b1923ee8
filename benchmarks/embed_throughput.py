"""Embedding throughput: the encoders alone vs the whole `mmrec embed` path, measured in one run. Writes JSON.

    python benchmarks/embed_throughput.py                      # CPU: configs/tiny.yaml, small media
    python benchmarks/embed_throughput.py --workers 14 --profile                  # a GPU: base.yaml, full-size media
    python benchmarks/embed_throughput.py --config configs/base.yaml --media full --input-only   # CPU cost of the input

Figures on the same shards, model and batch size, so their ratios explain where the time goes:

- `encoders_items_per_s`: every encoder's forward on preprocessed batches already on the device (bf16
  autocast on a GPU that has it), the reference the issue sets the goal against;
- `loader_items_per_s`: reading shards, decoding media and preprocessing (tokenise, resize, fbank)
  in the DataLoader workers, with no model at all: the input pipeline's ceiling;
- `embed_items_items_per_s`: `mmrec.embedding.embed_items`, the streaming core of `mmrec embed`
  (loader + copy to the device + encoders + fusion + export vectors) over all shards at once;
- `end_to_end_items_per_s`: `mmrec embed` itself (`mmrec.embedding.embed` on a run folder holding
  this model): shards read in groups, one part file per group, then the merge into EMB/ (item and user
  embeddings, states, titles); the checkpoint load before it is not counted. `..._excluding_fill`
  leaves out the time the loader takes to deliver its first batch (workers start and each fills a
  batch), which a short benchmark pays in full but a catalogue of millions does not;
- `input_profile`: milliseconds of one CPU core per item for each input stage (tar read + media
  decode, each modality's preprocessing, collation), and so the cores the input needs to keep up
  with the encoders: `cores_needed_at_encoder_speed`.

`ratio_to_encoders` = end to end / encoders (goal on a GPU: >= 0.9). Both are measured twice: with
the last feature steps per item in the workers (audio fbank; image scaling and normalisation), and
batched inside the encoders (`model.encoders.{audio,image}.features_on_device=true`, on the GPU
when there is one). The reference is the first variant's encoders figure, which leaves those steps
out. `--profile` adds a `torch.profiler` pass over `embed_items`: its operator table goes next to
the JSON, and on a GPU the JSON gets the fraction of wall time the GPU spent in kernels.

`--media full` (the default on a GPU) benchmarks on 320 px JPEG posters and 10.24 s FLAC clips, the
sizes a real catalogue has; `small` uses the demo's 64 px images and 0.5 s clips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import webdataset as wds

from mmrec.config import load_run_config
from mmrec.data.batch import BatchCollator, ExampleBuilder
from mmrec.data.reader import ReaderConfig, decode_image, decode_sample, decode_waveform, item_loader, shard_urls
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import embed, embed_items
from mmrec.model.factory import ModelSizes, create_model, save_model
from mmrec.precision import bf16_autocast
from mmrec.shard.protocols import SplitConfig
from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
from mmrec.shard.writer import ShardOptions, shard_catalogue

REPO = Path(__file__).resolve().parents[1]
WORKERS, DEVICE = "features in workers", "features on device"


def variants(config: Path) -> dict[str, list[str]]:
    """The last feature steps (audio: Kaldi fbank; image: scale + normalise) per item in the workers,
    or batched in the encoders, on the GPU when there is one (`features_on_device`)."""
    present = [m for m in ("image", "audio") if m in load_run_config(config, []).model.encoders]
    return {name: [f"model.encoders.{m}.features_on_device={flag}" for m in present]
            for name, flag in ((WORKERS, "false"), (DEVICE, "true"))}


def _shown(path: Path) -> str:
    """A path as the JSON shows it: relative to the repository when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(data: Path, pre: dict, batch_size: int, workers: int) -> tuple[float, float]:
    """(items/s of shard reading + decoding + preprocessing alone (no model), seconds to the first batch)."""
    loader = item_loader(data, "eval", ReaderConfig(batch_size=batch_size, num_workers=workers),
                         transform=ExampleBuilder(pre, [], catalogue=None), collate=BatchCollator(pre), rank=0, world_size=1)
    start, n, first = time.perf_counter(), 0, None
    for batch in loader:
        first = first or time.perf_counter() - start
        n += batch.size
    return n / (time.perf_counter() - start), first or 0.0


def input_profile(data: Path, pre: dict, batch_size: int, items: int) -> dict:
    """Milliseconds of one CPU core per item, by input stage, over the first `items` items.

    Per catalogue item: a modality's cost is averaged over all items, those without it included,
    since that is what the workers pay. Runs in this process with one torch thread, as a worker does.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds: dict[str, float] = defaultdict(float)
    builder, collate = ExampleBuilder(pre, [], catalogue=None), BatchCollator(pre)
    samples = iter(wds.DataPipeline(wds.SimpleShardList(shard_urls(data)), wds.tarfile_to_samples()))
    examples, n = [], 0
    try:
        for _ in range(items):
            start = time.perf_counter()
            sample = next(samples, None)
            if sample is None:
                break
            seconds["read tar"] += time.perf_counter() - start
            for stage, decode in (("decode image (PIL)", decode_image), ("decode audio (soundfile)", decode_waveform)):
                start = time.perf_counter()
                decode(sample)
                seconds[stage] += time.perf_counter() - start
            item = decode_sample(sample)  # again, untimed: the stages above are its parts
            for modality, preprocess in pre.items():
                raw = ExampleBuilder.raw_input(item, modality)
                if raw is not None:
                    start = time.perf_counter()
                    preprocess(raw)
                    seconds[f"preprocess {modality}"] += time.perf_counter() - start
            examples.append(builder(item))
            n += 1
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            collate(examples[i:i + batch_size])
        seconds["collate"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    ms = {stage: round(1000 * s / max(n, 1), 3) for stage, s in seconds.items()}
    return {"items": n, "ms_per_item": ms, "total_ms_per_item": round(sum(ms.values()), 3)}


def encoder_rate(model, data: Path, pre: dict, batch_size: int, device: torch.device, autocast: bool,
                 batches: int) -> float:
    """items/s of the encoders' forward on preprocessed batches already on the device (first batch: warm-up)."""
    loader = item_loader(data, "eval", ReaderConfig(batch_size=batch_size), transform=ExampleBuilder(pre, [], catalogue=None),
                         collate=BatchCollator(pre), rank=0, world_size=1)
    ready = [b.to(device) for _, b in zip(range(batches + 1), loader)]
    ready = ready if len(ready) > 1 else ready * 2  # a one-batch dataset: time it after warming up on it
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


def end_to_end_seconds(model, data: Path, pre: dict, attributes: list[str], batch_size: int, workers: int,
                       device: torch.device, autocast: bool) -> tuple[float, int]:
    _sync(device)
    start = time.perf_counter()
    idx, _ = embed_items(model, data, pre, attributes, batch_size=batch_size, num_workers=workers, device=device,
                         autocast=autocast)
    _sync(device)
    return time.perf_counter() - start, len(idx)


def profile_end_to_end(model, data: Path, pre: dict, attributes: list[str], args, device: torch.device,
                       autocast: bool, table_path: Path) -> dict:
    """One `embed_items` pass under torch.profiler: the operator table to a file, a summary to return."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        wall, _ = end_to_end_seconds(model, data, pre, attributes, args.batch_size, args.workers, device, autocast)
    ops = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    table_path.write_text(ops.table(sort_by=key, row_limit=40) + "\n")
    top = sorted(ops, key=lambda e: getattr(e, key), reverse=True)[:15]
    summary = {"table": _shown(table_path),
               "wall_s_under_profiler": round(wall, 3),
               "top_ops": [{"name": e.key, "calls": e.count, f"{key}_ms": round(getattr(e, key) / 1000, 2)} for e in top]}
    if cuda:
        # each kernel's time is the self device time of the op that launched it: the sum counts each once
        kernel_s = sum(e.self_device_time_total for e in ops) / 1e6
        summary["gpu_kernel_time_fraction_of_wall"] = round(kernel_s / wall, 3)
    return summary


def mmrec_embed_seconds(model, sizes: ModelSizes, vocab: RunVocabulary, data: Path, work: Path, args) -> float:
    """Seconds `mmrec embed` reports for this model on these shards (after loading the checkpoint)."""
    run = Path(tempfile.mkdtemp(dir=work))
    save_model(model, sizes, run / "model")
    vocab.save(run)
    summary = embed(run, data, run / "emb", batch_size=args.batch_size, num_workers=args.workers, progress=False)
    return summary["seconds"]


def measure(config: Path, overrides: list[str], data: Path, work: Path, args, device: torch.device,
            autocast: bool) -> tuple:
    cfg = load_run_config(config, overrides)
    vocab = RunVocabulary.from_data(data)
    torch.manual_seed(0)
    sizes = ModelSizes.for_training(vocab, RunSplits(data, vocab))
    model, pre = create_model(cfg.model, sizes)
    model.to(device).eval()
    loader, first_batch = loader_rate(data, pre, args.batch_size, args.workers)
    run = {"overrides": overrides, "loader_items_per_s": round(loader, 1), "loader_first_batch_s": round(first_batch, 3),
           "input_profile": input_profile(data, pre, args.batch_size, args.profile_items)}
    if not args.input_only:
        batches = max(2, min(10, len(vocab.item_ids) // args.batch_size - 1))
        run["encoders_items_per_s"] = round(encoder_rate(model, data, pre, args.batch_size, device, autocast, batches), 1)
        seconds, n = end_to_end_seconds(model, data, pre, vocab.attributes, args.batch_size, args.workers, device,
                                        autocast)
        run.update(items=n, embed_items_items_per_s=round(n / seconds, 1))
        seconds = mmrec_embed_seconds(model, sizes, vocab, data, work, args)
        run.update(end_to_end_items_per_s=round(n / seconds, 1),
                   end_to_end_excluding_fill_items_per_s=round(n / max(seconds - first_batch, 1e-9), 1))
    return run, model, pre, vocab


def make_shards(work: Path, args) -> Path:
    make = SyntheticCatalogueConfig.full_size_media if args.media == "full" else SyntheticCatalogueConfig
    info = write_synthetic_catalogue(work / "cat", make(num_items=args.items, num_users=100,
                                                        num_ratings=args.items * 4))
    shard_catalogue(info["items"], info["interactions"], work / "data", SplitConfig(protocol="random"),
                    ShardOptions(items_per_shard=max(1, args.items // 32), progress=False))
    return work / "data"


def add_ratios(result: dict) -> None:
    """Each run's ratios to the encoders alone (the first variant's encoders figure: features excluded)."""
    runs = result["runs"]
    reference = runs[WORKERS].get("encoders_items_per_s")
    result["encoders_items_per_s"] = reference
    for r in runs.values():
        if reference:
            r["ratio_to_encoders"] = round(r["end_to_end_items_per_s"] / reference, 3)
            r["ratio_to_encoders_excluding_fill"] = round(r["end_to_end_excluding_fill_items_per_s"] / reference, 3)
            r["input_profile"]["cores_needed_at_encoder_speed"] = round(
                r["input_profile"]["total_ms_per_item"] * reference / 1000, 1)
            r["bottleneck"] = ("input pipeline (decode + preprocessing)" if r["loader_items_per_s"] < reference
                               else "model path")
        r["input_profile"]["items_per_s_per_core"] = round(1000 / r["input_profile"]["total_ms_per_item"], 1)


def main(argv: list[str] | None = None) -> dict:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None, help="default: base.yaml on a GPU, tiny.yaml on CPU")
    p.add_argument("--data", type=Path, default=None,
                   help="shards to embed (`mmrec shard` output); default: write a synthetic catalogue")
    p.add_argument("--items", type=int, default=4096 if gpu else 1024, help="synthetic tri-modal items to write")
    p.add_argument("--media", choices=("small", "full"), default="full" if gpu else "small",
                   help="synthetic media sizes: demo (64 px, 0.5 s) or a real catalogue's (320 px JPEG, 10.24 s)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--input-only", action="store_true",
                   help="only the input pipeline (loader + per-stage profile), no encoders: e.g. base.yaml's "
                        "preprocessing cost on a machine without a GPU")
    p.add_argument("--profile", action="store_true", help="add a torch.profiler pass over the end-to-end path")
    p.add_argument("--profile-items", type=int, default=128, help="items in the per-stage input profile")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if gpu else "cpu")
    config = (args.config or REPO / "configs" / ("base.yaml" if gpu else "tiny.yaml")).resolve()
    autocast = bf16_autocast(device)
    device_name = torch.cuda.get_device_name(0) if gpu else "cpu"
    tag = f"{'input_' if args.input_only else ''}{config.stem}_{device_name.replace(' ', '_')}"
    out = args.out or REPO / "benchmarks" / "results" / f"embed_throughput_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict] = {}
    result = {
        "benchmark": "embed_throughput", "device": device_name, "config": _shown(config),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "data": str(args.data) if args.data else f"synthetic, {args.items} items, {args.media} media",
        "batch_size": args.batch_size, "workers": args.workers, "bf16_autocast": autocast,
        "encoders_items_per_s": None, "runs": runs, "profile": None,
        "note": ("input pipeline only (--input-only): no encoders run" if args.input_only else
                 "" if gpu else "no GPU on this machine: the GPU figures (base.yaml, bf16) are still to be measured"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data.resolve() if args.data else make_shards(Path(tmp), args)
        for name, overrides in variants(config).items():
            runs[name], model, pre, vocab = measure(config, overrides, data, Path(tmp), args, device, autocast)
            add_ratios(result)
            out.write_text(json.dumps(result, indent=2) + "\n")  # after each variant: a cut-short run keeps it
            if args.profile and not args.input_only and name == DEVICE:
                result["profile"] = profile_end_to_end(model, data, pre, vocab.attributes, args, device, autocast,
                                                       out.with_suffix(".profile.txt"))
                out.write_text(json.dumps(result, indent=2) + "\n")
            del model
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
