"""Offline metrics: full-ranking top-K with masking, and rating error.

Definitions (docs/design.md "Evaluation rules"), averaged over users with at least one relevant item:
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
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> UserItems:
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


SCORE_BLOCK_BYTES = 256 * 2**20  # default memory for one (users x items) float32 score block


def top_k(user_vecs: torch.Tensor, item_vecs: torch.Tensor, k: int, exclude: UserItems | None = None,
          chunk_size: int | None = None) -> torch.Tensor:
    """Indices (U, k) of each user's k best items by dot product, excluded items removed.

    Ties go to the lower item index: scores are compared first, then the index (a stable sort of
    the top candidates), so the result does not depend on the hardware's top-k implementation.
    Scoring runs where the vectors are (CPU or GPU); the result is a CPU tensor.

    Args:
        chunk_size: users scored per block; by default as many as fit a (chunk x items) float32
            block in `SCORE_BLOCK_BYTES` (about 1,300 users for 50k items).
    """
    U, N = user_vecs.shape[0], item_vecs.shape[0]
    k = min(k, N)
    dev = item_vecs.device
    if chunk_size is None:
        chunk_size = max(1, SCORE_BLOCK_BYTES // (4 * max(N, 1)))
    out = torch.empty(U, k, dtype=torch.long, device=dev)
    # one block reused for every chunk: a fresh 256 MB allocation per chunk costs page faults on CPU
    block = torch.empty(min(chunk_size, U), N, device=dev)  # (C, N)
    if exclude is not None:  # (user, item) pairs to mask, moved to the device once
        minus_inf = torch.tensor(float("-inf"), device=dev)
        ex_rows = torch.repeat_interleave(torch.as_tensor(np.diff(exclude.offsets[: U + 1]), dtype=torch.long)).to(dev)
        ex_cols = torch.as_tensor(exclude.indices, dtype=torch.long).to(dev)
    for start in range(0, U, chunk_size):
        stop = min(start + chunk_size, U)
        scores = block[: stop - start]  # (C, N)
        if user_vecs.dtype == torch.float32 and item_vecs.dtype == torch.float32:
            torch.matmul(user_vecs[start:stop], item_vecs.T, out=scores)
        else:
            scores.copy_(user_vecs[start:stop] @ item_vecs.T)
        if exclude is not None:
            lo, hi = int(exclude.offsets[start]), int(exclude.offsets[stop])
            scores.index_put_((ex_rows[lo:hi] - start, ex_cols[lo:hi]), minus_inf)
        out[start:stop] = _stable_top_k(scores, k)
    return out.cpu()


def _stable_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(C, k) indices of the k largest scores per row; equal scores ordered by lower index first."""
    N = scores.shape[1]
    # one place more than asked: the (k+1)-th value equals the k-th exactly when an equal score was
    # left out, which is the only case where the hardware's choice among ties matters
    values, idx = torch.topk(scores, min(k + 1, N), dim=1)  # (C, k+1), sorted descending
    tied_out = values[:, k] == values[:, k - 1] if 0 < k < values.shape[1] else None  # (C,)
    values, idx = values[:, :k], idx[:, :k]
    if tied_out is not None and bool(tied_out.any()):
        rows = tied_out.nonzero().squeeze(1)  # (R,)
        idx[rows] = _fill_boundary_ties(scores, values[rows], idx[rows], rows)
    # order: by score, ties by index (sort by index first, then a stable sort by score)
    idx = torch.sort(idx, dim=1).values
    order = torch.argsort(-scores.gather(1, idx), dim=1, stable=True)
    return idx.gather(1, order)


def _fill_boundary_ties(scores: torch.Tensor, values: torch.Tensor, idx: torch.Tensor,
                        rows: torch.Tensor) -> torch.Tensor:
    """(R, k) top-k indices of `rows` where the k-th score is tied with scores left out.

    Scores above the k-th are a prefix of topk's sorted `values` and are certainly in; the places
    after it go to the items equal to the k-th score with the lowest indices.
    """
    R, k = values.shape
    kth = values[:, -1:]  # (R, 1)
    need = (values == kth).sum(1, keepdim=True)  # (R, 1) places for tied items, at the end of each row
    sub = scores if R == scores.shape[0] else scores[rows]  # (R, N)
    N = sub.shape[1]
    # lowest tied indices by a top-k on the index itself: memory stays (R, N) even when a whole row
    # ties (all-zero vectors), where listing the tied (row, item) pairs would take 16 bytes per item
    col = torch.arange(N, dtype=torch.int32, device=sub.device)
    key = torch.where(sub == kth, col, N)  # (R, N) index if tied, else past the end
    lowest = torch.topk(key, int(need.max()), dim=1, largest=False).values.long()  # (R, need_max) ascending
    # slot s keeps idx[s] before the tied places and takes lowest[s - (k - need)] in them
    slot = torch.arange(k, device=sub.device)  # (k,)
    src = slot + need * (slot >= k - need)  # (R, k) position in [idx | lowest]
    return torch.cat([idx, lowest], 1).gather(1, src)


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
