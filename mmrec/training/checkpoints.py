"""A run's checkpoints: what one holds, how it is written and read back, and what a resume may change.

    RUN/checkpoints/step-00000012/   accelerate's state (model, optimizer, RNG) + trainer_state.json

A checkpoint is written into `step-N.tmp` and renamed when complete, so a reader sees either no checkpoint or
a whole one; the newest `train.keep_checkpoints` are kept. Nothing is unpickled when one is read back.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from accelerate import Accelerator

from mmrec.config import RunConfig
from mmrec.config_io import to_dict
from mmrec.files import replace_with, temp_sibling

CHECKPOINTS, STATE = "checkpoints", "trainer_state.json"
# What `--resume` may change: how long and how fast to go on, and bookkeeping. Anything else (the model,
# tasks, batch size, seed, precision, ...) would make the resumed run a different experiment than the
# checkpoint it continues, so it is refused.
RESUMABLE_CHANGES = ("train.epochs", "train.lr", "train.encoder_lr", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.log_every", "train.log_with", "train.early_stopping_patience",
                     "train.audit_data",
                     "data.path", "data.features", "data.num_workers", "data.eval_batch_size", "data.memory_cache_mb")

logger = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """What a checkpoint needs beyond Accelerate's state to continue exactly where it stopped."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)  # validation results
    scheduler: dict | None = None  # the learning-rate schedule's state_dict (plain numbers)
    stopped_early: bool = False  # early stopping ended the run: a resume has nothing left to train


def flat_settings(d: dict, prefix: str = "") -> dict:
    """A config dict as dotted keys (`train.lr`); an encoder's `arch` stays one value."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "arch":
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def refused_changes(run_dir: Path, cfg: RunConfig) -> list[str]:
    """Settings that differ from the run's config.yaml and that a resume may not change."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    saved = flat_settings(yaml.safe_load(saved_path.read_text()) or {})
    now = flat_settings(to_dict(cfg))
    return sorted(k for k in set(saved) | set(now)
                  if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE_CHANGES))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint folder was taken at (`step-00000012` -> 12)."""
    return int(checkpoint.name.split("-")[1])


def save_checkpoint(acc: Accelerator, run_dir: Path, state: TrainerState, scheduler, keep: int) -> Path:
    """Accelerate state + trainer state into step-N.tmp, then an atomic rename to step-N; the newest `keep` stay.

    Every rank calls it (accelerate's `save_state` is collective); the main process writes the trainer state.
    """
    final = run_dir / CHECKPOINTS / f"step-{state.step:08d}"
    tmp = final.with_name(final.name + ".tmp")  # every rank writes here; the main process clears it first
    if acc.is_main_process:
        temp_sibling(final).mkdir(parents=True)  # == tmp, cleared of a killed run's leftovers
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    if acc.is_main_process:
        state.scheduler = scheduler.state_dict()
        (tmp / STATE).write_text(json.dumps(asdict(state)))
        replace_with(tmp, final)  # a reader sees either no checkpoint or a whole one
        logger.debug(f"checkpoint {final}")
        for old in list_checkpoints(run_dir)[: -keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_latest_checkpoint(acc: Accelerator, run_dir: Path, scheduler) -> TrainerState | None:
    """Load the newest readable checkpoint into `acc`'s objects and `scheduler`, and return its trainer state
    (None: the run has no checkpoint). An unreadable one is reported and the one before tried.

    Nothing is unpickled: the model comes from safetensors, the optimizer and RNG states through
    accelerate's `torch.load(weights_only=True)`, the schedule and the trainer state from JSON; no
    object is registered with accelerate, so it never loads a `custom_checkpoint_*.pkl`.
    """
    found = list_checkpoints(run_dir)
    for checkpoint in reversed(found):
        try:
            state = TrainerState(**json.loads((checkpoint / STATE).read_text()))
            acc.load_state(str(checkpoint))
            if state.scheduler is not None:
                scheduler.load_state_dict(state.scheduler)
        except Exception as e:  # safetensors, torch and json each raise their own types
            reason = " ".join(str(e).split())[:200]
            if acc.is_main_process:
                logger.warning(f"checkpoint {checkpoint.name} is unreadable ({type(e).__name__}: {reason}); "
                               "trying the one before")
            continue
        if state.scheduler is None:  # a checkpoint from before the schedule was kept as JSON
            for _ in range(state.step):
                scheduler.step()
        return state
    if found:
        raise ValueError(f"no checkpoint in {run_dir / CHECKPOINTS} could be read (see above); "
                         "start a new run or restore a checkpoint")
    return None
