"""Offline metrics: full-ranking top-K with masking, and rating error.

Definitions (DESIGN.md "Evaluation rules"), averaged over users with at least one relevant item:
- Recall@K = hits in the top K / number of relevant items (as MMRec and RecBole define it);
- NDCG@K   = DCG@K / IDCG@K with binary relevance, IDCG cut at min(#relevant, K);
- Hit@K    = 1 if any relevant item is in the top K;
- MRR@K    = 1 / rank of the first relevant item in the top K (0 if none).
Ties in score are broken towards the lower item index, so rankings are deterministic.

Items a user already interacted with in the masked splits are excluded from that user's ranking.
Scoring is chunked over users so that the (users x items) score matrix never has to fit at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class UserItems:
    """A CSR list of item indices per user: items of user u are `indices[offsets[u]:offsets[u+1]]`."""

    offsets: np.ndarray  # (U + 1,) int64
    indices: np.ndarray  # (nnz,) int64

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> "UserItems":
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        order = np.lexsort((items, users))
        counts = np.bincount(users, minlength=num_users)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items[order])

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, u: int) -> np.ndarray:
        return self.indices[self.offsets[u] : self.offsets[u + 1]]


def top_k(user_vecs: torch.Tensor, item_vecs: torch.Tensor, k: int, exclude: UserItems | None = None,
          chunk_size: int = 1024) -> torch.Tensor:
    """Indices (U, k) of each user's k best items by dot product, excluded items removed.

    Ties go to the lower item index: scores are compared first, then the index (a stable sort of
    the top candidates), so the result does not depend on the hardware's top-k implementation.
    """
    U, N = user_vecs.shape[0], item_vecs.shape[0]
    k = min(k, N)
    out = torch.empty(U, k, dtype=torch.long)
    for start in range(0, U, chunk_size):
        stop = min(start + chunk_size, U)
        scores = (user_vecs[start:stop] @ item_vecs.T).float()  # (C, N)
        if exclude is not None:
            lo, hi = exclude.offsets[start], exclude.offsets[stop]
            rows = np.repeat(np.arange(stop - start), np.diff(exclude.offsets[start : stop + 1]))
            dev = scores.device
            scores[torch.from_numpy(rows).to(dev), torch.from_numpy(exclude.indices[lo:hi]).to(dev)] = float("-inf")
        out[start:stop] = _stable_top_k(scores, k).cpu()
    return out


def _stable_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(C, k) indices of the k largest scores per row; equal scores ordered by lower index first."""
    values, idx = torch.topk(scores, k, dim=1)  # (C, k): right set unless ties cross the k-th place
    kth = values[:, -1:]  # (C, 1)
    tied_out = (scores >= kth).sum(1) > k  # (C,) rows where an equal score was left out: choose again
    if bool(tied_out.any()):
        rows = tied_out.nonzero().squeeze(1)
        sub = scores[rows]  # (R, N)
        above = sub > kth[rows]  # certainly in the top k
        tied = sub == kth[rows]  # compete for the remaining places: lowest indices win
        need = k - above.sum(1, keepdim=True)  # (R, 1)
        chosen = above | (tied & (torch.cumsum(tied, dim=1) <= need))  # exactly k per row
        idx[rows] = chosen.nonzero()[:, 1].view(-1, k)
    # order: by score, ties by index (sort by index first, then a stable sort by score)
    idx = torch.sort(idx, dim=1).values
    order = torch.argsort(-scores.gather(1, idx), dim=1, stable=True)
    return idx.gather(1, order)


def ranking_metrics(top: torch.Tensor | np.ndarray, relevant: UserItems, ks: list[int]) -> dict[str, float]:
    """Recall, NDCG, Hit and MRR at each K for users with >= 1 relevant item.

    Args:
        top: (U, K_max) ranked item indices per user (row u = user u of `relevant`).
        relevant: the held-out items per user.
        ks: cut-offs, each <= K_max.
    """
    top = np.asarray(top)
    n_rel = relevant.counts()
    users = np.nonzero(n_rel > 0)[0]
    out: dict[str, float] = {"users": len(users)}
    if len(users) == 0:
        return out | {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hit", "mrr")}
    k_max = max(ks)
    if top.shape[1] < k_max:
        raise ValueError(f"ranked lists have {top.shape[1]} items, fewer than K = {k_max}")
    hits = np.zeros((len(users), k_max), dtype=bool)
    for row, u in enumerate(users):
        hits[row] = np.isin(top[u, :k_max], relevant.of(u))
    discounts = 1.0 / np.log2(np.arange(2, k_max + 2))  # rank 1 -> 1/log2(2)
    rel = n_rel[users]
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        dcg = (h * discounts[:k]).sum(1)
        idcg = np.cumsum(discounts[:k])[np.minimum(rel, k) - 1]
        first = np.where(h.any(1), h.argmax(1) + 1, 0)
        out[f"recall@{k}"] = float(np.mean(n_hit / rel))
        out[f"ndcg@{k}"] = float(np.mean(dcg / idcg))
        out[f"hit@{k}"] = float(np.mean(n_hit > 0))
        out[f"mrr@{k}"] = float(np.mean(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)))
    return out


def rating_metrics(predicted: np.ndarray | torch.Tensor, actual: np.ndarray | torch.Tensor) -> dict[str, float]:
    """RMSE and MAE."""
    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if len(p) == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "count": 0.0}
    err = p - a
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))), "count": float(len(p))}
