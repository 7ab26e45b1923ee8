"""MovieLens "latest-small" + poster thumbnails -> an mmrec catalogue (text + image) -> shards.

Builds, under --out DIR:

    DIR/catalogue/items.jsonl        one item per movie: item_id = movieId; text = title (year),
                                     genres and the users' tags; attributes = genres; image = the
                                     poster's absolute path where one exists; metadata title, year,
                                     imdb_id, tmdb_id
    DIR/catalogue/interactions.csv   every row of ratings.csv, unchanged (0.5-5.0 stars, unix time)
    DIR/catalogue/README.txt         where it came from and the terms of use
    DIR/data/                        `mmrec shard` output (skip with --no-shard)

Media are referenced by absolute path, never copied: the posters must not leave their folder.

Usage (from the repository root):

    python datasets/movielens.py --out /tmp/ml --no-shard
    python datasets/movielens.py --ml-dir ../shared/data/ml-latest-small \
        --posters ../shared/data/movielens-posters --out /tmp/ml --split random --seed 0

Terms of use:
    MovieLens (https://grouplens.org/datasets/movielens/, README.txt in the data folder): research
    and non-commercial use only; redistribution only under the same licence; cite F. Maxwell Harper
    and Joseph A. Konstan. 2015. The MovieLens Datasets: History and Context. ACM TiiS 5, 4.
    Posters: studio-copyrighted, no licence: internal benchmarking only; never commit or ship them,
    nor shards that contain them.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

try:
    import mmrec  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: the package sits next to this folder
    sys.path.insert(0, str(REPO_ROOT))

from mmrec.shard.catalogue_io import (  # noqa: E402
    write_interactions_csv,
    write_items_jsonl,
)
from mmrec.shard.options import add_shard_options, shard_command, shard_configs  # noqa: E402
from mmrec.shard.writer import shard_catalogue  # noqa: E402

RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
NO_GENRES = "(no genres listed)"
# "Toy Story (1995)"; a series may carry a range, "Death Note: Desu nôto (2006–2007)": keep its start.
YEAR_RE = re.compile(r"\((\d{4})(?:[–-]\d{4})?\)$")


def parse_year(title: str) -> int | None:
    """Return the release year at the end of a MovieLens title, or None (13 titles have none)."""
    match = YEAR_RE.search(title)
    return int(match.group(1)) if match else None


def parse_genres(genres: str) -> list[str]:
    """Split movies.csv's pipe-separated genres; the "(no genres listed)" marker means none."""
    return [g for g in genres.split("|") if g and g != NO_GENRES]


def read_csv(path: Path) -> Iterator[dict[str, str]]:
    """Yield the rows of a MovieLens CSV (UTF-8, with a header) as dicts."""
    with path.open(encoding="utf-8", newline="") as f:
        yield from csv.DictReader(f)


def load_tags(tags_csv: Path, max_tags: int) -> dict[str, list[str]]:
    """Collect each movie's user tags, deduplicated case-insensitively, most frequent first.

    "Pixar" and "pixar" are one tag, shown in its most common spelling; equally frequent tags keep
    the order in which tags.csv first lists them, so the result is deterministic.

    Args:
        tags_csv: MovieLens tags.csv (userId, movieId, tag, timestamp).
        max_tags: Keep at most this many tags per movie (a few movies have over 100).

    Returns:
        movieId -> tags; movies nobody tagged are absent.
    """
    # movieId -> folded tag -> Counter of spellings; dicts keep first-seen order for ties.
    spellings: dict[str, dict[str, Counter]] = {}
    for row in read_csv(tags_csv):
        tag = " ".join(row["tag"].split())  # tags carry stray and doubled spaces
        if tag:
            spellings.setdefault(row["movieId"], {}).setdefault(tag.casefold(), Counter())[tag] += 1
    tags = {}
    for movie_id, by_tag in spellings.items():
        ranked = sorted(by_tag.values(), key=lambda c: -c.total())  # stable: ties keep first-seen
        tags[movie_id] = [c.most_common(1)[0][0] for c in ranked[:max_tags]]
    return tags


def load_links(links_csv: Path) -> dict[str, dict[str, object]]:
    """Map movieId -> {"imdb_id": str, "tmdb_id": int}, leaving out ids links.csv lacks.

    imdb_id stays a string: its leading zeros are part of the id ("0114709" is tt0114709).
    """
    links = {}
    for row in read_csv(links_csv):
        ids: dict[str, object] = {}
        if row["imdbId"]:
            ids["imdb_id"] = row["imdbId"]
        if row["tmdbId"]:
            ids["tmdb_id"] = int(row["tmdbId"])
        links[row["movieId"]] = ids
    return links


def item_text(title: str, genres: list[str], tags: list[str]) -> str:
    """Join title, genres and tags into one readable sentence for the text encoder.

    Example: "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun".
    """
    parts = [title]
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return ". ".join(parts)


def build_items(
    movies_csv: Path,
    tags: dict[str, list[str]],
    links: dict[str, dict[str, object]],
    posters: Path | None,
) -> list[dict]:
    """Turn movies.csv, the movies' tags and links (and the poster folder) into catalogue items.

    Args:
        movies_csv: MovieLens movies.csv (movieId, title, genres).
        tags: From `load_tags`.
        links: From `load_links`.
        posters: Folder of <movieId>.jpg posters, or None for a text-only catalogue.

    Returns:
        One item per movie, in movies.csv order.
    """
    # One listing instead of ~10k stat calls; also immune to a case-insensitive filesystem.
    poster_names = set(os.listdir(posters)) if posters else set()
    items = []
    for row in read_csv(movies_csv):
        movie_id, title = row["movieId"], row["title"].strip()  # some titles end in a space
        genres = parse_genres(row["genres"])
        item: dict[str, object] = {
            "item_id": movie_id,
            "text": item_text(title, genres, tags.get(movie_id, [])),
            "attributes": genres,
        }
        if posters and f"{movie_id}.jpg" in poster_names:
            item["image"] = str(posters / f"{movie_id}.jpg")
        item["title"] = title
        year = parse_year(title)
        if year is not None:
            item["year"] = year
        item.update(links.get(movie_id, {}))
        items.append(item)
    return items


def iter_ratings(ratings_csv: Path) -> Iterator[list[str]]:
    """Yield ratings.csv rows as they are (strings): the sharder validates, not the recipe.

    Raises:
        ValueError: The header is not MovieLens's, or a row does not have four fields.
    """
    with ratings_csv.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != RATINGS_HEADER:
            raise ValueError(f"{ratings_csv}: header {header!r}; expected {RATINGS_HEADER!r}")
        for row in reader:
            if len(row) != len(RATINGS_HEADER):
                raise ValueError(f"{ratings_csv}:{reader.line_num}: expected 4 fields, got {row!r}")
            yield row


def write_readme(path: Path, ml_dir: Path, posters: Path | None, counts: dict[str, int]) -> None:
    """Write the catalogue's README.txt: sources, counts and terms of use."""
    poster_line = (f"posters:  {posters} ({counts['images']} of {counts['items']} movies have one)"
                   if posters else "posters:  none (text-only catalogue)")
    path.write_text(
        "MovieLens latest-small catalogue for mmrec, written by datasets/movielens.py.\n\n"
        f"movies:   {ml_dir} ({counts['items']} items, {counts['tagged']} with user tags)\n"
        f"{poster_line}\n"
        f"ratings:  {counts['ratings']} rows of ratings.csv, unchanged (real user ratings)\n\n"
        "Images are referenced by absolute path, not copied.\n\n"
        "Terms: MovieLens data is for research and non-commercial use only (see README.txt in the\n"
        "MovieLens folder; cite Harper & Konstan 2015, ACM TiiS 5(4)). The posters are\n"
        "studio-copyrighted with no licence: internal benchmarking only; do not commit or\n"
        "redistribute them, nor shards that contain them.\n",
        encoding="utf-8",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; defaults point at ../shared/data next to the repository."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Build an mmrec catalogue (text + posters) from MovieLens latest-small and shard it.")
    parser.add_argument("--ml-dir", type=Path, default=SHARED_DATA / "ml-latest-small",
                        help="folder with movies.csv, ratings.csv, tags.csv, links.csv")
    parser.add_argument("--posters", type=Path, default=SHARED_DATA / "movielens-posters",
                        help="folder of <movieId>.jpg posters")
    parser.add_argument("--no-posters", action="store_true", help="build a text-only catalogue")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: OUT/catalogue and OUT/data")
    parser.add_argument("--max-tags", type=int, default=20, help="user tags kept per movie")
    parser.add_argument("--top-items", type=int, default=None,
                        help="keep only the N most-rated movies and their ratings (a catalogue of another shape: "
                             "fewer items, more ratings each)")
    add_shard_options(parser, default_split="random")
    parser.add_argument("--no-shard", action="store_true", help="only write OUT/catalogue; shard it later")
    return parser.parse_args(argv)


def check_inputs(ml_dir: Path, posters: Path | None) -> None:
    """Fail early, saying which file is missing and where the data comes from."""
    for name in ("movies.csv", "ratings.csv", "tags.csv", "links.csv"):
        if not (ml_dir / name).is_file():
            raise SystemExit(
                f"{ml_dir / name} not found; pass --ml-dir pointing at an unpacked ml-latest-small "
                "(https://files.grouplens.org/datasets/movielens/ml-latest-small.zip)")
    if posters is not None and not posters.is_dir():
        raise SystemExit(f"poster folder {posters} not found; pass --posters DIR, or --no-posters "
                         "for a catalogue without images")


def main(argv: list[str] | None = None) -> int:
    """Build the catalogue, then shard it unless --no-shard. Returns the exit status."""
    args = parse_args(argv)
    start = time.perf_counter()
    ml_dir = args.ml_dir.resolve()
    posters = None if args.no_posters else args.posters.resolve()
    check_inputs(ml_dir, posters)
    catalogue = args.out.resolve() / "catalogue"
    items_path, inter_path = catalogue / "items.jsonl", catalogue / "interactions.csv"

    tags = load_tags(ml_dir / "tags.csv", args.max_tags)
    links = load_links(ml_dir / "links.csv")
    items = build_items(ml_dir / "movies.csv", tags, links, posters)
    ratings = iter_ratings(ml_dir / "ratings.csv")
    if args.top_items is not None:
        per_movie = Counter(row[1] for row in iter_ratings(ml_dir / "ratings.csv"))
        # most-rated first, ties by movieId: the same subset on every run
        keep = {m for m, _ in sorted(per_movie.items(), key=lambda kv: (-kv[1], int(kv[0])))[: args.top_items]}
        items = [item for item in items if item["item_id"] in keep]
        ratings = (row for row in ratings if row[1] in keep)
    n_items = write_items_jsonl(items_path, items)
    n_ratings = write_interactions_csv(inter_path, ratings)
    counts = {
        "items": n_items,
        "images": sum("image" in item for item in items),
        "tagged": sum(item["item_id"] in tags for item in items),
        "ratings": n_ratings,
    }
    write_readme(catalogue / "README.txt", ml_dir, posters, counts)
    print(f"catalogue: {catalogue}")
    print(f"  items.jsonl      {counts['items']} movies, {counts['images']} with a poster, "
          f"{counts['items'] - counts['images']} without, {counts['tagged']} with user tags")
    print(f"  interactions.csv {counts['ratings']} ratings")
    print(f"  built in {time.perf_counter() - start:.1f} s; terms: research/non-commercial "
          "(MovieLens), posters internal benchmarking only")

    data = args.out.resolve() / "data"
    split, options = shard_configs(args)
    if args.no_shard:
        print("--no-shard: shard later with: " + shard_command(items_path, inter_path, data, split, options))
        return 0
    print(shard_catalogue(items_path, inter_path, data, split, options).summary())
    print(f"shards: {data} (split {args.split}, seed {args.seed}; see {data / 'manifest.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
