"""The `mmrec` command line (docs/design.md "Command line").

Each subcommand is a small function over the library; argument errors and input errors exit with
status 2 and one clear line, never a traceback from deep inside.
"""

from __future__ import annotations

import os
import sys

from mmrec.cli.logs import logging_to_stderr
from mmrec.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with logging_to_stderr(args.log_level):
            return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        # a whole-input problem (a missing file, a folder that is not what it should be, a damaged
        # checkpoint): one line and exit status 2; MMREC_DEBUG=1 shows the traceback instead
        if os.environ.get("MMREC_DEBUG"):
            raise
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"mmrec {args.command}: error: {lines[0]}", file=sys.stderr)
        return 2
    finally:
        _release_process_group()


def _release_process_group() -> None:
    """Under `accelerate launch`, end the command's process group before the process exits (torch warns, and
    NCCL may lose pending work, when a group is left to the interpreter's exit)."""
    dist = sys.modules.get("torch.distributed")  # not imported: no group, and no torch import to find that out
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
