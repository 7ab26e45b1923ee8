"""Validation during training, and what it decides: the best model and early stopping.

Validation scores the valid split by the one evaluation rule (`mmrec.evaluate.protocol`), so model
selection measures exactly what `mmrec eval` reports: every item is embedded (each rank its shards), then
the rating and ranking metrics are computed on the main process and broadcast, so every rank takes the same
early-stopping decision. On a cold-users split the held-out valid users are served from their given history.

The best model is kept by validation only (`train.selection_metric`; "last" keeps the newest); early
stopping ends the run after `train.early_stopping_patience` validations without improvement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from mmrec.config import RunConfig, TrainConfig
from mmrec.data.batch import ItemBatch
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import assemble, embed_batches, item_batches
from mmrec.evaluate.protocol import EvalProtocol, evaluate_held_out_users, evaluate_split
from mmrec.model.model import RecModel, user_vectors, vectors_for_histories
from mmrec.training.checkpoints import TrainerState


class Validator:
    """Scores a training run's model on the valid split (`validate`)."""

    def __init__(self, accelerator: Accelerator, cfg: RunConfig, model: RecModel, preprocessors: dict,
                 vocab: RunVocabulary, splits: RunSplits, manifest: dict, item_source, decode: Callable[[dict], Any]):
        self.accelerator, self.cfg, self.model, self.preprocessors = accelerator, cfg, model, preprocessors
        self.vocab, self.splits, self.item_source, self.decode = vocab, splits, item_source, decode
        self.has_valid = manifest["interactions"]["valid"]["rows"] > 0  # else only "last" can select
        # the one evaluation rule (mmrec.evaluate.protocol): validation measures what `mmrec eval` reports
        self.protocol = EvalProtocol.for_split("valid", manifest["split"])
        self._kept: list[ItemBatch] | None = None  # see _batches

    def validate(self) -> dict:
        """Embed every item (each rank its shards), then rating + ranking metrics on the main process."""
        if not self.has_valid:
            return {}  # nothing to measure ("last" keeps the model as it is)
        acc = self.accelerator
        out = embed_batches(self.model, self._batches(), device=acc.device,
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
                metrics = evaluate_split(user_vecs, item_vecs, self.splits, self.protocol, (k,))
            result = [{**{f"valid/{m}": v for m, v in metrics["rating"].items()},
                       **{f"valid/{m}": v for m, v in metrics["ranking"].items()}}]
        broadcast_object_list(result)  # every rank takes the same early-stopping decision
        return result[0]

    def _batches(self) -> Iterable[ItemBatch]:
        """This rank's items, preprocessed, each exactly once: read from the shards the first time, and from
        memory afterwards when they fit in `data.memory_cache_mb`."""
        if self._kept is not None:
            return self._kept
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
        self._kept = kept


def better(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` of the selection metric beats `best` (RMSE lower, ranking metrics higher; NaN never)."""
    if metric == "last":
        return True  # no selection: the newest model is kept
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if metric == "rmse" else value > best


def record_validation(state: TrainerState, metrics: dict, t: TrainConfig) -> tuple[dict, bool]:
    """Add a validation to `state` (its history, the best so far); returns (its record, whether it is the
    new best: the model to keep)."""
    value = metrics.get(f"valid/{t.selection_metric}", math.nan)
    record = {"step": state.step, "epoch": state.epoch, **metrics}
    state.history.append(record)
    improved = better(t.selection_metric, value, state.best_metric)
    if improved:
        state.best_metric, state.best_step = value, state.step
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    return record, improved


def stops_early(state: TrainerState, t: TrainConfig) -> bool:
    """Early stopping after the latest validation (recorded in `state.stopped_early`)."""
    if t.selection_metric == "last":
        return False  # nothing is compared, so nothing stops early
    state.stopped_early = 0 < t.early_stopping_patience <= state.evals_without_improvement
    return state.stopped_early
