"""Read item shards back as decoded items, correctly across DataLoader workers and Accelerate ranks.

Two modes (docs/design.md "Training data flow"):

- train: an endless stream of shards, reshuffled each pass with a seed shared by all ranks, cut to a
  fixed number of batches per rank, so every rank runs the same number of steps and nothing hangs
  waiting for a rank that ran dry. Within one pass the ranks and workers read disjoint shards.
- eval: every item exactly once across all ranks and workers (rank r reads shards r, r+W, ...;
  then each DataLoader worker a disjoint slice of those), in order, no shuffling.

Ranks are assigned here, not by `accelerator.prepare` (which cannot split an IterableDataset of
unknown length without duplicating or hanging: accelerate issues #3547, #4199).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from mmrec.data import remote, schema
from mmrec.data.dataset import load_manifest
from mmrec.data.item import DecodedItem, Visit, VisitOf
from mmrec.data.media import decode_audio_bytes

remote.register_webdataset_opener()  # shards at any fsspec URL stream like local ones


def shard_urls(data_dir: str | Path, manifest: dict | None = None) -> list[str]:
    """Shard locations in manifest order. `data_dir` may be a local folder or any URL prefix webdataset opens."""
    manifest = manifest or load_manifest(data_dir)
    data_dir = remote.as_location(data_dir)
    return [remote.url_of(data_dir, sh["path"]) for sh in manifest["shards"]]


def decode_image(sample: dict[str, Any]) -> Image.Image | None:
    """The item's image member as an RGB PIL image, or None when it has none."""
    for ext in schema.IMAGE_EXTS:
        if ext in sample:
            with Image.open(io.BytesIO(sample[ext])) as im:
                return im.convert("RGB")
    return None


def decode_waveform(sample: dict[str, Any]) -> tuple[torch.Tensor | None, int | None]:
    """The item's audio member as (float32 (channels, frames), sample rate), or (None, None)."""
    for ext in schema.AUDIO_EXTS:
        if ext in sample:
            wave, rate = decode_audio_bytes(sample[ext])
            return torch.from_numpy(wave), rate
    return None, None


def damaged_shard(exn: Exception) -> bool:
    """webdataset's error handler: a shard that cannot be read stops everything with one line naming it
    (webdataset appends the shard's url to the exception's arguments)."""
    url = next((a for a in reversed(exn.args) if isinstance(a, str)), "a shard")
    first = str(exn.args[0]) if exn.args else type(exn).__name__
    raise ValueError(f"cannot read {url}: {first} (truncated or damaged since `mmrec shard`? restore it or "
                     "re-shard)") from exn


def decode_sample(sample: dict[str, Any]) -> DecodedItem:
    """Turn raw tar members into a `DecodedItem` (runs in DataLoader workers)."""
    if "json" not in sample:
        raise ValueError(f"{sample.get('__url__', 'a shard')}: item {sample.get('__key__')!r} has no .json member "
                         f"(members {sorted(k for k in sample if not k.startswith('__'))}); not an `mmrec shard` output")
    meta = json.loads(sample["json"])
    text = sample["txt"].decode("utf-8") if "txt" in sample else None
    waveform, rate = decode_waveform(sample)
    return DecodedItem(meta["index"], meta["item_id"], text, decode_image(sample), waveform, rate,
                       meta.get("attributes", []), meta.get("metadata", {}))


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else from RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class EvalShards(torch.utils.data.IterableDataset):
    """Shards of this rank, then of this DataLoader worker: each shard is read by exactly one worker."""

    def __init__(self, urls: list[str], rank: int, world_size: int):
        super().__init__()
        self.urls, self.rank, self.world_size = urls, rank, world_size

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker_info()
        for url in self.urls[self.rank :: self.world_size][worker::num_workers]:
            yield {"url": url}


class DecodeVisit:
    """Picklable `decode` for training samples: the decoded item, still carrying its `Visit`."""

    def __init__(self, decode: Callable[[dict[str, Any]], Any]):
        self.decode = decode

    def __call__(self, sample: dict[str, Any]) -> Any:
        item = self.decode(sample)
        return VisitOf(item, sample["__visit__"]) if "__visit__" in sample else item


class TrainItems(torch.utils.data.IterableDataset):
    """Endless item stream for training: pass p reads a permutation of the shards seeded by (seed, p).

    The permutation is the same on every rank; rank r takes every world_size-th shard of the pass and
    worker w every num_workers-th of those, so within a pass all readers see disjoint shards. Items
    are shuffled in a buffer that is flushed at the end of each pass (so no item of pass p+1 leaks
    into pass p), seeded by (seed, pass, rank, worker): a seeded run is reproducible. With `visits`, an
    item is streamed that many times per pass (once per chunk of its training interactions). `set_epoch`
    moves the starting pass so each training epoch begins on a fresh permutation.

    Resuming mid-epoch (`resume_at`): the DataLoader takes full batches from its workers in turn
    (batch j from worker j mod W), so after j0 batches worker w continues as original worker
    (w + j0) mod W, skipping the raw samples that worker had already batched. The resumed stream is
    then batch for batch the one an uninterrupted run would have seen, without decoding the skipped
    items.
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, seed: int, shuffle_buffer: int, batch_size: int,
                 visits: np.ndarray | None = None):
        super().__init__()
        self.urls, self.rank, self.world_size, self.seed = urls, rank, world_size, seed
        self.shuffle_buffer, self.batch_size = shuffle_buffer, batch_size
        self.visits = visits  # item index -> visits per pass (None: one each)
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start_batch = epoch, 0

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.start_batch = epoch, batches_done

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker_info()
        if len(self.urls) < self.world_size * num_workers:  # also checked when the loader is built
            raise ValueError(f"{len(self.urls)} shards cannot feed {self.world_size} ranks x {num_workers} workers")
        original = (worker + self.start_batch) % num_workers  # the worker whose stream this one continues
        done = (self.start_batch - original + num_workers - 1) // num_workers  # its batches already consumed
        stream = self._stream(original, num_workers)
        for _ in range(done * self.batch_size):
            next(stream)
        yield from stream

    def _stream(self, worker: int, num_workers: int) -> Iterator[dict]:
        pass_number = self.epoch
        while True:
            order = np.random.default_rng((self.seed, pass_number)).permutation(len(self.urls))
            mine = [{"url": self.urls[i]} for i in order[self.rank :: self.world_size][worker::num_workers]]
            samples = wds.tarfile_to_samples(handler=damaged_shard)(iter(mine))
            if self.visits is not None:
                samples = self._visits_of(samples, pass_number)
            rng = random.Random(f"{self.seed}/{pass_number}/{self.rank}/{worker}")  # str seeds hash stably
            yield from wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, 100), rng=rng)(samples)
            pass_number += 1

    def _visits_of(self, samples: Iterator[dict], pass_number: int) -> Iterator[dict]:
        """Each raw sample once per visit its item gets in a pass, marked with its `Visit`. Repeated before
        the shuffle buffer, so one item's visits spread over batches; and before decoding, so a resume
        skips them by count like any sample."""
        for sample in samples:
            chunks = int(self.visits[int(sample["__key__"])])  # the key is the item index (schema.item_key)
            for chunk in range(chunks):
                yield {**sample, "__visit__": Visit(pass_number, chunk, chunks)}


class ItemLoader(wds.WebLoader):
    """A WebLoader that can move its training stream to a new epoch or resume inside one."""

    def __init__(self, pipeline: wds.DataPipeline, source: TrainItems | EvalShards, **kwargs: Any):
        super().__init__(pipeline, **kwargs)
        self.source = source
        self.steps_per_epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its beginning (train mode; a no-op for eval)."""
        if isinstance(self.source, TrainItems):
            self.source.set_epoch(epoch)
            self.with_epoch(self.steps_per_epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Continue epoch `epoch` after `batches_done` batches, yielding exactly the remaining ones."""
        if not isinstance(self.source, TrainItems):
            raise ValueError("only a training loader can resume")
        self.source.resume_at(epoch, batches_done)
        self.with_epoch(self.steps_per_epoch - batches_done)


@dataclass
class ReaderConfig:
    """How items are streamed from shards."""

    batch_size: int = 32  # items per batch
    num_workers: int = 0  # DataLoader worker processes decoding media
    shuffle_buffer: int = 500  # training: items shuffled across shards in a buffer of this size
    seed: int = 0  # training: shard order and shuffle buffer
    steps_per_epoch: int | None = None  # training: batches per rank per epoch (None: visits / (ranks x batch))
    pin_memory: bool = False  # page-locked batches for asynchronous host -> GPU copies (CUDA only)


def steps_per_epoch(num_visits: int, batch_size: int, world_size: int) -> int:
    """Batches per rank so that one epoch makes about every visit once (an item's visits, or the items)."""
    return max(1, math.ceil(num_visits / (batch_size * world_size)))


def _collate_list(items: list) -> list:
    return items


def item_loader(
    data_dir: str | Path,
    mode: str,
    cfg: ReaderConfig | None = None,
    transform: Callable[[DecodedItem], Any] | None = None,
    collate: Callable[[list], Any] = _collate_list,
    rank: int | None = None,
    world_size: int | None = None,
    decode: Callable[[dict[str, Any]], Any] = decode_sample,
    shards: list[int] | None = None,
    visits: np.ndarray | None = None,
) -> ItemLoader:
    """A DataLoader over the item shards.

    Args:
        data_dir: dataset folder written by `mmrec shard` (or a URL prefix with the same layout).
        mode: "train" (endless, shuffled, fixed steps per epoch) or "eval" (each item exactly once).
        cfg: batch size, workers, shuffling; defaults to `ReaderConfig()`.
        transform: per-item preprocessing run in the workers (tokenise, image transform, fbank).
        collate: turns a list of transformed items into a batch (default: keep the list).
        rank, world_size: default to the current process group (see `dist_info`).
        decode: raw tar members -> item (default: media -> `DecodedItem`; the feature cache passes
            `mmrec.training.cache.decode_features`).
        shards: eval mode only: read just these shards (positions in the manifest), e.g. to embed
            shard by shard.
        visits: train mode only: item index -> times the item is streamed per pass, each time marked
            with its `Visit` (the trainer's chunks of each item's interactions); an epoch is then
            the batches of one pass of visits. None: every item once.

    Returns:
        An `ItemLoader` (a `webdataset.WebLoader`); in train mode `len(loader)` is the number of batches per epoch on
        this rank, the same on every rank.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"unknown reader mode {mode!r}; expected 'train' or 'eval'")
    if visits is not None and mode != "train":
        raise ValueError("visits are for train mode; eval reads every item exactly once")
    cfg = cfg or ReaderConfig()
    if rank is None or world_size is None:
        rank, world_size = dist_info()
    manifest = load_manifest(data_dir)
    urls = shard_urls(data_dir, manifest)
    if shards is not None:
        if mode != "eval":
            raise ValueError("a shard subset is for eval mode; training always streams every shard")
        urls = [urls[i] for i in shards]
    readers = world_size * max(1, cfg.num_workers)

    if mode == "train":
        if len(urls) < readers:
            raise ValueError(
                f"{len(urls)} shards cannot feed {world_size} ranks x {max(1, cfg.num_workers)} workers = {readers} "
                f"readers: re-shard with `mmrec shard --items-per-shard` <= "
                f"{max(1, manifest['num_items'] // readers)} or use fewer workers")
        if visits is not None and len(visits) != manifest["num_items"]:
            raise ValueError(f"visits has {len(visits)} entries for {manifest['num_items']} items")
        source = TrainItems(urls, rank, world_size, cfg.seed, cfg.shuffle_buffer, cfg.batch_size, visits)
        stages: list = [source]  # endless, shuffled, disjoint shards within a pass
        decode = DecodeVisit(decode)
    else:
        source = EvalShards(urls, rank, world_size)
        stages = [
            source,  # each shard read by exactly one worker of one rank
            wds.tarfile_to_samples(handler=damaged_shard),  # tar members -> one sample per item
        ]
    stages += [
        wds.map(decode),  # bytes -> text / PIL image / waveform (or cached features)
    ]
    if transform is not None:
        stages.append(wds.map(transform))  # encoder preprocessing, still in the worker
    stages.append(wds.batched(cfg.batch_size, collation_fn=collate, partial=True))
    pipeline = wds.DataPipeline(*stages)

    # Workers are not persistent: each epoch re-sends the pipeline, so set_epoch reaches them.
    # A private generator: DataLoader draws its worker base seed at every new iterator, which would
    # otherwise shift the global RNG (model dropout, masking) differently in a resumed run.
    loader = ItemLoader(pipeline, source, batch_size=None, num_workers=cfg.num_workers, persistent_workers=False,
                        generator=torch.Generator().manual_seed(cfg.seed),
                        pin_memory=cfg.pin_memory and torch.cuda.is_available())
    if mode == "train":
        per_pass = manifest["num_items"] if visits is None else int(visits.sum())
        loader.steps_per_epoch = cfg.steps_per_epoch or steps_per_epoch(per_pass, cfg.batch_size, world_size)
        loader = loader.with_epoch(loader.steps_per_epoch).with_length(loader.steps_per_epoch, silent=True)
    return loader
