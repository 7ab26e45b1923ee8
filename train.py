"""Thin entry for `accelerate launch`: `accelerate launch train.py --config ... == mmrec train --config ...`.

    accelerate launch --num_processes 8 train.py --config configs/base.yaml --data DATA --out RUN
    accelerate launch --num_processes 2 --cpu train.py --config configs/tiny.yaml --data DATA --out RUN
"""

from __future__ import annotations

import sys

from mmrec.cli import main as mmrec_main


def main(argv: list[str] | None = None) -> int:
    return mmrec_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
