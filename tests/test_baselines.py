"""Baselines: implicit ALS solves its weighted least squares exactly and learns co-occurrence; EASE is
Steck's closed form; content kNN scores cosines to the user's mean item; the history baselines
(item-kNN, ALS fold-in) score users who were never trained."""

import numpy as np
import torch

from mmrec.data.splits import SplitArrays
from mmrec.evaluate.baselines import (
    _als_sweep,
    _rows_by,
    als_fold_in_vectors,
    implicit_als_vectors,
    item_knn_vectors,
)


def test_als_sweep_is_the_dense_weighted_ridge_solution():
    rng = np.random.default_rng(0)
    items, factors, alpha, reg = 12, 3, 4.0, 0.5
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


def _split(users, items):
    users, items = np.asarray(users), np.asarray(items)
    return SplitArrays(users=users, items=items, ratings=np.ones(len(users), dtype=np.float32))


def test_ease_is_the_closed_form_of_steck_2019():
    """B = I - P diag(1/diag P), P = (X'X + lambda I)^-1, computed here densely with numpy; the exported
    vectors score x_u . B[:, i]; items without training rows score 0."""
    from mmrec.evaluate.baselines import ease_vectors

    rng = np.random.default_rng(1)
    dense = (rng.random((6, 5)) < 0.5).astype(float)
    dense[:, 4] = 0  # item 4: no training row
    u, i = dense.nonzero()
    user, item = ease_vectors(_split(u, i), 6, 5, reg=2.0)
    x = dense[:, :4]
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(4))
    b = np.eye(4) - p / np.diag(p)[None, :]
    expected = x @ b
    scores = (user @ item.T).numpy()
    np.testing.assert_allclose(scores[:6, :4], expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(np.diag(b), 0) and (scores[:, 4] == 0).all() and (scores[6] == 0).all()  # unknown user


def test_content_knn_scores_the_cosine_to_the_users_mean_item():
    from mmrec.evaluate.baselines import content_knn_vectors

    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 0.0]])
    user, item = content_knn_vectors(features, _split([0, 0, 1], [0, 1, 3]), 2)
    scores = user @ item.T
    # user 0's mean item: (1, 0) and (0, 1) -> (0.5, 0.5): cosine 1 with item 2, 1/sqrt(2) with items 0, 1, 3
    assert torch.allclose(scores[0], torch.tensor([0.5**0.5, 0.5**0.5, 1.0, 0.5**0.5]), atol=1e-6)
    assert torch.allclose(scores[1], torch.tensor([1.0, 0.0, 0.5**0.5, 1.0]), atol=1e-6)
    assert (scores[2] == 0).all()  # the unknown user has no history


def arrays(users, items):
    return SplitArrays(np.asarray(users), np.asarray(items), np.ones(len(users), dtype=np.float32))


def test_item_knn_sums_the_cosines_to_the_history_items():
    # training: user 0 rated items 0, 1; user 1 rated 0, 2; user 2 rated 1
    train = arrays([0, 0, 1, 1, 2], [0, 1, 0, 2, 1])
    user, item = item_knn_vectors(train, 4, arrays([0, 1, 1], [0, 0, 1]), 2)  # user A: {0}; user B: {0, 1}
    scores = user @ item.T  # (2, 4)
    # cos(0, 1) = 1 / (sqrt 2 sqrt 2) = 0.5; cos(0, 2) = 1 / (sqrt 2 * 1); cos(1, 2) = 0; item 3 never rated
    expected = torch.tensor([[0.0, 0.5, 2 ** -0.5, 0.0],
                             [0.5, 0.5, 2 ** -0.5, 0.0]])
    torch.testing.assert_close(scores, expected)


def test_als_fold_in_is_the_training_solve_for_the_same_history():
    # a user folded in from their full training history gets the factors the last ALS sweep gave them
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(6), 4)
    items = np.concatenate([rng.choice(10, 4, replace=False) for _ in range(6)])
    train = arrays(users, items)
    u_vecs, i_vecs = implicit_als_vectors(train, 6, 10, factors=3, iterations=3)
    # the sweep ends with the item half-step, so re-solve users once on the final item factors
    expected = _als_sweep(i_vecs.double().numpy(), _rows_by(users, items, 6), 10.0, 0.1 * np.eye(3))
    folded = als_fold_in_vectors(i_vecs, arrays(users[:8], items[:8]), 2)  # users 0 and 1 only
    np.testing.assert_allclose(folded.numpy(), expected[:2], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(folded[0], folded[1])
