"""Baselines scored through the same dot-product contract as the model, on the same split.

- popularity: items ranked by their number of training interactions (ties: lower index first);
  a ranking-only baseline;
- bias-only: r_hat = mu + b_u + b_i fitted by regularised alternating least squares (Koren 2010,
  "Factor in the neighbors", section 2.1); ranks items by b_i.
Both are (user_vecs, item_vecs) pairs, so `mmrec.eval.protocol.evaluate_split` scores them unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from mmrec.data.split_files import SplitArrays


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


def implicit_als_vectors(train: SplitArrays, num_users: int, num_items: int, factors: int = 64, reg: float = 0.1,
                         alpha: float = 10.0, iterations: int = 15, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """user = [x_u], item = [y_i]: implicit-feedback ALS (Hu, Koren & Volinsky 2008, "Collaborative
    filtering for implicit feedback datasets"): every training row is a positive with confidence
    1 + alpha, every other item a zero with confidence 1; a ranking-only baseline, the classic one for
    the ranking protocol. Exact alternating solves with the YtY trick (cost ~ rows x factors^2 per sweep).
    """
    known = train.users >= 0
    u, i = train.users[known], train.items[known]
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.01, (num_users, factors))
    y = rng.normal(0, 0.01, (num_items, factors))
    by_user = _rows_by(u, i, num_users)
    by_item = _rows_by(i, u, num_items)
    eye = reg * np.eye(factors)
    for _ in range(iterations):
        x = _als_sweep(y, by_user, alpha, eye)
        y = _als_sweep(x, by_item, alpha, eye)
    user = np.vstack([x, np.zeros((1, factors))])  # the unknown user scores every item 0
    return torch.tensor(user, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def _rows_by(keys: np.ndarray, values: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(keys, kind="stable")
    cuts = np.cumsum(np.bincount(keys, minlength=n))[:-1]
    return np.split(values[order], cuts)


def _als_sweep(fixed: np.ndarray, positives: list[np.ndarray], alpha: float, eye: np.ndarray) -> np.ndarray:
    """Solve (F'F + alpha F_p'F_p + reg I) z = (1 + alpha) F_p' 1 for every row's positives p."""
    gram = fixed.T @ fixed
    out = np.zeros((len(positives), fixed.shape[1]))
    for row, pos in enumerate(positives):
        if len(pos):
            f = fixed[pos]
            out[row] = np.linalg.solve(gram + alpha * f.T @ f + eye, (1 + alpha) * f.sum(0))
    return out
