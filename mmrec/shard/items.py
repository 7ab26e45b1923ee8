"""Parse and validate the item catalogue (docs/design.md "Catalogue input") row by row.

The catalogue is `items.jsonl`, `items.parquet` (the same fields as columns) or a Hugging Face
`datasets` folder (`save_to_disk`); the last two may hold `image` / `audio` as embedded bytes (the
`datasets` Image / Audio storage, `{"bytes": ..., "path": ...}`), which are written to a staging
folder so that the sharder's workers read every medium from a file the same way. Parsing is cheap
and runs in the main process; decoding media (the expensive part) is done later, per record, in
worker processes (`mmrec.data.media`).

Policy (also in the README; a parquet or dataset row counts as a line): a line that is not a JSON
object, lacks a usable `item_id`, repeats an earlier `item_id` (the first one wins) or has malformed
`attributes` is rejected as a whole; a bad modality (invalid UTF-8 text, empty text, a path that is
not a string) is dropped and recorded, and the item stays as long as at least one modality is left.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from mmrec.data.schema import MODALITIES, Q_ITEM, Q_MODALITY
from mmrec.files import sha256_of
from mmrec.shard.quarantine import QuarantineEntry

# Keys with a meaning of their own; everything else on a line is kept as metadata.
_RESERVED = ("item_id", *MODALITIES, "attributes")


@dataclass
class ItemRecord:
    """One parsed catalogue line (or parquet / dataset row) whose media have not been decoded yet."""

    line: int
    item_id: str
    text: str | None
    image_path: Path | None
    audio_path: Path | None
    attributes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)


def is_valid_unicode(s: str) -> bool:
    # Lone surrogates come from undecodable bytes (surrogateescape) or from "\ud800" escapes.
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


_BINARY = object()  # marks a binary metadata value, left out of the JSON member


def _clean_metadata(value: Any) -> Any:
    """Metadata is kept as is, except what JSON cannot hold: invalid Unicode is replaced, dates and
    times (parquet / `datasets` columns) become ISO 8601 strings, decimals floats, other non-JSON
    values strings; binary values are left out (their bytes are no metadata a reader can use)."""
    if isinstance(value, str):
        return value if is_valid_unicode(value) else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _BINARY
    if isinstance(value, (list, tuple)):
        return [c for c in map(_clean_metadata, value) if c is not _BINARY]
    if isinstance(value, dict):
        cleaned = ((_clean_metadata(k), _clean_metadata(v)) for k, v in value.items())
        return {str(k): v for k, v in cleaned if v is not _BINARY and k is not _BINARY}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def row_attributes(value: Any) -> list[str]:
    """A row's `attributes` as the shards store them: absent (None) -> [], one string -> [it], else a list (or
    tuple, set) of strings, each stripped, blank ones left out. The one rule for `mmrec shard` and for the rows
    given to `Recommender.embed_items`.

    Raises:
        ValueError: anything else; its message is the row's rejection reason.
    """
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(a, str) for a in value):
        raise ValueError("attributes must be a list of strings")
    return [_clean_metadata(a).strip() for a in value if a.strip()]


def text_problem(text: Any) -> str | None:
    """Why a row's `text` (not None) cannot be an item's text, or None when it can: the one rule for `mmrec shard`
    (which drops the modality) and `Recommender.embed_items` (which refuses the row)."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not is_valid_unicode(text):
        return "text is not valid UTF-8"
    if not text.strip():
        return "text is empty"
    return None


class _TemplateFields(dict):
    """format_map source: missing fields render empty, lists render comma-joined."""

    def __missing__(self, key: str) -> str:
        return ""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key) if key in self else ""
        return ", ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else value)


def read_item_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line) for non-blank lines.

    Undecodable bytes are kept as lone surrogates (surrogateescape) so that one bad byte costs a
    field, not the whole line; fields are checked for them after parsing.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte order mark
            line = raw.decode("utf-8", errors="surrogateescape")
            if line.strip():
                yield number, line


# Rows a columnar catalogue converts to Python objects at a time: bounds memory when media are embedded.
_BATCH_ROWS = 256

# (1-based line or row number, the parsed object, or None and why the line is unusable)
_Row = tuple[int, Any, str | None]


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    for number, line in read_item_lines(path):
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as e:
            yield number, None, f"invalid JSON: {e.msg} at column {e.colno}"


def _columnar_rows(batches: Iterable[Any]) -> Iterator[_Row]:
    """Rows of pyarrow record batches / tables as dicts; a null cell is an absent field, as in JSON lines
    (a column cannot leave a field out)."""
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield number, {k: v for k, v in row.items() if v is not None}, None


def _parquet_batches(path: Path) -> Iterator[Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError(f"{path}: reading items from parquet needs pyarrow: pip install 'mmrec[parquet]'") from e
    try:
        yield from pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS)
    except (pa.ArrowException, OSError) as e:  # opening, or a damaged row group further on
        raise ValueError(f"{path} is not a readable parquet file ({e}); pass items.jsonl, items.parquet or a "
                         "Hugging Face datasets folder") from None


def _hf_batches(path: Path) -> Iterator[Any]:
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"{path} is a folder: reading a Hugging Face datasets folder needs the `hf` extra: "
                         "pip install 'mmrec[hf]'") from e
    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise ValueError(f"{path} is a folder but not a Hugging Face datasets folder written by save_to_disk ({e}); "
                         "pass items.jsonl, items.parquet or such a folder") from None
    if isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{path} holds the splits {sorted(ds)}: pass one split's folder, e.g. {path / sorted(ds)[0]}")
    # Arrow rows carry Image / Audio columns as stored ({"bytes", "path"}): no decoding here (datasets'
    # Audio decoding needs torchcodec), the sharder decodes and validates them like files.
    yield from ds.with_format("arrow").iter(batch_size=_BATCH_ROWS)


def catalogue_rows(path: Path) -> Iterator[_Row]:
    """(line or row number, object or None, error or None) for each non-blank line or row of a catalogue:
    a Hugging Face datasets folder, a `.parquet` file, or JSON lines (any other name)."""
    if path.is_dir():
        return _columnar_rows(_hf_batches(path))
    if path.suffix.lower() == ".parquet":
        return _columnar_rows(_parquet_batches(path))
    return _jsonl_rows(path)


def catalogue_sha256(path: Path) -> str:
    """sha256 of a catalogue file, or of a folder's files (their relative paths and contents, in order)."""
    path = Path(path)
    if not path.is_dir():
        return sha256_of(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_of(f)}\n".encode())
    return h.hexdigest()


class _MediaResolver:
    """A row's `image` / `audio` value -> a file the sharder reads, or why it is unusable.

    A path string resolves against the catalogue's folder; embedded bytes (a `datasets` Image / Audio
    value, or a plain binary cell) are written to `media_dir`, created on first use.
    """

    def __init__(self, base: Path, media_dir: Path | None):
        self.base, self.media_dir = base, media_dir

    def __call__(self, number: int, modality: str, value: Any) -> tuple[Path | None, str | None]:
        if isinstance(value, dict) and {"bytes", "path"} >= value.keys():
            value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
            if value is None:
                return None, f"{modality} has neither bytes nor a path"
        if isinstance(value, (bytes, bytearray)):
            return self._stage(number, modality, bytes(value)), None
        if not isinstance(value, str) or not value.strip():
            return None, f"{modality} path must be a non-empty string"
        if not is_valid_unicode(value):
            return None, f"{modality} path is not valid UTF-8"
        if "://" in value:
            return None, f"{modality} must be a local path, got a URL: {value}"
        p = Path(value)
        return (p if p.is_absolute() else self.base / p), None

    def _stage(self, number: int, modality: str, data: bytes) -> Path:
        if self.media_dir is None:
            raise ValueError("the catalogue embeds media bytes: pass media_dir, a folder to write them to")
        self.media_dir.mkdir(parents=True, exist_ok=True)
        path = self.media_dir / f"row{number:09d}.{modality}"  # decoded by content: no extension needed
        path.write_bytes(data)
        return path


def parse_items(
    path: Path, text_template: str | None = None, media_dir: Path | None = None
) -> tuple[list[ItemRecord], list[QuarantineEntry], int]:
    """Parse every line (or row) of a catalogue: items.jsonl, items.parquet or a Hugging Face datasets folder.

    Args:
        path: the catalogue; relative media paths resolve against the folder that holds it.
        text_template: if given, the item text is `text_template.format_map(item fields)`
            (e.g. "{title}. Genres: {genres}") instead of the `text` field.
        media_dir: where media embedded as bytes (parquet, datasets) are written for the sharder;
            the caller removes it once the shards are written.

    Returns:
        (records in file order, quarantine entries, number of non-blank lines or rows)

    Raises:
        ValueError: the catalogue as a whole cannot be read (unreadable parquet, not a datasets
            folder, a missing optional dependency).
    """
    source = path.name
    media = _MediaResolver(path.parent, media_dir)
    records: list[ItemRecord] = []
    entries: list[QuarantineEntry] = []
    first_line_of: dict[str, int] = {}
    n_lines = 0

    def reject(line: int, reason: str, item_id: str | None = None) -> None:
        entries.append(QuarantineEntry(Q_ITEM, source, line, reason, item_id=item_id))

    def drop(line: int, item_id: str, modality: str, reason: str) -> None:
        entries.append(QuarantineEntry(Q_MODALITY, source, line, reason, item_id=item_id, modality=modality))

    for number, obj, error in catalogue_rows(path):
        n_lines += 1
        if error is not None:
            reject(number, error)
            continue
        if not isinstance(obj, dict):
            reject(number, f"line is a JSON {type(obj).__name__}, expected an object")
            continue

        item_id = obj.get("item_id")
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)  # numeric ids are common (MovieLens); they are strings from here on
        if not isinstance(item_id, str) or not item_id.strip():
            reject(number, "missing or empty item_id (a non-empty string is required)")
            continue
        if not is_valid_unicode(item_id):
            reject(number, "item_id is not valid UTF-8")
            continue
        if item_id in first_line_of:
            reject(number, f"duplicate item_id (first seen on line {first_line_of[item_id]})", item_id)
            continue

        try:
            attributes = row_attributes(obj.get("attributes"))
        except ValueError as e:
            reject(number, str(e), item_id)
            continue
        first_line_of[item_id] = number

        # text
        if text_template is not None:
            text = text_template.format_map(_TemplateFields(obj)).strip()
        else:
            text = obj.get("text")
        if text is not None and (problem := text_problem(text)) is not None:
            drop(number, item_id, "text", problem)
            text = None

        paths: dict[str, Path | None] = {}
        for modality in ("image", "audio"):
            value = obj.get(modality)
            paths[modality] = None
            if value is None:
                continue  # absent modality: nothing to record
            paths[modality], reason = media(number, modality, value)
            if reason is not None:
                drop(number, item_id, modality, reason)

        metadata = {k: c for k, v in obj.items() if k not in _RESERVED and (c := _clean_metadata(v)) is not _BINARY}
        records.append(
            ItemRecord(number, item_id, text, paths["image"], paths["audio"], attributes, metadata)
        )
    return records, entries, n_lines
