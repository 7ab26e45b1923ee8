"""Baselines: implicit ALS solves its weighted least squares exactly and learns co-occurrence."""

import numpy as np
import torch

from mmrec.data.split_files import SplitArrays
from mmrec.eval.baselines import _als_sweep, _rows_by, implicit_als_vectors


def test_als_sweep_is_the_dense_weighted_ridge_solution():
    rng = np.random.default_rng(0)
    users, items, factors, alpha, reg = 5, 12, 3, 4.0, 0.5
    y = rng.normal(size=(items, factors))
    liked = [np.array([0, 3, 7]), np.array([], dtype=np.int64), np.array([1]), np.array([2, 5, 6, 11]), np.array([4])]
    x = _als_sweep(y, liked, alpha, reg * np.eye(factors))
    for u, pos in enumerate(liked):
        p = np.zeros(items)
        p[pos] = 1.0
        c = 1.0 + alpha * p  # confidence: 1 + alpha on the positives, 1 elsewhere
        expected = np.linalg.solve(y.T @ (c[:, None] * y) + reg * np.eye(factors), y.T @ (c * p))
        if len(pos) == 0:
            expected = np.zeros(factors)  # a row without positives stays at zero
        np.testing.assert_allclose(x[u], expected, rtol=1e-9, atol=1e-12)


def test_rows_by_groups_values_per_key_in_order():
    groups = _rows_by(np.array([2, 0, 2, 1, 0]), np.array([10, 11, 12, 13, 14]), 4)
    assert [g.tolist() for g in groups] == [[11, 14], [13], [10, 12], []]


def test_implicit_als_ranks_the_held_out_item_of_a_users_taste_group_first():
    # two taste groups: users 0-9 like items 0-4, users 10-19 like items 5-9; each user misses one item
    # of their group in training, and ALS must rank it above every item of the other group
    users, items = [], []
    for u in range(20):
        group = range(0, 5) if u < 10 else range(5, 10)
        held = group[u % 5]
        for i in group:
            if i != held:
                users.append(u)
                items.append(i)
    train = SplitArrays(np.array(users), np.array(items), np.ones(len(users), dtype=np.float32))
    user_vecs, item_vecs = implicit_als_vectors(train, 20, 10, factors=2, reg=1.0, alpha=10.0, iterations=10)
    assert user_vecs.shape == (21, 2) and item_vecs.shape == (10, 2)
    assert torch.count_nonzero(user_vecs[20]) == 0  # the unknown user
    # (2 factors for 2 groups: enough to learn the groups, too few to memorise each missing item as a zero)
    scores = user_vecs[:20] @ item_vecs.T
    for u in range(20):
        group = list(range(0, 5)) if u < 10 else list(range(5, 10))
        other = [i for i in range(10) if i not in group]
        assert scores[u, group[u % 5]] > scores[u, other].max()
