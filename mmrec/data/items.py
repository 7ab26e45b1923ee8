"""Parse and validate `items.jsonl` (docs/design.md "Catalogue input") line by line.

Parsing is cheap and runs in the main process; decoding media (the expensive part) is done later,
per record, in worker processes (`mmrec.data.media`).

Policy (also in the README): a line that is not a JSON object, lacks a usable `item_id`, repeats an
earlier `item_id` (the first one wins) or has malformed `attributes` is rejected as a whole; a bad
modality (invalid UTF-8 text, empty text, a path that is not a string) is dropped and recorded, and
the item stays as long as at least one modality is left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mmrec.data.quarantine import QuarantineEntry
from mmrec.data.schema import MODALITIES, Q_ITEM, Q_MODALITY

# Keys with a meaning of their own; everything else on a line is kept as metadata.
_RESERVED = ("item_id", *MODALITIES, "attributes")


@dataclass
class ItemRecord:
    """One parsed items.jsonl line whose media have not been decoded yet."""

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


def _clean_metadata(value: Any) -> Any:
    """Metadata is kept as is, except that invalid Unicode is replaced so it can be written."""
    if isinstance(value, str):
        return value if is_valid_unicode(value) else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_clean_metadata(v) for v in value]
    if isinstance(value, dict):
        return {_clean_metadata(k): _clean_metadata(v) for k, v in value.items()}
    return value


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


def parse_items(
    path: Path, text_template: str | None = None
) -> tuple[list[ItemRecord], list[QuarantineEntry], int]:
    """Parse every line of an items.jsonl file.

    Args:
        path: the items.jsonl file; relative media paths resolve against its folder.
        text_template: if given, the item text is `text_template.format_map(item fields)`
            (e.g. "{title}. Genres: {genres}") instead of the `text` field.

    Returns:
        (records in file order, quarantine entries, number of non-blank lines)
    """
    source = path.name
    base = path.parent
    records: list[ItemRecord] = []
    entries: list[QuarantineEntry] = []
    first_line_of: dict[str, int] = {}
    n_lines = 0

    def reject(line: int, reason: str, item_id: str | None = None) -> None:
        entries.append(QuarantineEntry(Q_ITEM, source, line, reason, item_id=item_id))

    def drop(line: int, item_id: str, modality: str, reason: str) -> None:
        entries.append(QuarantineEntry(Q_MODALITY, source, line, reason, item_id=item_id, modality=modality))

    for number, line in read_item_lines(path):
        n_lines += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            reject(number, f"invalid JSON: {e.msg} at column {e.colno}")
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

        attributes = obj.get("attributes", [])
        if attributes is None:
            attributes = []
        if isinstance(attributes, str):
            attributes = [attributes]
        if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
            reject(number, "attributes must be a list of strings", item_id)
            continue
        attributes = [_clean_metadata(a).strip() for a in attributes if a.strip()]
        first_line_of[item_id] = number

        # text
        if text_template is not None:
            text = text_template.format_map(_TemplateFields(obj)).strip()
        else:
            text = obj.get("text")
        if text is not None and not isinstance(text, str):
            drop(number, item_id, "text", f"text must be a string, got {type(text).__name__}")
            text = None
        elif text is not None and not is_valid_unicode(text):
            drop(number, item_id, "text", "text is not valid UTF-8")
            text = None
        elif text is not None and not text.strip():
            drop(number, item_id, "text", "text is empty")
            text = None

        paths: dict[str, Path | None] = {}
        for modality in ("image", "audio"):
            value = obj.get(modality)
            paths[modality] = None
            if value is None:
                continue  # absent modality: nothing to record
            if not isinstance(value, str) or not value.strip():
                drop(number, item_id, modality, f"{modality} path must be a non-empty string")
            elif not is_valid_unicode(value):
                drop(number, item_id, modality, f"{modality} path is not valid UTF-8")
            elif "://" in value:
                drop(number, item_id, modality, f"{modality} must be a local path, got a URL: {value}")
            else:
                p = Path(value)
                paths[modality] = p if p.is_absolute() else base / p

        metadata = {k: _clean_metadata(v) for k, v in obj.items() if k not in _RESERVED}
        records.append(
            ItemRecord(number, item_id, text, paths["image"], paths["audio"], attributes, metadata)
        )
    return records, entries, n_lines
