"""The `mmrec shard` options, declared once: for the CLI and for every `datasets/` recipe.

    parser = argparse.ArgumentParser()
    add_shard_options(parser, default_split="cold-items")
    args = parser.parse_args(argv)
    report = shard_catalogue(items, interactions, out, *shard_configs(args))

A recipe that writes a catalogue and shards it gets exactly the sharder's options and defaults,
and calls the library: nothing builds an argument list to reach it through the CLI.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from mmrec.data.schema import SPLIT_PROTOCOLS

if TYPE_CHECKING:
    from mmrec.shard.protocols import SplitConfig
    from mmrec.shard.writer import ShardOptions


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected train,valid,test (three numbers), got {text!r}")
    return parts


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    if not low <= high:
        raise argparse.ArgumentTypeError(f"expected LOW <= HIGH, got {text!r}")
    return low, high


def add_shard_options(parser: argparse.ArgumentParser, default_split: str = "random") -> None:
    """Every option of `mmrec shard` except the three paths (`--items`, `--interactions`, `--out`)."""
    p = parser.add_argument_group("sharding (see `mmrec shard --help`)")
    p.add_argument("--split", default=default_split, choices=SPLIT_PROTOCOLS,
                   help=f"split protocol (default: {default_split})")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice in the split")
    p.add_argument("--ratios", type=_ratios, default=(0.8, 0.1, 0.1),
                   help="train,valid,test fractions for the random and ratio splits (default 0.8,0.1,0.1)")
    p.add_argument("--cold-fraction", type=float, default=0.2,
                   help="cold-items split: fraction of rated items held out entirely; cold-users split: "
                        "fraction of users (default 0.2)")
    p.add_argument("--given", type=int, default=5,
                   help="cold-users split: interactions of each held-out user given as history, the first "
                        "by time (default 5)")
    p.add_argument("--warm-holdout", type=float, default=0.0,
                   help="cold-items split: also hold out this per-user share of warm rows (default 0)")
    p.add_argument("--items-per-shard", type=int, default=1000, help="items per tar file (default 1000)")
    p.add_argument("--image-max-side", type=int, default=None,
                   help="resize images whose longer side exceeds this many pixels (default: keep)")
    p.add_argument("--audio-rate", type=int, default=None,
                   help="resample all audio to this rate and store it as FLAC (default: keep)")
    p.add_argument("--text-template", default=None,
                   help='build item text from fields, e.g. "{title}. Genres: {genres}" (default: the text field)')
    p.add_argument("--rating-range", type=_range, default=None, metavar="LOW,HIGH",
                   help="quarantine ratings outside [LOW, HIGH], e.g. 0.5,5 (default: only non-finite ratings "
                        "and |rating| > 1e6)")
    p.add_argument("--max-media-mb", type=int, default=64,
                   help="an image or audio file larger than this is dropped, unread (default 64)")
    p.add_argument("--keep-order", action="store_true",
                   help="write items in file order (default: shuffled by --seed, so sorted catalogues mix in training)")
    p.add_argument("--workers", type=int, default=1, help="processes decoding media (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def shard_configs(args: argparse.Namespace) -> tuple[SplitConfig, ShardOptions]:
    """The parsed options as the sharder's two configs."""
    from mmrec.shard.protocols import SplitConfig
    from mmrec.shard.writer import ShardOptions  # here: `mmrec --help` needs no media or torch imports

    split = SplitConfig(protocol=args.split, seed=args.seed, ratios=args.ratios, cold_fraction=args.cold_fraction,
                        warm_holdout=args.warm_holdout, given=args.given)
    options = ShardOptions(items_per_shard=args.items_per_shard, image_max_side=args.image_max_side,
                           audio_rate=args.audio_rate, text_template=args.text_template, workers=args.workers,
                           progress=not args.no_progress, overwrite=args.overwrite, rating_range=args.rating_range,
                           max_media_mb=args.max_media_mb, order_seed=None if args.keep_order else args.seed)
    return split, options


def shard_command(items: Path, interactions: Path, out: Path, split: SplitConfig, options: ShardOptions) -> str:
    """The `mmrec shard ...` line that writes the same dataset folder (options left at their defaults omitted)."""
    from mmrec.shard.protocols import SplitConfig
    from mmrec.shard.writer import ShardOptions

    argv = ["mmrec", "shard", "--items", str(items), "--interactions", str(interactions), "--out", str(out),
            "--split", split.protocol, "--seed", str(split.seed)]
    defaults = SplitConfig(protocol=split.protocol)
    if split.ratios != defaults.ratios:
        argv += ["--ratios", ",".join(str(r) for r in split.ratios)]
    for name in ("cold_fraction", "warm_holdout", "given"):
        if getattr(split, name) != getattr(defaults, name):
            argv += [f"--{name.replace('_', '-')}", str(getattr(split, name))]
    for f in fields(ShardOptions):
        value = getattr(options, f.name)
        if value == f.default:
            continue
        if f.name == "order_seed":
            argv += ["--keep-order"] if value is None else []  # shuffled by --seed otherwise
        elif f.name == "progress":
            argv.append("--no-progress")
        elif f.name == "overwrite":
            argv.append("--overwrite")
        elif f.name == "rating_range":
            argv += ["--rating-range", ",".join(f"{x:g}" for x in value)]
        else:
            argv += [f"--{f.name.replace('_', '-')}", str(value)]
    return shlex.join(argv)
