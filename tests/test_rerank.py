"""Diversity-aware re-ranking (`mmrec.serve.rerank`): MMR on hand-worked cases, caps, batching, and the
`--diversify` paths of `mmrec recommend`, `mmrec eval` and `Recommender.recommend`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmrec.serve.rerank import attribute_table, check_lambda, diversify, diversity_vectors, intra_list_diversity, mmr


def pools(users: int = 37, items: int = 300, pool: int = 40, dim: int = 8, seed: int = 0):
    """Random export vectors, their diversity vectors, and each user's plain top-`pool` (items, scores)."""
    g = torch.Generator().manual_seed(seed)
    item_vecs, user_vecs = torch.randn(items, dim + 2, generator=g), torch.randn(users, dim + 2, generator=g)
    scores, top = torch.topk(user_vecs @ item_vecs.T, pool, dim=1)
    return diversity_vectors(item_vecs, None), top, scores


def test_lambda_zero_is_the_plain_ranking_even_with_ties_and_short_pools():
    q, top, scores = pools()
    assert torch.equal(mmr(top, scores, q, 10, 0.0), top[:, :10])
    # equal scores keep the pool's order; a pool of one score throughout is all equally relevant
    scores[:5, 2:6] = scores[:5, 2:3]
    scores[5] = 1.0
    # a pool that runs out (-inf slots) is given as far as it goes, then -1
    scores[6, 3:] = float("-inf")
    out = mmr(top, scores, q, 10, 0.0)
    assert torch.equal(out[:6], top[:6, :10]) and torch.equal(out[7:], top[7:, :10])
    assert out[6].tolist() == top[6, :3].tolist() + [-1] * 7


def test_a_large_lambda_takes_the_unlike_item_on_a_hand_worked_case():
    # items 0 and 1 point the same way, item 2 at right angles; scores 1.0, 0.9, 0.5 -> relevance 1, 0.8, 0
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    items, scores = torch.tensor([[0, 1, 2]]), torch.tensor([[1.0, 0.9, 0.5]])
    # second pick: item 1 scores (1 - L) 0.8 - L * 1, item 2 scores 0 - L * 0: item 1 while L < 4/9
    assert mmr(items, scores, q, 2, 0.4).tolist() == [[0, 1]]
    assert mmr(items, scores, q, 2, 0.5).tolist() == [[0, 2]]
    assert mmr(items, scores, q, 3, 1.0).tolist() == [[0, 2, 1]]  # the top item first, then the least alike
    assert diversify([(0, 1.0), (1, 0.9), (2, 0.5)], q, 2, 0.5) == [(0, 1.0), (2, 0.5)]  # scores stay the model's


def test_caps_hold_while_the_pool_allows_then_the_list_is_completed():
    q = F.normalize(torch.eye(6) + 0.01, dim=-1)  # nearly orthogonal: relevance decides
    attributes, names = attribute_table([["a"], ["a", "b"], ["b"], ["a"], [], ["c", "c"]])
    assert names == ["a", "b", "c"] and attributes.shape == (6, 2)
    items, scores = torch.arange(6)[None], torch.tensor([[6.0, 5, 4, 3, 2, 1]])
    # at most one item per attribute: 0 (a); 1 has a; 2 (b); 3 has a; 4 has none; 5 (c) -> then only a/b items left
    assert mmr(items, scores, q, 4, 0.0, attributes, 1).tolist() == [[0, 2, 4, 5]]
    assert mmr(items, scores, q, 6, 0.0, attributes, 1).tolist() == [[0, 2, 4, 5, 1, 3]]  # completed, not cut
    assert mmr(items, scores, q, 4, 0.0, attributes, 2).tolist() == [[0, 1, 2, 4]]  # 3 would be a third a


def test_batched_equals_one_user_at_a_time():
    q, top, scores = pools()
    attributes = torch.randint(-1, 5, (q.shape[0], 3), generator=torch.Generator().manual_seed(1))
    for lam, cap in ((0.3, None), (0.7, 2)):
        batched = mmr(top, scores, q, 10, lam, attributes, cap, chunk_size=5)
        single = torch.cat([mmr(top[u : u + 1], scores[u : u + 1], q, 10, lam, attributes, cap) for u in range(len(top))])
        assert torch.equal(batched, single)
    plain, diverse = mmr(top, scores, q, 10, 0.0), mmr(top, scores, q, 10, 0.7)
    assert intra_list_diversity(diverse, q).mean() > intra_list_diversity(plain, q).mean() + 0.05


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.3", None])
def test_bad_lambda_is_one_clear_error(bad):
    with pytest.raises(ValueError, match=r"LAMBDA must be a number in \[0, 1\]"):
        check_lambda(bad)


def test_recommend_and_the_api_diversify(trained, capsys):
    from mmrec.cli import main
    from mmrec.serve.recommender import Recommender
    from mmrec.serve.rerank import item_attributes

    root, data = trained
    rec = Recommender.from_run(root / "run", emb=root / "emb", data=data, exact=True)
    user = rec.emb.user_ids[0]
    assert rec.recommend(user=user, k=5, diversify=0.0) == rec.recommend(user=user, k=5)
    capped = rec.recommend(user=user, k=5, diversify=0.5, max_per_attribute=1)
    attrs = dict(zip(rec.emb.item_ids, item_attributes(data, rec.emb.item_ids)))
    tags = [a for r in capped for a in attrs[r.item_id]]
    assert len(capped) == 5 and capped != rec.recommend(user=user, k=5) and len(tags) == len(set(tags))

    base = ["recommend", "--run", str(root / "run"), "--emb", str(root / "emb"), "--user", user, "--k", "5", "--exact"]
    capsys.readouterr()
    assert main(base + ["--diversify", "0.5", "--max-per-attribute", "1"]) == 0
    printed = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert printed == [r.item_id for r in capped]
    with pytest.raises(SystemExit) as stop:
        main(base + ["--diversify", "2"])
    assert stop.value.code == 2 and "LAMBDA must be a number in [0, 1]" in capsys.readouterr().err
    assert main(base + ["--diversify", "0.5", "--pool", "3"]) == 2  # a pool smaller than k
    assert "pool must be an integer >= k = 5" in capsys.readouterr().err


def test_eval_diversify_writes_the_rows_and_the_plot(trained, tmp_path, capsys):
    from mmrec.cli import main

    root, data = trained
    out = tmp_path / "report"
    assert main(["eval", "--run", str(root / "run"), "--emb", str(root / "emb"), "--data", str(data), "--k", "5,10",
                 "--no-ablation", "--out", str(out), "--diversify", "0.8,0.3"]) == 0
    assert "diversify (NDCG@5, diversity@5 against LAMBDA 0): 0.3: " in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    section, rows = report["diversify"], report["diversify"]["rows"]
    assert [r["lambda"] for r in rows] == [0.0, 0.3, 0.8] and section["users"] == report["ranking"]["users"]
    for k in (5, 10):  # LAMBDA 0 is the headline ranking and its beyond-accuracy numbers
        assert rows[0][f"ndcg@{k}"] == report["ranking"][f"ndcg@{k}"]
        assert rows[0][f"diversity@{k}"] == pytest.approx(report["beyond"][f"diversity@{k}"], abs=1e-6)
    assert rows[-1]["diversity@10"] > rows[0]["diversity@10"]
    md = (out / "report.md").read_text()
    assert "## Diversity re-ranking" in md and "![diversify](diversify.png)" in md
    assert (out / "diversify.png").stat().st_size > 5_000


def test_mmr_and_diversity_compare_items_as_similar_does():
    """One similarity (`mmrec.serve.similarity`): MMR and diversity@K use `similar`'s vectors, items with ID
    terms and content-only items each centred on their own kind's mean."""
    from mmrec.serve.embeddings import Embeddings

    g = torch.Generator().manual_seed(1)
    items, ids = torch.randn(30, 10, generator=g), [f"i{n}" for n in range(30)]
    kinds = torch.arange(30) < 20  # 20 items with ID terms, 10 content-only
    emb = Embeddings(items, ids, ids, torch.zeros(1, 10), ["u"], None, id_terms=kinds)
    assert torch.equal(diversity_vectors(items, kinds), emb.similarity_vectors())
    assert torch.equal(diversity_vectors(items, None), Embeddings(items, ids, ids, torch.zeros(1, 10), ["u"],
                                                                  None).similarity_vectors())
