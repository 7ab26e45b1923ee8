"""Quarantine entries: every input row that was not written, or modality that was dropped, with why.

Counts must reconcile (non-blank items.jsonl lines = items written + `item` entries; interaction rows
= split rows + `interaction` entries), so nothing is ever dropped without one of these.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from mmrec.data.schema import Q_INTERACTION, Q_ITEM, Q_MODALITY


@dataclass(frozen=True)
class QuarantineEntry:
    """One rejected row (or one dropped modality of a written item)."""

    kind: str  # "item", "modality" or "interaction"
    source: str  # the input file's name
    line: int  # 1-based line of the row in `source` (1-based row number for parquet)
    reason: str
    item_id: str | None = None
    user_id: str | None = None
    modality: str | None = None  # for kind == "modality"

    def __post_init__(self) -> None:
        if self.kind not in (Q_ITEM, Q_MODALITY, Q_INTERACTION):
            raise ValueError(f"unknown quarantine kind {self.kind!r}")

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, ensure_ascii=False)


def write_quarantine(path: Path, entries: Iterable[QuarantineEntry]) -> int:
    """Write entries as JSON lines; returns how many were written."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for entry in entries:
            f.write(entry.to_json() + "\n")
            n += 1
    return n


def read_quarantine(path: Path) -> list[dict]:
    """Read a quarantine.jsonl back as dicts."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_reasons(entries: Iterable[QuarantineEntry], top: int = 10) -> list[tuple[str, str, int]]:
    """Most frequent (kind, reason family) pairs; the family is the reason up to its first ':' or '('."""
    counts: Counter[tuple[str, str]] = Counter()
    for e in entries:
        family = e.reason.split(":")[0].split("(")[0].strip()
        counts[(e.kind if e.modality is None else f"{e.kind}/{e.modality}", family)] += 1
    return [(kind, reason, n) for (kind, reason), n in counts.most_common(top)]
