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

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
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


class FolderLock:
    """One writer per output folder: `FOLDER/.lock` holds the owner's pid, host and start time.

    A second train / embed / cache into the same folder stops with one line naming the owner, instead
    of interleaving metrics.jsonl or replacing the other's checkpoints. A lock whose process is gone
    (killed, crashed) is stale: it is taken over, and `stale` says whose it was.

        with FolderLock(run_dir):
            ...
    """

    NAME = ".lock"

    def __init__(self, folder: str | Path, name: str = NAME):
        self.path = Path(folder) / name
        self.stale: dict | None = None

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one creator wins
            except FileExistsError:
                owner = self._owner()
                if owner is not None and self._alive(owner):
                    raise ValueError(f"{self.path.parent} is in use by process {owner.get('pid')} on "
                                     f"{owner.get('host')} since {owner.get('since')}; wait for it to finish, or "
                                     f"delete {self.path} if that process is gone") from None
                self.stale = owner or {}
                self.path.unlink(missing_ok=True)  # its owner is gone: take it over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise ValueError(f"could not take {self.path}: another process keeps creating it")

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # half-written or unreadable: no live owner can be named

    @staticmethod
    def _alive(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True  # another machine's process cannot be checked from here: assume it runs
        if owner.get("pid") == os.getpid():
            return False  # left by this very process (an earlier call that failed): not another writer
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True
