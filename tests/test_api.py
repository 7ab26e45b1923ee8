"""`mmrec.Recommender`, the Python API: the same answers as the CLI's functions, new items scored from
content alone (never another item's ID terms), and one clear error for bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_dataset

import mmrec
from mmrec.data.batch import NEW_ITEM, BatchCollator, ExampleBuilder
from mmrec.data.item import DecodedItem
from mmrec.serve.embeddings import Embeddings, recommend, search, seen_items, similar


@pytest.fixture(scope="module")
def rec(trained):
    root, data = trained
    return mmrec.Recommender.from_run(root / "run", data=data)  # EMB found from RUN/embeddings.json


def catalogue_rows(root) -> dict[str, dict]:
    """item_id -> the item's items.jsonl line, its media paths made absolute (as a user would pass them)."""
    cat = root / "cat"
    lines = [json.loads(s) for s in (cat / "items.jsonl").open()]
    return {line["item_id"]: {k: str(cat / v) if k in ("image", "audio") else v for k, v in line.items()}
            for line in lines}


def same_answers(got, expected: list[tuple[str, float]]) -> bool:
    return [r.item_id for r in got] == [i for i, _ in expected] and \
        [r.score for r in got] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_recommend_and_similar_are_the_cli_answers(trained, rec):
    root, data = trained
    emb = Embeddings.load(root / "emb")
    user, item = emb.user_ids[0], emb.item_ids[3]
    seen = seen_items(data, user, emb.item_ids)
    assert seen  # so excluding them is tested
    got = rec.recommend(user=user, k=5)
    assert [(r.item_id, r.score) for r in got] == [(emb.item_ids[i], s) for i, s in recommend(emb, user, 5, seen)]
    everything = rec.recommend(user=user, k=len(emb.item_ids), exclude_seen=False)
    assert {r.item_id for r in everything} & {emb.item_ids[i] for i in seen}
    got = rec.similar(item, k=4)
    assert [(r.item_id, r.title, r.score) for r in got] == [(emb.item_ids[i], emb.titles[i], s)
                                                           for i, s in similar(emb, item, 4)]
    assert got.to_dicts()[0] == {"item_id": got[0].item_id, "title": got[0].title, "score": got[0].score}
    table = repr(got).splitlines()  # what a notebook shows: the CLI's table
    assert table[0].split() == ["rank", "score", "item_id", "title"] and got[1].item_id in table[2]


def test_search_finds_the_item_whose_text_is_the_query(trained, rec):
    root, _ = trained
    emb, rows = rec.emb, catalogue_rows(root)
    item = next(i for i in emb.item_ids[5:] if "text" in rows[i])
    hits = rec.search(rows[item]["text"], k=3)
    assert hits[0].item_id == item and hits[0].score == pytest.approx(1.0, abs=1e-4)
    # the same answer as the one-query form (a run folder: the model loaded for it)
    assert same_answers(hits, [(emb.item_ids[i], s) for i, s in search(root / "run", emb, rows[item]["text"], 3)])


def test_a_new_item_is_embedded_as_mmrec_embed_embeds_a_cold_item(trained):
    root, data = trained
    rec = mmrec.Recommender.from_run(root / "run", data=data)  # its own: this test adds items
    emb, rows = rec.emb, catalogue_rows(root)
    cold = [i for i in range(len(emb.item_ids)) if not emb.id_terms[i]
            and {"text", "image", "audio"} <= rows[emb.item_ids[i]].keys()]
    warm = next(i for i in range(len(emb.item_ids)) if emb.id_terms[i])
    assert cold
    i = cold[0]
    row = rows[emb.item_ids[i]]
    model, pre = rec._loaded()
    looked_up = []  # the rows the model takes ID terms from
    model.item_output = lambda state, index: looked_up.append(index.tolist()) or type(model).item_output(
        model, state, index)
    vectors = rec.embed_items([row, rows[emb.item_ids[warm]]])
    del model.item_output
    assert looked_up == [[NEW_ITEM, NEW_ITEM]]
    torch.testing.assert_close(vectors[0], emb.items[i], rtol=1e-5, atol=1e-5)  # `mmrec embed`'s vector
    # a warm item's content, as a new item, is its content alone: not its exported vector (ID terms)
    assert (vectors[1] - emb.items[warm]).abs().max() > 1e-3
    # ... and no other item's ID terms either: numbered as a warm row, the same content scores differently
    as_warm_row = ExampleBuilder(pre, [], catalogue=None)(DecodedItem(warm, "new", row["text"], None, None, None))
    batch = BatchCollator(pre)([as_warm_row])
    with torch.no_grad():
        borrowing = model.item_export(model.items(batch)[0])[0]
        batch.item_index = torch.tensor([NEW_ITEM])
        content = model.item_export(model.items(batch)[0])[0]
    assert (borrowing - content).abs().max() > 1e-3  # so the comparisons above can tell the two apart

    # added to the served catalogue: `similar` and `search` see it (its twin has the same content)
    rec.embed_items([{**row, "item_id": "twin"}], add=True)
    assert rec.emb.item_ids[-1] == "twin" and not rec.emb.id_terms[-1]
    assert rec.similar("twin", k=1)[0].item_id == emb.item_ids[i]
    assert {r.item_id for r in rec.search(row["text"], k=2)} == {"twin", emb.item_ids[i]}
    with pytest.raises(ValueError, match="already in the catalogue"):
        rec.embed_items([{**row, "item_id": "twin"}], add=True)
    with pytest.raises(ValueError, match="no item_id"):
        rec.embed_items([row["text"]], add=True)


def test_the_example_builder_never_lends_a_new_item_a_catalogue_row(trained):
    root, _ = trained
    vocab = json.loads((root / "run" / "vocabulary.json").read_text())["item_ids"]
    builder = ExampleBuilder({}, [], catalogue=vocab)
    # a new catalogue's first row is numbered 0 too: it is not the run's item 0
    assert builder(DecodedItem(0, "brand-new", "text", None, None, None))["index"] == NEW_ITEM
    assert builder(DecodedItem(5, vocab[5], "text", None, None, None))["index"] == 5  # the run's item, at its row
    assert builder(DecodedItem(len(vocab) + 3, "beyond", "text", None, None, None))["index"] == NEW_ITEM
    assert ExampleBuilder({}, [], catalogue=None)(DecodedItem(None, "no-row", "text", None, None, None))["index"] == NEW_ITEM
    with pytest.raises(TypeError, match="catalogue"):  # no default: nobody trusts a row number by accident
        ExampleBuilder({}, [])


def test_bad_input_is_one_clear_error(trained, rec, tmp_path):
    root, _ = trained
    with pytest.raises(ValueError, match="unknown user"):
        rec.recommend(user="nobody")
    with pytest.raises(ValueError, match="unknown item"):
        rec.similar("nothing")
    with pytest.raises(ValueError, match="exactly one of"):
        rec.recommend()
    with pytest.raises(ValueError, match="k must be a positive integer"):
        rec.similar(rec.emb.item_ids[0], k=0)
    with pytest.raises(ValueError, match="user_tower=history"):  # an ID-tower run has no vector for a history
        rec.recommend(history=[rec.emb.item_ids[0]])
    with pytest.raises(ValueError, match="none of the model's modalities"):
        rec.embed_items([{"item_id": "x", "title": "only a title"}])
    with pytest.raises(ValueError, match=r"row 1 \(y\): image file not found"):
        rec.embed_items(["fine text", {"item_id": "y", "image": str(tmp_path / "missing.png")}])
    with pytest.raises(ValueError, match="pass a run folder"):
        mmrec.Recommender.from_run(tmp_path)
    # without the run's dataset the seen items are unknown: said, not silently kept in
    blind = mmrec.Recommender(root / "run", rec.emb, data=None)
    with pytest.raises(ValueError, match="exclude_seen=False"):
        blind.recommend(user=rec.emb.user_ids[0])
    assert len(blind.recommend(user=rec.emb.user_ids[0], k=3, exclude_seen=False)) == 3
    other = make_dataset(tmp_path / "other", num_items=30, num_users=10, num_ratings=200, items_per_shard=30)
    with pytest.raises(ValueError, match="not the dataset"):
        mmrec.Recommender.from_run(root / "run", data=other)


def test_a_history_is_served_as_recommend_history_serves_it(trained, tmp_path):
    """A history-tower model over the trained run's item vectors (random weights suffice: the API must
    give what `recommend_for_history` gives)."""
    from mmrec.model.config import ModelConfig
    from mmrec.model.factory import ModelSizes, create_model, save_model
    from mmrec.serve.incremental import recommend_for_history

    root, data = trained
    emb = Embeddings.load(root / "emb")
    torch.manual_seed(0)
    sizes = ModelSizes(len(emb.user_ids), len(emb.item_ids), [], 3.0)
    model, _ = create_model(ModelConfig(embedding_dim=emb.items.shape[1] - 2, item_id_embeddings=True,
                                         user_tower="history"), sizes)
    run = tmp_path / "run"
    save_model(model, sizes, run / "model")
    shutil.copy(root / "run" / "vocabulary.json", run / "vocabulary.json")
    rec = mmrec.Recommender(run, emb, data)
    history = [(emb.item_ids[2], 5.0), (emb.item_ids[9], None), (emb.item_ids[4], 1.0)]
    expected = [(emb.item_ids[i], s) for i, s in recommend_for_history(model.eval(), emb, history, k=6)]
    assert same_answers(rec.recommend(history=history, k=6), expected)
    text = f"{emb.item_ids[2]}:5,{emb.item_ids[9]},{emb.item_ids[4]}:1"  # as `mmrec recommend --history` takes it
    assert same_answers(rec.recommend(history=text, k=6), expected)
    assert emb.item_ids[2] in {r.item_id for r in rec.recommend(history=history, k=len(emb.item_ids),
                                                                 exclude_seen=False)}
    with pytest.raises(ValueError, match="not in the embeddings"):
        rec.recommend(history=["no-such-item"])


def test_a_fresh_index_is_searched_until_items_are_added(trained, tmp_path):
    pytest.importorskip("faiss")
    from mmrec.serve.ann import build_indexes

    root, data = trained
    shutil.copytree(root / "emb", tmp_path / "emb")
    build_indexes(tmp_path / "emb")  # small: an exact (flat) index
    rec = mmrec.Recommender.from_run(root / "run", emb=tmp_path / "emb", data=data)
    exact = mmrec.Recommender.from_run(root / "run", emb=tmp_path / "emb", data=data, exact=True)
    user, item = rec.emb.user_ids[1], rec.emb.item_ids[5]
    assert rec._index("recommend") is not None and exact._index("recommend") is None
    assert same_answers(rec.recommend(user=user, k=5), [(r.item_id, r.score) for r in exact.recommend(user=user, k=5)])
    assert same_answers(rec.similar(item, k=5), [(r.item_id, r.score) for r in exact.similar(item, k=5)])
    rec.embed_items([{"item_id": "late", "text": "a late arrival"}], add=True)
    assert rec._index("similar") is None  # the index lacks the new item: it would never be found
    assert "late" in {r.item_id for r in rec.similar(item, k=len(rec.emb.item_ids))}
