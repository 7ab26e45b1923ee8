"""The dataset's split files as index arrays in a run's vocabulary: a view of a `Dataset` (which parses and
checks each file once) through a `RunVocabulary`.

    splits = RunSplits(Dataset(data_dir), vocab)   # or RunSplits(data_dir, vocab)
    splits["train"].items  # (R,) item indices of every training row

Everything downstream (training validation, `mmrec eval`, the baselines, `benchmarks/`) takes these
arrays, never a folder to re-read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmrec.data.dataset import Dataset, SplitRows, index_of
from mmrec.data.schema import HISTORY_SPLITS, INTERACTIONS_DIR, SPLITS
from mmrec.data.vocabulary import RunVocabulary


@dataclass
class SplitArrays:
    """One split file as index arrays (user -1 = not in the training vocabulary)."""

    users: np.ndarray  # (R,) int64
    items: np.ndarray  # (R,) int64
    ratings: np.ndarray  # (R,) float32
    timestamps: np.ndarray | None = None  # (R,) float64, NaN where a row has none; rows are in file order

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, keep: np.ndarray) -> SplitArrays:
        """The rows where the boolean mask `keep` is True."""
        times = None if self.timestamps is None else self.timestamps[keep]
        return SplitArrays(self.users[keep], self.items[keep], self.ratings[keep], times)

    @classmethod
    def of(cls, rows: SplitRows, items_of: dict[str, int], users_of: dict[str, int]) -> SplitArrays:
        """A parsed split file's rows in these indices (a user `users_of` lacks: -1). Its own copies of the
        columns: whoever holds them may change them without touching the `Dataset`'s."""
        return cls(rows.users_in(users_of), rows.items_in(items_of), rows.ratings.copy(), rows.timestamps.copy())


@dataclass
class HeldOutUsers:
    """The users a cold-users split held out of one split, indexed 0..C-1 in `user_ids` order."""

    user_ids: list[str]
    history: SplitArrays  # the interactions given (users: 0..C-1)
    held: SplitArrays  # the interactions to find (users: 0..C-1)


def read_split(data: Dataset | str | Path, split: str, vocab: RunVocabulary,
               users_of: dict[str, int] | None = None) -> SplitArrays:
    """DATA/interactions/{split}.csv as index arrays (users by `users_of`, default the vocabulary's)."""
    users_of = vocab.user_index() if users_of is None else users_of
    return SplitArrays.of(Dataset.of(data).split(split), vocab.item_index(), users_of)


class RunSplits:
    """train / valid / test of one dataset in a run's vocabulary, each mapped on first use and kept."""

    def __init__(self, data: Dataset | str | Path, vocab: RunVocabulary):
        self.dataset, self.vocab = Dataset.of(data), vocab
        self.data_dir = self.dataset.location  # a local folder or a URL
        self._parsed: dict[str, SplitArrays] = {}
        self._manifest = self.dataset.manifest
        missing = self.dataset.missing_splits(SPLITS)
        if missing:  # found now, not after an epoch of training
            raise ValueError(f"{self.data_dir} lacks the split file(s) {[f'{s}.csv' for s in missing]} in "
                             f"{INTERACTIONS_DIR}/; it is not a complete `mmrec shard` output")

    def __getitem__(self, split: str) -> SplitArrays:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        if split not in self._parsed:
            self._parsed[split] = read_split(self.dataset, split, self.vocab)
        return self._parsed[split]

    @property
    def cold_users_split(self) -> bool:
        """A cold-users split: valid / test users are held out of training, with some history given."""
        return self._manifest["split"]["protocol"] == "cold-users"

    def held_out_users(self, split: str) -> HeldOutUsers:
        """The held-out users of `split` ("valid" / "test") of a cold-users split, with their given history."""
        if not self.cold_users_split:
            raise ValueError(f"{self.data_dir} is not a cold-users split (protocol "
                             f"{self._manifest['split']['protocol']!r}): its users have no given history")
        user_ids = list(self._manifest["split"]["cold_users"][split])
        users_of = index_of(user_ids)
        return HeldOutUsers(user_ids, read_split(self.dataset, HISTORY_SPLITS[split], self.vocab, users_of),
                            read_split(self.dataset, split, self.vocab, users_of))

    @property
    def num_users(self) -> int:
        return len(self.vocab.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.vocab.item_ids)

    def item_popularity(self) -> np.ndarray:
        """(N,) training interactions per item."""
        return np.bincount(self["train"].items, minlength=self.num_items)

    def cold_items(self) -> np.ndarray:
        """Indices of the items with no training interaction (the cold-start candidates)."""
        return np.nonzero(self.item_popularity() == 0)[0]

    @property
    def implicit(self) -> bool:
        """Implicit feedback: the log had no rating column, or every training rating is the same value.
        A rating task, and a rating error, then mean nothing: training leaves the rating task off and
        reports carry no RMSE (docs/design.md "Implicit feedback")."""
        has_rating = self._manifest.get("sources", {}).get("interactions", {}).get("has_rating", True)
        ratings = self["train"].ratings
        return not has_rating or (len(ratings) > 0 and bool((ratings == ratings[0]).all()))

    def train_mean_rating(self) -> float:
        """mu: the mean training rating."""
        return float(self["train"].ratings.astype(np.float64).mean())
