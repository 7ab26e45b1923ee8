"""Readers across simulated Accelerate ranks and DataLoader workers (2 ranks x 2 workers)."""

from collections import Counter

import pytest

from mmrec.data.reader import ReaderConfig, item_loader
from mmrec.shard.writer import ShardOptions, shard_catalogue


@pytest.fixture
def one_item_shards(small_catalogue, tmp_path):
    """12 items, one per shard, so every (rank, worker) slot gets several shards."""
    items_path, inter_path, _ = small_catalogue
    shard_catalogue(items_path, inter_path, tmp_path / "data", options=ShardOptions(items_per_shard=1, progress=False))
    return tmp_path / "data"


def ids_of(loader):
    return [it.item_id for batch in loader for it in batch]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_eval_is_disjoint_and_complete_across_ranks_and_workers(one_item_shards, num_workers):
    seen = []
    per_rank = []
    for rank in range(2):
        loader = item_loader(one_item_shards, "eval", ReaderConfig(batch_size=2, num_workers=num_workers),
                             rank=rank, world_size=2)
        ids = ids_of(loader)
        per_rank.append(set(ids))
        seen += ids
    counts = Counter(seen)
    assert len(counts) == 12 and set(counts.values()) == {1}  # every item exactly once
    assert not per_rank[0] & per_rank[1]


def test_eval_with_more_readers_than_shards_still_exactly_once(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    shard_catalogue(items_path, inter_path, tmp_path / "d", options=ShardOptions(items_per_shard=5, progress=False))
    seen = []
    for rank in range(3):  # 3 ranks x 2 workers = 6 readers for 3 shards: some read nothing, none hang
        seen += ids_of(item_loader(tmp_path / "d", "eval", ReaderConfig(batch_size=4, num_workers=2),
                                   rank=rank, world_size=3))
    assert sorted(seen) == sorted(f"it{i:02d}" for i in range(12))


def test_train_equal_steps_and_disjoint_within_an_epoch(one_item_shards):
    # 12 items, 2 ranks x 2 workers, batch 3: one epoch is 2 batches per rank = one pass of the shards
    cfg = ReaderConfig(batch_size=3, num_workers=2, seed=7)
    per_rank, steps = [], []
    for rank in range(2):
        loader = item_loader(one_item_shards, "train", cfg, rank=rank, world_size=2)
        assert len(loader) == 2
        batches = list(loader)
        steps.append(len(batches))
        per_rank.append([it.item_id for b in batches for it in b])
    assert steps == [2, 2]
    assert len(set(per_rank[0])) == 6 and len(set(per_rank[1])) == 6
    assert not set(per_rank[0]) & set(per_rank[1])


def test_train_epochs_continue_and_are_reproducible(one_item_shards):
    cfg = ReaderConfig(batch_size=4, num_workers=0, seed=3, steps_per_epoch=5)  # more steps than items: wraps
    runs = []
    for _ in range(2):
        loader = item_loader(one_item_shards, "train", cfg, rank=0, world_size=1)
        epochs = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            epochs.append([it.item_id for b in loader for it in b])
        runs.append(epochs)
    assert runs[0] == runs[1]  # seeded: same order every run
    assert len(runs[0][0]) == 20 and runs[0][0] != runs[0][1]  # 5 batches of 4; next epoch differs
    assert set(runs[0][0]) == {f"it{i:02d}" for i in range(12)}


def test_too_few_shards_for_training_is_a_clear_error(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    shard_catalogue(items_path, inter_path, tmp_path / "d", options=ShardOptions(items_per_shard=6, progress=False))
    with pytest.raises(ValueError, match="2 shards cannot feed 2 ranks x 2 workers"):
        item_loader(tmp_path / "d", "train", ReaderConfig(num_workers=2), rank=0, world_size=2)


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(ValueError, match="mmrec shard"):
        item_loader(tmp_path, "eval")


@pytest.mark.parametrize("num_workers,done", [(0, 3), (2, 2), (2, 3)])
def test_resume_mid_epoch_continues_the_same_stream(one_item_shards, num_workers, done):
    # 12 one-item shards, 2 workers x 2 ranks; 4 batches per epoch of 2 items
    cfg = ReaderConfig(batch_size=2, num_workers=num_workers, seed=11, steps_per_epoch=6, shuffle_buffer=4)
    full = item_loader(one_item_shards, "train", cfg, rank=1, world_size=2)
    full.set_epoch(2)
    want = [[it.item_id for it in b] for b in full]
    resumed = item_loader(one_item_shards, "train", cfg, rank=1, world_size=2)
    resumed.resume_at(2, done)
    got = [[it.item_id for it in b] for b in resumed]
    assert got == want[done:]
    resumed.set_epoch(3)  # the next epoch is whole again
    assert len(list(resumed)) == 6


def test_train_stream_repeats_each_item_once_per_visit_within_a_pass(one_item_shards):
    """With visits, a pass streams item i visits[i] times, each marked with its chunk; steps per epoch
    count the visits, so an epoch is one pass of them."""
    import numpy as np

    from mmrec.data.item import VisitOf

    visits = np.array([1, 2, 3, 1, 1, 4, 1, 1, 2, 1, 1, 1])  # 19 visits
    cfg = ReaderConfig(batch_size=4, num_workers=0, seed=2, shuffle_buffer=8)
    loader = item_loader(one_item_shards, "train", cfg, rank=0, world_size=1, visits=visits)
    assert len(loader) == 5  # ceil(19 / 4)
    loader.set_epoch(0)
    got = [v for b in loader for v in b][:19]
    assert all(isinstance(v, VisitOf) for v in got)
    chunks = Counter((v.item.index, v.visit.chunk, v.visit.chunks) for v in got)
    assert chunks == Counter((i, c, int(n)) for i, n in enumerate(visits) for c in range(n))  # each visit once
    assert {v.visit.pass_number for v in got} == {0}


@pytest.mark.parametrize("done", [1, 2])  # of the 3 batches per epoch (17 visits, 2 ranks x 3)
def test_resume_with_visits_continues_the_same_stream(one_item_shards, done):
    import numpy as np

    visits = np.array([3, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 2])
    cfg = ReaderConfig(batch_size=3, num_workers=2, seed=5, shuffle_buffer=6)
    full = item_loader(one_item_shards, "train", cfg, rank=0, world_size=2, visits=visits)
    full.set_epoch(1)
    want = [[(v.item.item_id, v.visit) for v in b] for b in full]
    resumed = item_loader(one_item_shards, "train", cfg, rank=0, world_size=2, visits=visits)
    resumed.resume_at(1, done)
    assert [[(v.item.item_id, v.visit) for v in b] for b in resumed] == want[done:]
