"""The synthetic tri-modal demo catalogue -> an mmrec catalogue -> shards.

Builds, under --out DIR:

    DIR/catalogue/items.jsonl, interactions.csv, users.jsonl, media/   (see mmrec.shard.synthetic)
    DIR/data/                                                          `mmrec shard` output

Usage (from the repository root):

    python datasets/synthetic.py --out /tmp/synth                 # cold-items split, seed 0
    python datasets/synthetic.py --out /tmp/synth --no-shard --num-items 200
    python datasets/synthetic.py --out /tmp/bench --full-size-media --split random   # throughput benchmarks

The generator lives in `mmrec.shard.synthetic` (the demo and the tests use it too); this script is only
its command line. `datasets/` is not a package: see docs/design.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import mmrec  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: the package sits next to this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrec.shard.options import add_shard_options, shard_command, shard_configs
from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
from mmrec.shard.writer import shard_catalogue


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; sizes default to SyntheticCatalogueConfig's."""
    defaults = SyntheticCatalogueConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--out", required=True, type=Path, help="output folder: OUT/catalogue and OUT/data")
    p.add_argument("--num-items", type=int, default=defaults.num_items)
    p.add_argument("--num-users", type=int, default=defaults.num_users)
    p.add_argument("--num-ratings", type=int, default=defaults.num_ratings,
                   help="target number of ratings (approximate)")
    p.add_argument("--num-styles", type=int, default=defaults.num_styles)
    p.add_argument("--full-size-media", action="store_true",
                   help="320 px JPEG images and 10.24 s clips (real-catalogue sizes, for throughput benchmarks) "
                        "instead of the fast 64 px / 0.5 s demo media")
    add_shard_options(p, default_split="cold-items")
    p.add_argument("--no-shard", action="store_true", help="only write OUT/catalogue; shard it later")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Write the catalogue (and shard it unless --no-shard); returns the generator's summary."""
    args = parse_args(argv)
    make = SyntheticCatalogueConfig.full_size_media if args.full_size_media else SyntheticCatalogueConfig
    config = make(seed=args.seed, num_items=args.num_items, num_users=args.num_users,
                  num_ratings=args.num_ratings, num_styles=args.num_styles)
    start = time.perf_counter()
    catalogue = args.out.resolve() / "catalogue"
    summary = write_synthetic_catalogue(catalogue, config)
    print(f"catalogue: {catalogue}: {summary['num_items']} items, {summary['num_users']} users, "
          f"{summary['num_ratings']} ratings, present {summary['present']} "
          f"({time.perf_counter() - start:.1f} s)")
    split, options = shard_configs(args)
    items, interactions, data = Path(summary["items"]), Path(summary["interactions"]), args.out.resolve() / "data"
    if args.no_shard:
        print("--no-shard: shard later with: " + shard_command(items, interactions, data, split, options))
    else:
        print(shard_catalogue(items, interactions, data, split, options).summary())
    return summary


if __name__ == "__main__":
    main()
