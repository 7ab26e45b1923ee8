"""A catalogue full of the faults real ones have: every row is accounted for, none crashes the run."""

import json
from collections import Counter
from pathlib import Path

from conftest import write_jpeg, write_png, write_tone

from mmrec.cli import main
from mmrec.data.reader import ReaderConfig, item_loader
from mmrec.shard.quarantine import read_quarantine


def build_fuzzed(root: Path):
    media = root / "media"
    media.mkdir(parents=True)
    good_jpg = write_jpeg(media / "good.jpg", size=(64, 48))
    truncated = media / "truncated.jpg"
    truncated.write_bytes(good_jpg.read_bytes()[: len(good_jpg.read_bytes()) // 2])
    write_png(media / "png_named.jpg")  # a PNG with a .jpg name: fine, format is read from content
    (media / "empty.wav").write_bytes(b"")
    (media / "notaudio.wav").write_text("this is not audio at all, just text pretending")
    write_tone(media / "good.flac")
    write_tone(media / "good.wav")
    lines = [
        json.dumps({"item_id": "ok-all", "text": "fine item", "image": "media/good.jpg", "audio": "media/good.flac"}),
        json.dumps({"item_id": "trunc-img", "text": "truncated jpeg", "image": "media/truncated.jpg"}),
        json.dumps({"item_id": "png-as-jpg", "image": "media/png_named.jpg"}),
        json.dumps({"item_id": "zero-wav", "text": "zero byte wav", "audio": "media/empty.wav"}),
        json.dumps({"item_id": "fake-wav", "text": "not audio", "audio": "media/notaudio.wav"}),
        json.dumps({"item_id": "missing-file", "text": "image missing", "image": "media/nope.jpg"}),
        "",  # an empty line: not an item, not counted
        json.dumps({"item_id": "ok-all", "text": "duplicate id"}),
        '{"item_id": "bad-utf8", "text": "caf\xff\xfe", "audio": "media/good.wav"}',  # bytes fixed below
        json.dumps({"item_id": "nothing-left", "image": "media/truncated.jpg", "audio": "media/empty.wav"}),
        "{this is not json",
        json.dumps({"item_id": "", "text": "empty id"}),
        json.dumps({"item_id": "bad-attrs", "text": "x", "attributes": {"a": 1}}),
        "   ",
        json.dumps({"item_id": 42, "text": "numeric id", "attributes": ["drama"], "year": 1999}),
    ]
    raw = "\n".join(lines).encode("utf-8")
    # invalid UTF-8 inside the text of one line
    raw = raw.replace("caf\xff\xfe".encode(), b"caf\xff\xfe")
    (root / "items.jsonl").write_bytes(raw + b"\n")

    inter = [
        "user_id,item_id,rating,timestamp",
        "u1,ok-all,4,100",
        "u1,png-as-jpg,nan,101",  # NaN rating
        "u1,zero-wav,great,102",  # text rating
        "u2,unknown-item,3,103",  # unknown item
        "u2,nothing-left,3,104",  # item that was quarantined
        "u2,ok-all,2,90",  # older duplicate of the next row
        "u2,ok-all,5,105",
        "u3,42,5,106",
        "u3,bad-utf8,1,2020-01-02T03:04:05",  # ISO timestamp
        "u3,trunc-img,3,not-a-time",  # bad timestamp
        "u4,fake-wav,3",  # too few fields
        "",
        "u4,missing-file,inf,107",  # infinite rating
        "u4,png-as-jpg,3.5,108",
        "u5,zero-wav,2,109",
        "u5,png-as-jpg,4,110",
        "u5,ok-all,1,111",
    ]
    (root / "interactions.csv").write_text("\n".join(inter) + "\n")
    return root


def test_fuzzed_catalogue_is_fully_accounted_for(tmp_path, capsys):
    root = build_fuzzed(tmp_path / "cat")
    out = tmp_path / "data"
    code = main(["shard", "--items", str(root / "items.jsonl"), "--interactions", str(root / "interactions.csv"),
                 "--out", str(out), "--split", "random", "--no-progress", "--items-per-shard", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "13 non-blank lines = 8 written + 5 quarantined (5 modalities dropped" in printed
    assert "16 rows =" in printed

    manifest = json.loads((out / "manifest.json").read_text())
    q = read_quarantine(out / "quarantine.jsonl")
    kinds = Counter(e["kind"] for e in q)
    c = manifest["counts"]
    assert c["item_lines"] == 13 == c["items_written"] + kinds["item"]
    assert c["interaction_rows"] == 16 == c["interactions_written"] + kinds["interaction"]

    by_item = {}
    for e in q:
        by_item.setdefault((e["kind"], e.get("item_id"), e.get("modality")), []).append(e)
    # media faults drop only the modality, the item stays
    assert ("modality", "trunc-img", "image") in by_item
    assert ("modality", "zero-wav", "audio") in by_item and "empty" in by_item[("modality", "zero-wav", "audio")][0]["reason"]
    assert ("modality", "fake-wav", "audio") in by_item
    assert "not found" in by_item[("modality", "missing-file", "image")][0]["reason"]
    assert "UTF-8" in by_item[("modality", "bad-utf8", "text")][0]["reason"]
    # whole-item rejections, with the line they came from
    dup = by_item[("item", "ok-all", None)][0]
    assert dup["line"] == 8 and "first seen on line 1" in dup["reason"]
    assert "no usable modality" in by_item[("item", "nothing-left", None)][0]["reason"]
    item_lines = sorted(e["line"] for e in q if e["kind"] == "item")
    assert item_lines == [8, 10, 11, 12, 13]
    # interaction rejections
    reasons = {e["line"]: e["reason"] for e in q if e["kind"] == "interaction"}
    assert "finite" in reasons[3] and "not a number" in reasons[4]
    assert "unknown item_id" in reasons[5]
    assert "quarantined (items.jsonl line 10)" in reasons[6]
    assert "duplicate" in reasons[7] and "line 8" in reasons[7]
    assert "timestamp" in reasons[11]
    assert "fields" in reasons[12]
    assert "finite" in reasons[14]
    assert set(reasons) == {3, 4, 5, 6, 7, 11, 12, 14}

    ids = json.loads((out / "item_ids.json").read_text())
    # the written items, in the seeded shuffled order (`--keep-order` would keep the file's)
    assert sorted(ids) == sorted(["ok-all", "trunc-img", "png-as-jpg", "zero-wav", "fake-wav", "missing-file",
                                  "bad-utf8", "42"])
    assert not any(e.get("item_id") == "nothing-left" and e["kind"] == "modality" for e in q)

    # what was written reads back, with exactly the surviving modalities
    items = {it.item_id: it for batch in item_loader(out, "eval", ReaderConfig(batch_size=4), rank=0, world_size=1)
             for it in batch}
    assert set(items) == set(ids)
    assert items["png-as-jpg"].present == {"text": False, "image": True, "audio": False}
    assert items["trunc-img"].present == {"text": True, "image": False, "audio": False}
    assert items["bad-utf8"].present == {"text": False, "image": False, "audio": True}
    assert items["42"].attributes == ["drama"] and items["42"].metadata == {"year": 1999}
    assert items["ok-all"].text == "fine item"


def test_missing_column_and_missing_file_are_clear_errors(tmp_path, capsys):
    root = build_fuzzed(tmp_path / "cat")
    bad = root / "bad.csv"
    bad.write_text("user,item\nu1,ok-all\n")
    code = main(["shard", "--items", str(root / "items.jsonl"), "--interactions", str(bad), "--out", str(tmp_path / "d")])
    assert code == 2
    assert "missing column" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    code = main(["shard", "--items", str(root / "nope.jsonl"), "--interactions", str(bad), "--out", str(tmp_path / "d")])
    assert code == 2 and "not found" in capsys.readouterr().err
