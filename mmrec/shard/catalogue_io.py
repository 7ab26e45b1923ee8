"""Write a catalogue in the docs/design.md input format: `items.jsonl` + `interactions.csv`.

The `datasets/` recipes (MovieLens, FSDD) and the synthetic demo turn their sources into these two
files and then shard them (`mmrec.shard.options` declares the sharder's options for them). The writers here do no validation beyond what catches a recipe
bug early: rejecting bad rows, with a reason, is the sharder's job (it writes `quarantine.jsonl`).
Only the standard library is used, so a recipe runs before any heavy import.

Example:
    n_items = write_items_jsonl(out / "items.jsonl", [{"item_id": "1", "text": "Toy Story (1995)"}])
    n_rows = write_interactions_csv(out / "interactions.csv", [("7", "1", 4.0, 964982703)])
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmrec.data.schema import INTERACTION_COLUMNS
from mmrec.files import replace_with, temp_sibling


def write_items_jsonl(path: str | os.PathLike, items: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line, keys in the order given (`item_id` first reads best).

    The file appears only once complete (written to a temporary name, then renamed), so an
    interrupted recipe never leaves a truncated catalogue that looks valid.

    Args:
        path: Output file; parent folders are created.
        items: Mappings with a string `item_id` and any of `text`, `image`, `audio`,
            `attributes` and metadata fields.

    Returns:
        The number of lines written.

    Raises:
        ValueError: An item has no string `item_id` (a bug in the recipe, not in the data).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, ".partial")
    count = 0
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for item in items:
            item_id = item.get("item_id")
            if not isinstance(item_id, str) or not item_id:
                raise ValueError(
                    f"item #{count + 1} has item_id {item_id!r}; every item needs a non-empty string "
                    "item_id (convert numeric ids with str())"
                )
            # ensure_ascii=False keeps titles such as "Amélie" readable in the file.
            f.write(json.dumps(dict(item), ensure_ascii=False) + "\n")
            count += 1
    replace_with(tmp, path)
    return count


def write_interactions_csv(
    path: str | os.PathLike,
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str] = INTERACTION_COLUMNS,
) -> int:
    """Write interaction rows under a `user_id,item_id,rating,timestamp` header.

    Values are written as they are (`str()`), so ratings read from a source file as strings keep
    their exact spelling; `None` becomes an empty cell (rating or timestamp unknown).

    Args:
        path: Output file; parent folders are created.
        rows: One sequence per interaction, aligned with `columns`.
        columns: Header; pass `(*INTERACTION_COLUMNS, "split")` for the `given` split protocol.

    Returns:
        The number of data rows written (the header not counted).

    Raises:
        ValueError: A row's length differs from the header's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, ".partial")
    count = 0
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(
                    f"interaction row #{count + 1} has {len(row)} values {list(row)!r}; "
                    f"expected {len(columns)}: {list(columns)}"
                )
            writer.writerow(["" if v is None else v for v in row])
            count += 1
    replace_with(tmp, path)
    return count
