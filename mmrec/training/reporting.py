"""What a training run reports as it goes: metrics.jsonl, the Accelerate trackers, a progress bar, log lines.

- `RUN/metrics.jsonl` always (the contract `mmrec eval`'s training curve reads), on the main process;
- the trackers of `train.log_with` (TensorBoard, W&B, ...: losses, lr and validation metrics; RUN/logs),
  with the run's settings as their hparams / config;
- a progress bar with the epoch, the last logged loss and the last validation metric, and a log line per
  validation, on the main process (both shown when the `mmrec` logger is at INFO).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from tqdm import tqdm

from mmrec.config import RunConfig
from mmrec.config_io import to_dict
from mmrec.training.checkpoints import TrainerState, flat_settings

METRICS = "metrics.jsonl"
LOGS = "logs"  # the trackers' folder in RUN (TensorBoard: RUN/logs/mmrec/events.out.tfevents.*)

logger = logging.getLogger(__name__)
# where a tracker's package comes from, for the error that says what to install
_TRACKER_INSTALL = {"tensorboard": "pip install 'mmrec[tensorboard]'"}


def resolve_trackers(names: list[str]) -> list[str] | None:
    """train.log_with (checked names, see TrainConfig) as Accelerate's `log_with`; a tracker whose package is
    missing is an error here (accelerate would drop it with a debug message, and the run would log nowhere)."""
    available = [str(t) for t in get_available_trackers()]
    if names == ["all"]:
        if not available:
            raise ValueError("train.log_with=all, but no tracker package is installed: install one "
                             f"({_TRACKER_INSTALL['tensorboard']}, or pip install wandb) or set train.log_with=none")
        return available
    missing = [n for n in names if n not in available]
    if missing:
        how = "; ".join(_TRACKER_INSTALL.get(n, f"pip install {n}") for n in missing)
        raise ValueError(f"train.log_with names {missing}, whose package is not installed: {how}; or leave "
                         f"{'it' if len(missing) == 1 else 'them'} out of train.log_with")
    return names or None


class RunReporter:
    """The metrics.jsonl lines, tracker values, progress bar and log lines of one training run."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, cfg: RunConfig):
        self.accelerator, self.run_dir, self.cfg = accelerator, run_dir, cfg
        self.bar: tqdm | None = None
        self._postfix: dict[str, str] = {}  # the bar's: epoch, last logged loss, last validation's metric

    def start(self, steps_per_epoch: int, state: TrainerState) -> tqdm:
        """Start the trackers and the progress bar (at `state`'s position, for a resumed run)."""
        acc, t = self.accelerator, self.cfg.train
        # the run's settings beside its curves (TensorBoard's hparams, W&B's config), as plain scalars
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in flat_settings(to_dict(self.cfg)).items()}
        if t.log_with and acc.is_main_process:
            (self.run_dir / LOGS).mkdir(exist_ok=True)  # wandb writes its files there, and wants it to exist
        acc.init_trackers("mmrec", config=hparams,
                          init_kwargs={"wandb": {"dir": str(self.run_dir / LOGS), "name": self.run_dir.name}})
        logger.debug(f"trackers: {[t.name for t in acc.trackers] or 'none'} (train.log_with); "
                     f"{steps_per_epoch} batches per epoch per process, {acc.num_processes} process(es)")
        self.bar = tqdm(total=t.epochs * steps_per_epoch, initial=state.epoch * steps_per_epoch + state.batch_in_epoch,
                        desc="train", unit="batch",
                        disable=not acc.is_local_main_process or not logger.isEnabledFor(logging.INFO))
        return self.bar

    def log(self, record: dict, step: int) -> None:
        """One metrics.jsonl line (main process), and its numbers to the trackers at `step`."""
        if self.accelerator.is_main_process:
            with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        # the trackers get every number but the step, which is their x axis (a no-op without train.log_with)
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                             step=step)

    def validation(self, metrics: dict, state: TrainerState) -> None:
        """One log line per validation, and the selection metric on the progress bar."""
        if not metrics or not self.accelerator.is_main_process:
            return
        t, s = self.cfg.train, state
        name = t.selection_metric if t.selection_metric != "last" else "ndcg@10"  # what validation measures then
        value = metrics.get(f"valid/{name}", math.nan)
        shown = {name: f"{value:.4f}", **({"rmse": f"{metrics['valid/rmse']:.4f}"}
                                          if name != "rmse" and "valid/rmse" in metrics else {})}
        best = (f"best {s.best_metric:.4f} at step {s.best_step}" if t.selection_metric != "last" and s.best_metric
                is not None else "the newest model is kept (train.selection_metric=last)")
        # at an epoch's end `epoch` already counts it; with train.eval_every, mid-epoch
        when = f"after epoch {s.epoch}" if s.batch_in_epoch == 0 else f"in epoch {s.epoch + 1}"
        logger.info(f"validation at step {s.step}, {when}/{t.epochs}: "
                    + ", ".join(f"{k} {v}" for k, v in shown.items()) + f"; {best}")
        self.show({f"valid {name}": shown[name]})

    def show(self, values: dict[str, str]) -> None:
        """Put `values` on the progress bar (kept for the bar's next redraw if it has not started)."""
        self._postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(self._postfix)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def finish(self) -> None:
        """End the trackers only: `accelerator.end_training` would also destroy the process group, and a
        launched script that goes on to `embed` / `evaluate_run` in the same processes needs it (the CLI
        releases it on exit)."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
