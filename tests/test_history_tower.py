"""The history user tower: user vectors from interaction histories, users who arrive after training,
the cold-users protocol and its baselines, and `embed-users` / `recommend --history` without retraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_dataset

from mmrec.data.splits import SplitArrays
from mmrec.model.history import HistoryUserTower, UserHistory


def rows(users, items, ratings=None, times=None):
    n = len(users)
    return SplitArrays(np.asarray(users), np.asarray(items), np.asarray(ratings or [4.0] * n, dtype=np.float32),
                       None if times is None else np.asarray(times, dtype=np.float64))


def test_user_history_keeps_the_latest_interactions_oldest_first():
    # user 0: items 5 (t=30), 6 (t=10), 7 (t=20), 8 (no time: oldest); user 1: item 9; user 2: none
    table = UserHistory.from_rows(rows([0, 0, 1, 0, 0], [5, 6, 9, 7, 8], [1, 2, 3, 4, 5],
                                       [30, 10, 1, 20, np.nan]), num_users=3, length=3)
    assert table.items[0].tolist() == [6, 7, 5]  # the latest three by time, oldest first; item 8 dropped
    assert table.ratings[0].tolist() == [2, 4, 1]
    assert table.mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert table.items[1, 0] == 9
    # without timestamps, file order is time order
    plain = UserHistory.from_rows(rows([0, 0, 0], [3, 1, 2]), 1, 5)
    assert plain.items[0, :3].tolist() == [3, 1, 2] and plain.mask[0].sum() == 3


def tower_inputs():
    torch.manual_seed(0)
    tower = HistoryUserTower(embedding_dim=4, num_items=6, history_length=3, init_std=0.1).eval()
    with torch.no_grad():
        tower.query.normal_()  # attention that is not a plain mean
        tower.rating_w.normal_()
    item_vecs = torch.randn(6, 6)
    history = UserHistory.from_rows(rows([0, 0, 0, 1, 1], [1, 2, 3, 4, 5], [5, 3, 1, 2, 4]), 2, 3)
    return tower, item_vecs, history, torch.ones(6, dtype=torch.bool), torch.tensor(3.0)


def test_excluding_the_target_is_masking_it_out():
    tower, item_vecs, history, seen, mu = tower_inputs()
    full, _ = tower(item_vecs, history, seen, mu)
    p, b = tower(item_vecs, history, seen, mu, exclude=torch.tensor([2, 0]))  # user 0 without item 2
    mask = history.mask.clone()
    mask[0] &= history.items[0] != 2
    torch.testing.assert_close((p, b), tower(item_vecs, UserHistory(history.items, history.ratings, mask), seen, mu))
    assert not torch.allclose(p[0], full[0])  # item 2 counted before
    torch.testing.assert_close(p[1], full[1])  # user 1's history has no item 0: nothing excluded


def test_the_vector_depends_on_the_history_and_only_on_it():
    tower, item_vecs, history, seen, mu = tower_inputs()
    p, _ = tower(item_vecs, history, seen, mu)
    changed = item_vecs.clone()
    changed[0] += 10.0  # item 0 is in nobody's history
    torch.testing.assert_close(tower(changed, history, seen, mu)[0], p)
    changed[4] += 1.0  # item 4 is in user 1's
    q, _ = tower(changed, history, seen, mu)
    torch.testing.assert_close(q[0], p[0])
    assert not torch.allclose(q[1], p[1])
    # an empty history gives the tower's content-free vector (its output biases), never NaN
    empty = UserHistory(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))
    e, _ = tower(item_vecs, empty, seen, mu)
    torch.testing.assert_close(e[0], tower.out_p.bias)


def test_the_user_id_residual_is_added_for_training_users_only():
    from mmrec.model.config import ModelConfig
    from mmrec.model.model import RecModel, history_user_vectors, user_vectors

    cfg = ModelConfig(encoders={}, embedding_dim=4, item_id_embeddings=True, user_tower="history",
                      history_length=3, history_user_id=True, history_user_id_dropout=0.5, init_std=0.5)
    torch.manual_seed(0)
    model = RecModel(cfg, {}, None, num_users=2, num_items=6, global_mean=3.0).eval()
    _, item_vecs, history, _, _ = tower_inputs()
    history = UserHistory(*(torch.cat([t, torch.zeros_like(t[:1])]) for t in (history.items, history.ratings,
                                                                              history.mask)))  # + an empty row
    plain = history_user_vectors(model, item_vecs, history)  # (3, E + 2): no residual asked for
    served = user_vectors(model, item_vecs, history)  # users 0, 1 and the unknown row
    residual = torch.cat([model.user_p.weight, torch.zeros(3, 1), model.user_b.weight], 1).detach()
    torch.testing.assert_close(served[:2], plain[:2] + residual[:2])
    torch.testing.assert_close(served[2], plain[2])  # the unknown user: history alone
    # a user the run never saw (-1) gets no residual
    torch.testing.assert_close(history_user_vectors(model, item_vecs, history, users=torch.tensor([-1, 1, 2])),
                               torch.stack([plain[0], served[1], plain[2]]))
    # training hides the residual for about half of the users (history_user_id_dropout = 0.5)
    model.train()
    model.user_tower.subsample = False  # the history part then is deterministic
    many = torch.zeros(2000, dtype=torch.long)
    h = history.rows(many)
    p = model.history_export(item_vecs, h, users=many)[:, :4] - model.user_tower(item_vecs, h, model.item_seen,
                                                                                model.global_mean)[0]
    kept = p.detach().abs().sum(1) > 1e-6
    assert torch.allclose(p[kept], model.user_p.weight[0].expand(int(kept.sum()), -1))
    assert 0.45 < kept.float().mean() < 0.55


# ------------------------------------------------------------------------------- trained end to end


@pytest.fixture(scope="module")
def cold_users_run(tmp_path_factory):
    """A tiny history-tower run (with the per-user ID residual) on a cold-users split of the synthetic
    catalogue, embedded."""
    from mmrec.cli import main
    from mmrec.config import load_run_config
    from mmrec.training.loop import train

    root = tmp_path_factory.mktemp("history")
    data = make_dataset(root, num_items=120, num_users=80, num_ratings=3000, items_per_shard=30,
                        protocol="cold-users")
    cfg = load_run_config(TINY, ["model.user_tower=history", "model.history_user_id=true", "train.epochs=20",
                                 "data.batch_size=32",
                                 "train.early_stopping_patience=0"])
    train(cfg, data, root / "run")
    assert main(["embed", "--run", str(root / "run"), "--data", str(data), "--out", str(root / "emb")]) == 0
    return root, data


def test_cold_users_split_is_scored_from_the_given_history_against_history_baselines(cold_users_run):
    from mmrec.evaluate.evaluation import evaluate_run

    root, data = cold_users_run
    manifest = json.loads((data / "manifest.json").read_text())
    held = manifest["split"]["cold_users"]
    report, _ = evaluate_run(root / "run", data, root / "report", split="test", ks=[10])
    assert report["ranking"]["users"] == len(held["test"])  # every held-out test user is scored
    assert report["protocol"]["masked_splits"] == ["test_history"]
    assert set(report["baselines"]) == {"popularity", "bias_only", "item_knn", "als_fold_in", "ease"}
    # served from their history, the held-out users do better than from the unknown-user row an ID
    # tower would give them (r_hat = mu + b_i, the bias-only ranking)
    assert report["ranking"]["ndcg@10"] > report["baselines"]["bias_only"]["ranking"]["ndcg@10"]
    assert np.isfinite(report["rating"]["rmse"]) and report["rating"]["count"] > 0


def test_recommend_for_a_history_excludes_it_and_follows_it(cold_users_run, capsys):
    from mmrec.cli import main
    from mmrec.model.factory import load_run_model
    from mmrec.serve.embeddings import Embeddings
    from mmrec.serve.incremental import recommend_for_history

    root, data = cold_users_run
    emb = Embeddings.load(root / "emb")
    model, _, _ = load_run_model(root / "run")
    items = [json.loads(line) for line in (root / "cat" / "items.jsonl").open()]
    style_of = {i["item_id"]: i["style"] for i in items}
    # a history of one style's items brings that style up: over the styles, the share of the style in
    # the top-10 is well above its share of the catalogue
    styles = sorted(set(style_of.values()))
    shares, chance = [], []
    for s in styles:
        of_style = [i for i, t in style_of.items() if t == s]
        history = [(i, 5.0) for i in of_style[:5]]
        top = recommend_for_history(model.eval(), emb, history, k=10)
        assert len(top) == 10 and not {emb.item_ids[i] for i, _ in top} & {i for i, _ in history}
        shares.append(np.mean([style_of[emb.item_ids[i]] == s for i, _ in top]))
        chance.append((len(of_style) - 5) / (len(style_of) - 5))
    assert np.mean(shares) >= 2.5 * np.mean(chance), (shares, chance)
    liked = [i for i, t in style_of.items() if t == styles[0]][:5]
    top = recommend_for_history(model.eval(), emb, [(i, 5.0) for i in liked], k=10)
    # the CLI prints the same list
    assert main(["recommend", "--run", str(root / "run"), "--emb", str(root / "emb"),
                 "--history", ",".join(f"{i}:5" for i in liked)]) == 0
    printed = capsys.readouterr().out
    assert all(emb.item_ids[i] in printed for i, _ in top)
    # an unknown item is one clear error
    assert main(["recommend", "--run", str(root / "run"), "--emb", str(root / "emb"), "--history", "nope:4"]) == 2
    assert "not in the embeddings" in capsys.readouterr().err


def test_embed_users_moves_a_user_towards_their_new_interactions(cold_users_run, tmp_path):
    import shutil

    from mmrec.cli import main
    from mmrec.serve.embeddings import Embeddings

    root, data = cold_users_run
    emb_dir = tmp_path / "emb"
    shutil.copytree(root / "emb", emb_dir)
    before = Embeddings.load(emb_dir)
    items = [json.loads(line) for line in (root / "cat" / "items.jsonl").open()]
    style_of = {i["item_id"]: i["style"] for i in items}
    index = {item: i for i, item in enumerate(before.item_ids)}
    user = before.user_ids[0]
    # the style this user's vector likes least, then 10 new top ratings of items of that style
    scores = before.items @ before.users[0]
    styles = sorted({s for s in style_of.values()})
    mean_by_style = {s: float(scores[[index[i] for i, t in style_of.items() if t == s]].mean()) for s in styles}
    target = min(mean_by_style, key=mean_by_style.get)
    new_items = [i for i, t in style_of.items() if t == target][:10]
    csv = tmp_path / "new.csv"
    csv.write_text("user_id,item_id,rating\n" + "".join(f"{user},{i},5\n" for i in new_items)
                   + f"newcomer,{new_items[0]},5\nnewcomer,unknown-item,4\n")
    assert main(["embed-users", "--run", str(root / "run"), "--interactions", str(csv), "--out", str(emb_dir)]) == 0
    after = Embeddings.load(emb_dir)
    assert after.user_ids[: len(before.user_ids)] == before.user_ids and after.user_ids[-1] == "newcomer"
    torch.testing.assert_close(after.users[1 : len(before.user_ids)], before.users[1:])  # others unchanged
    new_scores = after.items @ after.users[0]
    rows_of_target = [index[i] for i, t in style_of.items() if t == target]
    rank = lambda s: (s[rows_of_target][:, None] > s[None, :]).float().mean()  # noqa: E731  mean percentile
    assert rank(new_scores) > rank(scores)  # the target style moved up the user's ranking
    # the unknown item is quarantined with its reason, not dropped silently
    quarantine = (emb_dir / "embed_users_quarantine.jsonl").read_text()
    assert "unknown-item" in quarantine
    # recomputing every user from unchanged histories reproduces `mmrec embed`'s vectors, the training
    # users' ID residuals included; the newcomer has none
    again = tmp_path / "again"
    shutil.copytree(root / "emb", again)
    csv.write_text(f"user_id,item_id,rating\nnewcomer,{new_items[0]},5\n")
    assert main(["embed-users", "--run", str(root / "run"), "--interactions", str(csv), "--out", str(again),
                 "--all-users"]) == 0
    recomputed = Embeddings.load(again)
    torch.testing.assert_close(recomputed.users[: len(before.user_ids)], before.users, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recomputed.users[-1], after.users[-1], atol=1e-5, rtol=1e-5)


def test_an_id_tower_run_refuses_history_serving(trained, capsys):
    from mmrec.cli import main

    root, data = trained
    item = json.loads((root / "emb" / "item_ids.json").read_text())[0]
    assert main(["recommend", "--run", str(root / "run"), "--history", f"{item}:4"]) == 2
    assert "ID user tower" in capsys.readouterr().err


def test_new_items_join_the_embeddings_from_content_alone(cold_users_run, tmp_path):
    import shutil

    from mmrec.cli import main
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.embedding import embed_batches, item_batches
    from mmrec.model.factory import load_run_model
    from mmrec.serve.embeddings import Embeddings
    from mmrec.serve.incremental import recommend_for_history

    root, data = cold_users_run
    trained = Embeddings.load(root / "emb")
    with_id = {i for i, seen in zip(trained.item_ids, trained.id_terms.tolist()) if seen}
    items = [json.loads(line) for line in (root / "cat" / "items.jsonl").open()]
    src = next(i for i in items if "text" in i and "image" in i and i["item_id"] in with_id)
    new = {**src, "item_id": "new-" + src["item_id"]}  # the same content under a new id
    for m in ("image", "audio"):
        if m in new:
            new[m] = str(root / "cat" / src[m])
    (tmp_path / "items.jsonl").write_text(json.dumps(new) + "\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,rating\n")  # nobody has rated it
    assert main(["shard", "--items", str(tmp_path / "items.jsonl"), "--interactions", str(tmp_path / "interactions.csv"),
                 "--out", str(tmp_path / "new"), "--no-progress"]) == 0
    shutil.copytree(root / "emb", tmp_path / "emb")
    before = Embeddings.load(tmp_path / "emb")
    assert main(["embed-items", "--run", str(root / "run"), "--data", str(tmp_path / "new"),
                 "--out", str(tmp_path / "emb")]) == 0
    after = Embeddings.load(tmp_path / "emb")
    assert after.item_ids == before.item_ids + [new["item_id"]] and len(after.titles) == len(after.item_ids)
    torch.testing.assert_close(after.items[:-1], before.items)
    assert not after.id_terms[-1] and after.states.shape[0] == len(after.item_ids)
    # its vector is the source item's content alone: never the source's (or any) ID terms
    model, pre, _ = load_run_model(root / "run")
    vocab = RunVocabulary.load(root / "run")
    out = embed_batches(model, item_batches(data, pre, vocab.attributes), content_only=True)
    src_row = out.indices.tolist().index(vocab.item_ids.index(src["item_id"]))
    torch.testing.assert_close(after.items[-1], out.vectors[src_row], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after.items[-1], before.items[vocab.item_ids.index(src["item_id"])])  # it had ID terms
    # a history may name it at once
    top = recommend_for_history(model.eval(), after, [(new["item_id"], 5.0)], k=5)
    assert len(top) == 5 and len(after.item_ids) - 1 not in {i for i, _ in top}
    # adding it again changes nothing
    assert main(["embed-items", "--run", str(root / "run"), "--data", str(tmp_path / "new"),
                 "--out", str(tmp_path / "emb")]) == 0
    assert Embeddings.load(tmp_path / "emb").item_ids == after.item_ids


def test_held_out_users_are_ranked_without_their_history_by_hand():
    from mmrec.data.splits import HeldOutUsers
    from mmrec.evaluate.protocol import evaluate_held_out_users

    item_vecs = torch.tensor([[3.0], [2.0], [1.0]])  # item 0 scores highest for a positive user
    users = HeldOutUsers(["a", "b"],
                         history=rows([0, 1], [0, 2]),  # a was given item 0, b item 2
                         held=rows([0, 1, 1], [1, 0, 1], [2.0, 4.0, 2.0]))  # a: find 1; b: find 0 and 1
    out = evaluate_held_out_users(torch.tensor([[1.0], [1.0]]), item_vecs, users, ks=(1, 2))
    # a ranks [1, 2] (item 0 masked): hit at 1; b ranks [0, 1]: one of two at 1, both at 2
    assert out["ranking"]["recall@1"] == pytest.approx((1 + 0.5) / 2)
    assert out["ranking"]["ndcg@1"] == pytest.approx(1.0) and out["ranking"]["recall@2"] == pytest.approx(1.0)
    assert out["ranking"]["users"] == 2 and out["ranking"]["candidates"] == 3
    # r_hat = u . i on the held rows: 2 (rated 2), 3 (rated 4), 2 (rated 2)
    assert out["rating"]["rmse"] == pytest.approx((1 / 3) ** 0.5)
    # b's taste reversed: [1, 0] with item 2 masked, so item 1 comes first
    flipped = evaluate_held_out_users(torch.tensor([[1.0], [-1.0]]), item_vecs, users, ks=(1,), implicit=True)
    assert flipped["ranking"]["recall@1"] == pytest.approx((1 + 0.5) / 2) and flipped["rating"] == {}
    only_b = evaluate_held_out_users(torch.tensor([[1.0], [-1.0]]), item_vecs, users, ks=(1,), only=np.array([1]))
    assert only_b["ranking"]["users"] == 1 and only_b["ranking"]["recall@1"] == pytest.approx(0.5)


def test_history_subsampling_keeps_histories_of_every_length_and_never_empties_one():
    from mmrec.model.history import subsample_history

    torch.manual_seed(0)
    mask = torch.zeros(4000, 50, dtype=torch.bool)
    mask[:, :40] = True  # 40 interactions each
    mask[-1] = False  # and one empty history
    kept = subsample_history(mask)
    assert not (kept & ~mask).any()  # only real interactions
    counts = kept[:-1].sum(1).float()
    assert (counts >= 1).all() and not kept[-1].any()
    assert abs(counts.mean().item() / 40 - 0.5) < 0.03  # a uniform rate per row: half on average
    assert (counts <= 3).float().mean() > 0.03 and (counts >= 37).float().mean() > 0.03  # short and long ones
