"""The id vocabulary a run is trained with, fixed when training starts and stored in the run folder.

Item index = row of DATA/item_ids.json (every catalogue item, rated or not); user index = position
in the sorted list of users with training interactions; the attribute order is the manifest's.
Users who appear only in valid/test are unknown to the model (index -1: its zero "unknown user" row).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mmrec.data.dataset import Dataset, index_of, split_file
from mmrec.files import atomic_write_text

VOCAB_FILE = "vocabulary.json"


@dataclass
class RunVocabulary:
    """The ids a model was trained with."""

    item_ids: list[str]  # item index -> item_id (DATA/item_ids.json)
    user_ids: list[str]  # user index -> user_id (users with training interactions, sorted)
    attributes: list[str]  # attribute head order (the manifest's vocabulary)

    @classmethod
    def from_data(cls, data: Dataset | str | Path) -> RunVocabulary:
        """The vocabulary of a dataset (a `Dataset`, or its folder or URL) that training starts from."""
        data = Dataset.of(data)
        manifest, item_ids = data.manifest, data.item_ids
        if data.missing_splits(["train"]):
            raise ValueError(f"{data.location} has no {split_file('train')}; it is not a complete `mmrec shard` output")
        users = data.training_users()
        if not users:
            raise ValueError(f"{data.location}: the train split is empty; nothing to train on")
        return cls(list(item_ids), users, list(manifest["attributes"]))

    def save(self, run_dir: str | Path) -> None:
        atomic_write_text(Path(run_dir) / VOCAB_FILE, json.dumps(asdict(self), ensure_ascii=False))

    @classmethod
    def load(cls, run_dir: str | Path) -> RunVocabulary:
        data = json.loads((Path(run_dir) / VOCAB_FILE).read_text(encoding="utf-8"))
        data.pop("global_mean", None)  # runs before 0.2 kept mu here too; the model holds it
        return cls(**data)

    def item_index(self) -> dict[str, int]:
        return index_of(self.item_ids)

    def user_index(self) -> dict[str, int]:
        return index_of(self.user_ids)
