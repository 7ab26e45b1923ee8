"""Split protocols: no (user, item) pair in two splits, cold items never in train, temporal held-out
rows strictly after the user's train rows, reproducible from the seed."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from mmrec.shard.interactions import Interaction
from mmrec.shard.protocols import SplitConfig, split_interactions


def make_rows(n_users=30, n_items=50, per_user=(1, 25), seed=0, ties=False):
    rng = np.random.default_rng(seed)
    rows, line = [], 2
    for u in range(n_users):
        k = int(rng.integers(per_user[0], per_user[1] + 1))
        items = rng.choice(n_items, size=min(k, n_items), replace=False)
        t0 = int(rng.integers(0, 10_000))
        for j, i in enumerate(items):
            # with ties, several rows share a timestamp, as in MovieLens batches
            t = t0 + (j // 3 if ties else j) * 60
            rows.append(Interaction(line, f"u{u}", f"i{i}", float(rng.integers(1, 6)), float(t)))
            line += 1
    return rows


def pairs(rows):
    return {(r.user_id, r.item_id) for r in rows}


@pytest.mark.parametrize("protocol", ["random", "temporal", "ratio", "cold-items", "cold-users"])
def test_every_row_in_exactly_one_split(protocol):
    rows = make_rows()
    result = split_interactions(rows, SplitConfig(protocol=protocol, seed=3))
    seen = Counter(r.line for part in result.splits.values() for r in part)
    assert sorted(seen) == sorted(r.line for r in rows) and set(seen.values()) == {1}
    s = result.splits
    assert not pairs(s["train"]) & pairs(s["valid"])
    assert not pairs(s["train"]) & pairs(s["test"])
    assert not pairs(s["valid"]) & pairs(s["test"])


@pytest.mark.parametrize("protocol", ["random", "temporal", "ratio", "cold-items"])
def test_seeded_and_reproducible(protocol):
    rows = make_rows()
    a = split_interactions(rows, SplitConfig(protocol=protocol, seed=1)).splits
    b = split_interactions(rows, SplitConfig(protocol=protocol, seed=1)).splits
    assert {k: [r.line for r in v] for k, v in a.items()} == {k: [r.line for r in v] for k, v in b.items()}
    if protocol != "temporal":  # temporal has no randomness
        c = split_interactions(rows, SplitConfig(protocol=protocol, seed=2)).splits
        assert [r.line for r in a["test"]] != [r.line for r in c["test"]]


def test_random_is_per_user_8_1_1_and_keeps_a_train_row():
    rows = make_rows(n_users=40, per_user=(1, 40))
    s = split_interactions(rows, SplitConfig(protocol="random", seed=0)).splits
    by_user = defaultdict(Counter)
    for name, part in s.items():
        for r in part:
            by_user[r.user_id][name] += 1
    for counts in by_user.values():
        assert counts["train"] >= 1
        n = sum(counts.values())
        if n >= 20:
            assert abs(counts["test"] - 0.1 * n) <= 1 and abs(counts["valid"] - 0.1 * n) <= 1
    one_row_users = {r.user_id for r in rows} - {u for u, c in by_user.items() if sum(c.values()) > 1}
    for u in one_row_users:
        assert by_user[u]["train"] == 1


def test_ratio_is_global_fractions():
    rows = make_rows(n_users=50, per_user=(10, 30))
    s = split_interactions(rows, SplitConfig(protocol="ratio", ratios=(0.9, 0.0, 0.1), seed=0)).splits
    assert len(s["valid"]) == 0
    assert len(s["test"]) == int(len(rows) * 0.1 + 0.5)


@pytest.mark.parametrize("ties", [False, True])
def test_temporal_held_out_strictly_after_train(ties):
    rows = make_rows(ties=ties)
    s = split_interactions(rows, SplitConfig(protocol="temporal")).splits
    last_train = defaultdict(lambda: -np.inf)
    for r in s["train"]:
        last_train[r.user_id] = max(last_train[r.user_id], r.timestamp)
    valid_t = defaultdict(list)
    for r in s["valid"]:
        assert r.timestamp > last_train[r.user_id]
        valid_t[r.user_id].append(r.timestamp)
    for r in s["test"]:
        assert r.timestamp > last_train[r.user_id]
        assert all(r.timestamp > t for t in valid_t[r.user_id])
    # leave-one-out: without ties each user with >= 3 rows has exactly one test and one valid row
    if not ties:
        per_user = Counter(r.user_id for r in rows)
        tests = Counter(r.user_id for r in s["test"])
        assert all(tests[u] == 1 for u, n in per_user.items() if n >= 2)


def test_temporal_needs_timestamps():
    rows = make_rows()
    rows[0].timestamp = None
    with pytest.raises(ValueError, match="timestamp"):
        split_interactions(rows, SplitConfig(protocol="temporal"))


def test_cold_items_never_in_train():
    rows = make_rows(n_users=60, n_items=80)
    result = split_interactions(rows, SplitConfig(protocol="cold-items", cold_fraction=0.25, seed=4))
    cold = result.details["cold_items"]
    cold_all = set(cold["valid"]) | set(cold["test"])
    rated = {r.item_id for r in rows}
    assert abs(len(cold_all) - 0.25 * len(rated)) <= 1
    assert not {r.item_id for r in result.splits["train"]} & cold_all
    assert {r.item_id for r in result.splits["valid"]} == set(cold["valid"])
    assert {r.item_id for r in result.splits["test"]} == set(cold["test"])
    # all interactions of a cold item are held out
    assert sum(len(p) for k, p in result.splits.items() if k != "train") == sum(r.item_id in cold_all for r in rows)


def test_given_uses_the_split_column():
    rows = make_rows(n_users=5)
    for k, r in enumerate(rows):
        r.split = ("train", "valid", "test")[k % 3]
    s = split_interactions(rows, SplitConfig(protocol="given")).splits
    assert [r.line for r in s["valid"]] == [r.line for k, r in enumerate(rows) if k % 3 == 1]


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split protocol"):
        SplitConfig(protocol="leave-one-out")
    with pytest.raises(ValueError, match="sum"):
        SplitConfig(ratios=(0.5, 0.1, 0.1))


def test_cold_items_with_warm_holdout_has_both_tracks():
    rows = make_rows(n_users=60, n_items=80, per_user=(10, 30))
    result = split_interactions(rows, SplitConfig(protocol="cold-items", cold_fraction=0.25, warm_holdout=0.2, seed=4))
    cold = set(result.details["cold_items"]["valid"]) | set(result.details["cold_items"]["test"])
    s = result.splits
    assert not {r.item_id for r in s["train"]} & cold
    warm_test = [r for r in s["test"] if r.item_id not in cold]
    assert warm_test and all(r.item_id not in cold for r in warm_test)
    assert {r.item_id for r in s["test"] if r.item_id in cold} == set(result.details["cold_items"]["test"])
    assert not pairs(s["train"]) & pairs(s["test"]) and not pairs(s["valid"]) & pairs(s["test"])
    assert SplitConfig(protocol="cold-items", warm_holdout=0.2).to_dict()["warm_holdout"] == 0.2


@pytest.mark.parametrize("timed", [True, False])
def test_cold_users_held_out_entirely_with_their_first_interactions_given(timed):
    rows = make_rows(n_users=40, per_user=(3, 25), seed=2)
    if not timed:
        rows = [Interaction(r.line, r.user_id, r.item_id, r.rating, None) for r in rows]
    cfg = SplitConfig(protocol="cold-users", seed=1, cold_fraction=0.25, given=5)
    result = split_interactions(rows, cfg)
    s, held = result.splits, result.details["cold_users"]
    assert len(held["valid"]) + len(held["test"]) == 10 and not set(held["valid"]) & set(held["test"])
    train_users = {r.user_id for r in s["train"]}
    by_user = defaultdict(list)
    for r in rows:
        by_user[r.user_id].append(r)
    for split in ("valid", "test"):
        for user in held[split]:
            assert user not in train_users  # never trained on
            history = [r for r in s[f"{split}_history"] if r.user_id == user]
            rest = [r for r in s[split] if r.user_id == user]
            assert len(history) == 5 and len(rest) == len(by_user[user]) - 5 > 0
            if timed:  # the history is the user's first five interactions in time
                assert max(r.timestamp for r in history) <= min(r.timestamp for r in rest)
    # every user with too short a history for anything to be left stays in train
    assert all(u in train_users for u, r in by_user.items() if len(r) <= 5)
    assert split_interactions(rows, cfg).splits == s  # seeded
    assert result.details["history_order"] == ("timestamp" if timed else "random (rows without a timestamp)")


def test_cold_users_too_few_eligible_users_is_a_clear_error():
    rows = make_rows(n_users=10, per_user=(1, 3))
    with pytest.raises(ValueError, match="lower --given"):
        split_interactions(rows, SplitConfig(protocol="cold-users", given=5))
