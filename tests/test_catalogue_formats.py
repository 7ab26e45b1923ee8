"""Catalogue formats: items.parquet and a Hugging Face datasets folder shard to the same dataset as the
equivalent items.jsonl; and a plain WebDataset pipeline decodes the shards' audio with `mmrec.audio_handler`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

import mmrec
from mmrec.cli import main
from mmrec.data.reader import shard_urls
from mmrec.shard.items import parse_items
from mmrec.shard.quarantine import read_quarantine
from mmrec.shard.writer import ShardOptions, shard_catalogue


def _shard(items: Path, interactions: Path, out: Path) -> dict:
    shard_catalogue(items, interactions, out, options=ShardOptions(items_per_shard=5, progress=False))
    return json.loads((out / "manifest.json").read_text())


def _content(manifest: dict) -> dict:
    """The manifest less where the catalogue came from: shard and split hashes, counts, coverage, ..."""
    return {k: v for k, v in manifest.items() if k != "sources"}


@pytest.fixture
def jsonl_dataset(small_catalogue, tmp_path):
    items, interactions, rows = small_catalogue
    return items, interactions, rows, _shard(items, interactions, tmp_path / "from_jsonl")


def test_parquet_items_shard_like_jsonl(jsonl_dataset, tmp_path):
    items, interactions, rows, expected = jsonl_dataset
    parquet = items.with_name("items.parquet")  # beside items.jsonl: the same relative media paths
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    got = _shard(parquet, interactions, tmp_path / "from_parquet")
    assert got["num_items"] == 12 and _content(got) == _content(expected)
    assert got["sources"]["items"]["path"].endswith("items.parquet")


def test_hf_datasets_folder_with_embedded_media_shards_like_jsonl(jsonl_dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    items, interactions, rows, expected = jsonl_dataset
    # Media embedded as bytes under datasets' Image / Audio features, as save_to_disk stores them;
    # cast (not from_list(features=...)), which would need torchcodec to encode audio.
    embedded = [{**row, **{m: {"bytes": (items.parent / row[m]).read_bytes(), "path": None}
                           for m in ("image", "audio") if m in row}} for row in rows]
    ds = datasets.Dataset.from_list(embedded).cast_column("image", datasets.Image()).cast_column("audio", datasets.Audio())
    folder = tmp_path / "hf_items"
    ds.save_to_disk(str(folder))

    out = tmp_path / "from_hf"
    assert main(["shard", "--items", str(folder), "--interactions", str(interactions), "--out", str(out),
                 "--items-per-shard", "5", "--no-progress"]) == 0
    got = json.loads((out / "manifest.json").read_text())
    assert _content(got) == _content(expected)
    assert not (tmp_path / "from_hf.media").exists()  # the staged media are removed


def test_bad_parquet_rows_are_quarantined_and_counts_reconcile(small_catalogue, tmp_path):
    items, interactions, rows = small_catalogue
    # images as a plain binary column (embedded bytes), audio as paths
    embedded = [{**r, "image": (items.parent / r["image"]).read_bytes() if "image" in r else None} for r in rows]
    bad = [
        {"item_id": None, "text": "no id"},  # row 13: rejected
        {"item_id": "it00", "text": "again"},  # row 14: duplicate, rejected
        {"item_id": "x1", "text": "ok", "image": b"not an image"},  # row 15: image dropped, item kept
        {"item_id": "x2", "image": b""},  # row 16: empty image, nothing left: rejected
    ]
    parquet = items.with_name("items.parquet")
    pq.write_table(pa.Table.from_pylist(embedded + bad), parquet)
    manifest = _shard(parquet, interactions, tmp_path / "data")

    c = manifest["counts"]
    assert (c["item_lines"], c["items_written"], c["items_quarantined"]) == (16, 13, 3)
    assert manifest["modalities"]["image"]["count"] == sum("image" in r for r in rows)
    entries = {(e["line"], e["kind"]): e["reason"] for e in read_quarantine(tmp_path / "data" / "quarantine.jsonl")}
    assert "missing or empty item_id" in entries[(13, "item")]
    assert "duplicate item_id" in entries[(14, "item")]
    assert "could not be decoded" in entries[(15, "modality")]
    assert "empty" in entries[(16, "item")]


def test_catalogue_errors_name_the_fix(small_catalogue, tmp_path, monkeypatch):
    items, _, _ = small_catalogue
    not_parquet = tmp_path / "items.parquet"
    not_parquet.write_text("{}\n")
    with pytest.raises(ValueError, match="not a readable parquet file"):
        parse_items(not_parquet)
    with pytest.raises(ValueError, match="not a Hugging Face datasets folder"):
        parse_items(items.parent)  # a folder of media, not a datasets folder
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the `hf` extra were not installed
    with pytest.raises(ValueError, match=r"pip install 'mmrec\[hf\]'"):
        parse_items(items.parent)


def test_plain_webdataset_decodes_our_audio_with_the_handler(jsonl_dataset, tmp_path):
    _, _, rows, _ = jsonl_dataset
    data = tmp_path / "from_jsonl"
    frequency = {row["item_id"]: 200 + 50 * int(row["item_id"][2:]) for row in rows if "audio" in row}
    pipeline = wds.WebDataset(shard_urls(data), shardshuffle=False).decode("pil", mmrec.audio_handler)
    seen = set()
    for sample in pipeline:
        meta = sample["json"]
        audio = [ext for ext in ("flac", "wav", "ogg") if ext in sample]
        assert bool(audio) == (meta["item_id"] in frequency)
        if audio:
            wave, rate = sample[audio[0]]
            t = np.arange(wave.shape[1]) / rate
            tone = 0.3 * np.sin(2 * np.pi * frequency[meta["item_id"]] * t)  # as conftest.write_tone wrote it
            assert rate == 8000 and wave.shape == (1, 2000) and str(wave.dtype) == "torch.float32"
            np.testing.assert_allclose(wave[0].numpy(), tone, atol=1e-3)  # 16-bit PCM
            seen.add(meta["item_id"])
        if "image" in meta["modalities"]:
            assert next(sample[e] for e in ("jpg", "png", "webp") if e in sample).size == (16, 12)  # "pil" still works
    assert seen == set(frequency)
    assert mmrec.audio_handler(".jpg", b"\xff\xd8") is None  # other members are left to the next handler
    with pytest.raises(ValueError, match="could not be decoded"):
        mmrec.audio_handler(".flac", b"not audio")
