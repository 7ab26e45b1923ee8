"""Where a command's status lines and progress bars go: the `mmrec` loggers on stderr, results alone on stdout."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


class _LogLines(logging.Handler):
    """Status lines on the stderr of the moment (pytest swaps sys.stderr), written with `tqdm.write` so
    that a progress bar being drawn is redrawn under the line instead of being cut by it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _LevelPrefix(logging.Formatter):
    """INFO lines as they are; the others say their level ("warning: ..."), debug lines also their module."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno == logging.INFO:
            return text
        return f"debug: {record.name}: {text}" if record.levelno <= logging.DEBUG else f"{record.levelname.lower()}: {text}"


@contextlib.contextmanager
def logging_to_stderr(level: int):
    """The `mmrec` loggers for one command: `level` (-v DEBUG, default INFO, -q WARNING) on stderr; progress
    bars show at INFO and below. Under `accelerate launch` the other ranks log warnings only, so each line
    appears once. Undone afterwards: `main()` called in a process (tests, notebooks) leaves logging as it was."""
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    top = logging.getLogger("mmrec")
    handler = _LogLines()
    handler.setFormatter(_LevelPrefix("%(message)s"))
    before = top.level
    top.addHandler(handler)
    top.setLevel(level)
    try:
        yield
    finally:
        top.removeHandler(handler)
        top.setLevel(before)
