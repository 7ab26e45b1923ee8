"""Leakage-safe split protocols for the interaction log (docs/design.md "Split protocols").

Every protocol is a pure function of the (deduplicated) rows, the seed and its parameters, so the
same inputs always give byte-identical split files. A (user, item) pair can only land in one split
because duplicates are removed before splitting.

- random:     per user, shuffle and cut train/valid/test by `ratios` (at least one train row per user)
- temporal:   per user by time, leave-last-out: the latest timestamp -> test, the one before -> valid;
              rows that share the boundary timestamp go together, so test is strictly after train
- ratio:      one global shuffle cut by `ratios` (e.g. 0.9/0/0.1 for rating RMSE)
- cold-items: `cold_fraction` of the rated items is held out with all its rows: half of those items
              to valid, half to test; no row of a cold item is ever in train. With `warm_holdout`,
              a per-user random share of the warm rows is held out too (warm and cold tracks)
- cold-users: `cold_fraction` of the users with more than `given` rows is held out entirely (half to
              valid, half to test); each held-out user's first `given` rows by time (a seeded random
              order where a row has no timestamp) are their history (`valid_history` / `test_history`
              files), the rest is to be found. No row of a held-out user is ever in train
- given:      the input's own `split` column
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from mmrec.data.schema import HISTORY_SPLITS, SPLIT_PROTOCOLS, SPLITS
from mmrec.shard.interactions import Interaction


@dataclass
class SplitConfig:
    """How to split the interaction log; written into the manifest."""

    protocol: str = "random"  # one of SPLIT_PROTOCOLS
    seed: int = 0  # every random choice derives from it
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/valid/test, for random and ratio
    cold_fraction: float = 0.2  # cold-items: fraction of rated items held out entirely; cold-users: of users
    warm_holdout: float = 0.0  # cold-items: per user, also hold out this fraction of warm rows (half valid,
    #                            half test), so one split measures warm and cold items (0: cold only)
    given: int = 5  # cold-users: interactions of each held-out user given as history (the first by time)

    def __post_init__(self) -> None:
        if self.protocol not in SPLIT_PROTOCOLS:
            raise ValueError(f"unknown split protocol {self.protocol!r}; expected one of {list(SPLIT_PROTOCOLS)}")
        self.ratios = tuple(float(r) for r in self.ratios)
        if len(self.ratios) != 3 or min(self.ratios) < 0 or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be three non-negative numbers summing to 1 (train,valid,test), got {self.ratios}")
        if not 0.0 < self.cold_fraction < 1.0:
            raise ValueError(f"cold_fraction must be in (0, 1), got {self.cold_fraction}")
        if not 0.0 <= self.warm_holdout < 1.0:
            raise ValueError(f"warm_holdout must be in [0, 1), got {self.warm_holdout}")
        if self.given < 1:
            raise ValueError(f"given must be >= 1 (interactions given per held-out user), got {self.given}")

    def to_dict(self) -> dict:
        """The protocol, its seed and only the parameters that protocol uses."""
        d = {"protocol": self.protocol, "seed": self.seed}
        if self.protocol in ("random", "ratio"):
            d["ratios"] = list(self.ratios)
        if self.protocol == "cold-items":
            d["cold_fraction"] = self.cold_fraction
            if self.warm_holdout:
                d["warm_holdout"] = self.warm_holdout
        if self.protocol == "cold-users":
            d["cold_fraction"], d["given"] = self.cold_fraction, self.given
        return d


@dataclass
class SplitResult:
    """Rows per split (each in input-line order) and protocol details for the manifest."""

    splits: dict[str, list[Interaction]]
    details: dict = field(default_factory=dict)  # e.g. the cold items per split


def _by_user(rows: list[Interaction]) -> dict[str, list[Interaction]]:
    users: dict[str, list[Interaction]] = defaultdict(list)
    for r in rows:
        users[r.user_id].append(r)
    return users


def _cut_sizes(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, valid, test) sizes for n rows; a user keeps at least one train row."""
    n_test = int(n * ratios[2] + 0.5)
    n_valid = int(n * ratios[1] + 0.5)
    while n - n_valid - n_test < 1 and (n_valid or n_test):
        if n_valid >= n_test and n_valid:
            n_valid -= 1
        else:
            n_test -= 1
    return n - n_valid - n_test, n_valid, n_test


def _assign(parts: dict[str, list[Interaction]]) -> dict[str, list[Interaction]]:
    return {name: sorted(parts.get(name, []), key=lambda r: r.line) for name in SPLITS}


def split_random(rows: list[Interaction], cfg: SplitConfig) -> SplitResult:
    rng = np.random.default_rng(cfg.seed)
    parts: dict[str, list[Interaction]] = defaultdict(list)
    for user in sorted(users := _by_user(rows)):
        user_rows = users[user]
        order = rng.permutation(len(user_rows))
        n_train, n_valid, _ = _cut_sizes(len(user_rows), cfg.ratios)
        for rank, i in enumerate(order):
            name = "train" if rank < n_train else "valid" if rank < n_train + n_valid else "test"
            parts[name].append(user_rows[i])
    return SplitResult(_assign(parts))


def split_ratio(rows: list[Interaction], cfg: SplitConfig) -> SplitResult:
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(rows))
    n_train, n_valid, _ = _cut_sizes(len(rows), cfg.ratios)
    parts = {
        "train": [rows[i] for i in order[:n_train]],
        "valid": [rows[i] for i in order[n_train : n_train + n_valid]],
        "test": [rows[i] for i in order[n_train + n_valid :]],
    }
    return SplitResult(_assign(parts))


def split_temporal(rows: list[Interaction], cfg: SplitConfig) -> SplitResult:
    if any(r.timestamp is None for r in rows):
        raise ValueError("the temporal split needs a timestamp on every row")
    parts: dict[str, list[Interaction]] = defaultdict(list)
    for user_rows in _by_user(rows).values():
        times = sorted({r.timestamp for r in user_rows})
        # With one distinct time there is no "later" to hold out; with two, only a test row.
        test_t = times[-1] if len(times) >= 2 else None
        valid_t = times[-2] if len(times) >= 3 else None
        for r in user_rows:
            name = "test" if r.timestamp == test_t else "valid" if r.timestamp == valid_t else "train"
            parts[name].append(r)
    return SplitResult(_assign(parts), {"tie_policy": "rows sharing the held-out timestamp are held out together"})


def split_cold_items(rows: list[Interaction], cfg: SplitConfig) -> SplitResult:
    rng = np.random.default_rng(cfg.seed)
    items = sorted({r.item_id for r in rows})
    n_cold = max(2, int(round(len(items) * cfg.cold_fraction))) if len(items) >= 3 else 0
    cold = [items[i] for i in rng.permutation(len(items))[:n_cold]]
    valid_items, test_items = set(cold[: n_cold // 2]), set(cold[n_cold // 2 :])
    parts: dict[str, list[Interaction]] = defaultdict(list)
    warm_rows = []
    for r in rows:
        name = "valid" if r.item_id in valid_items else "test" if r.item_id in test_items else "train"
        (warm_rows if name == "train" else parts[name]).append(r)
    if cfg.warm_holdout:
        w = cfg.warm_holdout
        warm = split_random(warm_rows, SplitConfig("random", cfg.seed, (1 - w, w / 2, w / 2))).splits
        for name in SPLITS:
            parts[name] += warm[name]
    else:
        parts["train"] += warm_rows
    details = {"cold_items": {"valid": sorted(valid_items), "test": sorted(test_items)}}
    return SplitResult(_assign(parts), details)


def split_cold_users(rows: list[Interaction], cfg: SplitConfig) -> SplitResult:
    rng = np.random.default_rng(cfg.seed)
    users = _by_user(rows)
    # only a user with more than `given` rows has something left to find once the history is given
    eligible = sorted(u for u, r in users.items() if len(r) > cfg.given)
    n_cold = int(round(len(users) * cfg.cold_fraction))
    if n_cold < 2 or len(eligible) < n_cold:
        raise ValueError(f"the cold-users split holds out {cfg.cold_fraction:.0%} of {len(users)} users = {n_cold}; "
                         f"{len(eligible)} users have more than given={cfg.given} interactions and at least 2 are "
                         "needed: lower --given or raise --cold-fraction")
    cold = [eligible[i] for i in rng.permutation(len(eligible))[:n_cold]]
    held = {"valid": sorted(cold[: n_cold // 2]), "test": sorted(cold[n_cold // 2 :])}
    timed = all(r.timestamp is not None for r in rows)
    parts: dict[str, list[Interaction]] = defaultdict(list)
    for name, held_users in held.items():
        for user in held_users:
            user_rows = users[user]
            if timed:  # the first interactions in time; ties in file order
                ordered = sorted(user_rows, key=lambda r: (r.timestamp, r.line))
            else:
                ordered = [user_rows[i] for i in rng.permutation(len(user_rows))]
            parts[HISTORY_SPLITS[name]] += ordered[: cfg.given]
            parts[name] += ordered[cfg.given :]
    cold_set = set(cold)
    parts["train"] = [r for r in rows if r.user_id not in cold_set]
    splits = {name: sorted(parts.get(name, []), key=lambda r: r.line) for name in (*SPLITS, *HISTORY_SPLITS.values())}
    details = {"cold_users": held, "history_order": "timestamp" if timed else "random (rows without a timestamp)"}
    return SplitResult(splits, details)


def split_given(rows: list[Interaction], cfg: SplitConfig) -> SplitResult:
    if any(r.split is None for r in rows):
        raise ValueError("the given split needs a `split` column (train/valid/test) in the interactions file")
    parts: dict[str, list[Interaction]] = defaultdict(list)
    for r in rows:
        parts[r.split].append(r)
    return SplitResult(_assign(parts))


_PROTOCOLS = {
    "random": split_random,
    "temporal": split_temporal,
    "ratio": split_ratio,
    "cold-items": split_cold_items,
    "cold-users": split_cold_users,
    "given": split_given,
}


def split_interactions(rows: list[Interaction], cfg: SplitConfig) -> SplitResult:
    """Split deduplicated rows by `cfg.protocol`."""
    return _PROTOCOLS[cfg.protocol](rows, cfg)
