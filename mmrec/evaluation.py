"""`mmrec eval`: an offline evaluation whose every number names the protocol that produced it.

    mmrec eval --run RUN --data DATA --split test --k 10,20,50 --out REPORT [--emb EMB]

Protocol (DESIGN.md "Evaluation rules"): full ranking over all items; scoring `test` masks each
user's train and valid items, scoring `valid` masks train (`--mask train` masks train only, as
MMRec does); every held-out interaction is relevant unless `--threshold` sets a minimum rating.
Sections of the report:
- rating: RMSE / MAE on every held-out row (users unseen in training score mu + b_i);
- ranking: Recall / NDCG / Hit / MRR @K over users with a relevant item, among all items (for the
  cold-items protocol: among the cold items, `--candidates` to choose);
- beyond: coverage@K (share of the catalogue in any top-K list), average popularity@K (training
  interactions of the recommended items), intra-list diversity@K (1 - mean pairwise cosine of the
  recommended items' q vectors);
- slices: warm items (relevant warm items ranked among warm items), cold items (relevant cold items
  ranked among cold items: the cold-start track, content only), and user-activity buckets;
- baselines on the same split in the same run: popularity and bias-only;
- ablation: the same metrics with each modality dropped from every item at inference.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmrec.baselines import bias_vectors, popularity_vectors
from mmrec.data.reader import load_manifest
from mmrec.data.sharding import sha256_of
from mmrec.factory import WEIGHTS_FILE
from mmrec.inference import RunVocabulary, SplitArrays, evaluate_split, ranked_lists, read_split, user_vectors

ACTIVITY_BUCKETS = ((1, 5), (6, 20), (21, 50), (51, None))


def _keep(rows: SplitArrays, mask: np.ndarray) -> SplitArrays:
    return SplitArrays(rows.users[mask], rows.items[mask], rows.ratings[mask])


def _filtered_split(data_dir: Path, split: str, vocab: RunVocabulary, threshold: float | None,
                    users: np.ndarray | None = None) -> SplitArrays:
    rows = read_split(data_dir, split, vocab)
    keep = np.ones(len(rows.users), dtype=bool)
    if threshold is not None:
        keep &= rows.ratings >= threshold
    if users is not None:
        keep &= np.isin(rows.users, users)
    return _keep(rows, keep)


class _Evaluator:
    """Scores one (user vectors, item vectors) pair under the report's protocol."""

    def __init__(self, data_dir: Path, vocab: RunVocabulary, split: str, masked: tuple[str, ...], ks: list[int],
                 threshold: float | None, candidates: str):
        self.data_dir, self.vocab, self.split, self.masked, self.ks = data_dir, vocab, split, masked, ks
        self.threshold = threshold
        self.train = read_split(data_dir, "train", vocab)
        n = len(vocab.item_ids)
        self.popularity = np.bincount(self.train.items, minlength=n)
        self.warm = np.nonzero(self.popularity > 0)[0]
        self.cold = np.nonzero(self.popularity == 0)[0]
        activity = np.bincount(self.train.users[self.train.users >= 0], minlength=len(vocab.user_ids))
        # the headline's candidate items: everything, or (cold-start track) only the cold items
        self.candidates = self.cold if candidates == "cold" else None
        self.buckets = {}
        for lo, hi in ACTIVITY_BUCKETS:
            name = f"{lo}+" if hi is None else f"{lo}-{hi}"
            self.buckets[name] = np.nonzero((activity >= lo) & ((activity <= hi) if hi else True))[0]

    def _run(self, user_vecs, item_vecs, candidates="headline", users=None) -> dict:
        if isinstance(candidates, str):
            candidates = self.candidates
        if self.threshold is None and users is None:
            return evaluate_split(user_vecs, item_vecs, self.vocab, self.data_dir, self.split, self.masked,
                                  tuple(self.ks), candidates)
        # relevance threshold or user subset: evaluate on a filtered copy of the held-out split
        held = _filtered_split(self.data_dir, self.split, self.vocab, self.threshold, users)
        return evaluate_split(user_vecs, item_vecs, self.vocab, self.data_dir, self.split, self.masked,
                              tuple(self.ks), candidates, held=held)

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
        held = _filtered_split(self.data_dir, self.split, self.vocab, self.threshold)
        users = np.unique(held.users[held.users >= 0])
        cand = np.arange(len(self.vocab.item_ids)) if self.candidates is None else self.candidates
        top = ranked_lists(user_vecs, item_vecs, self.vocab, self.data_dir, users, self.masked, cand, max(self.ks))
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
    """The report dict (DESIGN.md report.json) for a model's exported vectors on `split`.

    `candidates`: "all" items, "cold" items only, or "auto" = cold for the cold-items protocol
    without warm_holdout (whose held-out items are then all cold: ranked among all items they would compete with warm items
    that carry popularity and ID terms, and the track would measure that instead of content).
    """
    ks = sorted(ks or [10, 20, 50])
    vocab = RunVocabulary.load(run_dir)
    manifest = load_manifest(data_dir)
    masked = {"auto": ("train", "valid") if split == "test" else ("train",), "train": ("train",)}[mask]
    if candidates == "auto":  # cold only when every held-out item is cold
        split_info = manifest["split"]
        candidates = "cold" if split_info["protocol"] == "cold-items" and not split_info.get("warm_holdout") else "all"
    ev = _Evaluator(data_dir, vocab, split, masked, ks, threshold, candidates)
    user_vecs = user_vectors(model)  # on the CPU, wherever the model is

    report = {"protocol": {
        "split": split,
        "protocol": manifest["split"]["protocol"],
        "seed": manifest["split"]["seed"],
        "params": {k: v for k, v in manifest["split"].items() if k not in ("protocol", "seed", "cold_items")},
        "split_sha256": {name: info["sha256"] for name, info in manifest["interactions"].items()},
        "masked_splits": list(masked),
        "relevance_threshold": threshold,
        "candidates": ("cold items only (no training interaction): the cold-start track" if candidates == "cold"
                       else "all items") + "; slices: warm among warm items, cold among cold items",
        "checkpoint": f"{run_dir / 'model'} (sha256 {sha256_of(run_dir / 'model' / WEIGHTS_FILE)[:16]})",
        "data": str(data_dir.resolve()),
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ks": ks,
    }}
    ours = ev.score(user_vecs, item_vecs)
    report.update(ours)
    report["beyond"] = ev.beyond(user_vecs, item_vecs, model.config.embedding_dim)
    n_users, n_items = len(vocab.user_ids), len(vocab.item_ids)
    pop = ev.score(*popularity_vectors(ev.train, n_users, n_items))
    pop.pop("rating")  # popularity predicts no rating
    bias = ev.score(*bias_vectors(ev.train, n_users, n_items), slices=False)
    report["baselines"] = {"popularity": pop, "bias_only": bias}
    report["ablation"] = {f"without_{m}": ev.score(user_vecs, vecs, slices=False) for m, vecs in ablated.items()}
    return report
