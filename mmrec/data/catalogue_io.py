"""Write a catalogue in the DESIGN.md input format: `items.jsonl` + `interactions.csv`.

The `datasets/` recipes (MovieLens, FSDD) and the synthetic demo turn their sources into these two
files and then call `mmrec shard`. The writers here do no validation beyond what catches a recipe
bug early: rejecting bad rows, with a reason, is the sharder's job (it writes `quarantine.jsonl`).
Only the standard library is used, so a recipe runs before any heavy import.

Example:
    n_items = write_items_jsonl(out / "items.jsonl", [{"item_id": "1", "text": "Toy Story (1995)"}])
    n_rows = write_interactions_csv(out / "interactions.csv", [("7", "1", 4.0, 964982703)])
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmrec.data.schema import INTERACTION_COLUMNS, SPLIT_PROTOCOLS


def write_items_jsonl(path: str | os.PathLike, items: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line, keys in the order given (`item_id` first reads best).

    The file appears only once complete (written to a temporary name, then renamed), so an
    interrupted recipe never leaves a truncated catalogue that looks valid.

    Args:
        path: Output file; parent folders are created.
        items: Mappings with a string `item_id` and any of `text`, `image`, `audio`,
            `attributes` and metadata fields.

    Returns:
        The number of lines written.

    Raises:
        ValueError: An item has no string `item_id` (a bug in the recipe, not in the data).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for item in items:
            item_id = item.get("item_id")
            if not isinstance(item_id, str) or not item_id:
                raise ValueError(
                    f"item #{count + 1} has item_id {item_id!r}; every item needs a non-empty string "
                    "item_id (convert numeric ids with str())"
                )
            # ensure_ascii=False keeps titles such as "Amélie" readable in the file.
            f.write(json.dumps(dict(item), ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def write_interactions_csv(
    path: str | os.PathLike,
    rows: Iterable[Sequence[Any]],
    columns: Sequence[str] = INTERACTION_COLUMNS,
) -> int:
    """Write interaction rows under a `user_id,item_id,rating,timestamp` header.

    Values are written as they are (`str()`), so ratings read from a source file as strings keep
    their exact spelling; `None` becomes an empty cell (rating or timestamp unknown).

    Args:
        path: Output file; parent folders are created.
        rows: One sequence per interaction, aligned with `columns`.
        columns: Header; pass `(*INTERACTION_COLUMNS, "split")` for the `given` split protocol.

    Returns:
        The number of data rows written (the header not counted).

    Raises:
        ValueError: A row's length differs from the header's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    count = 0
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(
                    f"interaction row #{count + 1} has {len(row)} values {list(row)!r}; "
                    f"expected {len(columns)}: {list(columns)}"
                )
            writer.writerow(["" if v is None else v for v in row])
            count += 1
    os.replace(tmp, path)
    return count


def add_shard_arguments(parser: argparse.ArgumentParser, default_split: str) -> None:
    """Add the `mmrec shard` options a recipe passes through, plus `--no-shard`.

    Args:
        parser: The recipe's parser.
        default_split: The split protocol that suits the recipe's data.
    """
    group = parser.add_argument_group("sharding (passed to `mmrec shard`)")
    group.add_argument(
        "--no-shard", action="store_true",
        help="only write OUT/catalogue; run `mmrec shard` yourself later",
    )
    group.add_argument("--split", default=default_split, choices=SPLIT_PROTOCOLS,
                       help=f"split protocol (default: {default_split})")
    group.add_argument("--seed", type=int, default=0, help="seed for the split (and any synthesis)")
    group.add_argument("--items-per-shard", type=int, help="items per tar shard")
    group.add_argument("--image-max-side", type=int, help="resize images to at most N pixels a side")
    group.add_argument("--audio-rate", type=int, help="resample audio to HZ")
    group.add_argument("--workers", type=int, help="processes used to encode media")
    parser.epilog = ("Options not listed here (e.g. --overwrite, --cold-fraction 0.3, --ratios "
                     "0.9,0,0.1) are passed to `mmrec shard` unchanged; see `mmrec shard --help`.")


def parse_recipe_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a recipe's command line, keeping unknown options for `mmrec shard` in `shard_extra`.

    Passing them through keeps the recipes in step with the sharder's options without repeating
    each one; a typo still fails, in `mmrec shard`'s own parser.

    Args:
        parser: Built with `add_shard_arguments`; should have `allow_abbrev=False`, so an
            abbreviated sharder option is not taken for one of the recipe's.
        argv: Arguments, or None for sys.argv[1:].

    Returns:
        The parsed options, with `shard_extra` (list of strings) added.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and args.no_shard:
        # Nothing would ever check them: a misspelt recipe option would pass silently.
        parser.error(f"unrecognized arguments: {' '.join(extra)} (with --no-shard, nothing goes "
                     "to `mmrec shard`)")
    args.shard_extra = extra
    return args


def shard_argv(args: argparse.Namespace, items: Path, interactions: Path, out: Path) -> list[str]:
    """Build the `mmrec shard` argument list from options added by `add_shard_arguments`.

    Args:
        args: Parsed recipe options.
        items: The written items.jsonl.
        interactions: The written interactions.csv.
        out: The dataset folder to write.

    Returns:
        Arguments for `mmrec.cli.main`, starting with `shard`; options left unset are omitted so
        the sharder's own defaults apply; `args.shard_extra` (from `parse_recipe_args`) comes last.
    """
    argv = ["shard", "--items", str(items), "--interactions", str(interactions), "--out", str(out),
            "--split", args.split, "--seed", str(args.seed)]
    optional = {
        "--items-per-shard": args.items_per_shard,
        "--image-max-side": args.image_max_side,
        "--audio-rate": args.audio_rate,
        "--workers": args.workers,
    }
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    return argv + list(getattr(args, "shard_extra", []))


def run_shard(argv: list[str]) -> None:
    """Run `mmrec shard` in-process.

    Args:
        argv: From `shard_argv`.

    Raises:
        SystemExit: The CLI is unavailable or the sharder failed; the message says what to do.
    """
    try:
        # Imported here, not at the top: mmrec.data must not depend on the CLI (which imports
        # mmrec.data), and writing a catalogue should not pay for the sharder's imports.
        from mmrec.cli import main as mmrec_main
    except ImportError as e:
        raise SystemExit(
            f"cannot shard: `mmrec.cli` is not importable ({e}). The catalogue is written; rerun "
            "with --no-shard, or shard it later with: mmrec " + " ".join(argv)
        ) from e
    rc = mmrec_main(argv)
    if rc:  # main() may return None (success) or an exit status.
        raise SystemExit(f"`mmrec {' '.join(argv)}` failed with exit status {rc}")
