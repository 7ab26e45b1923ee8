"""Which dataset a run was trained on, recorded in the run folder and checked by every later step.

A run records the sha256 of its dataset's manifest (which itself names every shard's and every split
file's sha256) in `RUN/dataset.json`. `mmrec eval`, `embed`, `recommend` and `train --resume` compare
the `--data` they are given with it, so a report can never be computed on another split of the same
catalogue (where test rows would be training rows) with exit status 0.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmrec.data import remote, schema
from mmrec.files import atomic_write_text

DATASET_FILE = "dataset.json"


def dataset_fingerprint(data_dir: str | Path) -> dict:
    """The manifest's sha256 and what it certifies (split protocol, split files, shards). `data` is the
    local folder, resolved, or the URL as given (`mmrec.data.remote`)."""
    data_dir = remote.as_location(data_dir)
    raw = remote.read_bytes(data_dir, schema.MANIFEST)  # one read: a remote manifest is hashed as parsed
    manifest = json.loads(raw)
    return {"data": remote.describe(data_dir), "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "split": manifest["split"]["protocol"], "seed": manifest["split"]["seed"],
            "split_sha256": {name: info["sha256"] for name, info in manifest["interactions"].items()},
            "num_items": manifest["num_items"]}


def record_dataset(run_dir: str | Path, data_dir: str | Path) -> None:
    atomic_write_text(Path(run_dir) / DATASET_FILE, json.dumps(dataset_fingerprint(data_dir), indent=2))


def check_dataset(run_dir: str | Path, data_dir: str | Path) -> None:
    """Refuse a dataset folder that is not the one the run was trained on (one clear line).

    A run from before this record existed is checked by its item count only (by the callers).
    """
    recorded_path = Path(run_dir) / DATASET_FILE
    if not recorded_path.is_file():
        return
    recorded, current = json.loads(recorded_path.read_text()), dataset_fingerprint(data_dir)
    if recorded["manifest_sha256"] != current["manifest_sha256"]:
        raise ValueError(
            f"{data_dir} is not the dataset {run_dir} was trained on (its manifest sha256 {current['manifest_sha256'][:12]}"
            f", split {current['split']} seed {current['seed']}; the run's: {recorded['manifest_sha256'][:12]}, split "
            f"{recorded['split']} seed {recorded['seed']}, at {recorded['data']}): pass the run's own --data")
