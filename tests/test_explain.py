"""Explanations (`mmrec.serve.explain`): reasons cite only the user's own items, each number is the effect it
claims (checked against an independent recomputation), the report's faithfulness check meets the issue's
goal on the synthetic catalogue and catches a wrong explanation, and bad input is one clear error."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from conftest import TINY, make_dataset

import mmrec


@pytest.fixture(scope="module")
def history_run(tmp_path_factory):
    """A tiny history-tower run (1 epoch, histories of 8) on a random split of the synthetic catalogue:
    every user has more training items than the window, so a removal moves an older item into it."""
    from mmrec.cli import main
    from mmrec.config import load_run_config
    from mmrec.training.loop import train

    root = tmp_path_factory.mktemp("explain")
    data = make_dataset(root, num_items=48, num_users=24, num_ratings=600, items_per_shard=16)
    cfg = load_run_config(TINY, ["model.user_tower=history", "model.history_length=8", "train.epochs=1",
                                 "data.batch_size=32"])
    train(cfg, data, root / "run")
    assert main(["-q", "embed", "--run", str(root / "run"), "--data", str(data), "--out", str(root / "emb")]) == 0
    return root, data


def train_items(data, user: str) -> set[str]:
    with open(data / "interactions" / "train.csv", newline="") as f:
        return {r["item_id"] for r in csv.DictReader(f) if r["user_id"] == user}


def item_attributes(root) -> dict[str, set[str]]:
    return {i["item_id"]: set(i.get("attributes", [])) for i in map(json.loads, (root / "cat" / "items.jsonl").open())}


def test_history_tower_reasons_are_the_users_items_with_their_exact_effect(history_run):
    from mmrec.data.splits import RunSplits
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.model.history import UserHistory
    from mmrec.model.model import history_user_vectors
    from mmrec.serve.explain import History

    root, data = history_run
    rec = mmrec.Recommender.from_run(root / "run", data=data)
    model, emb, vocab = rec.model, rec.emb, RunVocabulary.load(root / "run")
    attributes = item_attributes(root)
    train = RunSplits(data, vocab)["train"]
    checked = 0
    for user in emb.user_ids[:6]:
        answers = rec.recommend(user=user, k=5, explain=True)
        plain = rec.recommend(user=user, k=5)
        assert [(a.item_id, a.score) for a in answers] == [(a.item_id, a.score) for a in plain]
        mine, u = train_items(data, user), vocab.user_ids.index(user)
        rows = train.subset(train.users == u)
        for answer in answers:
            kinds = {r.kind for r in answer.reasons}
            assert kinds <= {"history", "attribute", "modality"}
            history = [r for r in answer.reasons if r.kind == "history"]
            assert {r.name for r in history} <= mine  # never an item the user did not interact with
            assert {r.name for r in answer.reasons if r.kind == "attribute"} <= attributes[answer.item_id]
            for r in answer.reasons:
                assert r.effect > 0 and 0 < r.share <= 1 and re.search(r"\d\.\d{3}", r.detail), r
            # one denominator per kind: every history reason's share is its effect over the same total
            ratios = [r.share / r.effect for r in history]
            assert np.allclose(ratios, ratios[:1], rtol=1e-5)
            for r in history[:1]:  # the cited effect, recomputed from the split rows without the item
                target = emb.item_ids.index(answer.item_id)
                keep = rows.subset(rows.items != vocab.item_ids.index(r.name))
                keep.users[:] = 0
                without = history_user_vectors(model, emb.items, UserHistory.from_rows(keep, 1, 8),
                                               users=torch.tensor([u]))[0]
                full = float(emb.items[target] @ emb.users[emb.user_ids.index(user)])
                assert r.effect == pytest.approx(full - float(emb.items[target] @ without), abs=1e-4)
                checked += 1
        # the history the explanation reads is the one EMB's vector was computed from
        assert History.from_rows(train, u).items.tolist()[-8:] == [
            vocab.item_ids.index(i) for i in _latest(data, user, 8)]
    assert checked > 0, "no history item was cited for any recommendation"


def _latest(data, user: str, n: int) -> list[str]:
    with open(data / "interactions" / "train.csv", newline="") as f:
        rows = [(float(r["timestamp"]), i, r["item_id"]) for i, r in enumerate(csv.DictReader(f)) if r["user_id"] == user]
    return [item for *_, item in sorted(rows)[-n:]]


def test_modality_reasons_are_the_ablation_of_that_item(history_run):
    """A modality's number is the score with it dropped from the item, as `embed_batches(drop=...)` computes it."""
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.embedding import embed_batches, item_batches

    root, data = history_run
    rec = mmrec.Recommender.from_run(root / "run", data=data)
    user = rec.emb.user_ids[1]
    answers = rec.recommend(user=user, k=5, explain=True)
    cited = [(a, r) for a in answers for r in a.reasons if r.kind == "modality" and r.name != "id terms"]
    assert cited, "no modality carried any score"
    answer, reason = cited[0]
    model, vocab = rec.model, RunVocabulary.load(root / "run")
    out = embed_batches(model, item_batches(data, rec._loaded()[1], vocab.attributes), drop=(reason.name,))
    row = out.indices.tolist().index(vocab.item_ids.index(answer.item_id))
    vector = rec.emb.users[rec.emb.user_ids.index(user)]
    full = float(rec.emb.items[vocab.item_ids.index(answer.item_id)] @ vector)
    assert reason.effect == pytest.approx(full - float(out.vectors[row] @ vector), abs=1e-4)

    # every modality reason of every answer, recomputed: each modality's effect with it dropped, the ID terms'
    # as the score without them (an absent modality and a cold item's ID terms change nothing: effect 0);
    # a share is the effect over the sum of |effect| of them all, and only those positive and >= MIN_SHARE are cited
    from mmrec.serve.explain import ID_TERMS, MIN_SHARE

    def scores(**how) -> torch.Tensor:
        out = embed_batches(model, item_batches(data, rec._loaded()[1], vocab.attributes), **how)
        return torch.zeros(len(vocab.item_ids)).index_put_((out.indices,), out.vectors @ vector)

    served = rec.emb.items @ vector
    effects = {m: served - scores(drop=(m,)) for m in model.modalities} | {ID_TERMS: served - scores(content_only=True)}
    for answer in answers:
        values = {name: float(e[vocab.item_ids.index(answer.item_id)]) for name, e in effects.items()}
        total = sum(abs(v) for v in values.values())
        got = {r.name: r for r in answer.reasons if r.kind == "modality"}
        clear = {n for n, v in values.items() if v > 1e-4 and v / total > MIN_SHARE + 1e-4}
        possible = {n for n, v in values.items() if v > -1e-4 and v / total > MIN_SHARE - 1e-4}
        assert clear <= got.keys() <= possible, (answer.item_id, values, got)
        for name, r in got.items():
            assert r.effect == pytest.approx(values[name], abs=1e-4), (answer.item_id, name)
            assert r.share == pytest.approx(values[name] / total, abs=1e-4), (answer.item_id, name)


def test_faithfulness_meets_the_goal_in_the_report_and_catches_a_wrong_explanation(history_run, monkeypatch,
                                                                                  tmp_path):
    from mmrec.data.splits import RunSplits
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.evaluate.evaluation import evaluate
    from mmrec.evaluate.report import write_report
    from mmrec.model.factory import load_run_model
    from mmrec.serve import faithfulness
    from mmrec.serve.embeddings import Embeddings

    root, data = history_run
    model, items = load_run_model(root / "run")[0].eval(), Embeddings.load(root / "emb").items
    report = evaluate(root / "run", data, items, {}, model, "test", [10])  # what `mmrec eval` reports
    check = report["explanation_faithfulness"]
    assert check["explained"] >= 100 and check["share"] >= 0.8, check  # the goal
    assert check["method"].startswith("history tower") and check["mean_drop_top"] > check["mean_drop_random"]
    paths = write_report({"protocol": report["protocol"], "explanation_faithfulness": check}, tmp_path)
    assert f"## Explanation faithfulness\n\nFor {check['explained']} explained" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["explanation_faithfulness"]["share"] == pytest.approx(check["share"])
    # the check can fail: an explanation citing the item whose removal matters least fails it
    real = faithfulness.history_effects
    monkeypatch.setattr(faithfulness, "history_effects", lambda *a: (lambda p, e, v: (p, -e, v))(*real(*a)))
    train = RunSplits(data, RunVocabulary.load(root / "run"))["train"]
    wrong = faithfulness.explanation_faithfulness(model, items, train, train.users, train)
    assert wrong["explained"] > 0 and wrong["share"] < 0.5, wrong


def test_cli_explain_prints_each_items_reasons_with_numbers(history_run, capsys):
    from mmrec.cli import main

    root, data = history_run
    emb_users = json.loads((root / "emb" / "user_ids.json").read_text())
    user = emb_users[2]
    assert main(["recommend", "--run", str(root / "run"), "--user", user, "--k", "3", "--explain"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "score", "item_id", "title"]
    ranked = [line for line in out[1:] if re.match(r"\s+\d+\s+-?\d+\.\d{4}\s", line)]
    reasons = [line for line in out[1:] if line not in ranked]
    assert len(ranked) == 3 and reasons
    for line in reasons:  # every reason with its share and its number
        assert re.match(r"\s{17}(\s*\d+%  (history|attribute|modality)\s.*\d\.\d{3}|\(no evidence found\))", line), line
    mine = train_items(data, user)
    assert all(line.split()[2] in mine for line in reasons if "history" in line.split()[1:2])
    # a given history: the reasons cite only the given items
    given = sorted(mine)[:4]
    assert main(["recommend", "--run", str(root / "run"), "--history", ",".join(f"{i}:5" for i in given),
                 "--k", "3", "--explain"]) == 0
    cited = [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.split()[1:2] == ["history"]]
    assert set(cited) <= set(given)
    # an unknown user is one line, exit 2
    assert main(["recommend", "--run", str(root / "run"), "--user", "nobody", "--explain"]) == 2
    assert "unknown user" in capsys.readouterr().err


def test_id_tower_cites_training_neighbours_by_their_cosine(trained):
    root, data = trained
    rec = mmrec.Recommender.from_run(root / "run", data=data)
    q = rec.emb.similarity_vectors()  # `similar`'s cosines: the explanation's must be the same
    found = 0
    for user in rec.emb.user_ids[:8]:
        mine = train_items(data, user)
        for answer in rec.recommend(user=user, k=5, explain=True):
            for r in (r for r in answer.reasons if r.kind == "history"):
                assert r.name in mine
                cosine = float(q[rec.emb.item_ids.index(r.name)] @ q[rec.emb.item_ids.index(answer.item_id)])
                assert f"cosine {cosine:.2f}" in r.detail and r.effect > 0
                found += 1
    assert found > 0
    with pytest.raises(ValueError, match="ID user tower"):  # an ID tower serves no given history
        rec.recommend(history=[rec.emb.item_ids[0]], explain=True)
    blind = mmrec.Recommender.from_run(root / "run", data=data)
    blind.data = None  # without the dataset there is no training history to explain from
    with pytest.raises(ValueError, match="needs the run's dataset"):
        blind.recommend(user=rec.emb.user_ids[0], exclude_seen=False, explain=True)
