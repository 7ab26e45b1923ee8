"""The training loop, on `accelerate.Accelerator`: the same code on one CPU and on many GPUs.

    mmrec train --config configs/tiny.yaml --data DATA --out RUN [--resume] [key=value ...]
    accelerate launch train.py --config configs/tiny.yaml --data DATA --out RUN

One base loop (as in accelerate's `examples/by_feature`), each feature a marked addition:
- item-centric batches streamed from the shards (`mmrec.data.reader`), split across ranks by the
  reader itself (never `accelerator.prepare` on the WebDataset loader), the same number of steps on
  every rank, moved to the device here;
- DDP through `accelerator.prepare` on one module that returns all losses (`TrainingStep`);
- mixed precision (bf16 on GPU, none on CPU), gradient accumulation, clipping, AdamW with separate
  learning rates for encoders and for everything else, linear warm-up + cosine decay;
- validation on the valid split (RMSE and NDCG@K), best model kept by validation only, early
  stopping decided on the main process and broadcast so all ranks stop together;
- atomic checkpoints (`save_state` into a temporary folder, renamed when complete) and `--resume`
  from the newest: step, optimizer, scheduler, RNG and data position;
- `metrics.jsonl` always, and the Accelerate trackers of `train.log_with` (TensorBoard, W&B, ...: losses,
  lr and validation metrics; RUN/logs); a progress bar with the epoch and the last validation metric, and
  a log line per validation, on the main process (both shown when the `mmrec` logger is at INFO).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
import yaml
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import (
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    broadcast_object_list,
    gather_object,
    set_seed,
)
from torch import nn
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from mmrec.training.cache import check_cache
from mmrec.config import RunConfig, save_config
from mmrec.config_io import to_dict
from mmrec.data.batch import BatchCollator, ExampleBuilder, InteractionIndex, ItemBatch, PreparedItems
from mmrec.data.features import decode_features
from mmrec.data.fingerprint import check_dataset, record_dataset
from mmrec.data.reader import ReaderConfig, decode_sample, item_loader, load_manifest
from mmrec.data.remote import as_location, describe
from mmrec.data.dataset import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import assemble, embed_batches, item_batches
from mmrec.evaluate.protocol import EvalProtocol, evaluate_held_out_users, evaluate_split
from mmrec.files import FolderLock, replace_with, temp_sibling
from mmrec.model.factory import ModelSizes, build_model, save_model
from mmrec.model.history import UserHistory
from mmrec.model.hub import CardFacts
from mmrec.model.model import RecModel, user_vectors, vectors_for_histories
from mmrec.model.tasks import MultiTaskLoss
from mmrec.precision import resolve_mixed_precision

CHECKPOINTS, BEST_MODEL, METRICS, STATE = "checkpoints", "model", "metrics.jsonl", "trainer_state.json"
LOGS = "logs"  # the trackers' folder in RUN (TensorBoard: RUN/logs/mmrec/events.out.tfevents.*)
# What `--resume` may change: how long and how fast to go on, and bookkeeping. Anything else (the model,
# tasks, batch size, seed, precision, ...) would make the resumed run a different experiment than the
# checkpoint it continues, so it is refused.
RESUMABLE_CHANGES = ("train.epochs", "train.lr", "train.encoder_lr", "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.log_every", "train.log_with", "train.early_stopping_patience",
                     "train.audit_data",
                     "data.path", "data.features", "data.num_workers", "data.eval_batch_size", "data.memory_cache_mb")


logger = logging.getLogger(__name__)
# where a tracker's package comes from, for the error that says what to install
_TRACKER_INSTALL = {"tensorboard": "pip install 'mmrec[tensorboard]'"}


def _trackers(names: list[str]) -> list[str] | None:
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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "arch":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _refused_changes(run_dir: Path, cfg: RunConfig) -> list[str]:
    """Settings that differ from the run's config.yaml and that a resume may not change."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return []
    saved = _flat(yaml.safe_load(saved_path.read_text()) or {})
    now = _flat(to_dict(cfg))
    return sorted(k for k in set(saved) | set(now)
                  if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE_CHANGES))


class TrainingStep(nn.Module):
    """Model + tasks as one module whose forward returns every loss, so DDP syncs all of it."""

    def __init__(self, model: RecModel, tasks: MultiTaskLoss):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(self, batch: ItemBatch) -> dict[str, torch.Tensor]:
        return self.tasks(self.model, batch)


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


_ID_EMBEDDINGS = ("user_p.", "user_b.", "item_id_q.", "item_id_b.", "user_tower.history_id.")


def _no_decay_names(module: nn.Module) -> set[str]:
    """Full names of the parameters `module` and its submodules exempt from weight decay.

    Each model names its own through `no_weight_decay()` (timm's convention: names relative to the module
    that defines it; timm's ViTs list pos_embed and cls_token, the fusion its tokens and embeddings), and
    lookup tables (`nn.Embedding`: the text encoders' token and position embeddings) are exempt.
    Matching a substring such as "embed" would also exempt a ViT's patch_embed projection, a weight
    matrix like any other.
    """
    names = set()
    for prefix, m in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        own = getattr(m, "no_weight_decay", None)
        if callable(own):
            names |= {dot + n for n in own()}
        if isinstance(m, nn.Embedding):
            names.add(dot + "weight")
    return names


def _param_groups(model: RecModel, tasks: MultiTaskLoss, lr: float, encoder_lr: float, weight_decay: float,
                  embedding_weight_decay: float = 0.0) -> list[dict]:
    """AdamW groups: encoders at their own rate; the user / item ID embeddings at `embedding_weight_decay`;
    no decay on biases and norms (ndim < 2) and on what the models exempt (`_no_decay_names`);
    `weight_decay` on the other weight matrices."""
    groups: dict[tuple[bool, float], list] = {}
    encoder_params = {id(p) for p in model.encoders.parameters()}
    for module in (model, tasks):
        no_decay = _no_decay_names(module)
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(_ID_EMBEDDINGS):
                decay = embedding_weight_decay  # an item rated once would otherwise fit its bias to that rating
            elif p.ndim < 2 or name in no_decay:
                decay = 0.0
            else:
                decay = weight_decay
            groups.setdefault((id(p) in encoder_params, decay), []).append(p)
    return [{"params": params, "lr": encoder_lr if is_encoder else lr, "weight_decay": decay}
            for (is_encoder, decay), params in groups.items()]


def _checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _better(metric: str, value: float, best: float | None) -> bool:
    if metric == "last":
        return True  # no selection: the newest model is kept
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if metric == "rmse" else value > best


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
            log_with=_trackers(t.log_with),
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / LOGS)),
            # feature generation masks a different modality each step: some heads sit out a step
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        acc = self.accelerator
        set_seed(t.seed)
        self.manifest = load_manifest(self.data_dir)
        self.vocab = RunVocabulary.from_data(self.data_dir)
        self.splits = RunSplits(self.data_dir, self.vocab)  # each split file parsed once for the whole run
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
        total_steps = max(1, t.epochs * self.steps_per_epoch // t.grad_accum)

        optimizer = torch.optim.AdamW(_param_groups(self.model, self.tasks, t.lr, t.encoder_lr, t.weight_decay,
                                                         t.embedding_weight_decay))
        warmup = t.warmup_steps if t.warmup_epochs is None else round(t.warmup_epochs * self.steps_per_epoch / t.grad_accum)
        scheduler = get_cosine_schedule_with_warmup(optimizer, min(warmup, total_steps // 2), total_steps)
        self.step_module, self.optimizer = acc.prepare(TrainingStep(self.model, self.tasks), optimizer)
        # Not prepared: accelerate would step it once per process per call; the step counts here are
        # already per rank. Not registered for checkpointing either: accelerate would pickle it and load
        # it back with weights_only=False, so a crafted checkpoint could run code. Its state (numbers
        # only) travels as JSON in trainer_state.json instead.
        self.scheduler = scheduler
        self.total_steps = total_steps
        self.state = TrainerState()
        self.has_valid = self.manifest["interactions"]["valid"]["rows"] > 0
        if not self.has_valid and t.selection_metric != "last":
            raise ValueError(f"{self.data_dir} has an empty valid split, so nothing can select the best model by "
                             f"{t.selection_metric}: set train.selection_metric=last (keeps the final epoch's "
                             "model; early stopping is then off) or shard with a valid fraction")
        # the one evaluation rule (mmrec.evaluate.protocol): validation measures what `mmrec eval` reports
        self.valid_protocol = EvalProtocol.for_split("valid", self.manifest["split"])
        self._valid_batches: list[ItemBatch] | None = None  # see _validation_batches
        self.lock: FolderLock | None = None  # the run folder's, on the main process (see _prepare_run_dir)
        self._bar: tqdm | None = None
        self._postfix: dict[str, str] = {}  # the bar's: epoch, last logged loss, last validation's metric

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

    # ------------------------------------------------------------------------------------ run folder

    def _prepare_run_dir(self, resume: bool) -> None:
        acc = self.accelerator
        occupied = not resume and self.run_dir.exists() and any(self.run_dir.iterdir())
        acc.wait_for_everyone()  # every rank looks before anything is written, so all raise or none does
        if occupied:
            raise ValueError(f"{self.run_dir} is not empty; pass --resume to continue it or choose another --out")
        refused: list = [None]
        if acc.is_main_process:  # one writer per run folder: the main process holds the lock for the run
            try:
                self.lock = FolderLock(self.run_dir).acquire()
                if self.lock.stale is not None:
                    logger.warning(f"took over the stale lock of process {self.lock.stale.get('pid')} (it is gone)")
            except ValueError as e:
                refused = [str(e)]
        if acc.is_main_process and resume and not refused[0]:
            try:  # before anything is written: a resume on other data or another experiment changes nothing
                check_dataset(self.run_dir, self.data_dir)
                changed = _refused_changes(self.run_dir, self.cfg)
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
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.yaml")
            self.vocab.save(self.run_dir)
            record_dataset(self.run_dir, self.data_dir)
        acc.wait_for_everyone()

    def _log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with open(self.run_dir / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        # the trackers get every number but the step, which is their x axis (a no-op without train.log_with)
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"},
                             step=self.state.step)

    # ------------------------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Accelerate state + trainer state into step-N.tmp, then an atomic rename to step-N."""
        acc = self.accelerator
        final = self.run_dir / CHECKPOINTS / f"step-{self.state.step:08d}"
        tmp = final.with_name(final.name + ".tmp")  # every rank writes here; the main process clears it first
        if acc.is_main_process:
            temp_sibling(final).mkdir(parents=True)  # == tmp, cleared of a killed run's leftovers
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if acc.is_main_process:
            self.state.scheduler = self.scheduler.state_dict()
            (tmp / STATE).write_text(json.dumps(asdict(self.state)))
            replace_with(tmp, final)  # a reader sees either no checkpoint or a whole one
            logger.debug(f"checkpoint {final}")
            for old in _checkpoints(self.run_dir)[: -self.cfg.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_latest_checkpoint(self) -> bool:
        """Load the newest readable checkpoint (an unreadable one is reported and the one before tried).

        Nothing is unpickled: the model comes from safetensors, the optimizer and RNG states through
        accelerate's `torch.load(weights_only=True)`, the schedule and the trainer state from JSON; no
        object is registered with accelerate, so it never loads a `custom_checkpoint_*.pkl`.
        """
        found = _checkpoints(self.run_dir)
        for checkpoint in reversed(found):
            try:
                state = TrainerState(**json.loads((checkpoint / STATE).read_text()))
                self.accelerator.load_state(str(checkpoint))
                if state.scheduler is not None:
                    self.scheduler.load_state_dict(state.scheduler)
            except Exception as e:  # noqa: BLE001 (safetensors, torch and json each raise their own types)
                reason = " ".join(str(e).split())[:200]
                if self.accelerator.is_main_process:
                    logger.warning(f"checkpoint {checkpoint.name} is unreadable ({type(e).__name__}: {reason}); "
                                   "trying the one before")
                continue
            if state.scheduler is None:  # a checkpoint from before the schedule was kept as JSON
                for _ in range(state.step):
                    self.scheduler.step()
            self.state = state
            return True
        if found:
            raise ValueError(f"no checkpoint in {self.run_dir / CHECKPOINTS} could be read (see above); "
                             "start a new run or restore a checkpoint")
        return False

    # ------------------------------------------------------------------------------------ validation

    def validate(self) -> dict:
        """Embed every item (each rank its shards), then rating + ranking metrics on the main process."""
        if not self.has_valid:
            return {}  # nothing to measure ("last" keeps the model as it is)
        acc = self.accelerator
        out = embed_batches(self.model, self._validation_batches(), device=acc.device,
                            autocast=acc.mixed_precision == "bf16")  # as this run trains (resolve_mixed_precision)
        parts = gather_object([(out.indices, out.vectors)])
        result: list = [None]
        if acc.is_main_process:
            k = int(self.cfg.train.selection_metric.split("@")[1]) if "@" in self.cfg.train.selection_metric else 10
            item_vecs = assemble(parts, len(self.vocab.item_ids))
            if self.splits.cold_users_split:  # the held-out users, served from their given history
                users = self.splits.held_out_users("valid")
                user_vecs = vectors_for_histories(self.model, item_vecs, users.history, len(users.user_ids))
                metrics = evaluate_held_out_users(user_vecs, item_vecs, users, (k,), implicit=self.splits.implicit)
            else:
                user_vecs = user_vectors(self.model, item_vecs, self.model.history)
                metrics = evaluate_split(user_vecs, item_vecs, self.splits, self.valid_protocol, (k,))
            result = [{**{f"valid/{m}": v for m, v in metrics["rating"].items()},
                       **{f"valid/{m}": v for m, v in metrics["ranking"].items()}}]
        broadcast_object_list(result)  # every rank takes the same early-stopping decision
        return result[0]

    def _validation_batches(self) -> Iterable[ItemBatch]:
        """This rank's items, preprocessed, each exactly once: read from the shards the first time, and from
        memory afterwards when they fit in `data.memory_cache_mb`."""
        if self._valid_batches is not None:
            return self._valid_batches
        d, acc = self.cfg.data, self.accelerator
        loader = item_batches(self.item_source, self.preprocessors, self.vocab.attributes, decode=self.decode,
                              batch_size=d.eval_batch_size, num_workers=d.num_workers, device=acc.device,
                              rank=acc.process_index, world_size=acc.num_processes)
        return self._keeping(loader, d.memory_cache_mb * 2**20) if d.memory_cache_mb else loader

    def _keeping(self, loader: Iterable[ItemBatch], budget: int) -> Iterator[ItemBatch]:
        kept: list[ItemBatch] | None = []
        size = 0
        for batch in loader:
            if kept is not None:
                size += batch.nbytes()
                if size <= budget:
                    kept.append(batch)
                else:
                    kept = None  # over budget: read from the shards every time
            yield batch
        self._valid_batches = kept

    def _after_validation(self, metrics: dict) -> bool:
        """Record, keep the best model, decide early stopping. Returns True to stop."""
        t = self.cfg.train
        value = metrics.get(f"valid/{t.selection_metric}", math.nan)
        record = {"step": self.state.step, "epoch": self.state.epoch, **metrics}
        self.state.history.append(record)
        if _better(t.selection_metric, value, self.state.best_metric):
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.evals_without_improvement = 0
            if self.accelerator.is_main_process:
                tmp = temp_sibling(self.run_dir / BEST_MODEL)
                # the model card names the data, its split protocol and the numbers that selected this model
                card = CardFacts.for_training(self.run_dir, self.manifest["split"], record, t.selection_metric)
                save_model(self.accelerator.unwrap_model(self.step_module).model, self.sizes, tmp, card=card)
                replace_with(tmp, self.run_dir / BEST_MODEL)
        else:
            self.state.evals_without_improvement += 1
        self._log({**record, "best_step": self.state.best_step})
        self._report_validation(metrics)
        if t.selection_metric == "last":
            return False  # nothing is compared, so nothing stops early
        self.state.stopped_early = 0 < t.early_stopping_patience <= self.state.evals_without_improvement
        return self.state.stopped_early

    def _report_validation(self, metrics: dict) -> None:
        """One log line per validation, and the selection metric on the progress bar."""
        if not metrics or not self.accelerator.is_main_process:
            return
        t, s = self.cfg.train, self.state
        name = t.selection_metric if t.selection_metric != "last" else "ndcg@10"  # what validate() measures then
        value = metrics.get(f"valid/{name}", math.nan)
        shown = {name: f"{value:.4f}", **({"rmse": f"{metrics['valid/rmse']:.4f}"}
                                          if name != "rmse" and "valid/rmse" in metrics else {})}
        best = (f"best {s.best_metric:.4f} at step {s.best_step}" if t.selection_metric != "last" and s.best_metric
                is not None else "the newest model is kept (train.selection_metric=last)")
        # at an epoch's end `epoch` already counts it (_end_epoch); with train.eval_every, mid-epoch
        when = f"after epoch {s.epoch}" if s.batch_in_epoch == 0 else f"in epoch {s.epoch + 1}"
        logger.info(f"validation at step {s.step}, {when}/{t.epochs}: "
                    + ", ".join(f"{k} {v}" for k, v in shown.items()) + f"; {best}")
        self._show({f"valid {name}": shown[name]})

    def _show(self, values: dict[str, str]) -> None:
        self._postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix(self._postfix)

    # ------------------------------------------------------------------------------------ the loop

    def _end_epoch(self) -> bool:
        """Move to the next epoch: validation and checkpoint unless they run every N steps. True = stop."""
        t = self.cfg.train
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        stop = self._after_validation(self.validate()) if not t.eval_every else False
        if not t.checkpoint_every:
            self.save_checkpoint()
        return stop

    def fit(self, resume: bool = False) -> TrainerState:
        """Train (continue the newest checkpoint with `resume`); the run folder is locked meanwhile."""
        try:
            return self._fit(resume)
        finally:
            if self._bar is not None:
                self._bar.close()  # before an error is printed, so it gets a line of its own
            if self.lock is not None:  # also when training stops with an error
                self.lock.release()
                self.lock = None

    def _fit(self, resume: bool) -> TrainerState:
        acc, t = self.accelerator, self.cfg.train
        self._prepare_run_dir(resume)
        if resume and self.load_latest_checkpoint():
            logger.info(f"resumed from step {self.state.step} (epoch {self.state.epoch}, batch {self.state.batch_in_epoch})")
        # the run's settings beside its curves (TensorBoard's hparams, W&B's config), as plain scalars
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _flat(to_dict(self.cfg)).items()}
        if t.log_with and acc.is_main_process:
            (self.run_dir / LOGS).mkdir(exist_ok=True)  # wandb writes its files there, and wants it to exist
        acc.init_trackers("mmrec", config=hparams,
                          init_kwargs={"wandb": {"dir": str(self.run_dir / LOGS), "name": self.run_dir.name}})
        logger.debug(f"trackers: {[t.name for t in acc.trackers] or 'none'} (train.log_with); "
                     f"{self.steps_per_epoch} batches per epoch per process, {acc.num_processes} process(es)")
        audit: dict[int, list[int]] = {}
        bar = self._bar = tqdm(total=t.epochs * self.steps_per_epoch, initial=self.state.epoch * self.steps_per_epoch + self.state.batch_in_epoch,
                   desc="train", unit="batch",
                   disable=not acc.is_local_main_process or not logger.isEnabledFor(logging.INFO))
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
            self._show({"epoch": f"{epoch + 1}/{t.epochs}"})
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
                    self._log({"step": self.state.step, "epoch": epoch, **{f"loss/{k}": v for k, v in logged.items()},
                               "lr": self.scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 2)})
                    self._show({"loss": f"{logged['total']:.4f}"})
                if t.eval_every and self.state.step % t.eval_every == 0:
                    stop = self._after_validation(self.validate())
                if t.checkpoint_every and self.state.step % t.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop:
                    break
            if stop:
                break
            stop = self._end_epoch()
        bar.close()
        latest = _checkpoints(self.run_dir)
        if not latest or int(latest[-1].name.split("-")[1]) != self.state.step:
            self.save_checkpoint()  # the end of the run is always resumable and inspectable
        if t.audit_data:
            folder = self.run_dir / "audit"
            folder.mkdir(exist_ok=True)
            (folder / f"rank-{acc.process_index}.json").write_text(json.dumps(
                {"rank": acc.process_index, "world_size": acc.num_processes, "steps": self.state.step,
                 "items_per_epoch": {str(e): v for e, v in audit.items()}}))
        # the trackers only: `end_training` would also destroy the process group, and a launched script that
        # goes on to `embed` / `evaluate_run` in the same processes needs it (the CLI releases it on exit)
        for tracker in acc.trackers:
            tracker.finish()
        return self.state


def train(cfg: RunConfig, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> TrainerState:
    """Train a model; the best one (by validation) is saved to RUN/model."""
    return Trainer(cfg, data_dir, run_dir).fit(resume)
