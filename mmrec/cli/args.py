"""Argument types and shared options of the `mmrec` subcommands: each a clear one-line error on bad input."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def cutoffs(text: str) -> list[int]:
    """--k for eval: comma-separated positive integers."""
    try:
        ks = sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 10,20,50, got {text!r}") from None
    if ks[0] < 1:
        raise argparse.ArgumentTypeError(f"cut-offs must be >= 1, got {text!r}")
    return ks


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def mmr_lambda(text: str) -> float:
    """--diversify for recommend: one LAMBDA in [0, 1]."""
    from mmrec.serve.rerank import check_lambda

    try:
        return check_lambda(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if "LAMBDA" in str(e) else f"expected a number in [0, 1], got "
                                         f"{text!r}") from None


def mmr_lambdas(text: str) -> list[float]:
    """--diversify for eval: comma-separated LAMBDAs in [0, 1]."""
    return sorted({mmr_lambda(t) for t in text.split(",")})


def add_diversify(p: argparse.ArgumentParser, many: bool) -> None:
    """--diversify, --pool, --max-per-attribute (docs/design.md "Diversity re-ranking")."""
    p.add_argument("--diversify", type=mmr_lambdas if many else mmr_lambda, default=None,
                   metavar="LAMBDA,..." if many else "LAMBDA",
                   help=("the accuracy / diversity trade-off of MMR re-ranking at these LAMBDAs (0 added), a section "
                         "and a plot of the report" if many else
                         "re-rank the top --pool by maximal marginal relevance: 0 the plain ranking, 1 diversity "
                         "alone (0.1-0.3 is a mild mix)"))
    p.add_argument("--pool", type=positive, default=200, help="candidates re-ranked per user (default 200)")
    p.add_argument("--max-per-attribute", type=positive, default=None, metavar="K",
                   help="with --diversify: at most K items sharing one attribute (e.g. genre) per list")


def run_folder(text: str) -> Path:
    """--run: a folder written by `mmrec train` (its model and vocabulary: `mmrec.serve.run.check_run_folder`)."""
    from mmrec.serve.run import check_run_folder

    try:
        return check_run_folder(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def data_location(value: str) -> str | Path:
    """--data: a dataset folder, or a URL kept as typed (a Path would fold its '//'; `mmrec.data.remote`)."""
    from mmrec.data.remote import as_location

    return as_location(value)


def add_verbosity(p: argparse.ArgumentParser, default) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG, default=default,
                       help="also debug messages")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       default=default, help="only warnings and errors; no progress bars (results still print)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (then exit status 2, as argparse does)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
