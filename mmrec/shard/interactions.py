"""Read and validate the interaction log (`interactions.csv` or `.parquet`).

Header `user_id,item_id,rating,timestamp` (docs/design.md); `rating` is optional (implicit feedback =
1.0), `timestamp` is optional (the temporal split needs it), and a `split` column feeds the `given`
protocol. Every row either survives or becomes a quarantine entry with its reason.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mmrec.data.schema import Q_INTERACTION
from mmrec.shard.items import is_valid_unicode
from mmrec.shard.quarantine import QuarantineEntry

_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}
COLUMNS = ("user_id", "item_id", "rating", "timestamp", "split")
# Above this magnitude a value is no rating on any scale (and its square overflows float32 in the loss);
# `rating_range` sets the plausible range explicitly.
MAX_ABS_RATING = 1e6


def _canonical_columns(path: Path, columns: list[str]) -> list[str]:
    """Header names matched case-insensitively to COLUMNS (others kept as they are, and refused by
    `read_interactions`); a repeated column is an error."""
    out = []
    for name in columns:
        canonical = name.strip().lower() if name.strip().lower() in COLUMNS else name
        if canonical in out:
            raise ValueError(f"{path}: column {canonical!r} appears twice in the header {columns}")
        out.append(canonical)
    return out


@dataclass
class Interaction:
    """One valid interaction row."""

    line: int  # 1-based line in the source file (row number for parquet)
    user_id: str
    item_id: str
    rating: float
    timestamp: float | None = None
    split: str | None = None  # only for the `given` protocol


@dataclass
class InteractionLog:
    """The rows that passed validation, what was rejected, and how many rows were read."""

    rows: list[Interaction]
    quarantine: list[QuarantineEntry]
    n_rows: int
    has_rating: bool
    has_timestamp: bool
    has_split: bool


def _read_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, Mapping[str, str] | None, str | None]]]:
    """Return (columns, iterator of (line, row or None, error)) for CSV or parquet input."""
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ValueError("reading .parquet needs pyarrow: pip install 'mmrec[parquet]'") from e
        table = pq.read_table(path)
        table = table.rename_columns(_canonical_columns(path, table.column_names))
        columns = table.column_names

        def parquet_rows():
            for number, row in enumerate(table.to_pylist(), start=1):
                yield number, {k: "" if v is None else str(v) for k, v in row.items()}, None

        return columns, parquet_rows()

    f = open(path, newline="", encoding="utf-8", errors="surrogateescape")
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        f.close()
        raise ValueError(f"{path} is empty: expected a header line user_id,item_id[,rating][,timestamp]") from None
    columns = _canonical_columns(path, [c.strip().lstrip("\ufeff") for c in header])

    def csv_rows():
        with f:
            start = reader.line_num + 1
            for fields in reader:
                number, start = start, reader.line_num + 1
                if not fields or all(not x.strip() for x in fields):
                    continue  # a blank line is not a row
                if len(fields) != len(columns):
                    yield number, None, f"expected {len(columns)} fields, got {len(fields)}"
                else:
                    yield number, dict(zip(columns, fields)), None

    return columns, csv_rows()


def parse_timestamp(value: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 date (naive dates are taken as UTC)."""
    try:
        t = float(value)
    except ValueError:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    if not math.isfinite(t):
        raise ValueError("not finite")
    return t


def read_interactions(path: Path, known_items: set[str], rejected_items: Mapping[str, int] | None = None,
                      rating_range: tuple[float, float] | None = None) -> InteractionLog:
    """Read, validate and deduplicate an interaction log.

    Args:
        path: interactions.csv or .parquet.
        known_items: the item_ids that were written to the shards.
        rejected_items: item_id -> items.jsonl line, for items that were quarantined (better reasons).
        rating_range: (low, high): ratings outside it are quarantined (None: only non-finite ratings and
            ratings beyond +-MAX_ABS_RATING are).

    Duplicates (same user and item) keep the latest row (largest timestamp, then the later line);
    the others are quarantined.
    """
    columns, rows = _read_rows(path)
    missing = [c for c in ("user_id", "item_id") if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header must contain user_id,item_id "
                         f"and optionally rating,timestamp,split (found {columns})")
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:  # a misspelt `rating` would otherwise turn every rating into implicit feedback
        raise ValueError(f"{path}: unknown column {unknown[0]!r}; the header takes {list(COLUMNS)} "
                         "(matched case-insensitively)")
    has_rating, has_ts, has_split = "rating" in columns, "timestamp" in columns, "split" in columns
    rejected_items = rejected_items or {}
    source = path.name
    quarantine: list[QuarantineEntry] = []
    kept: dict[tuple[str, str], Interaction] = {}
    n_rows = 0

    def reject(line: int, reason: str, user_id: str | None = None, item_id: str | None = None) -> None:
        quarantine.append(QuarantineEntry(Q_INTERACTION, source, line, reason, item_id=item_id, user_id=user_id))

    for number, row, error in rows:
        n_rows += 1
        if row is None:
            reject(number, f"malformed row: {error}")
            continue
        user_id, item_id = row["user_id"].strip(), row["item_id"].strip()
        if not user_id or not item_id:
            reject(number, "empty user_id or item_id", user_id or None, item_id or None)
            continue
        if not is_valid_unicode(user_id + item_id):
            reject(number, "user_id or item_id is not valid UTF-8 text")
            continue
        if item_id not in known_items:
            why = (f"item_id was quarantined (items.jsonl line {rejected_items[item_id]})"
                   if item_id in rejected_items else "unknown item_id (not in items.jsonl)")
            reject(number, why, user_id, item_id)
            continue
        rating = 1.0
        if has_rating:
            text = row["rating"].strip()
            try:
                rating = float(text)
            except ValueError:
                reject(number, f"rating {text!r} is not a number", user_id, item_id)
                continue
            if not math.isfinite(rating):
                reject(number, f"rating {text!r} is not a finite number", user_id, item_id)
                continue
            if rating_range is not None and not rating_range[0] <= rating <= rating_range[1]:
                reject(number, f"rating {text!r} is outside the rating range {list(rating_range)}", user_id, item_id)
                continue
            if rating_range is None and abs(rating) > MAX_ABS_RATING:
                reject(number, f"rating {text!r} is implausible (|rating| > {MAX_ABS_RATING:g}; set "
                               "--rating-range for another scale)", user_id, item_id)
                continue
        timestamp = None
        if has_ts and row["timestamp"].strip():
            try:
                timestamp = parse_timestamp(row["timestamp"])
            except ValueError:
                reject(number, f"timestamp {row['timestamp']!r} is neither a number nor an ISO 8601 date",
                       user_id, item_id)
                continue
        split = None
        if has_split:
            split = _SPLIT_ALIASES.get(row["split"].strip().lower())
            if split is None:
                reject(number, f"split {row['split']!r} is not one of train, valid, test", user_id, item_id)
                continue

        new = Interaction(number, user_id, item_id, rating, timestamp, split)
        old = kept.get((user_id, item_id))
        if old is not None:
            # keep the latest: larger timestamp wins, then the later line
            older, newer = sorted((old, new), key=lambda r: (-math.inf if r.timestamp is None else r.timestamp, r.line))
            reject(older.line, f"duplicate (user, item): the latest row, line {newer.line}, is kept", user_id, item_id)
            new = newer
        kept[(user_id, item_id)] = new

    rows_out = sorted(kept.values(), key=lambda r: r.line)
    return InteractionLog(rows_out, sorted(quarantine, key=lambda e: e.line), n_rows, has_rating, has_ts, has_split)
