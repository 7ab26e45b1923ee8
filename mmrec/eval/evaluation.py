"""`mmrec eval`: an offline evaluation whose every number names the protocol that produced it.

    mmrec eval --run RUN --data DATA --split test --k 10,20,50 --out REPORT [--emb EMB]

Protocol (`mmrec.eval.protocol`, the same rule training validation uses): full ranking; scoring
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
- ablation: the same metrics with each modality dropped from every item at inference.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from mmrec import __version__
from mmrec.config import load_run_config
from mmrec.config_io import to_dict
from mmrec.data.fingerprint import check_dataset
from mmrec.data.reader import load_manifest
from mmrec.data.schema import HISTORY_SPLITS
from mmrec.data.split_files import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import assemble, counting, embed_batches, item_batches, progress_shown, verify_shards
from mmrec.eval.baselines import (
    als_fold_in_vectors,
    bias_vectors,
    ease_history_vectors,
    ease_vectors,
    implicit_als_vectors,
    item_knn_vectors,
    popularity_vectors,
)
from mmrec.eval.protocol import EvalProtocol, evaluate_held_out_users, evaluate_split, ranked_lists
from mmrec.eval.report import write_report
from mmrec.files import sha256_of
from mmrec.model.factory import WEIGHTS_FILE, load_run_model
from mmrec.model.history import UserHistory
from mmrec.model.hub import refresh_card
from mmrec.model.model import user_vectors, vectors_for_histories
from mmrec.precision import bf16_autocast

# users by history length (training interactions): a user vector from 1 interaction, a handful, ...
ACTIVITY_BUCKETS = ((1, 1), (2, 5), (6, 20), (21, None))
logger = logging.getLogger(__name__)


class _Evaluator:
    """Scores one (user vectors, item vectors) pair under the report's protocol."""

    def __init__(self, splits: RunSplits, protocol: EvalProtocol, ks: list[int]):
        self.splits, self.protocol, self.ks = splits, protocol, ks
        # one tick per full ranking of the users (the model, each slice, baseline and ablation); closed by evaluate()
        self.bar = tqdm(desc="eval: scoring", unit="ranking", disable=not progress_shown())
        self.popularity = splits.item_popularity()
        self.warm = np.nonzero(self.popularity > 0)[0]
        self.cold = np.nonzero(self.popularity == 0)[0]
        train = splits["train"]
        activity = np.bincount(train.users[train.users >= 0], minlength=splits.num_users)
        self.buckets = {}
        for lo, hi in ACTIVITY_BUCKETS:
            name = f"{lo}+" if hi is None else str(lo) if lo == hi else f"{lo}-{hi}"
            self.buckets[name] = np.nonzero((activity >= lo) & ((activity <= hi) if hi else True))[0]

    def _run(self, user_vecs, item_vecs, candidates="protocol", users=None) -> dict:
        held = self.protocol.held_out(self.splits, users)
        out = evaluate_split(user_vecs, item_vecs, self.splits, self.protocol, tuple(self.ks), candidates, held)
        self.bar.update(1)
        return out

    def score(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, slices: bool = True) -> dict:
        full = self._run(user_vecs, item_vecs)
        out = {"rating": full["rating"], "ranking": full["ranking"]}
        if slices:
            out["slices"] = {
                "warm_items": self._run(user_vecs, item_vecs, self.warm)["ranking"] if len(self.warm) else {},
                "cold_items": self._run(user_vecs, item_vecs, self.cold)["ranking"] if len(self.cold) else {},
                "user_activity": {name: self._run(user_vecs, item_vecs, users=users)["ranking"]
                                  for name, users in self.buckets.items() if len(users)},
            }
        return out

    def beyond(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor, embed_dim: int) -> dict:
        """Coverage, average popularity and intra-list diversity of the top-K lists of evaluated users."""
        held = self.protocol.held_out(self.splits)
        users = np.unique(held.users[held.users >= 0])
        cand = self.protocol.candidate_items(self.splits)
        cand = np.arange(self.splits.num_items) if cand is None else cand
        top = ranked_lists(user_vecs, item_vecs, self.splits, users, self.protocol.masked, cand, max(self.ks))
        q = item_vecs[:, :embed_dim]
        q = F.normalize(q - q.mean(0), dim=-1)  # centred: what distinguishes items, not what they share
        out = {}
        for k in self.ks:
            lists = top[:, :k]
            out[f"coverage@{k}"] = float(len(np.unique(lists)) / len(cand))  # share of the candidate items
            out[f"avg_popularity@{k}"] = float(self.popularity[lists].mean())
            if k > 1:
                per_user = []
                for start in range(0, len(lists), 4096):  # chunks: (U, k, k) at once would not fit for 100k users
                    v = q[torch.from_numpy(lists[start : start + 4096])]  # (C, k, E)
                    sims = v @ v.transpose(1, 2)  # (C, k, k)
                    per_user.append((sims.sum((1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1)))
                out[f"diversity@{k}"] = float((1 - torch.cat(per_user)).mean())
        return out


def evaluate(run_dir: Path, data_dir: Path, item_vecs: torch.Tensor, ablated: dict[str, torch.Tensor], model,
             split: str = "test", ks: list[int] | None = None, mask: str = "auto",
             threshold: float | None = None, candidates: str = "auto") -> dict:
    """The report dict (docs/design.md report.json) for a model's exported vectors on `split`.

    `mask` and `candidates` choose the protocol (`mmrec.eval.protocol`: "auto" is the rule that
    training validation uses too).
    """
    ks = sorted(ks or [10, 20, 50])
    vocab = RunVocabulary.load(run_dir)
    manifest = load_manifest(data_dir)
    protocol = EvalProtocol.for_split(split, manifest["split"], mask=mask, candidates=candidates, threshold=threshold)
    splits = RunSplits(data_dir, vocab)  # every split file parsed once for the whole report

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
        "data": str(data_dir.resolve()),
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ks": ks,
        "feedback": ("implicit (no rating column, or one rating value): ranking metrics only; a rating "
                     "error would mean nothing" if splits.implicit else "explicit ratings"),
        "users": ("held out of training, each served from the given history of the split's "
                  f"{split}_history file" if splits.cold_users_split else "trained users"),
    }}
    if splits.cold_users_split:
        report.update(_cold_users(splits, split, item_vecs, ablated, model, ks, threshold))
        report["protocol"]["masked_splits"] = [HISTORY_SPLITS[split]]  # each user's given history
        return report
    ev = _Evaluator(splits, protocol, ks)
    logger.info(f"scoring the {split} split: the model, its slices, the baselines and the modality ablation")
    history = (UserHistory.from_rows(splits["train"], splits.num_users + 1, model.config.history_length)
               if model.history_tower else None)
    user_vecs = user_vectors(model, item_vecs, history)  # on the CPU, wherever the model is
    ours = ev.score(user_vecs, item_vecs)
    if "not_computable" in ours["ranking"]:  # a slice may lack a cut-off; the headline may not
        reasons = "; ".join(f"{k}: {why}" for k, why in ours["ranking"]["not_computable"].items())
        raise ValueError(f"the headline ranking cannot be computed at every --k ({reasons}); pass smaller --k")
    report.update(ours)
    report["beyond"] = ev.beyond(user_vecs, item_vecs, model.config.embedding_dim)
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
            f"without_{m}": {"ranking": ev._run(ablated_users[m], vecs, ev.cold)["ranking"]} for m, vecs in ablated.items()}
    if splits.implicit:  # no section says "rating" where there is none
        for section in (report, bias, *report["ablation"].values()):
            section.pop("rating", None)
    ev.bar.close()
    return report


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
                 batch_size: int = 128, num_workers: int = 0) -> tuple[dict, dict[str, Path]]:
    """`mmrec eval`: score a run's model on `split` and write REPORT (report.json, report.md, plots).

    The item vectors come from `emb` (an `mmrec embed` folder) or from one pass of the item tower,
    which also gives every modality's ablation (the encoders run once). Returns (report, written paths).
    """
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    check_dataset(run_dir, data_dir)
    if emb is not None:  # the vectors must be this run's model's, from this dataset
        made = json.loads((Path(emb) / "embedding.json").read_text())
        if made.get("checkpoint_sha256") != sha256_of(run_dir / "model" / WEIGHTS_FILE):
            raise ValueError(f"{emb} holds embeddings of another model ({made.get('checkpoint')}), not of "
                             f"{run_dir / 'model'}: re-run `mmrec embed` with this run, or drop --emb")
        if Path(made.get("data", "")).resolve() != data_dir.resolve():
            check_dataset(run_dir, made.get("data", ""))  # same manifest elsewhere is fine; another is not
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
                                        num_workers=num_workers, device=device), n, "eval: embed items")
        tower = embed_batches(model, batches, device=device, autocast=bf16_autocast(device), ablate=ablate)
        item_vecs = assemble([(tower.indices, tower.vectors)], n) if item_vecs is None else item_vecs
        ablated = {m: assemble([(tower.indices, v)], n) for m, v in tower.ablated.items()}
    report = evaluate(run_dir, data_dir, item_vecs, ablated, model, split, ks, mask, threshold, candidates)
    # what produced these numbers: the code's version and the config the run resolved (RUN/config.yaml)
    report.update(mmrec_version=__version__, config=to_dict(load_run_config(run_dir / "config.yaml")))
    logger.info(f"writing the report -> {out}")
    paths = write_report(report, out, metrics=run_dir / "metrics.jsonl")
    try:  # the model card carries the latest numbers of each evaluated split, labelled with their protocol
        refresh_card(run_dir / "model", report)
    except OSError as e:  # a read-only model folder: the report is written, the card stays as it was
        logger.warning(f"the model card in {run_dir / 'model'} was not updated: {e}")
    return report, paths
