"""The synthetic demo catalogue: format, determinism, and the latent structure models must learn."""

from __future__ import annotations

import csv
import importlib.util
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue

SMALL = dict(num_items=60, num_users=20, num_ratings=600)
REPO = Path(__file__).resolve().parents[1]


def read_items(out: Path) -> list[dict]:
    with open(out / "items.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_interactions(out: Path) -> list[dict]:
    with open(out / "interactions.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """A catalogue large enough for per-style statistics (about a second to write)."""
    out = tmp_path_factory.mktemp("medium")
    write_synthetic_catalogue(out, SyntheticCatalogueConfig(num_items=400, num_users=100,
                                                            num_ratings=5000, seed=3))
    return out


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray, center=np.mean) -> float:
    """Fit class centres on the first half, classify the second half by the nearest centre."""
    half = len(labels) // 2
    classes = np.unique(labels[:half])
    centroids = np.stack([center(features[:half][labels[:half] == c], 0) for c in classes])
    dist = ((features[half:, None, :] - centroids[None]) ** 2).sum(-1)  # (N/2, C)
    return float((classes[dist.argmin(1)] == labels[half:]).mean())


def bag_of_words(docs: list[list[str]], max_df: float = 0.3) -> np.ndarray:
    """L2-normalised word counts, so that the nearest centroid is the best cosine match.

    Words in more than `max_df` of the documents ("the", "and") are dropped: they carry no style
    and would dominate the counts.
    """
    df = Counter(w for d in docs for w in set(d))
    vocab = {w: k for k, w in enumerate(sorted(w for w in df if df[w] <= max_df * len(docs)))}
    counts = np.zeros((len(docs), len(vocab)))
    for row, doc in enumerate(docs):
        for w in doc:
            if w in vocab:
                counts[row, vocab[w]] += 1
    return counts / np.linalg.norm(counts, axis=1, keepdims=True).clip(1e-9)


# ----------------------------------------------------------------------------- format


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a = write_synthetic_catalogue(tmp_path / "a", SyntheticCatalogueConfig(**SMALL, seed=5))
    b = write_synthetic_catalogue(tmp_path / "b", SyntheticCatalogueConfig(**SMALL, seed=5))
    c = write_synthetic_catalogue(tmp_path / "c", SyntheticCatalogueConfig(**SMALL, seed=6))
    files_a, files_b = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
    assert files_a == files_b  # media included
    assert a["num_ratings"] == b["num_ratings"] and a["present"] == b["present"]
    files_c = file_bytes(tmp_path / "c")
    assert files_a["items.jsonl"] != files_c["items.jsonl"]
    assert files_a["interactions.csv"] != files_c["interactions.csv"]
    assert c["num_ratings"] > 0


def test_items_do_not_depend_on_the_user_side(tmp_path):
    write_synthetic_catalogue(tmp_path / "a", SyntheticCatalogueConfig(**SMALL))
    more_users = dict(SMALL, num_users=40, num_ratings=1200)
    write_synthetic_catalogue(tmp_path / "b", SyntheticCatalogueConfig(**more_users))
    assert (tmp_path / "a/items.jsonl").read_bytes() == (tmp_path / "b/items.jsonl").read_bytes()


def test_returned_counts_match_the_files(tmp_path):
    summary = write_synthetic_catalogue(tmp_path, SyntheticCatalogueConfig(**SMALL))
    items, rows = read_items(tmp_path), read_interactions(tmp_path)
    assert summary["num_items"] == len(items) == 60
    assert summary["num_ratings"] == len(rows)
    assert 0.8 * 600 <= len(rows) <= 600  # approximate target, never above it
    assert summary["num_users"] == len({r["user_id"] for r in rows}) == 20
    assert summary["num_rated_items"] == len({r["item_id"] for r in rows})
    for modality in ("text", "image", "audio"):
        assert summary["present"][modality] == sum(modality in it for it in items)
    assert Path(summary["items"]) == tmp_path / "items.jsonl"
    assert len(Path(summary["users"]).read_text().splitlines()) == 20


def test_items_are_valid_and_media_decode(tmp_path):
    config = SyntheticCatalogueConfig(**SMALL, p_missing_text=0.3, p_missing_image=0.3,
                                      p_missing_audio=0.3, jpeg_fraction=0.3, wav_fraction=0.3)
    write_synthetic_catalogue(tmp_path, config)
    items = read_items(tmp_path)
    assert len({it["item_id"] for it in items}) == len(items)
    formats, referenced = Counter(), set()
    for it in items:
        assert any(m in it for m in ("text", "image", "audio")), it["item_id"]
        assert isinstance(it["title"], str) and it["title"]
        assert 0 <= it["style"] < config.num_styles
        assert 1 <= len(it["attributes"]) <= 3 and all(isinstance(a, str) for a in it["attributes"])
        if "text" in it:
            assert it["text"].strip()
        if "image" in it:
            with Image.open(tmp_path / it["image"]) as img:
                img.load()
                assert img.size == (config.image_size, config.image_size) and img.mode == "RGB"
                formats[img.format] += 1
            referenced.add(it["image"])
        if "audio" in it:
            clip, rate = sf.read(tmp_path / it["audio"])
            assert rate == config.audio_rate and clip.ndim == 1
            assert len(clip) == int(config.audio_rate * config.audio_seconds)
            assert 0 < np.abs(clip).max() <= 1
            formats[sf.info(tmp_path / it["audio"]).format] += 1
            referenced.add(it["audio"])
    assert set(formats) == {"PNG", "JPEG", "FLAC", "WAV"}
    # absent modalities write no file, and nothing unreferenced is left behind
    assert {f"media/{p.name}" for p in (tmp_path / "media").iterdir()} == referenced
    assert sum("text" not in it for it in items) > 0  # missing modalities do occur


def test_interactions_are_valid(tmp_path):
    write_synthetic_catalogue(tmp_path, SyntheticCatalogueConfig(**SMALL))
    item_ids = {it["item_id"] for it in read_items(tmp_path)}
    header = (tmp_path / "interactions.csv").read_text().splitlines()[0]
    assert header == "user_id,item_id,rating,timestamp"
    last_time: dict[str, int] = {}
    pairs = set()
    for r in read_interactions(tmp_path):
        rating = float(r["rating"])
        assert 0.5 <= rating <= 5 and rating * 2 == round(rating * 2)
        assert r["item_id"] in item_ids
        assert r["timestamp"].isdigit()
        assert int(r["timestamp"]) > last_time.get(r["user_id"], 0)  # strictly increasing per user
        last_time[r["user_id"]] = int(r["timestamp"])
        pairs.add((r["user_id"], r["item_id"]))
    assert len(pairs) == len(read_interactions(tmp_path))  # a user rates an item once
    counts = Counter(r["user_id"] for r in read_interactions(tmp_path))
    assert min(counts.values()) >= SyntheticCatalogueConfig().min_ratings_per_user


def test_unrated_fraction_leaves_items_unrated(tmp_path):
    config = SyntheticCatalogueConfig(num_items=100, num_users=40, num_ratings=3000,
                                      unrated_fraction=0.2)
    summary = write_synthetic_catalogue(tmp_path, config)
    assert summary["num_rated_items"] <= 80


def test_rewriting_a_folder_leaves_no_stale_media(tmp_path):
    write_synthetic_catalogue(tmp_path, SyntheticCatalogueConfig(**SMALL, seed=1))
    write_synthetic_catalogue(tmp_path, SyntheticCatalogueConfig(**SMALL, seed=2))
    referenced = {it[m] for it in read_items(tmp_path) for m in ("image", "audio") if m in it}
    assert {f"media/{p.name}" for p in (tmp_path / "media").iterdir()} == referenced


def test_the_sharder_accepts_the_catalogue_whole(tmp_path):
    from mmrec.shard.protocols import SplitConfig
    from mmrec.shard.writer import ShardOptions, shard_catalogue

    summary = write_synthetic_catalogue(tmp_path / "cat", SyntheticCatalogueConfig(**SMALL))
    report = shard_catalogue(tmp_path / "cat/items.jsonl", tmp_path / "cat/interactions.csv",
                             tmp_path / "data", SplitConfig(protocol="temporal"),
                             ShardOptions(progress=False))
    assert report.quarantine == []
    assert report.manifest["num_items"] == summary["num_items"]
    for modality, count in summary["present"].items():
        assert report.manifest["modalities"][modality]["count"] == count


@pytest.mark.parametrize("bad, fix", [
    (dict(num_styles=1), "num_styles"),
    (dict(p_missing_audio=1.0), "p_missing_audio"),
    (dict(num_ratings=10), "raise num_ratings"),
    (dict(num_items=10, num_users=5, num_ratings=100), "lower it"),
    (dict(audio_rate=4000), "audio_rate"),
    (dict(jpeg_fraction=1.5), "jpeg_fraction"),
])
def test_config_errors_say_how_to_fix(bad, fix):
    with pytest.raises(ValueError, match=fix):
        SyntheticCatalogueConfig(**bad)


def test_script_writes_a_catalogue(tmp_path):
    path = REPO / "datasets" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("synthetic_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    summary = script.main(["--out", str(tmp_path), "--seed", "2", "--num-items", "30",
                           "--num-users", "10", "--num-ratings", "200", "--no-progress"])
    assert summary["num_items"] == 30 and len(read_items(tmp_path / "catalogue")) == 30
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["counts"]["items_written"] == 30
    assert not (REPO / "datasets/__init__.py").exists()


def test_full_size_media_are_jpeg_posters_and_long_flac_clips(tmp_path):
    """The throughput benchmarks' catalogue: every image a 320 px JPEG, every clip 10.24 s of FLAC."""
    config = SyntheticCatalogueConfig.full_size_media(num_items=12, num_users=4, num_ratings=40,
                                                      min_ratings_per_user=2)
    write_synthetic_catalogue(tmp_path, config)
    items = read_items(tmp_path)
    images = [tmp_path / it["image"] for it in items if "image" in it]
    clips = [tmp_path / it["audio"] for it in items if "audio" in it]
    assert images and clips
    for path in images:
        with Image.open(path) as im:
            assert (im.format, im.size) == ("JPEG", (320, 320))
    for path in clips:
        info = sf.info(path)
        assert (info.format, info.samplerate, info.frames) == ("FLAC", 16000, 163840)


# ----------------------------------------------------------------------------- latent structure


def test_image_colour_carries_the_style(medium):
    items = [it for it in read_items(medium) if "image" in it]
    mean_rgb = np.stack([np.asarray(Image.open(medium / it["image"]), float).mean((0, 1))
                         for it in items])
    acc = nearest_centroid_accuracy(mean_rgb, np.array([it["style"] for it in items]))
    assert 0.6 < acc < 0.99, acc  # chance is 1/8; noise keeps it imperfect


def test_audio_pitch_carries_the_style(medium):
    items = [it for it in read_items(medium) if "audio" in it]
    peaks = []
    for it in items:
        clip, rate = sf.read(medium / it["audio"])
        spectrum = np.abs(np.fft.rfft(clip))
        peaks.append(np.log2(np.fft.rfftfreq(len(clip), 1 / rate)[spectrum.argmax()]))
    # medians: the items whose audio shows another style would drag a 1-D mean off the pitch
    labels = np.array([it["style"] for it in items])
    acc = nearest_centroid_accuracy(np.array(peaks)[:, None], labels, center=np.median)
    assert 0.6 < acc < 0.99, acc


def test_text_words_carry_the_style(medium):
    items = [it for it in read_items(medium) if "text" in it]
    docs = [it["text"].lower().replace(".", " ").replace(",", " ").replace(":", " ").split()
            for it in items]
    acc = nearest_centroid_accuracy(bag_of_words(docs), np.array([it["style"] for it in items]))
    assert 0.6 < acc < 0.99, acc


def test_attributes_carry_the_style(medium):
    items = read_items(medium)
    acc = nearest_centroid_accuracy(bag_of_words([it["attributes"] for it in items]),
                                    np.array([it["style"] for it in items]))
    assert 0.6 < acc, acc


def test_users_rate_liked_styles_higher_and_more_often(medium):
    style = {it["item_id"]: it["style"] for it in read_items(medium)}
    liked = {}
    with open(medium / "users.jsonl", encoding="utf-8") as f:
        for line in f:
            user = json.loads(line)
            liked[user["user_id"]] = set(user["liked_styles"])
    by_user = defaultdict(lambda: ([], []))  # user -> (ratings on liked styles, on the others)
    for r in read_interactions(medium):
        is_other = style[r["item_id"]] not in liked[r["user_id"]]
        by_user[r["user_id"]][is_other].append(float(r["rating"]))
    gaps = [np.mean(on) - np.mean(off) for on, off in by_user.values() if on and off]
    assert len(gaps) > 80 and np.mean(gaps) > 1.0 and np.mean(np.array(gaps) > 0) > 0.9
    # selection bias: liked styles get more of a user's ratings than their share of the catalogue
    share_rated = np.mean([len(on) / (len(on) + len(off)) for on, off in by_user.values()])
    share_catalogue = np.mean([len(s) / 8 for s in liked.values()])
    assert share_rated > 2 * share_catalogue


def test_popularity_is_skewed(medium):
    counts = np.array(sorted(Counter(r["item_id"] for r in read_interactions(medium)).values()))
    top_decile = counts[-len(counts) // 10:].sum() / counts.sum()
    assert top_decile > 0.2  # uniform popularity would give about 0.1
