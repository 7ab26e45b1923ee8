"""Baselines scored through the same dot-product contract as the model, on the same split.

- popularity: items ranked by their number of training interactions (ties: lower index first);
  a ranking-only baseline;
- bias-only: r_hat = mu + b_u + b_i fitted by regularised alternating least squares (Koren 2010,
  "Factor in the neighbors", section 2.1); ranks items by b_i.
Both are (user_vecs, item_vecs) pairs, so `mmrec.inference.evaluate_split` scores them unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from mmrec.inference import SplitArrays


def popularity_vectors(train: SplitArrays, num_users: int, num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """user = [1], item = [training count]: a ranking-only baseline (its rating error means nothing)."""
    counts = np.bincount(train.items, minlength=num_items).astype(np.float32)
    return torch.ones(num_users + 1, 1), torch.from_numpy(counts)[:, None]


def bias_vectors(train: SplitArrays, num_users: int, num_items: int, reg: float = 10.0, iterations: int = 10
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """user = [1, mu + b_u], item = [b_i, 1] with the biases fitted on the train split."""
    known = train.users >= 0
    u, i, r = train.users[known], train.items[known], train.ratings[known].astype(np.float64)
    mu = float(r.mean())
    b_u, b_i = np.zeros(num_users), np.zeros(num_items)
    for _ in range(iterations):
        b_i = np.bincount(i, r - mu - b_u[u], num_items) / (reg + np.bincount(i, minlength=num_items))
        b_u = np.bincount(u, r - mu - b_i[i], num_users) / (reg + np.bincount(u, minlength=num_users))
    user = np.stack([np.ones(num_users + 1), mu + np.append(b_u, 0.0)], 1)
    item = np.stack([b_i, np.ones(num_items)], 1)
    return torch.tensor(user, dtype=torch.float32), torch.tensor(item, dtype=torch.float32)
