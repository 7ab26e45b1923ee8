"""Ranking and rating metrics against hand-worked cases and a deliberately simple reference."""

import math

import numpy as np
import pytest
import torch

from mmrec.evaluate.metrics import UserItems, ranking_metrics, rating_metrics, top_k


def test_hand_computed_case():
    # user 0: relevant {2, 5}; ranking [5, 1, 2, 3]  -> hits at ranks 1 and 3
    # user 1: relevant {4};    ranking [0, 1, 3, 2]  -> no hit
    # user 2: no relevant items -> not averaged
    top = np.array([[5, 1, 2, 3], [0, 1, 3, 2], [0, 1, 2, 3]])
    rel = UserItems.from_pairs(np.array([0, 0, 1]), np.array([2, 5, 4]), 3)
    m = ranking_metrics(top, rel, [1, 3])
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    assert m["hit@1"] == pytest.approx(0.5) and m["hit@3"] == pytest.approx(0.5)
    assert m["mrr@3"] == pytest.approx((1 + 0) / 2)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx((dcg / idcg + 0) / 2)
    assert m["ndcg@1"] == pytest.approx(0.5)  # IDCG cut at min(#rel, K) = 1


def test_mrr_uses_first_hit_and_idcg_is_cut_at_k():
    top = np.array([[9, 8, 7, 1]])
    rel = UserItems.from_pairs(np.array([0] * 5), np.array([1, 2, 3, 4, 7]), 1)
    m = ranking_metrics(top, rel, [2, 4])
    assert m["mrr@4"] == pytest.approx(1 / 3) and m["mrr@2"] == 0.0
    dcg = 1 / math.log2(4) + 1 / math.log2(5)
    idcg = sum(1 / math.log2(r + 1) for r in range(1, 5))
    assert m["ndcg@4"] == pytest.approx(dcg / idcg)
    assert m["recall@4"] == pytest.approx(2 / 5)


def test_top_k_masks_and_breaks_ties_by_index():
    users = torch.tensor([[1.0], [1.0]])
    items = torch.tensor([[1.0], [3.0], [3.0], [2.0], [3.0]])  # items 1, 2, 4 tie at the top
    top = top_k(users, items, 2)
    assert top.tolist() == [[1, 2], [1, 2]]
    excl = UserItems.from_pairs(np.array([1, 1]), np.array([1, 2]), 2)
    assert top_k(users, items, 3, exclude=excl).tolist() == [[1, 2, 4], [4, 3, 0]]


def reference_metrics(scores, exclude, relevant, ks):
    """The slow obvious way: sort each user's list in Python."""
    out = {f"{m}@{k}": [] for k in ks for m in ("recall", "ndcg", "hit", "mrr")}
    for u in range(scores.shape[0]):
        rel = set(relevant.get(u, []))
        if not rel:
            continue
        ranked = sorted((i for i in range(scores.shape[1]) if i not in exclude.get(u, set())),
                        key=lambda i: (-scores[u, i], i))
        for k in ks:
            top = ranked[:k]
            hits = [i in rel for i in top]
            dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
            idcg = sum(1 / math.log2(r + 2) for r in range(min(len(rel), k)))
            first = next((r + 1 for r, h in enumerate(hits) if h), None)
            out[f"recall@{k}"].append(sum(hits) / len(rel))
            out[f"ndcg@{k}"].append(dcg / idcg)
            out[f"hit@{k}"].append(float(any(hits)))
            out[f"mrr@{k}"].append(1 / first if first else 0.0)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_reference_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    U, N, E = 40, 60, 4
    # integer-valued embeddings make many exact score ties
    users = torch.from_numpy(rng.integers(-2, 3, (U, E)).astype(np.float32))
    items = torch.from_numpy(rng.integers(-2, 3, (N, E)).astype(np.float32))
    scores = (users @ items.T).numpy()
    ex_u, ex_i, rel_u, rel_i = [], [], [], []
    exclude, relevant = {}, {}
    for u in range(U):
        chosen = rng.choice(N, size=12, replace=False)
        for i in chosen[:8]:
            ex_u.append(u), ex_i.append(i)
            exclude.setdefault(u, set()).add(int(i))
        if u % 7:  # some users have nothing relevant
            for i in chosen[8:8 + rng.integers(1, 5)]:
                rel_u.append(u), rel_i.append(i)
                relevant.setdefault(u, []).append(int(i))
    top = top_k(users, items, 20, exclude=UserItems.from_pairs(np.array(ex_u), np.array(ex_i), U), chunk_size=7)
    got = ranking_metrics(top, UserItems.from_pairs(np.array(rel_u), np.array(rel_i), U), [1, 5, 10, 20])
    want = reference_metrics(scores, exclude, relevant, [1, 5, 10, 20])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_rating_metrics():
    m = rating_metrics(np.array([3.0, 4.0, 5.0]), np.array([4.0, 4.0, 3.0]))
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3)) and m["mae"] == pytest.approx(1.0)
