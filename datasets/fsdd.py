"""Free Spoken Digit Dataset clips -> an audio-only mmrec catalogue with SYNTHETIC ratings -> shards.

No public data links real audio clips to real ratings, so the users and their ratings here are
made up, and everything this recipe writes says so. They are made up in a way that only the audio
can explain: each synthetic user likes 1-3 digits and rates clips of those digits 4-5, others 1-3.
A model that recommends well on this catalogue, above all on held-out (cold) clips, has learnt to
hear which digit a clip says. That makes it a test of the audio path, not a benchmark of taste.

Builds, under --out DIR:

    DIR/catalogue/items.jsonl           one item per clip: item_id = clip stem ("3_jackson_12"),
                                        audio = absolute path, attributes = ["digit-3",
                                        "speaker-jackson"], metadata digit, speaker, take (and the
                                        speaker's gender/accent from speakers.json); no text unless
                                        --with-text
    DIR/catalogue/interactions.csv      synthetic ratings (integers 1-5, increasing timestamps)
    DIR/catalogue/synthetic_users.json  each synthetic user's liked digits and the generator's
                                        parameters: the ground truth behind the ratings
    DIR/catalogue/README.txt            the above, in words, and the terms of use
    DIR/data/                           `mmrec shard` output (skip with --no-shard); the default
                                        split holds out clips entirely (cold-items)

Everything is a deterministic function of the clip set and --seed.

Usage (from the repository root):

    python datasets/fsdd.py --out /tmp/fsdd --no-shard
    python datasets/fsdd.py --clips ../shared/data/fsdd/clips --out /tmp/fsdd --num-users 200

Terms of use:
    FSDD (https://github.com/Jakobovski/free-spoken-digit-dataset): Creative Commons
    Attribution-ShareAlike 4.0 (CC BY-SA 4.0): credit the authors and share derived data under the
    same licence. The synthetic ratings are generated here and carry no real preference data.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import dataclass
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

# FSDD names its files {digit}_{speaker}_{take}; the shared copy is FLAC, the upstream repo WAV.
CLIP_RE = re.compile(r"^(?P<digit>\d)_(?P<speaker>[a-z]+)_(?P<take>\d+)$")
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")
LIKED_RATINGS, OTHER_RATINGS = (4, 5), (1, 2, 3)
# Rating noise: how likely each rating is within its band. Liked clips lean to 5, the others to 2,
# so the per-band means (4.6 vs 2.0) are far apart but single ratings still vary.
LIKED_WEIGHTS, OTHER_WEIGHTS = (0.4, 0.6), (0.3, 0.4, 0.3)
START_TIME = 1_600_000_000  # 2020-09-13 UTC: any fixed epoch works; fixed keeps runs identical


@dataclass(frozen=True)
class Clip:
    """One FSDD recording."""

    stem: str  # file name without suffix, also the item_id: "3_jackson_12"
    path: Path  # absolute
    digit: int
    speaker: str
    take: int  # FSDD's per-speaker recording index; upstream uses takes 0-4 as its test set


@dataclass(frozen=True)
class SyntheticUser:
    """A made-up listener: the ground truth behind its ratings."""

    user_id: str
    liked_digits: tuple[int, ...]


def find_clips(clips_dir: Path) -> tuple[list[Clip], list[str]]:
    """List the FSDD clips in a folder, ordered by (digit, speaker, take).

    The order must not depend on the filesystem's listing order, or the seed would not fix the
    synthetic ratings.

    Returns:
        The clips, and the names of audio files that do not follow FSDD's naming (skipped).
    """
    clips, skipped = [], []
    for path in clips_dir.iterdir():
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        match = CLIP_RE.match(path.stem)
        if not match:
            skipped.append(path.name)
            continue
        clips.append(Clip(path.stem, path.resolve(), int(match["digit"]), match["speaker"],
                          int(match["take"])))
    clips.sort(key=lambda c: (c.digit, c.speaker, c.take))
    return clips, sorted(skipped)


def load_speakers(path: Path | None) -> dict[str, dict[str, str]]:
    """Read FSDD's speakers.json (speaker -> gender, accent, language); {} when absent."""
    if path is None or not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def clip_item(clip: Clip, speakers: dict[str, dict[str, str]], with_text: bool) -> dict:
    """Make the catalogue item of one clip.

    Args:
        clip: The recording.
        speakers: From `load_speakers`; adds the speaker's gender and accent as metadata.
        with_text: Add "spoken digit by <speaker>". Off by default: the catalogue exists to
            exercise the audio path, and the text must never name the digit, or a text encoder
            would solve the task without listening.
    """
    item: dict[str, object] = {"item_id": clip.stem}
    if with_text:
        item["text"] = f"spoken digit by {clip.speaker}"
    item["audio"] = str(clip.path)
    item["attributes"] = [f"digit-{clip.digit}", f"speaker-{clip.speaker}"]
    item.update(digit=clip.digit, speaker=clip.speaker, take=clip.take)
    info = speakers.get(clip.speaker, {})
    for key in ("gender", "accent"):
        if key in info:
            item[f"speaker_{key}"] = info[key]
    return item


def weighted_sample(rng: random.Random, weights: list[float], k: int) -> list[int]:
    """Draw k distinct indices, each with probability proportional to its weight.

    Efraimidis & Spirakis (2006), "Weighted random sampling with a reservoir": keep the k largest
    keys u ** (1 / w), u uniform in (0, 1).
    """
    keys = [(rng.random() ** (1.0 / w), i) for i, w in enumerate(weights)]
    keys.sort(reverse=True)
    return [i for _, i in keys[:k]]


def synthesize(
    clips: list[Clip],
    num_users: int,
    ratings_per_user: int,
    liked_weight: float,
    seed: int,
) -> tuple[list[SyntheticUser], list[tuple[str, str, int, int]]]:
    """Make up users who like 1-3 digits, and their ratings of clips.

    Each user rates about `ratings_per_user` clips (uniformly 0.5x-1.5x), drawn without
    replacement with clips of liked digits `liked_weight` times as likely as the rest. A liked
    clip is rated 4 or 5, any other 1, 2 or 3. The rated clips come in random order at increasing
    times (1 minute to 6 hours apart), so a temporal split sees no pattern in the order.

    Args:
        clips: From `find_clips`, in its fixed order.
        num_users: Number of synthetic users.
        ratings_per_user: Typical number of ratings per user.
        liked_weight: How much more likely a liked digit's clip is to be rated.
        seed: Seeds the one random generator; same inputs and seed -> same output.

    Returns:
        The users and their interaction rows (user_id, item_id, rating, timestamp), user by user.
    """
    rng = random.Random(seed)
    digits = sorted({c.digit for c in clips})
    users, rows = [], []
    for u in range(num_users):
        liked = tuple(sorted(rng.sample(digits, rng.randint(1, min(3, len(digits))))))
        user = SyntheticUser(f"synth-{u:04d}", liked)
        n = min(len(clips), rng.randint(max(1, ratings_per_user // 2), max(1, ratings_per_user * 3 // 2)))
        chosen = weighted_sample(rng, [liked_weight if c.digit in liked else 1.0 for c in clips], n)
        rng.shuffle(chosen)  # the sample comes out heaviest-first; rating order should not
        t = START_TIME + rng.randrange(30 * 86400)  # users start on different days
        for i in chosen:
            clip = clips[i]
            if clip.digit in liked:
                rating = rng.choices(LIKED_RATINGS, LIKED_WEIGHTS)[0]
            else:
                rating = rng.choices(OTHER_RATINGS, OTHER_WEIGHTS)[0]
            t += rng.randint(60, 6 * 3600)
            rows.append((user.user_id, clip.stem, rating, t))
        users.append(user)
    return users, rows


def write_ground_truth(path: Path, users: list[SyntheticUser], params: dict) -> None:
    """Write synthetic_users.json: the generator's parameters and each user's liked digits."""
    head = {
        "synthetic": True,
        "note": "made-up users and ratings generated by datasets/fsdd.py; not real preferences",
        "generator": params,
    }
    # One user per line: json.dumps(indent=...) would spread every digit list over four lines.
    user_lines = ",\n".join(
        f'  {json.dumps(u.user_id)}: {{"liked_digits": {json.dumps(list(u.liked_digits))}}}'
        for u in users)
    path.write_text(json.dumps(head)[:-1] + ', "users": {\n' + user_lines + "\n}}\n",
                    encoding="utf-8")


def write_readme(path: Path, clips_dir: Path, counts: dict[str, int], params: dict) -> None:
    """Write the catalogue's README.txt, leading with the fact that the ratings are synthetic."""
    path.write_text(
        "FSDD spoken-digit catalogue for mmrec, written by datasets/fsdd.py.\n\n"
        "THE USERS AND RATINGS ARE SYNTHETIC. No real person rated these clips. Each synthetic\n"
        "user likes 1-3 digits; clips of liked digits are more likely to be rated and get 4-5,\n"
        "the others 1-3. synthetic_users.json lists every user's liked digits. Use this\n"
        "catalogue to test whether a model hears the digit in a clip (above all on cold,\n"
        "held-out clips), not as evidence about real listeners.\n\n"
        f"clips:    {clips_dir} ({counts['items']} items, audio only, referenced by absolute path)\n"
        f"ratings:  {counts['ratings']} synthetic, from {counts['users']} users\n"
        f"generator: {json.dumps(params)}\n\n"
        "Terms: FSDD (github.com/Jakobovski/free-spoken-digit-dataset) is licensed CC BY-SA 4.0:\n"
        "credit its authors and share derived data under the same licence.\n",
        encoding="utf-8",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; defaults point at ../shared/data next to the repository."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="Build an audio-only mmrec catalogue from FSDD clips with SYNTHETIC ratings, "
                    "and shard it.")
    parser.add_argument("--clips", type=Path, default=SHARED_DATA / "fsdd" / "clips",
                        help="folder of {digit}_{speaker}_{take}.flac/.wav clips")
    parser.add_argument("--speakers", type=Path,
                        help="FSDD speakers.json (default: next to the clips folder, if there)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: OUT/catalogue and OUT/data")
    parser.add_argument("--num-users", type=int, default=200, help="synthetic users")
    parser.add_argument("--ratings-per-user", type=int, default=30,
                        help="typical ratings per user (each draws 0.5x-1.5x this)")
    parser.add_argument("--liked-weight", type=float, default=5.0,
                        help="how much likelier a liked digit's clip is to be rated")
    parser.add_argument("--with-text", action="store_true",
                        help='add a text "spoken digit by <speaker>" (never names the digit)')
    add_shard_options(parser, default_split="cold-items")
    parser.add_argument("--no-shard", action="store_true", help="only write OUT/catalogue; shard it later")
    args = parser.parse_args(argv)
    if args.num_users < 1 or args.ratings_per_user < 1 or args.liked_weight <= 0:
        parser.error("--num-users and --ratings-per-user must be >= 1 and --liked-weight > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build the catalogue, then shard it unless --no-shard. Returns the exit status."""
    args = parse_args(argv)
    start = time.perf_counter()
    clips_dir = args.clips.resolve()
    if not clips_dir.is_dir():
        raise SystemExit(f"clip folder {clips_dir} not found; pass --clips pointing at FSDD's "
                         "recordings (github.com/Jakobovski/free-spoken-digit-dataset)")
    clips, skipped = find_clips(clips_dir)
    if not clips:
        raise SystemExit(f"no {{digit}}_{{speaker}}_{{take}} audio files in {clips_dir}")
    speakers = load_speakers(args.speakers or clips_dir.parent / "speakers.json")

    catalogue = args.out.resolve() / "catalogue"
    items_path, inter_path = catalogue / "items.jsonl", catalogue / "interactions.csv"
    params = {"seed": args.seed, "num_users": args.num_users,
              "ratings_per_user": args.ratings_per_user, "liked_weight": args.liked_weight,
              "liked_ratings": list(LIKED_RATINGS), "other_ratings": list(OTHER_RATINGS)}
    users, rows = synthesize(clips, args.num_users, args.ratings_per_user, args.liked_weight,
                             args.seed)
    counts = {
        "items": write_items_jsonl(items_path, (clip_item(c, speakers, args.with_text) for c in clips)),
        "ratings": write_interactions_csv(inter_path, rows),
        "users": len(users),
    }
    write_ground_truth(catalogue / "synthetic_users.json", users, params)
    write_readme(catalogue / "README.txt", clips_dir, counts, params)

    print(f"catalogue: {catalogue}")
    print(f"  items.jsonl      {counts['items']} clips (audio only"
          f"{', with speaker text' if args.with_text else ''})"
          + (f"; skipped {len(skipped)} misnamed files, e.g. {skipped[0]}" if skipped else ""))
    print(f"  interactions.csv {counts['ratings']} SYNTHETIC ratings from {counts['users']} "
          "made-up users who each like 1-3 digits (see synthetic_users.json, README.txt)")
    print(f"  built in {time.perf_counter() - start:.1f} s; terms: FSDD is CC BY-SA 4.0")

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
