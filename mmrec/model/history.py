"""The history user tower: a user's vector computed from the items they interacted with.

With `model.user_tower: history`, a user is not an ID row but a function of their history, so a user
who arrives after training, or a user with new interactions, gets a vector without retraining
(`mmrec embed-users`, `mmrec recommend --history`). docs/design.md "User towers".

For a user with history items j (the latest `history_length`, oldest first), ratings r_j and
recency rank k_j (0 = latest):

    e_j = A [q_j, b_j] + y_j + (r_j - mu) w_r + pos[k_j]
    a_j = softmax_j(<query, tanh(e_j)>)            (the query starts at zero: a plain mean)
    h   = sum_j a_j e_j
    p_u = W_p h,  b_u = w_b . h

[q_j, b_j] is the item's exported vector without its constant column: the item tower's output, so
an item with no training interaction (embedded from its content) can be in a history too. It is
taken as given (no gradient): during training from a memory of the latest vector each item had
when it last came through a batch (`RecModel.remember`), at evaluation and serving from the
exported item vectors. y_j is a learned history-ID embedding, only for items seen in training
(dropped out like the item ID terms, so the tower also learns to read content alone).
The export keeps the ranking score contract: user = [p_u, 1, mu + b_u].

Shape legend: P users scored, L history length, N items, E embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # types only: the model must not pull in the data readers (webdataset, PIL)
    from mmrec.data.splits import SplitArrays


@dataclass
class UserHistory:
    """Each user's latest `length` interactions, oldest first, as padded (U, L) tables."""

    items: torch.Tensor  # (U, L) long, 0 where padded
    ratings: torch.Tensor  # (U, L) float
    mask: torch.Tensor  # (U, L) bool, True = a real interaction

    @classmethod
    def from_rows(cls, rows: SplitArrays, num_users: int, length: int) -> UserHistory:
        """The histories in `rows` (users 0..num_users-1; others ignored), ordered by timestamp, ties and
        rows without one in file order; a user with more than `length` keeps the latest `length`."""
        known = (rows.users >= 0) & (rows.users < num_users)
        users, items, ratings = rows.users[known], rows.items[known], rows.ratings[known]
        times = rows.timestamps[known] if rows.timestamps is not None else np.full(len(users), np.nan)
        times = np.nan_to_num(times, nan=-np.inf)  # rows without a timestamp count as the oldest
        order = np.lexsort((np.arange(len(users)), times, users))  # by user, then time, then file order
        users, items, ratings = users[order], items[order], ratings[order]
        counts = np.bincount(users, minlength=num_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank_from_end = (starts + counts)[users] - 1 - np.arange(len(users))  # 0 = the user's latest row
        keep = rank_from_end < length
        users, items, ratings, rank_from_end = users[keep], items[keep], ratings[keep], rank_from_end[keep]
        kept = np.minimum(counts, length)
        col = (kept[users] - 1 - rank_from_end).astype(np.int64)  # oldest kept first, latest at kept - 1
        table = cls(torch.zeros(num_users, length, dtype=torch.long), torch.zeros(num_users, length),
                    torch.zeros(num_users, length, dtype=torch.bool))
        u, c = torch.from_numpy(users), torch.from_numpy(col)
        table.items[u, c] = torch.from_numpy(items)
        table.ratings[u, c] = torch.from_numpy(ratings.astype(np.float32))
        table.mask[u, c] = True
        return table

    def __len__(self) -> int:
        return self.items.shape[0]

    def rows(self, users: torch.Tensor) -> UserHistory:
        return UserHistory(self.items[users], self.ratings[users], self.mask[users])

    def to(self, device: torch.device | str) -> UserHistory:
        return UserHistory(self.items.to(device), self.ratings.to(device), self.mask.to(device))


class HistoryUserTower(nn.Module):
    """(history item vectors, ratings, recency) -> (p_u, b_u); see the module docstring."""

    def __init__(self, embedding_dim: int, num_items: int, history_length: int, init_std: float,
                 id_dropout: float = 0.0, subsample: bool = False):
        super().__init__()
        E = embedding_dim
        self.history_length, self.id_dropout, self.subsample = history_length, id_dropout, subsample
        self.item_in = nn.Linear(E + 1, E)  # A: [q_j, b_j] -> E
        self.history_id = nn.Embedding(num_items, E)  # y_j
        nn.init.normal_(self.history_id.weight, std=init_std)
        self.rating_w = nn.Parameter(torch.zeros(E))
        self.position = nn.Parameter(torch.zeros(history_length, E))  # recency, 0 = latest
        self.query = nn.Parameter(torch.zeros(E))
        self.out_p = nn.Linear(E, E)
        self.out_b = nn.Linear(E, 1)
        # Start as "the user is the mean of their items' q": the score is then an item-item similarity
        # in the item tower's own space, a useful user vector before any training (random maps are not)
        with torch.no_grad():
            self.item_in.weight.copy_(torch.eye(E, E + 1))
            self.item_in.bias.zero_()
            self.out_p.weight.copy_(torch.eye(E))
            self.out_p.bias.zero_()

    def no_weight_decay(self) -> set[str]:
        return {"rating_w", "position", "query"}

    def forward(self, item_vecs: torch.Tensor, history: UserHistory, item_seen: torch.Tensor, mean: torch.Tensor,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            item_vecs: (N', >= E + 1) item vectors whose first E + 1 columns are [q_j, b_j] (no gradient);
                rows past the run's N items are items added after training.
            history: P users' histories ((P, L) tables, oldest first).
            item_seen: (N,) bool, items with training interactions (only they have a history-ID embedding).
            mean: the global mean rating mu.
            exclude: (P,) item index per user to leave out of their history (the training target), or None.
        Returns:
            p (P, E), b (P,).
        """
        items, mask = history.items, history.mask  # (P, L)
        if exclude is not None:
            mask = mask & (items != exclude[:, None])
        if self.training and self.subsample:
            mask = subsample_history(mask)
        vecs = item_vecs[items][..., : self.item_in.in_features].detach()  # (P, L, E + 1)
        # rows past the run's items were added after training (`mmrec embed-items`): no history-ID term
        n = self.history_id.num_embeddings
        run_item = items.clamp(max=n - 1)
        seen = item_seen[run_item] & (items < n) & mask  # (P, L)
        if self.training and self.id_dropout > 0:
            seen = seen & (torch.rand(seen.shape, device=seen.device) >= self.id_dropout)
        e = self.item_in(vecs.to(self.item_in.weight.dtype)) + self.history_id(run_item) * seen[..., None]  # (P, L, E)
        e = e + (history.ratings - mean)[..., None] * self.rating_w  # (P, L, E)
        # recency rank: how many of the user's (kept) interactions are newer, so an excluded target leaves
        # the others ranked as in a history without it; padding clamps to 0 and is masked anyway
        rank = (mask.flip(1).cumsum(1).flip(1) - 1).clamp(min=0)  # (P, L)
        e = e + self.position[rank]
        scores = torch.tanh(e) @ self.query  # (P, L)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0) * mask  # (P, L); an empty history: all zero
        h = (weights[..., None] * e).sum(1)  # (P, E)
        return self.out_p(h), self.out_b(h).squeeze(-1)


def subsample_history(mask: torch.Tensor) -> torch.Tensor:
    """(P, L) mask keeping each interaction of row p with a probability drawn uniformly per row, and at
    least one of a non-empty row: training sees histories of every length, from one interaction to all
    (`model.history_subsample`), as users who arrive after training bring them."""
    keep = torch.rand(mask.shape[0], 1, device=mask.device)  # (P, 1) each row's rate
    kept = mask & (torch.rand(mask.shape, device=mask.device) < keep)  # (P, L)
    # a row left empty keeps one of its interactions, at random
    pick = torch.where(mask, torch.rand(mask.shape, device=mask.device), -1.0).argmax(1)  # (P,)
    empty = ~kept.any(1) & mask.any(1)
    kept[empty, pick[empty]] = True
    return kept
