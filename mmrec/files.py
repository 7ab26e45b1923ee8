"""Writing files so that a reader never sees half of one, and hashing them.

The outputs a later step trusts as a whole (dataset folders, feature caches, checkpoints, model
folders, embedding parts, catalogue files, the run's vocabulary) are written under a temporary
sibling name and renamed into place when complete: a killed process leaves either the old output,
or the new one whole, plus a temporary name that the next run clears. This module is the one place
that does it.

    tmp = temp_sibling(out, ".partial")   # cleared, not created
    ... write tmp (a file, or a folder) ...
    replace_with(tmp, out)                # out is now the new output, atomically
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def temp_sibling(final: str | Path, suffix: str = ".tmp") -> Path:
    """`final` + `suffix` in the same folder (so the rename stays on one file system), cleared of
    anything a killed earlier run left there."""
    final = Path(final)
    tmp = final.with_name(final.name + suffix)
    _remove(tmp)
    return tmp


def replace_with(tmp: str | Path, final: str | Path) -> Path:
    """Move the complete `tmp` (file or folder) to `final`, replacing what was there."""
    tmp, final = Path(tmp), Path(final)
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)  # os.replace cannot replace a non-empty folder
    os.replace(tmp, final)
    return final


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a whole text file (UTF-8) atomically."""
    path = Path(path)
    tmp = temp_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    return replace_with(tmp, path)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
