"""The run folder of one training run: one writer at a time, and what a new or resumed run writes first.

    RUN/.lock  config.yaml  vocabulary.json  dataset.json     (then model/, checkpoints/, metrics.jsonl)

The main process holds RUN/.lock for the whole run (`mmrec.files.FolderLock`). Before anything is written,
a new run refuses a folder that is not empty, and a resume refuses other data or a setting its checkpoint
was not trained with (`mmrec.training.checkpoints.RESUMABLE_CHANGES`); every rank raises, or none does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from mmrec.config import RunConfig, save_config
from mmrec.data.fingerprint import check_dataset, record_dataset
from mmrec.data.vocabulary import RunVocabulary
from mmrec.files import FolderLock
from mmrec.training.checkpoints import RESUMABLE_CHANGES, refused_changes

logger = logging.getLogger(__name__)


class RunFolder:
    """RUN/ as one training run holds it: `open` checks and claims it, `close` lets it go."""

    def __init__(self, accelerator: Accelerator, path: Path):
        self.accelerator, self.path = accelerator, path
        self.lock: FolderLock | None = None  # the run folder's, on the main process

    def open(self, cfg: RunConfig, data_dir, vocab: RunVocabulary, resume: bool) -> None:
        """Check the folder (empty, or a resumable run of this data and config), lock it and write the run's
        config, vocabulary and dataset fingerprint. Raises ValueError on every rank, or on none."""
        acc, run_dir = self.accelerator, self.path
        occupied = not resume and run_dir.exists() and any(run_dir.iterdir())
        acc.wait_for_everyone()  # every rank looks before anything is written, so all raise or none does
        if occupied:
            raise ValueError(f"{run_dir} is not empty; pass --resume to continue it or choose another --out")
        refused: list = [None]
        if acc.is_main_process:  # one writer per run folder: the main process holds the lock for the run
            try:
                self.lock = FolderLock(run_dir).acquire()
                if self.lock.stale is not None:
                    logger.warning(f"took over the stale lock of process {self.lock.stale.get('pid')} (it is gone)")
            except ValueError as e:
                refused = [str(e)]
        if acc.is_main_process and resume and not refused[0]:
            try:  # before anything is written: a resume on other data or another experiment changes nothing
                check_dataset(run_dir, data_dir)
                changed = refused_changes(run_dir, cfg)
                if changed:
                    raise ValueError(f"--resume cannot change {', '.join(changed)} (the checkpoint was trained "
                                     f"otherwise); a resume may change {', '.join(RESUMABLE_CHANGES)}. "
                                     "Start a new run for the others")
            except ValueError as e:
                self.lock.release()
                refused = [str(e)]
        broadcast_object_list(refused)  # every rank stops, or none does
        if refused[0]:
            raise ValueError(refused[0])
        if acc.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            vocab.save(run_dir)
            record_dataset(run_dir, data_dir)
        acc.wait_for_everyone()

    def close(self) -> None:
        """Release the lock (also when training stopped with an error)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
