"""`mmrec.data.dataset.Dataset`: every reader of DATA gets its files through one object, each split file parsed
once and checked against the manifest's sha256, the shards' items indexed from one pass over their headers."""

import json

import numpy as np
import pytest
from conftest import make_dataset

from mmrec.data.dataset import Dataset, SplitRows
from mmrec.data.reader import ReaderConfig, decode_sample, item_loader
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.serve.embeddings import seen_by_user, seen_items
from mmrec.serve.new_items import decode_row
from mmrec.shard.items import parse_items


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dataset"), num_items=40, num_users=12, num_ratings=300,
                        items_per_shard=10)


def test_each_split_file_is_parsed_once_for_every_reader(data, monkeypatch):
    parsed = []
    parse = SplitRows.parse.__func__
    monkeypatch.setattr(SplitRows, "parse", classmethod(lambda cls, f: parsed.append(1) or parse(cls, f)))
    dataset = Dataset(data)
    vocab = RunVocabulary.from_data(dataset)
    splits = RunSplits(dataset, vocab)
    splits["train"], splits["valid"], splits["test"]
    seen = seen_by_user(dataset, vocab.item_ids)
    assert len(parsed) == 3  # train, valid, test: once each
    assert vocab == RunVocabulary.from_data(data)  # a path still works, reading its own Dataset
    train = splits["train"]
    user = vocab.user_ids[0]
    assert seen_items(dataset, user, vocab.item_ids) == set(seen[user].tolist())
    assert set(train.items[train.users == 0].tolist()) <= set(seen[user].tolist())


@pytest.mark.parametrize("split", ["train", "valid"])
def test_an_edited_split_file_is_refused_by_every_reader(data, tmp_path, split):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    path = copy / "interactions" / f"{split}.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # one row fewer
    vocab = RunVocabulary.from_data(data)
    readers = [lambda: seen_by_user(copy, vocab.item_ids), lambda: RunSplits(copy, vocab)[split]]
    if split == "train":
        readers.append(lambda: RunVocabulary.from_data(copy))
    for read in readers:
        with pytest.raises(ValueError, match=f"{split}.csv does not match the manifest's sha256"):
            read()


def test_the_shard_index_is_what_the_reader_streams(data):
    dataset = Dataset(data)
    streamed = {item.index: item for batch in item_loader(data, "eval", ReaderConfig(batch_size=8), rank=0,
                                                          world_size=1) for item in batch}
    assert sorted(dataset.items()) == sorted(streamed) == list(range(len(dataset.item_ids)))
    for index, entry in dataset.items().items():
        assert entry.item_id == dataset.item_ids[index] == streamed[index].item_id
        assert entry.attributes == streamed[index].attributes
    for index in (0, 17, 39):
        one = decode_sample(dataset.item_sample(index))  # read by byte range
        assert (one.item_id, one.text, one.attributes) == (streamed[index].item_id, streamed[index].text,
                                                           streamed[index].attributes)
        assert (one.image is None) == (streamed[index].image is None)
        if one.image is not None:
            assert np.array_equal(np.asarray(one.image), np.asarray(streamed[index].image))
    assert dataset.item_sample(len(dataset.item_ids)) is None


@pytest.mark.parametrize("attributes, kept", [("drama", ["drama"]), ([" drama ", "", "noir"], ["drama", "noir"]),
                                              (None, []), (5, None), (["drama", 3], None)])
def test_a_row_is_validated_by_the_shard_rules_in_embed_items(tmp_path, attributes, kept):
    """`mmrec shard` and `Recommender.embed_items` accept and refuse the same attributes, for the same reason."""
    line = {"item_id": "a", "text": "a film", **({} if attributes is None else {"attributes": attributes})}
    (tmp_path / "items.jsonl").write_text(json.dumps(line) + "\n")
    records, entries, _ = parse_items(tmp_path / "items.jsonl")
    options = {"image_max_side": None, "audio_rate": None}
    if kept is None:
        assert not records and [e.reason for e in entries] == ["attributes must be a list of strings"]
        with pytest.raises(ValueError, match=r"^row 0 \(a\): attributes must be a list of strings$"):
            decode_row(line, 0, options, ("text",))
    else:
        assert records[0].attributes == kept == decode_row(line, 0, options, ("text",)).attributes


@pytest.mark.parametrize("text, reason", [(7, "text must be a string, got int"), ("  ", "text is empty")])
def test_bad_text_has_the_shard_reason_in_embed_items(tmp_path, text, reason):
    line = {"item_id": "a", "text": text, "attributes": ["x"]}
    (tmp_path / "items.jsonl").write_text(json.dumps(line) + "\n")
    _, entries, _ = parse_items(tmp_path / "items.jsonl")
    assert reason in [e.reason for e in entries]
    with pytest.raises(ValueError, match=rf"^row 0 \(a\): {reason}$"):
        decode_row(line, 0, {"image_max_side": None, "audio_rate": None}, ("text",))
