"""The one evaluation rule: which items are masked and which items are ranked, for any split.

Training validation, `mmrec eval`, the baselines and `benchmarks/` all score through this module,
so model selection measures exactly what the headline reports (docs/design.md "Evaluation rules"):

- masked: scoring `test` excludes each user's train and valid items from the ranking, scoring
  `valid` excludes train (`mask="train"`: train only, as MMRec does);
- candidates: all items, except on a `cold-items` split without `warm_holdout`, whose held-out
  items are all cold: there they are ranked among the cold items only (ranked among all items, a
  cold item would compete with warm items that carry popularity and ID terms, and the track would
  measure that instead of content). With `warm_holdout` the held-out rows mix warm and cold items,
  so both splits rank among all items and the report's slices separate the two;
- relevance: every held-out row whose user was seen in training (optionally rating >= threshold).

On a `cold-users` split the held-out users were never trained: each comes with a given history
(`valid_history` / `test_history`), and is scored by a user vector computed from that history
(`evaluate_held_out_users`): their history items are masked, every other item is a candidate.

The score of (u, i) is `user_vecs[u] @ item_vecs[i]` (the ranking score contract), so any scorer
fits: the model, a baseline, or vectors read back from `mmrec embed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmrec.data.splits import HeldOutUsers, RunSplits, SplitArrays
from mmrec.evaluate.metrics import UserItems, ranking_metrics, rating_metrics, top_k

MASK_CHOICES = ("auto", "train")
CANDIDATE_CHOICES = ("auto", "all", "cold")


@dataclass(frozen=True)
class EvalProtocol:
    """How one split is scored: held-out split, masked splits, candidate items, relevance threshold."""

    split: str  # the held-out split scored: "valid" or "test"
    masked: tuple[str, ...]  # splits whose items are excluded from each user's ranking
    candidates: str  # "all" items, or "cold" items only (no training interaction)
    threshold: float | None = None  # only held-out ratings >= this are relevant (None: every row)

    @classmethod
    def for_split(cls, split: str, split_info: dict, *, mask: str = "auto", candidates: str = "auto",
                  threshold: float | None = None) -> EvalProtocol:
        """The rule for `split` of a dataset whose manifest "split" entry is `split_info`."""
        if split not in ("valid", "test"):
            raise ValueError(f"can only score a held-out split, 'valid' or 'test', not {split!r}")
        if mask not in MASK_CHOICES:
            raise ValueError(f"mask must be one of {MASK_CHOICES}, got {mask!r}")
        if candidates not in CANDIDATE_CHOICES:
            raise ValueError(f"candidates must be one of {CANDIDATE_CHOICES}, got {candidates!r}")
        masked = ("train", "valid") if split == "test" and mask == "auto" else ("train",)
        if candidates == "auto":
            only_cold = split_info["protocol"] == "cold-items" and not split_info.get("warm_holdout")
            candidates = "cold" if only_cold else "all"
        return cls(split, masked, candidates, threshold)

    def candidate_items(self, splits: RunSplits) -> np.ndarray | None:
        """Item indices ranked (None: every item)."""
        return splits.cold_items() if self.candidates == "cold" else None

    def describe(self) -> str:
        return ("cold items only (no training interaction): the cold-start track" if self.candidates == "cold"
                else "all items")

    def held_out(self, splits: RunSplits, users: np.ndarray | None = None) -> SplitArrays:
        """The held-out rows that count: above the threshold, optionally only of `users`."""
        return _relevant_rows(splits[self.split], self.threshold, users)


def _relevant_rows(rows: SplitArrays, threshold: float | None, users: np.ndarray | None = None) -> SplitArrays:
    """The held-out `rows` that count: rating >= `threshold` (None: every row), optionally only of `users`."""
    keep = np.ones(len(rows), dtype=bool)
    if threshold is not None:
        keep &= rows.ratings >= threshold
    if users is not None:
        keep &= np.isin(rows.users, users)
    return rows.subset(keep)


@torch.no_grad()
def evaluate_split(user_vecs: torch.Tensor, item_vecs: torch.Tensor, splits: RunSplits, protocol: EvalProtocol,
                   ks: tuple[int, ...] = (10,), candidates: np.ndarray | None | str = "protocol",
                   held: SplitArrays | None = None, per_user=None) -> dict:
    """Rating error on every held-out row, and full ranking for known users with masked items excluded.

    Args:
        user_vecs: (U + 1, d): one row per vocabulary user, the last for users unseen in training.
        item_vecs: (N, d) in item-index order.
        candidates: item indices to rank among; "protocol" (default) takes the protocol's, None all items.
        held: the held-out rows to score (default: the protocol's).
        per_user: how the ranked lists are computed: `per_user(users, rows_of)` returns `rows_of(users)`, the
            default; `mmrec eval` under `accelerate launch` passes one that splits the users across ranks and
            gathers their rows in order (`mmrec.evaluate.scoring.Ranks.per_user`).

    Returns:
        {"rating": {rmse, mae, count}, "ranking": {recall@K, ndcg@K, hit@K, mrr@K, users, candidates}}
        ("rating" is empty for implicit feedback);
        a K larger than the number of candidate items is not computed: the ranking then names it under
        "not_computable" with the reason, and the other cut-offs are reported (a small slice, such as
        the few cold items of a published split, never sinks the rest).
    """
    held = protocol.held_out(splits) if held is None else held
    if isinstance(candidates, str):
        candidates = protocol.candidate_items(splits)
    num_users = splits.num_users
    users = user_vecs.float().cpu()
    result: dict = {"rating": {}}  # implicit feedback: no rating to err on (RunSplits.implicit)
    if not splits.implicit:  # a user unseen in training is scored by the last row
        result["rating"] = _rating(users, item_vecs, np.where(held.users >= 0, held.users, num_users), held)
    masked = [splits[name] for name in protocol.masked]
    result["ranking"] = _ranking(users, item_vecs, held, num_users, candidates, masked, ks, per_user)
    return result


@torch.no_grad()
def evaluate_held_out_users(user_vecs: torch.Tensor, item_vecs: torch.Tensor, users: HeldOutUsers,
                            ks: tuple[int, ...] = (10,), threshold: float | None = None, implicit: bool = False,
                            candidates: np.ndarray | None = None, only: np.ndarray | None = None) -> dict:
    """`evaluate_split` for users who were not trained (a cold-users split): each ranks every item but
    those of their given history, by a vector computed from that history.

    Args:
        user_vecs: (C, d), row c for users.user_ids[c].
        item_vecs: (N, d).
        candidates: item indices to rank among (None: every item).
        only: score only these held-out users (indices into users.user_ids), e.g. a slice.
    Returns: as `evaluate_split`; with no user to rank, the ranking holds the user count alone.
    """
    held = _relevant_rows(users.held, threshold, only)
    result: dict = {"rating": {}}
    if not implicit:
        result["rating"] = _rating(user_vecs, item_vecs, held.users, held)
    result["ranking"] = _ranking(user_vecs.float(), item_vecs.float(), held, len(users.user_ids), candidates,
                                 [users.history], ks, metrics_without_users=False)
    return result


def ranked_lists(user_vecs: torch.Tensor, item_vecs: torch.Tensor, splits: RunSplits, users: np.ndarray,
                 masked: tuple[str, ...], candidates: np.ndarray, k: int) -> np.ndarray:
    """(len(users), k) item indices: each user's top-k among `candidates`, their `masked` items excluded.

    Scores and ranks on the GPU when there is one (chunked over users), else on the CPU.
    """
    return _top_items(user_vecs, item_vecs, users, candidates, [splits[name] for name in masked], splits.num_users, k)


# ------------------------------------------------------------------------------ the kernel both paths feed


def _rating(user_vecs: torch.Tensor, item_vecs: torch.Tensor, user_rows: np.ndarray, held: SplitArrays) -> dict:
    """RMSE / MAE of the predicted ratings <user_vecs[user_rows], item_vecs[held.items]> against held.ratings."""
    predicted = (user_vecs[torch.from_numpy(user_rows)] * item_vecs[torch.from_numpy(held.items)]).sum(-1)
    return rating_metrics(predicted.numpy(), held.ratings)


def _ranking(user_vecs: torch.Tensor, item_vecs: torch.Tensor, held: SplitArrays, num_users: int,
             candidates: np.ndarray | None, excluded: list[SplitArrays], ks: tuple[int, ...], per_user=None,
             metrics_without_users: bool = True) -> dict:
    """Ranking metrics of the users (rows of `user_vecs`, < `num_users`) with a relevant candidate in `held`,
    each ranking `candidates` (None: every item) without their pairs in `excluded`.

    `per_user`: as in `evaluate_split`. `metrics_without_users`: with no user to rank, still report every
    metric (as 0, `ranking_metrics`' convention) rather than the user count alone.
    """
    n_items = item_vecs.shape[0]
    cand = np.arange(n_items) if candidates is None else np.asarray(candidates, dtype=np.int64)
    in_cand = np.zeros(n_items, dtype=bool)
    in_cand[cand] = True
    # ranking needs a user vector of its own, and a relevant item among the candidates
    known = (held.users >= 0) & in_cand[held.items]
    eval_users = np.unique(held.users[known])  # rank only for users with something held out
    row_of = np.full(num_users, -1, dtype=np.int64)
    row_of[eval_users] = np.arange(len(eval_users))
    relevant = UserItems.from_pairs(row_of[held.users[known]], held.items[known], len(eval_users))
    supported = [k for k in ks if k <= len(cand)]
    ranking: dict = {"users": int((relevant.counts() > 0).sum())}
    if supported and (metrics_without_users or len(eval_users)):
        def rows_of(block: np.ndarray) -> np.ndarray:
            return _top_items(user_vecs, item_vecs, block, cand, excluded, num_users, max(supported))

        top = rows_of(eval_users) if per_user is None else per_user(eval_users, rows_of)
        ranking = ranking_metrics(top, relevant, supported)
    too_large = [k for k in ks if k > len(cand)]
    if too_large:
        ranking["not_computable"] = {f"@{k}": f"only {len(cand)} candidate items, fewer than K = {k}" for k in too_large}
    return ranking | {"candidates": len(cand)}


def _top_items(user_vecs: torch.Tensor, item_vecs: torch.Tensor, users: np.ndarray, candidates: np.ndarray,
               excluded: list[SplitArrays], num_users: int, k: int) -> np.ndarray:
    """(len(users), k) item indices: the top-k `candidates` of each of `users` (rows of `user_vecs`, ties to
    the lower index), their (user, item) pairs in `excluded` left out; on the GPU when there is one."""
    row_of = np.full(num_users, -1, dtype=np.int64)
    row_of[users] = np.arange(len(users))
    col_of = np.full(item_vecs.shape[0], -1, dtype=np.int64)
    col_of[candidates] = np.arange(len(candidates))
    ex_u, ex_i = [], []
    for s in excluded:
        keep = (s.users >= 0) & (row_of[np.maximum(s.users, 0)] >= 0) & (col_of[s.items] >= 0)
        ex_u.append(row_of[s.users[keep]])
        ex_i.append(col_of[s.items[keep]])
    exclude = UserItems.from_pairs(np.concatenate(ex_u), np.concatenate(ex_i), len(users))
    u, i = user_vecs[torch.from_numpy(users)], item_vecs[torch.from_numpy(candidates)]
    if torch.cuda.is_available():
        u, i = u.cuda(), i.cuda()
    return candidates[top_k(u, i, k, exclude=exclude).numpy()]
