"""The training loop, on `accelerate.Accelerator`: the same code on one CPU and on many GPUs.

    mmrec train --config configs/tiny.yaml --data DATA --out RUN [--resume] [key=value ...]
    accelerate launch train.py --config configs/tiny.yaml --data DATA --out RUN

One base loop (as in accelerate's `examples/by_feature`), each feature a marked addition:
- item-centric batches streamed from the shards (`mmrec.data.reader`), split across ranks by the
  reader itself (never `accelerator.prepare` on the WebDataset loader), the same number of steps on
  every rank, moved to the device here;
- DDP through `accelerator.prepare` on one module that returns all losses (`TrainingStep`);
- mixed precision (bf16 on GPU, none on CPU), gradient accumulation, clipping, AdamW with separate
  learning rates for encoders and for everything else, linear warm-up + cosine decay
  (`mmrec.training.optimizer`);
- validation on the valid split (RMSE and NDCG@K), best model kept by validation only, early
  stopping decided on the main process and broadcast so all ranks stop together (`mmrec.training.validation`);
- atomic checkpoints and `--resume` from the newest: step, optimizer, scheduler, RNG and data position
  (`mmrec.training.checkpoints`), in a run folder with one writer (`mmrec.training.run_folder`);
- `metrics.jsonl` always, the Accelerate trackers of `train.log_with`, a progress bar and a log line per
  validation (`mmrec.training.reporting`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch import nn

from mmrec.config import RunConfig
from mmrec.data.batch import BatchCollator, ExampleBuilder, InteractionIndex, ItemBatch, PreparedItems
from mmrec.data.dataset import Dataset
from mmrec.data.features import decode_features
from mmrec.data.reader import ReaderConfig, decode_sample, item_loader
from mmrec.data.remote import as_location, describe
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.files import replace_with, temp_sibling
from mmrec.model.card import CardFacts
from mmrec.model.factory import ModelSizes, build_model, save_model
from mmrec.model.history import UserHistory
from mmrec.model.model import RecModel
from mmrec.model.tasks import MultiTaskLoss
from mmrec.precision import resolve_mixed_precision
from mmrec.training.cache import check_cache
from mmrec.training.checkpoints import (
    TrainerState,
    checkpoint_step,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from mmrec.training.optimizer import build_optimizer
from mmrec.training.reporting import LOGS, RunReporter, resolve_trackers
from mmrec.training.run_folder import RunFolder
from mmrec.training.validation import Validator, record_validation, stops_early

BEST_MODEL = "model"

logger = logging.getLogger(__name__)


class TrainingStep(nn.Module):
    """Model + tasks as one module whose forward returns every loss, so DDP syncs all of it."""

    def __init__(self, model: RecModel, tasks: MultiTaskLoss):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, batch: ItemBatch) -> dict[str, torch.Tensor]:
        return self.tasks(self.model, batch)


class Trainer:
    """Owns the Accelerator, model, optimizer, data and run folder of one training run."""

    def __init__(self, cfg: RunConfig, data_dir: str | Path, run_dir: str | Path):
        self.cfg, self.data_dir, self.run_dir = cfg, as_location(data_dir), Path(run_dir)  # data: a folder or a URL
        cfg.data.path = describe(self.data_dir)  # recorded in RUN/config.yaml for eval/recommend
        t = cfg.train
        self.accelerator = Accelerator(
            # without a GPU, processes started by torchrun (`accelerate launch --multi_gpu`) must
            # still form a process group: cpu=True makes it a gloo MULTI_CPU run
            cpu=not torch.cuda.is_available(),
            mixed_precision=resolve_mixed_precision(t.mixed_precision),
            gradient_accumulation_steps=t.grad_accum,
            log_with=resolve_trackers(t.log_with),
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / LOGS)),
            # feature generation masks a different modality each step: some heads sit out a step
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        acc = self.accelerator
        set_seed(t.seed)
        dataset = Dataset(self.data_dir)  # each split file hashed and parsed once for the whole run
        self.manifest = dataset.manifest
        self.vocab = RunVocabulary.from_data(dataset)
        self.splits = RunSplits(dataset, self.vocab)
        if self.splits.implicit:
            self._implicit_feedback(cfg)
        self.sizes = ModelSizes.for_training(self.vocab, self.splits)
        index = InteractionIndex.from_split(self.splits["train"], len(self.vocab.item_ids))
        item_seen = torch.from_numpy(index.offsets[1:] > index.offsets[:-1])
        self.model, self.preprocessors = build_model(cfg.model, self.sizes, t.seed, item_seen)
        self.model.set_item_popularity(torch.from_numpy(index.offsets[1:] - index.offsets[:-1]))
        if self.model.history_tower:  # each training user's history, and an empty one for the unknown user
            self.model.set_history(UserHistory.from_rows(self.splits["train"], self.sizes.num_users + 1,
                                                         cfg.model.history_length))
        self.tasks = MultiTaskLoss(cfg.tasks, self.model, len(self.vocab.attributes))

        # items come from the media shards, or from a feature cache of these (frozen) encoders
        self.item_source, self.decode = self.data_dir, decode_sample
        if cfg.data.features:
            check_cache(self.model, cfg.data.features)
            self.item_source, self.decode = Path(cfg.data.features), decode_features
        # loading in this process: keep each item's preprocessed inputs after its first visit (see PreparedItems)
        budget = cfg.data.memory_cache_mb * 2**20 if cfg.data.num_workers == 0 else 0
        kept = PreparedItems(budget) if budget else None
        self.builder = ExampleBuilder(self.preprocessors, self.vocab.attributes, index, cfg.data.pairs_per_item, t.seed,
                                      kept=kept, catalogue=self.vocab.item_ids)
        self.loader = item_loader(
            self.item_source, "train",
            ReaderConfig(batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers,
                         shuffle_buffer=cfg.data.shuffle_buffer, seed=t.seed, steps_per_epoch=cfg.data.steps_per_epoch,
                         pin_memory=acc.device.type == "cuda"),
            transform=self.builder, collate=BatchCollator(self.preprocessors),
            rank=acc.process_index, world_size=acc.num_processes,
            decode=kept.skip_decoding(self.decode) if kept else self.decode,
            # an epoch covers every training interaction once, in visits of <= pairs_per_item: the
            # schedule means the same on any catalogue shape (items rated 3 times or 3,000 times)
            visits=self.builder.visits() if cfg.data.pairs_per_item > 0 else None)
        self.steps_per_epoch = self.loader.steps_per_epoch  # batches per rank, equal on every rank
        optimizer, scheduler, total_steps = build_optimizer(self.model, self.tasks, t, self.steps_per_epoch)
        self.step_module, self.optimizer = acc.prepare(TrainingStep(self.model, self.tasks), optimizer)
        # Not prepared: accelerate would step it once per process per call; the step counts here are
        # already per rank. Not registered for checkpointing either: accelerate would pickle it and load
        # it back with weights_only=False, so a crafted checkpoint could run code. Its state (numbers
        # only) travels as JSON in trainer_state.json instead.
        self.scheduler = scheduler
        self.total_steps = total_steps
        self.state = TrainerState()
        self.validator = Validator(acc, cfg, self.model, self.preprocessors, self.vocab, self.splits, self.manifest,
                                   self.item_source, self.decode)
        if not self.validator.has_valid and t.selection_metric != "last":
            raise ValueError(f"{self.data_dir} has an empty valid split, so nothing can select the best model by "
                             f"{t.selection_metric}: set train.selection_metric=last (keeps the final epoch's "
                             "model; early stopping is then off) or shard with a valid fraction")
        self.folder = RunFolder(acc, self.run_dir)
        self.reporter = RunReporter(acc, self.run_dir, cfg)

    def _implicit_feedback(self, cfg: RunConfig) -> None:
        """Implicit feedback (RunSplits.implicit): every rating is the same, so the rating task would only
        learn that constant; it is switched off (and recorded so in RUN/config.yaml), and ranking must be
        trained by the retrieval task."""
        if cfg.train.selection_metric == "rmse":
            raise ValueError(f"{self.data_dir} holds implicit feedback (no rating column, or one rating value): "
                             "there is no rating error to select by; use train.selection_metric=ndcg@K or recall@K")
        if cfg.tasks.retrieval_weight <= 0:
            raise ValueError(f"{self.data_dir} holds implicit feedback: only the retrieval task learns from it; "
                             "set tasks.retrieval_weight > 0 (e.g. 1.0)")
        if cfg.tasks.rating_weight > 0 and self.accelerator.is_main_process:
            logger.warning("implicit feedback (no rating column, or one rating value): the rating task is "
                           "off for this run (tasks.rating_weight=0), and no rating error is reported")
        if cfg.tasks.rating_weight > 0:
            cfg.tasks = dataclasses.replace(cfg.tasks, rating_weight=0.0)

    # ------------------------------------------------------------------------------------ selection

    def _after_validation(self, metrics: dict) -> bool:
        """Record, keep the best model, decide early stopping. Returns True to stop."""
        t = self.cfg.train
        record, improved = record_validation(self.state, metrics, t)
        if improved and self.accelerator.is_main_process:
            tmp = temp_sibling(self.run_dir / BEST_MODEL)
            # the model card names the data, its split protocol and the numbers that selected this model
            card = CardFacts.for_training(self.run_dir, self.manifest["split"], record, t.selection_metric)
            save_model(self.accelerator.unwrap_model(self.step_module).model, self.sizes, tmp, card=card)
            replace_with(tmp, self.run_dir / BEST_MODEL)
        self.reporter.log({**record, "best_step": self.state.best_step}, self.state.step)
        self.reporter.validation(metrics, self.state)
        return stops_early(self.state, t)

    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.accelerator, self.run_dir, self.state, self.scheduler,
                               self.cfg.train.keep_checkpoints)

    # ------------------------------------------------------------------------------------ the loop

    def _end_epoch(self) -> bool:
        """Move to the next epoch: validation and checkpoint unless they run every N steps. True = stop."""
        t = self.cfg.train
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        stop = self._after_validation(self.validator.validate()) if not t.eval_every else False
        if not t.checkpoint_every:
            self.save_checkpoint()
        return stop

    def fit(self, resume: bool = False) -> TrainerState:
        """Train (continue the newest checkpoint with `resume`); the run folder is locked meanwhile."""
        try:
            return self._fit(resume)
        finally:
            self.reporter.close_bar()  # before an error is printed, so it gets a line of its own
            self.folder.close()  # also when training stops with an error

    def _fit(self, resume: bool) -> TrainerState:
        acc, t = self.accelerator, self.cfg.train
        self.folder.open(self.cfg, self.data_dir, self.vocab, resume)
        if resume:
            resumed = load_latest_checkpoint(acc, self.run_dir, self.scheduler)
            if resumed is not None:
                self.state = resumed
                logger.info(f"resumed from step {self.state.step} (epoch {self.state.epoch}, "
                            f"batch {self.state.batch_in_epoch})")
        bar = self.reporter.start(self.steps_per_epoch, self.state)
        audit: dict[int, list[int]] = {}
        stop, started = self.state.stopped_early, time.perf_counter()
        model = self.step_module
        while self.state.epoch < t.epochs and not stop:
            epoch = self.state.epoch
            if self.state.batch_in_epoch >= self.steps_per_epoch:
                # resumed from a checkpoint taken at the epoch's last batch (checkpoint_every): what an
                # uninterrupted run did next is the end of the epoch, not another pass (the loader has no
                # batches left in this epoch, and asking it for 0 would mean "no limit")
                stop = self._end_epoch()
                continue
            self.builder.set_epoch(epoch)
            self.reporter.show({"epoch": f"{epoch + 1}/{t.epochs}"})
            if self.state.batch_in_epoch:
                self.loader.resume_at(epoch, self.state.batch_in_epoch)
            else:
                self.loader.set_epoch(epoch)
            model.train()
            for batch in self.loader:
                batch = batch.to(acc.device, non_blocking=True)
                if t.audit_data:
                    audit.setdefault(epoch, []).extend(batch.item_index.tolist())
                with acc.accumulate(model):
                    losses = model(batch)
                    acc.backward(losses["total"])
                    if acc.sync_gradients and t.max_grad_norm > 0:
                        acc.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    self.optimizer.step()  # a no-op on accumulation steps
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                self.state.batch_in_epoch += 1
                bar.update(1)
                if not acc.sync_gradients:
                    continue
                self.state.step += 1
                if self.state.step % t.log_every == 0 or self.state.step == 1:
                    # this process's losses: no collective here, ranks may have different loss terms
                    logged = {k: v.detach().float().item() for k, v in losses.items()}
                    if not math.isfinite(logged["total"]):  # checked where the loss is read anyway: no extra sync
                        raise ValueError(
                            f"the training loss is {logged['total']} at step {self.state.step} (epoch {epoch}): "
                            "stopped. Check the ratings' scale (`mmrec shard --rating-range`) or lower train.lr")
                    self.reporter.log({"step": self.state.step, "epoch": epoch,
                                       **{f"loss/{k}": v for k, v in logged.items()}, "lr": self.scheduler.get_last_lr()[0],
                                       "seconds": round(time.perf_counter() - started, 2)}, self.state.step)
                    self.reporter.show({"loss": f"{logged['total']:.4f}"})
                if t.eval_every and self.state.step % t.eval_every == 0:
                    stop = self._after_validation(self.validator.validate())
                if t.checkpoint_every and self.state.step % t.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop:
                    break
            if stop:
                break
            stop = self._end_epoch()
        bar.close()
        latest = list_checkpoints(self.run_dir)
        if not latest or checkpoint_step(latest[-1]) != self.state.step:
            self.save_checkpoint()  # the end of the run is always resumable and inspectable
        if t.audit_data:
            folder = self.run_dir / "audit"
            folder.mkdir(exist_ok=True)
            (folder / f"rank-{acc.process_index}.json").write_text(json.dumps(
                {"rank": acc.process_index, "world_size": acc.num_processes, "steps": self.state.step,
                 "items_per_epoch": {str(e): v for e, v in audit.items()}}))
        self.reporter.finish()
        return self.state


def train(cfg: RunConfig, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> TrainerState:
    """Train a model; the best one (by validation) is saved to RUN/model."""
    return Trainer(cfg, data_dir, run_dir).fit(resume)
