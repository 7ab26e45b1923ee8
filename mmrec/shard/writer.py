"""`mmrec shard`: catalogue + interaction log -> validated WebDataset shards, splits and a manifest.

Stages: parse items.jsonl (main process) -> shuffle the item order (seeded) -> decode and re-encode
media (worker processes, in that order) -> write one sample per item with `webdataset.ShardWriter` -> validate and split the
interactions -> write split files, quarantine.jsonl and manifest.json. Everything is written into
`OUT.partial/` and renamed to `OUT` at the end, so an interrupted run never leaves a dataset folder
that looks complete.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from mmrec import __version__
from mmrec.data import schema
from mmrec.files import replace_with, sha256_of, temp_sibling
from mmrec.shard.encode import EncodedItem, encode_item_media
from mmrec.shard.interactions import Interaction, InteractionLog, read_interactions
from mmrec.shard.items import ItemRecord, catalogue_sha256, parse_items
from mmrec.shard.protocols import SplitConfig, split_interactions
from mmrec.shard.quarantine import QuarantineEntry, summarize_reasons, write_quarantine

logger = logging.getLogger(__name__)


@dataclass
class ShardOptions:
    """How `mmrec shard` writes a dataset folder."""

    items_per_shard: int = 1000  # samples per tar file; several shards per worker keep loaders busy
    image_max_side: int | None = None  # resize images whose longer side exceeds this (None: keep)
    audio_rate: int | None = None  # resample every clip to this rate as FLAC (None: keep)
    text_template: str | None = None  # build text from item fields, e.g. "{title}. {genres}"
    workers: int = 1  # processes decoding media
    max_media_mb: int = 64  # a larger image or audio file is dropped (quarantined) unread
    progress: bool = True  # tqdm progress bar on stderr (shown when the `mmrec` loggers are at INFO, as in the CLI)
    overwrite: bool = False  # replace an existing output folder
    rating_range: tuple[float, float] | None = None  # quarantine ratings outside [low, high] (None: only
    #                                                   non-finite ones and |rating| > 1e6)
    # Items are written in an order shuffled by this seed: a catalogue sorted by category would otherwise
    # stream in long same-category runs that a shuffle buffer does not break (and each DataLoader batch
    # comes from one worker's shards). None keeps the file order.
    order_seed: int | None = 0

    def __post_init__(self) -> None:
        if self.items_per_shard < 1:
            raise ValueError(f"items_per_shard must be >= 1, got {self.items_per_shard}")
        if self.image_max_side is not None and self.image_max_side < 8:
            raise ValueError(f"image_max_side must be >= 8 pixels, got {self.image_max_side}")
        if self.audio_rate is not None and self.audio_rate < 1000:
            raise ValueError(f"audio_rate must be >= 1000 Hz, got {self.audio_rate}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_media_mb < 1:
            raise ValueError(f"max_media_mb must be >= 1, got {self.max_media_mb}")
        if self.rating_range is not None:
            self.rating_range = tuple(float(x) for x in self.rating_range)
            if len(self.rating_range) != 2 or not self.rating_range[0] <= self.rating_range[1]:
                raise ValueError(f"rating_range must be (low, high) with low <= high, got {self.rating_range}")


@dataclass
class ShardReport:
    """What a run wrote and rejected; every count reconciles."""

    out: Path
    manifest: dict
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        c = self.manifest["counts"]
        s = self.manifest["interactions"]
        size = sum(sh["bytes"] for sh in self.manifest["shards"])
        lines = [
            f"items:        {c['item_lines']} non-blank lines = {c['items_written']} written + "
            f"{c['items_quarantined']} quarantined ({c['modalities_dropped']} modalities dropped from written items)",
            f"interactions: {c['interaction_rows']} rows = {c['interactions_written']} in splits (train "
            f"{s['train']['rows']}, valid {s['valid']['rows']}, test {s['test']['rows']}) + "
            f"{c['interactions_quarantined']} quarantined",
            "coverage:     " + ", ".join(f"{m} {v['count']} ({v['fraction']:.1%})"
                                        for m, v in self.manifest["modalities"].items()),
            f"shards:       {len(self.manifest['shards'])} files, {size / 1e6:.1f} MB, "
            f"{c['items_written'] / max(self.seconds, 1e-9):.0f} items/s over {self.seconds:.1f} s",
        ]
        for kind, reason, n in summarize_reasons(self.quarantine):
            lines.append(f"  quarantined {n:6d} x {kind}: {reason}")
        lines.append(f"wrote {self.out} (reasons in {self.out / schema.QUARANTINE})")
        return "\n".join(lines)


def _single_threaded() -> None:
    # A forked child must not use the parent's intra-op thread pool (resampling runs torch ops).
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _encoded_items(records: list[ItemRecord], options: ShardOptions) -> Iterator[EncodedItem]:
    jobs = ((r, options.image_max_side, options.audio_rate, options.max_media_mb * 2**20) for r in records)
    if options.workers == 1:
        yield from map(encode_item_media, jobs)
        return
    # fork, not spawn: spawn re-imports the caller's __main__ (often torch-heavy) in every worker.
    # imap keeps the given order, so item indices do not depend on the number of workers.
    with multiprocessing.get_context("fork").Pool(options.workers, initializer=_single_threaded) as pool:
        yield from pool.imap(encode_item_media, jobs, chunksize=8)


def _modalities_of(members: dict[str, bytes]) -> list[str]:
    present = []
    if schema.TEXT_EXT in members:
        present.append("text")
    if any(ext in members for ext in schema.IMAGE_EXTS):
        present.append("image")
    if any(ext in members for ext in schema.AUDIO_EXTS):
        present.append("audio")
    return present


def _refuse_output_holding(out: Path, inputs: list[Path]) -> None:
    """The output folder is replaced as a whole (--overwrite): it must not be, or hold, any input."""
    target = out.resolve()
    for path in inputs:
        resolved = path.resolve()
        if resolved == target or target in resolved.parents:
            raise ValueError(f"--out {out} holds the input {path}; writing the dataset there would delete it "
                             "(--overwrite replaces the whole folder): choose an --out outside the catalogue")


def _write_split_csv(path: Path, rows: Iterable[Interaction]) -> int:
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(schema.INTERACTION_COLUMNS)
        for r in rows:
            ts = "" if r.timestamp is None else (int(r.timestamp) if r.timestamp.is_integer() else r.timestamp)
            w.writerow((r.user_id, r.item_id, r.rating, ts))
            n += 1
    return n


def _write_items(records: list[ItemRecord], items_dir: Path, options: ShardOptions,
                 source: str, quarantine: list[QuarantineEntry]) -> tuple[list[str], list[dict], Counter, set[str]]:
    """Write one sample per usable item; returns (item ids, shard entries, modality counts, attributes)."""
    item_ids: list[str] = []
    per_shard: Counter[str] = Counter()
    coverage: Counter[str] = Counter()
    vocabulary: set[str] = set()
    pattern = str(items_dir / schema.SHARD_PATTERN)
    bar = tqdm(total=len(records), desc="items", unit="item",
               disable=not options.progress or not logger.isEnabledFor(logging.INFO))
    # mtime=0: the same input gives byte-identical shards (and so the same sha256 in the manifest).
    with wds.ShardWriter(pattern, maxcount=options.items_per_shard, maxsize=float("inf"), verbose=0,
                         mtime=0.0) as writer:
        for encoded in _encoded_items(records, options):
            bar.update(1)
            rec = encoded.record
            present = _modalities_of(encoded.members)
            if not present:
                # `modality` entries are for written items only; a rejected item gets one entry.
                why = "; ".join(r for _, r in encoded.dropped) or "the line has no text, image or audio"
                quarantine.append(QuarantineEntry(schema.Q_ITEM, source, rec.line,
                                                  f"no usable modality left ({why})", item_id=rec.item_id))
                continue
            for modality, reason in encoded.dropped:
                quarantine.append(QuarantineEntry(schema.Q_MODALITY, source, rec.line, reason,
                                                  item_id=rec.item_id, modality=modality))
            index = len(item_ids)
            meta = {"item_id": rec.item_id, "index": index, "modalities": present,
                    "attributes": rec.attributes, "metadata": rec.metadata}
            writer.write({"__key__": schema.item_key(index), "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
                          **encoded.members})
            per_shard[writer.fname] += 1
            item_ids.append(rec.item_id)
            coverage.update(present)
            vocabulary.update(rec.attributes)
    bar.close()
    for stray in set(items_dir.glob("*.tar")) - {Path(name) for name in per_shard}:
        stray.unlink()  # ShardWriter opens its first file before any write; no item, no shard
    shards = [{"path": f"{schema.ITEMS_DIR}/{Path(name).name}", "num_items": n} for name, n in sorted(per_shard.items())]
    return item_ids, shards, coverage, vocabulary


def shard_catalogue(items_path: Path, interactions_path: Path, out: Path,
                    split: SplitConfig | None = None, options: ShardOptions | None = None) -> ShardReport:
    """Validate a catalogue and interaction log and write a dataset folder (docs/design.md layout).

    The catalogue is items.jsonl, items.parquet or a Hugging Face datasets folder (`mmrec.shard.items`).

    Raises:
        ValueError: for problems with the inputs as a whole (missing file or column, an existing
            output folder); row-level problems become quarantine entries instead.
    """
    # Media a parquet / datasets catalogue embeds as bytes are written here for the workers to read and
    # removed however the run ends (a killed run's copy is cleared by the next run, like OUT.partial).
    absolute = Path(out).absolute()  # "." has no name to add a suffix to; "/" is refused below as existing
    staged = temp_sibling(absolute, ".media") if absolute.name else None
    try:
        return _shard_catalogue(items_path, interactions_path, out, split, options, staged)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)


def _shard_catalogue(items_path: Path, interactions_path: Path, out: Path, split: SplitConfig | None,
                     options: ShardOptions | None, staged: Path | None) -> ShardReport:
    split = split or SplitConfig()
    options = options or ShardOptions()
    items_path, interactions_path, out = Path(items_path), Path(interactions_path), Path(out)
    for p in (items_path, interactions_path):
        if not (p.is_file() or (p is items_path and p.is_dir())):  # a datasets catalogue is a folder
            raise ValueError(f"input file not found: {p}")
    _refuse_output_holding(out, [items_path, interactions_path])
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a dataset folder; choose another --out (--overwrite replaces "
                         "only a dataset folder)")
    if out.exists() and not options.overwrite:
        raise ValueError(f"{out} already exists; choose another --out or pass --overwrite")
    started = time.perf_counter()

    records, item_quarantine, n_item_lines = parse_items(items_path, options.text_template, media_dir=staged)
    # debug, not info: a whole-input error that follows (see _refuse_output_holding) stays the one line on stderr
    logger.debug(f"{items_path}: {len(records)} items to write ({len(item_quarantine)} lines quarantined); decoding "
                f"their media with {options.workers} worker(s) -> {out}")
    if options.order_seed is not None:
        random.Random(options.order_seed).shuffle(records)  # item indices follow the written order
    _refuse_output_holding(out, [p for r in records for p in (r.image_path, r.audio_path) if p is not None])

    tmp = temp_sibling(out, ".partial")
    (tmp / schema.ITEMS_DIR).mkdir(parents=True)
    (tmp / schema.INTERACTIONS_DIR).mkdir()
    item_ids, shards, coverage, vocabulary = _write_items(
        records, tmp / schema.ITEMS_DIR, options, items_path.name, item_quarantine)
    for sh in shards:
        sh["bytes"] = (tmp / sh["path"]).stat().st_size
        sh["sha256"] = sha256_of(tmp / sh["path"])

    rejected = {e.item_id: e.line for e in item_quarantine if e.kind == schema.Q_ITEM and e.item_id}
    logger.debug(f"{interactions_path}: reading, validating and splitting ({split.protocol}) the interactions")
    log: InteractionLog = read_interactions(interactions_path, set(item_ids), rejected, options.rating_range)
    rows = log.rows
    if split.protocol == "temporal":
        no_time = [r for r in rows if r.timestamp is None]
        for r in no_time:
            log.quarantine.append(QuarantineEntry(schema.Q_INTERACTION, interactions_path.name, r.line,
                                                  "missing timestamp (the temporal split needs one)",
                                                  item_id=r.item_id, user_id=r.user_id))
        rows = [r for r in rows if r.timestamp is not None]
    if split.protocol == "given" and not log.has_split:
        raise ValueError(f"{interactions_path}: the given split needs a `split` column (train/valid/test)")
    result = split_interactions(rows, split)

    interactions = {}
    for name, split_rows in result.splits.items():
        path = tmp / schema.INTERACTIONS_DIR / f"{name}.csv"
        n = _write_split_csv(path, split_rows)
        interactions[name] = {"path": f"{schema.INTERACTIONS_DIR}/{name}.csv", "rows": n,
                              "users": len({r.user_id for r in split_rows}),
                              "items": len({r.item_id for r in split_rows}), "sha256": sha256_of(path)}

    quarantine = item_quarantine + sorted(log.quarantine, key=lambda e: e.line)
    write_quarantine(tmp / schema.QUARANTINE, quarantine)
    with open(tmp / schema.ITEM_IDS, "w", encoding="utf-8") as f:
        json.dump(item_ids, f, ensure_ascii=False)

    kinds = Counter(e.kind for e in quarantine)
    counts = {
        "item_lines": n_item_lines,
        "items_written": len(item_ids),
        "items_quarantined": kinds[schema.Q_ITEM],
        "modalities_dropped": kinds[schema.Q_MODALITY],
        "interaction_rows": log.n_rows,
        "interactions_written": sum(v["rows"] for v in interactions.values()),
        "interactions_quarantined": kinds[schema.Q_INTERACTION],
    }
    # The contract users rely on: nothing disappears without a quarantine entry.
    assert counts["item_lines"] == counts["items_written"] + counts["items_quarantined"], counts
    assert counts["interaction_rows"] == counts["interactions_written"] + counts["interactions_quarantined"], counts

    n_items = len(item_ids)
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "created_by": f"mmrec {__version__}",
        "num_items": n_items,
        "num_users": len({r.user_id for r in rows}),
        "modalities": {m: {"count": coverage[m], "fraction": coverage[m] / n_items if n_items else 0.0}
                       for m in schema.MODALITIES},
        "attributes": sorted(vocabulary),
        "shards": shards,
        "item_ids": {"path": schema.ITEM_IDS, "sha256": sha256_of(tmp / schema.ITEM_IDS)},
        "interactions": interactions,
        "split": {**split.to_dict(), **result.details},
        "counts": counts,
        "sources": {
            "items": {"path": str(items_path.resolve()), "sha256": catalogue_sha256(items_path)},
            "interactions": {"path": str(interactions_path.resolve()), "sha256": sha256_of(interactions_path),
                             "has_rating": log.has_rating, "has_timestamp": log.has_timestamp},
        },
        "options": {"items_per_shard": options.items_per_shard, "image_max_side": options.image_max_side,
                    "audio_rate": options.audio_rate, "text_template": options.text_template,
                    "rating_range": list(options.rating_range) if options.rating_range else None,
                    "max_media_mb": options.max_media_mb, "order_seed": options.order_seed},
    }
    with open(tmp / schema.MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)

    replace_with(tmp, out)
    return ShardReport(out, manifest, quarantine, time.perf_counter() - started)
