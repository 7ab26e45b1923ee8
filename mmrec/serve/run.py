"""A run folder (`mmrec train --out RUN`) as the commands after training open it: the one check that a folder
is a run, the one way to find its dataset and its embeddings, and the one test that embeddings are its
model's. The CLI, `mmrec.Recommender`, `mmrec eval` and the benchmarks all call these, so a run that one of
them accepts, the others accept too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from mmrec.data.remote import as_location
from mmrec.data.vocabulary import VOCAB_FILE
from mmrec.files import sha256_of
from mmrec.model.hub import WEIGHTS_FILE

EMBEDDINGS_POINTER = "embeddings.json"  # RUN/embeddings.json: {"path": EMB} of the run's last `mmrec embed`
DEFAULT_EMB = "emb"  # RUN/emb: where the embeddings are when no pointer says otherwise


def check_run_folder(run: str | Path) -> Path:
    """`run` as a Path, or a ValueError when it is not a folder written by `mmrec train` (its model and
    vocabulary)."""
    run = Path(run)
    missing = [name for name in ("model", VOCAB_FILE) if not (run / name).exists()]
    if missing:
        what = "does not exist" if not run.exists() else f"has no {' or '.join(missing)}"
        raise ValueError(f"{run} {what}: pass a run folder written by `mmrec train`")
    return run


def run_dataset(run: str | Path, data: str | Path | None = None, required: bool = False) -> str | Path | None:
    """The dataset a run trained on (a folder or a URL), unless `data` names one.

    The run's is `data.path` of RUN/config.yaml: a URL, or a folder while it is still there. None when there
    is no such dataset, or with `required` a ValueError that says to pass --data.
    """
    if data is not None:
        return as_location(data)
    from mmrec.config import load_run_config

    path = load_run_config(Path(run) / "config.yaml").data.path
    location = as_location(path) if path else None
    if location is None or (isinstance(location, Path) and not location.is_dir()):
        if required:
            raise ValueError(f"cannot find the run's dataset ({path!r}); pass --data DATA")
        return None
    return location


def made_by_run_model(run: str | Path, made: Mapping) -> bool:
    """Whether embeddings whose EMB/embedding.json is `made` came from the run's own model weights: another
    model's item vectors belong neither with this model (search, new users, new items) nor with its users."""
    return made.get("checkpoint_sha256") == sha256_of(Path(run) / "model" / WEIGHTS_FILE)


def find_embeddings(run: str | Path, emb: str | Path | None = None) -> Path:
    """A run's EMB folder: `emb`, else the folder the run's last `mmrec embed` wrote (RUN/embeddings.json),
    else RUN/emb. Refused when another model made it (`made_by_run_model`)."""
    run = Path(run)
    if emb is None:
        pointer = run / EMBEDDINGS_POINTER
        emb = Path(json.loads(pointer.read_text())["path"]) if pointer.is_file() else run / DEFAULT_EMB
    emb = Path(emb)
    made = emb / "embedding.json"
    if made.is_file() and not made_by_run_model(run, json.loads(made.read_text())):
        raise ValueError(f"{emb} holds embeddings of another model than {run / 'model'}: re-run "
                         "`mmrec embed` with this run, or pass its own --run")
    return emb
