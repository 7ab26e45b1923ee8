"""The id vocabulary a run is trained with, fixed when training starts and stored in the run folder.

Item index = row of DATA/item_ids.json (every catalogue item, rated or not); user index = position
in the sorted list of users with training interactions; the attribute order is the manifest's.
Users who appear only in valid/test are unknown to the model (index -1: its zero "unknown user" row).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mmrec.data import remote
from mmrec.data.reader import load_manifest
from mmrec.data.schema import INTERACTIONS_DIR, ITEM_IDS
from mmrec.files import atomic_write_text

VOCAB_FILE = "vocabulary.json"


@dataclass
class RunVocabulary:
    """The ids a model was trained with."""

    item_ids: list[str]  # item index -> item_id (DATA/item_ids.json)
    user_ids: list[str]  # user index -> user_id (users with training interactions, sorted)
    attributes: list[str]  # attribute head order (the manifest's vocabulary)

    @classmethod
    def from_data(cls, data_dir: str | Path) -> "RunVocabulary":
        data_dir = remote.as_location(data_dir)  # a local folder or a URL
        manifest = load_manifest(data_dir)
        item_ids = json.loads(remote.read_bytes(data_dir, ITEM_IDS))
        train = f"{INTERACTIONS_DIR}/train.csv"
        if not remote.exists(data_dir, train):
            raise ValueError(f"{data_dir} has no {train}; it is not a complete `mmrec shard` output")
        with remote.open_data(data_dir, train, "r") as f:
            users = {row["user_id"] for row in csv.DictReader(f)}
        if not users:
            raise ValueError(f"{data_dir}: the train split is empty; nothing to train on")
        return cls(item_ids, sorted(users), list(manifest["attributes"]))

    def save(self, run_dir: str | Path) -> None:
        atomic_write_text(Path(run_dir) / VOCAB_FILE, json.dumps(asdict(self), ensure_ascii=False))

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunVocabulary":
        data = json.loads((Path(run_dir) / VOCAB_FILE).read_text(encoding="utf-8"))
        data.pop("global_mean", None)  # runs before 0.2 kept mu here too; the model holds it
        return cls(**data)

    def item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}
