"""Baselines scored through the same dot-product contract as the model, on the same split.

- popularity: items ranked by their number of training interactions (ties: lower index first);
  a ranking-only baseline;
- bias-only: r_hat = mu + b_u + b_i fitted by regularised alternating least squares (Koren 2010,
  "Factor in the neighbors", section 2.1); ranks items by b_i.
- implicit ALS: Hu, Koren & Volinsky 2008 (below);
- EASE: Steck 2019, "Embarrassingly shallow autoencoders for sparse data": the closed-form item-item
  model, the strongest simple baseline for ranking with history;
- content kNN: cosine between an item's raw (frozen) content features and the mean of the user's
  training items' features: what content gives with no learning at all, for cold items.
All are (user_vecs, item_vecs) pairs, so `mmrec.evaluate.protocol.evaluate_split` scores them unchanged.

For users given only a history (a cold-users split, or a user who arrived after training), the
`history_*` functions compute user vectors from that history against the same item vectors:
- item-kNN: score(u, i) = sum over the history items j of cos(i, j), the cosine between the items'
  columns of the binary training matrix (Sarwar et al. 2001, "Item-based collaborative filtering");
- ALS fold-in: the user's factors solved by least squares with the item factors fixed (one ALS
  half-step on the given history, exactly the solve training would make for that user);
- EASE: x_u B, with x_u the user's history as a multi-hot row.
"""

from __future__ import annotations

import numpy as np
import torch

from mmrec.data.splits import SplitArrays


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


def _user_item_matrix(train: SplitArrays, num_users: int, num_items: int) -> torch.Tensor:
    """(U + 1, N) binary matrix of training interactions; the last row (unknown user) is empty."""
    known = train.users >= 0
    x = torch.zeros(num_users + 1, num_items)
    x[torch.from_numpy(train.users[known]), torch.from_numpy(train.items[known])] = 1.0
    return x


def ease_vectors(train: SplitArrays, num_users: int, num_items: int, reg: float = 300.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """user = x_u (the user's row of the binary training matrix X), item = B[:, i] with
    B = I - P diag(1 / diag(P)), P = (X'X + reg I)^-1 (zero diagonal). Solved over the items with
    training rows only (the others score 0); O(N^3) time and N^2 memory in the trained items N."""
    x = _user_item_matrix(train, num_users, num_items)
    trained = (x.sum(0) > 0).nonzero().squeeze(-1)  # (N',)
    xt = x[:, trained].double()
    gram = xt.T @ xt + reg * torch.eye(len(trained), dtype=torch.float64)
    p = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    b = -p / p.diagonal()[None, :]
    b.fill_diagonal_(0.0)
    item = torch.zeros(num_items, num_items)
    item[trained[:, None], trained[None, :]] = b.T.float()  # row i = column i of B: score = x_u . B[:, i]
    return x, item


def content_knn_vectors(features: torch.Tensor, train: SplitArrays, num_users: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """user = the mean of the user's training items' unit feature vectors, normalised; item = its unit
    feature vector (features: (N, D) raw content features, zero rows for items without content), so
    the score is the cosine between an item and the user's mean item."""
    item = torch.nn.functional.normalize(features.float(), dim=-1)
    x = _user_item_matrix(train, num_users, features.shape[0])
    user = torch.nn.functional.normalize(x @ item, dim=-1)
    return user, item


def _history_matrix(history: SplitArrays, num_users: int, num_items: int) -> torch.Tensor:
    """(num_users, N) binary matrix of the given history (users indexed 0..num_users-1)."""
    x = torch.zeros(num_users, num_items)
    x[torch.from_numpy(history.users), torch.from_numpy(history.items)] = 1.0
    return x


def item_cosine(train: SplitArrays, num_items: int) -> torch.Tensor:
    """(N, N) S[j, i] = cosine between items j and i over the training users (binary), zero diagonal."""
    x = _user_item_matrix(train, int(train.users.max()) + 1 if len(train) else 0, num_items)
    norms = x.sum(0).sqrt().clamp(min=1.0)  # (N,) binary columns: |x_i| = sqrt(count)
    sim = (x.T @ x) / norms[:, None] / norms[None, :]  # (N, N)
    return sim.fill_diagonal_(0.0)


def item_knn_vectors(train: SplitArrays, num_items: int, history: SplitArrays, num_users: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """user = the multi-hot history row, item = the item's column of `item_cosine` (N^2 memory): the
    score is the summed similarity to the history items."""
    return _history_matrix(history, num_users, num_items), item_cosine(train, num_items).T.contiguous()


def als_fold_in_vectors(item_factors: torch.Tensor, history: SplitArrays, num_users: int, reg: float = 0.1,
                        alpha: float = 10.0) -> torch.Tensor:
    """(num_users, factors) user factors of implicit ALS (`implicit_als_vectors`' item vectors, same
    reg and alpha) solved on the given history alone: the fold-in of a user who was not trained."""
    y = item_factors.double().numpy()
    x = _als_sweep(y, _rows_by(history.users, history.items, num_users), alpha, reg * np.eye(y.shape[1]))
    return torch.tensor(x, dtype=torch.float32)


def ease_history_vectors(history: SplitArrays, num_users: int, num_items: int) -> torch.Tensor:
    """(num_users, N) user vectors for `ease_vectors`' item vectors: the multi-hot history rows."""
    return _history_matrix(history, num_users, num_items)
