"""The `datasets/` recipes on the real data in ../shared/data (skipped where it is absent).

The recipes run with --no-shard: these tests check the catalogues they write, not the sharder.
Each catalogue is built once per module (about 0.3 s each).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import runpy
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from mmrec.shard.catalogue_io import (
    write_interactions_csv,
    write_items_jsonl,
)
from mmrec.shard.options import add_shard_options, shard_command, shard_configs

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = REPO_ROOT / "datasets"


def load_script(name: str) -> dict:
    """Run datasets/<name>.py as a module (not __main__) and return its globals."""
    return runpy.run_path(str(DATASETS / f"{name}.py"), run_name=f"recipe_{name}")


def read_jsonl(path: Path) -> list[dict]:
    """Parse a JSON-lines file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_rows(path: Path) -> list[dict[str, str]]:
    """Parse a CSV file with a header."""
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# -- catalogue_io: no shared data needed ------------------------------------------------------


def test_writers_round_trip(tmp_path):
    n = write_items_jsonl(tmp_path / "c" / "items.jsonl",
                          [{"item_id": "1", "text": "Amélie"}, {"item_id": "2"}])
    assert n == 2
    assert read_jsonl(tmp_path / "c" / "items.jsonl") == [{"item_id": "1", "text": "Amélie"},
                                                          {"item_id": "2"}]
    n = write_interactions_csv(tmp_path / "c" / "inter.csv", [("u", "1", "4.0", 7), ("u", "2", None, None)])
    assert n == 2
    assert (tmp_path / "c" / "inter.csv").read_text() == (
        "user_id,item_id,rating,timestamp\nu,1,4.0,7\nu,2,,\n")
    assert not list((tmp_path / "c").glob("*.partial"))


def test_writers_reject_recipe_bugs(tmp_path):
    with pytest.raises(ValueError, match="non-empty string item_id"):
        write_items_jsonl(tmp_path / "items.jsonl", [{"item_id": 1}])
    with pytest.raises(ValueError, match="expected 4"):
        write_interactions_csv(tmp_path / "inter.csv", [("u", "1", "4.0")])


def test_recipes_take_the_sharders_own_options():
    """One declaration of the shard options: a recipe parses exactly what `mmrec shard` parses."""
    from mmrec.cli import build_parser

    recipe = argparse.ArgumentParser(allow_abbrev=False)
    add_shard_options(recipe, default_split="cold-items")
    argv = ["--seed", "3", "--workers", "2", "--overwrite", "--warm-holdout", "0.1", "--ratios", "0.7,0.2,0.1"]
    split, options = shard_configs(recipe.parse_args(argv))
    cli = build_parser().parse_args(["shard", "--items", "i", "--interactions", "c", "--out", "d",
                                     "--split", "cold-items", *argv])
    assert (split, options) == shard_configs(cli)
    assert (split.protocol, split.seed, split.warm_holdout, options.workers, options.overwrite) == (
        "cold-items", 3, 0.1, 2, True)
    line = shard_command(Path("i.jsonl"), Path("i.csv"), Path("d"), split, options)
    assert line == ("mmrec shard --items i.jsonl --interactions i.csv --out d --split cold-items --seed 3 "
                    "--ratios 0.7,0.2,0.1 --warm-holdout 0.1 --workers 2 --overwrite")
    with pytest.raises(SystemExit):  # a typo fails in the recipe's own parser
        recipe.parse_args(["--overwrit"])


# -- MovieLens ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_src(shared_data_dir) -> tuple[Path, Path]:
    ml_dir, posters = shared_data_dir / "ml-latest-small", shared_data_dir / "movielens-posters"
    if not (ml_dir / "movies.csv").is_file() or not posters.is_dir():
        pytest.skip(f"MovieLens or posters not in {shared_data_dir}")
    return ml_dir, posters


@pytest.fixture(scope="module")
def ml_catalogue(ml_src, tmp_path_factory) -> Path:
    ml_dir, posters = ml_src
    out = tmp_path_factory.mktemp("ml")
    rc = load_script("movielens")["main"](
        ["--ml-dir", str(ml_dir), "--posters", str(posters), "--out", str(out), "--no-shard"])
    assert rc == 0
    return out / "catalogue"


@pytest.fixture(scope="module")
def ml_items(ml_catalogue) -> dict[str, dict]:
    items = read_jsonl(ml_catalogue / "items.jsonl")
    by_id = {item["item_id"]: item for item in items}
    assert len(by_id) == len(items), "item_id not unique"
    return by_id


@pytest.mark.shared_data
def test_movielens_items_and_posters(ml_items, ml_src, ml_catalogue):
    assert len(ml_items) == 9742
    with_image = [item for item in ml_items.values() if "image" in item]
    expected = {p.stem for p in ml_src[1].glob("*.jpg")} & set(ml_items)
    assert {item["item_id"] for item in with_image} == expected
    assert 5000 <= len(with_image) <= 5200  # SOURCES.md: 5,090 posters
    for item in with_image:
        assert os.path.isabs(item["image"]) and os.path.isfile(item["image"])
    # Posters are referenced, never copied next to the catalogue.
    assert sorted(p.name for p in ml_catalogue.iterdir()) == [
        "README.txt", "interactions.csv", "items.jsonl"]


@pytest.mark.shared_data
def test_movielens_text_genres_metadata(ml_items):
    toy = ml_items["1"]
    assert toy["attributes"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    # tags.csv: "pixar" twice, "fun" once, most frequent first.
    assert toy["text"] == ("Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, "
                           "Fantasy. Tags: pixar, fun")
    assert (toy["title"], toy["year"], toy["imdb_id"], toy["tmdb_id"]) == (
        "Toy Story (1995)", 1995, "0114709", 862)
    # "holocaust" x1 + "Holocaust" x1 are one tag, ahead of "true story" x1.
    assert ml_items["5995"]["text"].endswith("Tags: holocaust, true story")
    # "(no genres listed)" -> no attributes and no "Genres:" in the text.
    assert ml_items["114335"]["attributes"] == []
    assert "Genres" not in ml_items["114335"]["text"]
    # Titles without a year keep no year key; a series keeps its first year.
    assert "year" not in ml_items["40697"]  # "Babylon 5"
    assert ml_items["40697"]["title"] == "Babylon 5"
    no_year = [item for item in ml_items.values() if "year" not in item]
    assert len(no_year) == 12
    assert ml_items["171749"]["year"] == 2006  # "Death Note: Desu nôto (2006–2007)"


@pytest.mark.shared_data
def test_movielens_tags_deduplicated_and_capped(ml_src):
    tags = load_script("movielens")["load_tags"](ml_src[0] / "tags.csv", 20)
    assert len(tags) == 1572  # movies with at least one tag
    assert all(1 <= len(t) <= 20 for t in tags.values())
    assert all(len({x.casefold() for x in t}) == len(t) for t in tags.values())
    assert len(tags["296"]) == 20  # Pulp Fiction has 181 tag rows


@pytest.mark.shared_data
def test_movielens_interactions_unchanged(ml_catalogue, ml_src):
    rows = read_rows(ml_catalogue / "interactions.csv")
    assert len(rows) == 100_836
    assert rows[0] == {"user_id": "1", "item_id": "1", "rating": "4.0", "timestamp": "964982703"}
    source = read_rows(ml_src[0] / "ratings.csv")
    assert [tuple(r.values()) for r in rows] == [tuple(r.values()) for r in source]


@pytest.mark.shared_data
def test_movielens_top_items_keeps_the_most_rated_movies_and_only_their_ratings(ml_src, tmp_path):
    from collections import Counter

    ml_dir, posters = ml_src
    rc = load_script("movielens")["main"](["--ml-dir", str(ml_dir), "--no-posters", "--out", str(tmp_path),
                                           "--no-shard", "--top-items", "50"])
    assert rc == 0
    kept = {item["item_id"] for item in read_jsonl(tmp_path / "catalogue" / "items.jsonl")}
    counts = Counter(r["movieId"] for r in read_rows(ml_dir / "ratings.csv"))
    assert len(kept) == 50 and min(counts[m] for m in kept) >= max(c for m, c in counts.items() if m not in kept)
    rows = read_rows(tmp_path / "catalogue" / "interactions.csv")
    assert {r["item_id"] for r in rows} == kept and len(rows) == sum(counts[m] for m in kept)


# -- FSDD ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdd_clips(shared_data_dir) -> Path:
    clips = shared_data_dir / "fsdd" / "clips"
    if not clips.is_dir():
        pytest.skip(f"FSDD clips not in {shared_data_dir}")
    return clips


def build_fsdd(clips: Path, out: Path, *extra: str) -> Path:
    """Run the FSDD recipe in-process with --no-shard; returns the catalogue folder."""
    rc = load_script("fsdd")["main"](["--clips", str(clips), "--out", str(out), "--no-shard", *extra])
    assert rc == 0
    return out / "catalogue"


@pytest.fixture(scope="module")
def fsdd_catalogue(fsdd_clips, tmp_path_factory) -> Path:
    return build_fsdd(fsdd_clips, tmp_path_factory.mktemp("fsdd"), "--seed", "0")


@pytest.mark.shared_data
def test_fsdd_items(fsdd_catalogue):
    items = read_jsonl(fsdd_catalogue / "items.jsonl")
    assert len(items) == 1800
    by_id = {item["item_id"]: item for item in items}
    assert len(by_id) == 1800
    clip = by_id["3_jackson_12"]
    assert clip["attributes"] == ["digit-3", "speaker-jackson"]
    assert (clip["digit"], clip["speaker"], clip["take"]) == (3, "jackson", 12)
    assert clip["speaker_accent"] == "USA/neutral"
    assert os.path.isabs(clip["audio"]) and os.path.isfile(clip["audio"])
    assert not any("text" in item or "image" in item for item in items)  # audio only


@pytest.mark.shared_data
def test_fsdd_synthetic_ratings(fsdd_catalogue):
    truth = json.loads((fsdd_catalogue / "synthetic_users.json").read_text())
    assert truth["synthetic"] is True
    assert "SYNTHETIC" in (fsdd_catalogue / "README.txt").read_text()
    liked = {u: set(v["liked_digits"]) for u, v in truth["users"].items()}
    assert len(liked) == 200 and all(1 <= len(d) <= 3 for d in liked.values())

    rows = read_rows(fsdd_catalogue / "interactions.csv")
    by_band = defaultdict(list)
    times = defaultdict(list)
    for r in rows:
        is_liked = int(r["item_id"].split("_")[0]) in liked[r["user_id"]]
        by_band[is_liked].append(int(r["rating"]))
        times[r["user_id"]].append(int(r["timestamp"]))
    assert set(by_band[True]) <= {4, 5} and set(by_band[False]) <= {1, 2, 3}
    assert statistics.mean(by_band[True]) > statistics.mean(by_band[False]) + 1.5
    # Liked digits are 10-30% of clips but drawn 5x as often: well over half of the ratings.
    assert len(by_band[True]) > 0.4 * len(rows)
    assert set(times) == set(liked)
    assert all(t == sorted(set(t)) for t in times.values())  # strictly increasing per user
    assert len({(r["user_id"], r["item_id"]) for r in rows}) == len(rows)  # no repeats


@pytest.mark.shared_data
def test_fsdd_deterministic_from_seed(fsdd_clips, fsdd_catalogue, tmp_path):
    # The script's own entry point (a fresh interpreter, as users run it) with the same seed...
    subprocess.run([sys.executable, str(DATASETS / "fsdd.py"), "--clips", str(fsdd_clips),
                    "--out", str(tmp_path / "same"), "--seed", "0", "--no-shard"],
                   check=True, capture_output=True, cwd=tmp_path)
    for name in ("items.jsonl", "interactions.csv", "synthetic_users.json"):
        assert (tmp_path / "same" / "catalogue" / name).read_bytes() == (
            fsdd_catalogue / name).read_bytes(), name
    # ...and another seed gives other users.
    other = build_fsdd(fsdd_clips, tmp_path / "other", "--seed", "1")
    assert (other / "interactions.csv").read_bytes() != (
        fsdd_catalogue / "interactions.csv").read_bytes()


@pytest.mark.shared_data
def test_fsdd_with_text_never_names_the_digit(fsdd_clips, tmp_path):
    catalogue = build_fsdd(fsdd_clips, tmp_path, "--with-text", "--num-users", "3")
    items = read_jsonl(catalogue / "items.jsonl")
    assert items[0]["text"] == f"spoken digit by {items[0]['speaker']}"
    assert not any(ch.isdigit() for item in items for ch in item["text"])
