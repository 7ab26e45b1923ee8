"""`mmrec eval`: an offline evaluation whose every number names the protocol that produced it.

    mmrec eval --run RUN --data DATA --split test --k 10,20,50 --out REPORT [--emb EMB]

Protocol (`mmrec.evaluate.protocol`, the same rule training validation uses): full ranking; scoring
`test` masks each user's train and valid items, scoring `valid` masks train (`--mask train` masks
train only, as MMRec does); every held-out interaction is relevant unless `--threshold` sets a
minimum rating.
Sections of the report:
- rating: RMSE / MAE on every held-out row (users unseen in training score mu + b_i);
- ranking: Recall / NDCG / Hit / MRR @K over users with a relevant item, among all items (for the
  cold-items protocol: among the cold items, `--candidates` to choose);
- beyond: coverage@K (share of the catalogue in any top-K list), average popularity@K (training
  interactions of the recommended items), intra-list diversity@K (1 - mean pairwise cosine of the
  recommended items' q vectors);
- slices: warm items (relevant warm items ranked among warm items), cold items (relevant cold items
  ranked among cold items: the cold-start track, content only), and users by history length;
- baselines on the same split in the same run: popularity and bias-only;
On a cold-users split the scored users were never trained: each is served from their given history
(the history tower; an ID tower has only its unknown-user row for them), their history items are
masked, and the baselines are those that serve a user from a history: popularity, item-kNN over the
history, ALS fold-in and EASE.
- ablation: the same metrics with each modality dropped from every item at inference;
- explanation faithfulness (`mmrec.serve.explain`): for 200 seeded users and their top-10, how often removing
  the top cited history item lowers the score more than removing a random one;
- diversify (`--diversify 0.1,0.3,...`): the accuracy / diversity trade-off of MMR re-ranking
  (`mmrec.serve.rerank`) of each user's top-`--pool`, one row per LAMBDA, LAMBDA 0 the headline ranking.

Under `accelerate launch -m mmrec.cli eval ...` each process embeds its shards of the items (gathered on
every rank) and ranks a contiguous block of the users in every full ranking (the model, slices, baselines,
ablation, beyond, the MMR lists); the ranked lists are gathered, so every metric is computed from the same
per-user lists, in the same order, as in one process. The explanation-faithfulness check and a cold-users
split run on the main process alone, which alone writes the report.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from safetensors.torch import load_file
from tqdm import tqdm

from mmrec import __version__
from mmrec.config import load_run_config
from mmrec.config_io import to_dict
from mmrec.data.dataset import Dataset
from mmrec.data.fingerprint import check_dataset
from mmrec.data.reader import load_manifest
from mmrec.data.remote import as_location, describe
from mmrec.data.schema import HISTORY_SPLITS
from mmrec.data.splits import RunSplits, SplitArrays
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import assemble, counting, embed_batches, item_batches, progress_shown, verify_shards
from mmrec.evaluate.baselines import (
    als_fold_in_vectors,
    bias_vectors,
    ease_history_vectors,
    ease_vectors,
    implicit_als_vectors,
    item_knn_vectors,
    popularity_vectors,
)
from mmrec.evaluate.protocol import EvalProtocol, evaluate_held_out_users
from mmrec.evaluate.report import write_report
from mmrec.evaluate.scoring import Evaluator, Ranks
from mmrec.files import sha256_of
from mmrec.model.card import refresh_card
from mmrec.model.factory import WEIGHTS_FILE, load_run_model
from mmrec.model.history import UserHistory
from mmrec.model.model import user_vectors, vectors_for_histories
from mmrec.precision import bf16_autocast
from mmrec.serve.faithfulness import explanation_faithfulness
from mmrec.serve.rerank import (
    DEFAULT_POOL,
    attribute_table,
    check_cap,
    check_lambda,
    check_pool,
    item_attributes,
)
from mmrec.serve.run import made_by_run_model

logger = logging.getLogger(__name__)


def evaluate(run_dir: Path, data_dir: Path, item_vecs: torch.Tensor, ablated: dict[str, torch.Tensor], model,
             split: str = "test", ks: list[int] | None = None, mask: str = "auto",
             threshold: float | None = None, candidates: str = "auto", diversify: list[float] | None = None,
             pool: int = DEFAULT_POOL, max_per_attribute: int | None = None, ranks: Ranks | None = None) -> dict:
    """The report dict (docs/design.md report.json) for a model's exported vectors on `split`.

    `mask` and `candidates` choose the protocol (`mmrec.evaluate.protocol`: "auto" is the rule that
    training validation uses too). `diversify`: LAMBDAs for the `diversify` section (MMR re-ranking of
    each user's top-`pool`, at most `max_per_attribute` items sharing an attribute; LAMBDA 0 is added).
    `ranks`: the processes sharing the users (module docstring); only the main one's report is whole.
    """
    ranks = ranks or Ranks()
    ks = sorted(ks or [10, 20, 50])
    vocab = RunVocabulary.load(run_dir)
    dataset = Dataset(data_dir)  # every split file hashed and parsed once, the shards' index built once
    manifest = dataset.manifest
    protocol = EvalProtocol.for_split(split, manifest["split"], mask=mask, candidates=candidates, threshold=threshold)
    splits = RunSplits(dataset, vocab)

    report = {"protocol": {
        "split": split,
        "protocol": manifest["split"]["protocol"],
        "seed": manifest["split"]["seed"],
        "params": {k: v for k, v in manifest["split"].items() if k not in ("protocol", "seed", "cold_items", "cold_users")},
        "split_sha256": {name: info["sha256"] for name, info in manifest["interactions"].items()},
        "masked_splits": list(protocol.masked),
        "relevance_threshold": threshold,
        "candidates": (protocol.describe() + "; slices: warm among warm items, cold among cold items"
                       if not splits.cold_users_split else "all items but each user's given history"),
        "checkpoint": f"{run_dir / 'model'} (sha256 {sha256_of(run_dir / 'model' / WEIGHTS_FILE)[:16]})",
        "data": describe(data_dir),
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ks": ks,
        "feedback": ("implicit (no rating column, or one rating value): ranking metrics only; a rating "
                     "error would mean nothing" if splits.implicit else "explicit ratings"),
        "users": ("held out of training, each served from the given history of the split's "
                  f"{split}_history file" if splits.cold_users_split else "trained users"),
    }}
    if splits.cold_users_split:
        if diversify:
            raise ValueError("--diversify re-ranks trained users' lists; a cold-users split has none: leave it out")
        if not ranks.main:  # not shared out: the main process scores the held-out users alone
            return {}
        report.update(_cold_users(splits, split, item_vecs, ablated, model, ks, threshold))
        report["explanation_faithfulness"] = _faithfulness(splits, protocol, item_vecs, model)
        report["protocol"]["masked_splits"] = [HISTORY_SPLITS[split]]  # each user's given history
        return report
    ev = Evaluator(splits, protocol, ks, ranks)
    logger.info(f"scoring the {split} split: the model, its slices, the baselines and the modality ablation"
                + (f" (users shared among {ranks.count} processes)" if ranks.count > 1 else ""))
    history = (UserHistory.from_rows(splits["train"], splits.num_users + 1, model.config.history_length)
               if model.history_tower else None)
    user_vecs = user_vectors(model, item_vecs, history)  # on the CPU, wherever the model is
    ours = ev.score(user_vecs, item_vecs)
    if "not_computable" in ours["ranking"]:  # a slice may lack a cut-off; the headline may not
        reasons = "; ".join(f"{k}: {why}" for k, why in ours["ranking"]["not_computable"].items())
        raise ValueError(f"the headline ranking cannot be computed at every --k ({reasons}); pass smaller --k")
    report.update(ours)
    id_terms = model.item_seen.cpu()[: len(item_vecs)]  # the rows with learned ID terms, as EMB's `id_terms`
    report["beyond"] = ev.beyond(user_vecs, item_vecs, id_terms)
    if ranks.main:  # 200 seeded users: not worth sharing out; the other ranks wait at their next ranking
        report["explanation_faithfulness"] = _faithfulness(splits, protocol, item_vecs, model)
    if diversify:  # the trade-off is read against the plain ranking: LAMBDA 0 is always a row
        attributes = (attribute_table(item_attributes(dataset, vocab.item_ids))[0]
                      if max_per_attribute is not None else None)
        report["diversify"] = ev.diversify(user_vecs, item_vecs, id_terms,
                                           sorted({0.0, *map(check_lambda, diversify)}), pool, attributes,
                                           max_per_attribute)
    n_users, n_items = splits.num_users, splits.num_items
    pop = ev.score(*popularity_vectors(splits["train"], n_users, n_items))
    pop.pop("rating")  # popularity predicts no rating
    bias = ev.score(*bias_vectors(splits["train"], n_users, n_items), slices=False)
    report["baselines"] = {"popularity": pop, "bias_only": bias}
    # a history tower's users are computed from the item vectors: with a modality dropped, from those too
    ablated_users = {m: user_vectors(model, vecs, history) for m, vecs in ablated.items()}
    report["ablation"] = {f"without_{m}": ev.score(ablated_users[m], vecs, slices=False)
                          for m, vecs in ablated.items()}
    if ablated and report["slices"]["cold_items"].get("users"):  # cold items have no ID terms: content alone
        report["ablation_cold_items"] = {
            f"without_{m}": {"ranking": ev.metrics(ablated_users[m], vecs, ev.cold)["ranking"]} for m, vecs in ablated.items()}
    if splits.implicit:  # no section says "rating" where there is none
        for section in (report, bias, *report["ablation"].values()):
            section.pop("rating", None)
    ev.bar.close()
    return report


def _faithfulness(splits: RunSplits, protocol: EvalProtocol, item_vecs: torch.Tensor, model) -> dict:
    """Explanations (`mmrec explain`) checked on 200 seeded users of the split and their top-10: does removing
    the top cited history item lower the score more than removing a random one?"""
    if splits.cold_users_split:  # held-out users, served from their given history (masked, as in the headline)
        users = splits.held_out_users(protocol.split)
        return explanation_faithfulness(model, item_vecs.cpu(), users.history, users.held.users, users.history,
                                        trained=False)
    held = protocol.held_out(splits)
    masked = [splits[name] for name in protocol.masked]
    masked = SplitArrays(*(np.concatenate(parts) for parts in zip(*((m.users, m.items, m.ratings) for m in masked))))
    return explanation_faithfulness(model, item_vecs.cpu(), splits["train"], held.users[held.users >= 0], masked,
                                    protocol.candidate_items(splits))


def _cold_users(splits: RunSplits, split: str, item_vecs: torch.Tensor, ablated: dict[str, torch.Tensor], model,
                ks: list[int], threshold: float | None) -> dict:
    """The report sections for a cold-users split: held-out users served from their given history."""
    users = splits.held_out_users(split)
    n_users, n_items, train = len(users.user_ids), splits.num_items, splits["train"]
    logger.info(f"scoring the {split} split's {n_users} held-out users: the model, the baselines and the ablation")
    bar = tqdm(desc="eval: scoring", unit="ranking", disable=not progress_shown())  # a tick per ranking

    def score(user_vecs: torch.Tensor, vecs: torch.Tensor, rating: bool = True) -> dict:
        out = evaluate_held_out_users(user_vecs, vecs, users, tuple(ks), threshold, splits.implicit or not rating)
        bar.update(1)
        return out if rating and not splits.implicit else {"ranking": out["ranking"]}

    ours = score(vectors_for_histories(model, item_vecs, users.history, n_users), item_vecs)
    if "not_computable" in ours["ranking"]:
        reasons = "; ".join(f"{k}: {why}" for k, why in ours["ranking"]["not_computable"].items())
        raise ValueError(f"the headline ranking cannot be computed at every --k ({reasons}); pass smaller --k")
    pop_users, pop_items = popularity_vectors(train, n_users, n_items)
    bias_users, bias_items = bias_vectors(train, splits.num_users, n_items)
    _, als_items = implicit_als_vectors(train, splits.num_users, n_items)
    _, ease_items = ease_vectors(train, splits.num_users, n_items)
    baselines = {
        "popularity": score(pop_users[:n_users], pop_items, rating=False),
        # a user who was not trained has no bias of their own: r_hat = mu + b_i
        "bias_only": score(bias_users[-1:].expand(n_users, -1), bias_items),
        "item_knn": score(*item_knn_vectors(train, n_items, users.history, n_users), rating=False),
        "als_fold_in": score(als_fold_in_vectors(als_items, users.history, n_users), als_items, rating=False),
        "ease": score(ease_history_vectors(users.history, n_users, n_items), ease_items, rating=False),
    }
    ablation = {f"without_{m}": score(vectors_for_histories(model, vecs, users.history, n_users), vecs)
                for m, vecs in ablated.items()}
    bar.close()
    return {**ours, "baselines": baselines, "ablation": ablation}


def evaluate_run(run_dir: str | Path, data_dir: str | Path, out: str | Path, *, split: str = "test",
                 ks: list[int] | None = None, emb: str | Path | None = None, mask: str = "auto",
                 threshold: float | None = None, candidates: str = "auto", ablation: bool = True,
                 batch_size: int = 128, num_workers: int = 0, diversify: list[float] | None = None,
                 pool: int = DEFAULT_POOL, max_per_attribute: int | None = None) -> tuple[dict, dict[str, Path]]:
    """`mmrec eval`: score a run's model on `split` and write REPORT (report.json, report.md, plots).

    The item vectors come from `emb` (an `mmrec embed` folder) or from one pass of the item tower,
    which also gives every modality's ablation (the encoders run once). Returns (report, written paths).
    Under `accelerate launch` each process embeds its shards and ranks its block of users (module docstring);
    the main process writes the report, and the others return ({}, {}).
    """
    run_dir, data_dir = Path(run_dir), as_location(data_dir)  # data: a folder or a URL
    for lam in diversify or ():  # before the item tower runs: a typo fails at once
        check_lambda(lam)
    if diversify:
        check_pool(pool, max(ks or [10, 20, 50]))
        check_cap(max_per_attribute)
    check_dataset(run_dir, data_dir)
    if emb is not None:  # the vectors must be this run's model's, from this dataset
        made = json.loads((Path(emb) / "embedding.json").read_text())
        if not made_by_run_model(run_dir, made):
            raise ValueError(f"{emb} holds embeddings of another model ({made.get('checkpoint')}), not of "
                             f"{run_dir / 'model'}: re-run `mmrec embed` with this run, or drop --emb")
        if made.get("data", "") != describe(data_dir):
            check_dataset(run_dir, made.get("data", ""))  # same manifest elsewhere is fine; another is not
    ranks = Ranks.current()
    device = PartialState().device  # this process's accelerator under `accelerate launch`
    model, preprocessors, _ = load_run_model(run_dir, device=device)
    vocab = RunVocabulary.load(run_dir)
    n = len(vocab.item_ids)
    item_vecs = load_file(Path(emb) / "item_embeddings.safetensors")["embeddings"] if emb is not None else None
    ablate = tuple(model.modalities) if ablation else ()
    ablated = {}
    if item_vecs is None or ablate:
        verify_shards(data_dir, load_manifest(data_dir))  # a tampered tar would change items silently
        logger.info(f"embedding the {n} items on {device.type}" + (f" (with and without each of {', '.join(ablate)}: "
                    "the modality ablation)" if ablate else ""))
        batches = counting(item_batches(data_dir, preprocessors, vocab.attributes, batch_size=batch_size,
                                        num_workers=num_workers, device=device, rank=ranks.index,
                                        world_size=ranks.count), n, "eval: embed items")
        tower = embed_batches(model, batches, device=device, autocast=bf16_autocast(device), ablate=ablate)
        parts = ranks.gather((tower.indices, tower.vectors, tower.ablated))  # each rank's shards, on every rank
        item_vecs = assemble([(i, v) for i, v, _ in parts], n) if item_vecs is None else item_vecs
        ablated = {m: assemble([(i, a[m]) for i, _, a in parts], n) for m in ablate}
    report = evaluate(run_dir, data_dir, item_vecs, ablated, model, split, ks, mask, threshold, candidates,
                      diversify, pool, max_per_attribute, ranks)
    if not ranks.main:  # one writer
        return {}, {}
    # what produced these numbers: the code's version and the config the run resolved (RUN/config.yaml)
    report.update(mmrec_version=__version__, config=to_dict(load_run_config(run_dir / "config.yaml")))
    logger.info(f"writing the report -> {out}")
    paths = write_report(report, out, metrics=run_dir / "metrics.jsonl")
    try:  # the model card carries the latest numbers of each evaluated split, labelled with their protocol
        refresh_card(run_dir / "model", report)
    except OSError as e:  # a read-only model folder: the report is written, the card stays as it was
        logger.warning(f"the model card in {run_dir / 'model'} was not updated: {e}")
    return report, paths
