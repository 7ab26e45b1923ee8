"""items -> shards -> reader: contents, missing modalities, manifest, hashes, options."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmrec.data.reader import ReaderConfig, item_loader, load_manifest
from mmrec.shard.protocols import SplitConfig
from mmrec.shard.writer import ShardOptions, shard_catalogue


def read_all(data, **kw):
    return {it.item_id: it for batch in item_loader(data, "eval", ReaderConfig(batch_size=5), rank=0, world_size=1, **kw)
            for it in batch}


def test_round_trip_all_and_missing_modalities(small_catalogue, tmp_path):
    items_path, inter_path, items = small_catalogue
    report = shard_catalogue(items_path, inter_path, tmp_path / "data", SplitConfig(seed=0),
                             ShardOptions(items_per_shard=5, progress=False))
    m = report.manifest
    assert m["num_items"] == 12 and [s["num_items"] for s in m["shards"]] == [5, 5, 2]
    assert m["modalities"]["text"]["count"] == sum("text" in it for it in items)
    assert m["modalities"]["image"]["count"] == sum("image" in it for it in items)
    assert m["modalities"]["audio"]["count"] == sum("audio" in it for it in items)
    assert m["attributes"] == ["tag0", "tag1", "tag2"]

    got = read_all(tmp_path / "data")
    assert sorted(it.index for it in got.values()) == list(range(12))
    ids = json.loads((tmp_path / "data" / "item_ids.json").read_text())
    for src in items:
        it = got[src["item_id"]]
        assert ids[it.index] == src["item_id"]
        assert it.present == {m: m in src for m in ("text", "image", "audio")}
        assert it.text == src.get("text")
        assert it.attributes == src["attributes"] and it.metadata == {"title": src["title"]}
        if "image" in src:
            original = Image.open(items_path.parent / src["image"]).convert("RGB")
            assert it.image.size == original.size
            assert np.array_equal(np.asarray(it.image), np.asarray(original))  # stored byte for byte
        if "audio" in src:
            wave, rate = sf.read(items_path.parent / src["audio"], dtype="float32", always_2d=True)
            assert it.sample_rate == rate
            assert np.allclose(it.waveform.numpy(), wave.T)


def test_manifest_hashes_match_files_and_runs_are_byte_identical(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    for out in ("a", "b"):
        shard_catalogue(items_path, inter_path, tmp_path / out, SplitConfig(protocol="ratio", seed=5),
                        ShardOptions(items_per_shard=4, progress=False))
    ma, mb = load_manifest(tmp_path / "a"), load_manifest(tmp_path / "b")
    for entry in ma["shards"] + list(ma["interactions"].values()) + [ma["item_ids"]]:
        data = (tmp_path / "a" / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    assert ma["interactions"] == mb["interactions"]
    assert ma["split"] == {"protocol": "ratio", "seed": 5, "ratios": [0.8, 0.1, 0.1]}
    split_rows = sum(v["rows"] for v in ma["interactions"].values())
    assert split_rows == ma["counts"]["interaction_rows"] == 48


def test_worker_processes_give_the_same_shards(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    one = shard_catalogue(items_path, inter_path, tmp_path / "one", options=ShardOptions(progress=False)).manifest
    two = shard_catalogue(items_path, inter_path, tmp_path / "two",
                          options=ShardOptions(workers=2, progress=False)).manifest
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]


def test_image_resize_and_audio_resample(small_catalogue, tmp_path):
    items_path, inter_path, items = small_catalogue
    shard_catalogue(items_path, inter_path, tmp_path / "data",
                    options=ShardOptions(image_max_side=8, audio_rate=4000, progress=False))
    got = read_all(tmp_path / "data")
    for src in items:
        it = got[src["item_id"]]
        if "image" in src:
            assert max(it.image.size) == 8 and it.image.size == (8, 6)  # 16x12 keeps its aspect ratio
        if "audio" in src:
            assert it.sample_rate == 4000 and it.waveform.shape == (1, 1000)  # 0.25 s
    assert load_manifest(tmp_path / "data")["options"]["audio_rate"] == 4000


def test_existing_output_needs_overwrite(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    shard_catalogue(items_path, inter_path, tmp_path / "data", options=ShardOptions(progress=False))
    with pytest.raises(ValueError, match="already exists"):
        shard_catalogue(items_path, inter_path, tmp_path / "data", options=ShardOptions(progress=False))
    shard_catalogue(items_path, inter_path, tmp_path / "data", options=ShardOptions(progress=False, overwrite=True))


def test_cold_items_split_recorded_in_manifest(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    m = shard_catalogue(items_path, inter_path, tmp_path / "data", SplitConfig(protocol="cold-items", seed=1),
                        ShardOptions(progress=False)).manifest
    cold = set(m["split"]["cold_items"]["valid"]) | set(m["split"]["cold_items"]["test"])
    train = (tmp_path / "data" / "interactions" / "train.csv").read_text().splitlines()[1:]
    assert cold and not {line.split(",")[1] for line in train} & cold


def test_parquet_and_template_text(small_catalogue, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    items_path, inter_path, items = small_catalogue
    lines = inter_path.read_text().splitlines()
    cols = list(zip(*[line.split(",") for line in lines[1:]]))
    table = pa.table({"user_id": list(cols[0]), "item_id": list(cols[1]), "rating": [float(x) for x in cols[2]],
                      "timestamp": [int(x) for x in cols[3]]})
    pq.write_table(table, tmp_path / "inter.parquet")
    m = shard_catalogue(items_path, tmp_path / "inter.parquet", tmp_path / "data", SplitConfig(protocol="temporal"),
                        ShardOptions(progress=False, text_template="{title} [{attributes}]")).manifest
    assert m["counts"]["interactions_written"] == 48
    got = read_all(tmp_path / "data")
    assert got["it03"].text == "Item 3 [tag0]"


def test_items_are_written_in_a_seeded_shuffled_order(small_catalogue, tmp_path):
    """A catalogue sorted by category must not stream in same-category runs: the written order is a
    permutation seeded by order_seed (item indices follow it); None keeps the file order."""
    items_path, inter_path, items = small_catalogue
    file_order = [it["item_id"] for it in items]

    def written(name, seed):
        shard_catalogue(items_path, inter_path, tmp_path / name, options=ShardOptions(progress=False, order_seed=seed))
        ids = json.loads((tmp_path / name / "item_ids.json").read_text())
        indices = {it.item_id: it.index for it in read_all(tmp_path / name).values()}
        assert [indices[i] for i in ids] == list(range(len(ids)))  # item index == written position
        return ids

    first, again, other, kept = written("a", 0), written("b", 0), written("c", 1), written("d", None)
    assert sorted(first) == sorted(file_order) and first != file_order
    assert again == first and other != first
    assert kept == file_order


def test_shard_cli_keep_order_and_the_command_line_round_trip():
    import argparse

    from mmrec.shard.options import add_shard_options, shard_command, shard_configs

    parser = argparse.ArgumentParser()
    add_shard_options(parser)
    split, options = shard_configs(parser.parse_args(["--seed", "4"]))
    assert options.order_seed == 4  # shuffled by the split's seed
    split, kept = shard_configs(parser.parse_args(["--keep-order"]))
    assert kept.order_seed is None
    assert "--keep-order" in shard_command("i", "r", "o", split, kept)
    assert "--keep-order" not in shard_command("i", "r", "o", split, options)
