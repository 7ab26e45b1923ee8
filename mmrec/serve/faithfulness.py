"""`mmrec eval`'s check of the explanations: do they cite the history items the score rests on?

For `sample` seeded users and their top-K (masked as the evaluation masks them), the share of explained
recommendations for which removing the top cited history item (`mmrec.serve.explain`'s evidence) lowers the
score more than removing a random other item of the history the model reads. Each removal is recomputed on
its own path, never read back from the explanation:

- history tower: the user vector rebuilt from the split rows without the item (the path serving takes);
- ID tower: a trained user vector cannot be recomputed without retraining, so the user's vector is
  re-fitted from their training items' q by ridge regression (fold-in), with and without the item.
"""

from __future__ import annotations

import numpy as np
import torch

from mmrec.data.splits import SplitArrays
from mmrec.model.history import UserHistory
from mmrec.model.model import RecModel, history_user_vectors
from mmrec.serve.explain import History, history_effects, neighbour_effects
from mmrec.serve.similarity import similarity_vectors

RIDGE = 0.1  # ID-tower fold-in ridge strength, as a fraction of the mean eigenvalue of Q^T Q


@torch.no_grad()
def explanation_faithfulness(model: RecModel, item_vecs: torch.Tensor, histories: SplitArrays, users: np.ndarray,
                             masked: SplitArrays, candidates: np.ndarray | None = None, *, trained: bool = True,
                             k: int = 10, sample: int = 200, seed: int = 0) -> dict:
    """The report's "explanation faithfulness": for `sample` of `users` (seeded) and their top-k, the share of
    explained recommendations for which removing the top cited history item lowers the score more than
    removing a random other item of the history the model reads.

    Args:
        histories: the users' histories (rows of `users`' indices): the train split, or a cold-users split's
            given histories.
        masked: (user, item) rows excluded from each user's top-k (as the evaluation masks them).
        candidates: the items ranked (None: every item).
        trained: `users` are the run's training users (their ID vector / ID residual); False: held-out users.
    """
    history_tower = model.history_tower
    if not history_tower and not trained:
        return {"users": 0, "explained": 0, "share": None, "k": k,
                "method": "not computable: an ID tower has no vector for users it was not trained on"}
    rng = np.random.default_rng(seed)
    pool = np.unique(users)
    chosen = np.sort(rng.choice(pool, min(sample, len(pool)), replace=False)) if len(pool) else pool
    allowed = torch.zeros(len(item_vecs), dtype=torch.bool)
    allowed[torch.from_numpy(candidates) if candidates is not None else slice(None)] = True
    unit_q = None if history_tower else similarity_vectors(item_vecs, model.item_seen.cpu()[: len(item_vecs)])
    mu, E = float(model.global_mean), model.config.embedding_dim
    counted, explained, wins, drops = 0, 0, 0, []
    for u in chosen.tolist():
        history = History.from_rows(histories, u, trained)
        if len(history) < 2:
            continue  # nothing to compare the cited item with
        if history_tower:
            user_vec = history_user_vectors(model, item_vecs, UserHistory.from_rows(
                _only(histories, u), 1, model.config.history_length), users=_users(history))[0]
        else:
            user_vec = model.user_export(torch.tensor([u], device=model.global_mean.device))[0].float().cpu()
        scores = item_vecs @ user_vec
        scores[~allowed] = float("-inf")
        scores[torch.from_numpy(masked.items[masked.users == u])] = float("-inf")
        top = torch.topk(scores, min(k, int(torch.isfinite(scores).sum()))).indices
        if not len(top):
            continue
        counted += 1
        if history_tower:
            positions, effects, _ = history_effects(model, item_vecs, history, top)
        else:
            positions, effects = np.arange(len(history)), neighbour_effects(unit_q, history, top)[0]
        if len(positions) < 2:
            continue
        pairs = []  # (target column, top cited position, random position)
        for col in range(len(top)):
            best = int(effects[:, col].argmax())
            if effects[best, col] <= 0:
                continue  # no supporting history item: this recommendation is not explained by history
            other = int(rng.choice(np.delete(np.arange(len(positions)), best)))
            pairs.append((col, int(positions[best]), int(positions[other])))
        if not pairs:
            continue
        removed = sorted({p for _, a, b in pairs for p in (a, b)})
        if history_tower:  # rebuilt from the split rows without the item: the path serving takes, not the table
            rows = _only(histories, u)
            tables = [UserHistory.from_rows(rows.subset(rows.items != history.items[p]), 1, model.config.history_length)
                      for p in removed]
            vecs = history_user_vectors(model, item_vecs, UserHistory(*(torch.cat(parts) for parts in zip(
                *((t.items, t.ratings, t.mask) for t in tables)))), users=_users(history, len(removed)))
            base = item_vecs[top] @ user_vec  # (k,)
            without = vecs @ item_vecs[top].T  # (r, k)
        else:
            base, without = _fold_in_scores(item_vecs, history, top, removed, mu, E)
        for col, a, b in pairs:
            drop_a = float(base[col] - without[removed.index(a), col])
            drop_b = float(base[col] - without[removed.index(b), col])
            explained += 1
            wins += drop_a > drop_b
            drops.append((drop_a, drop_b))
    method = ("history tower: exact leave-one-out; each removal recomputes the user vector from the history "
              "without the item" if history_tower else
              "ID tower: items cited by their mean-centred item-kNN term (max(cosine, 0) of the centred q vectors x rating "
              "weight); "
              f"removal = the user's vector re-fitted without the item by ridge regression on their training "
              f"items' q (lambda = {RIDGE} x mean eigenvalue of Q^T Q): the trained vector cannot be recomputed "
              "without retraining")
    mean = np.asarray(drops).mean(0) if drops else (None, None)
    return {"users": counted, "explained": explained, "share": wins / explained if explained else None, "k": k,
            "sample": len(chosen), "seed": seed, "method": method,
            "mean_drop_top": None if mean[0] is None else float(mean[0]),
            "mean_drop_random": None if mean[1] is None else float(mean[1])}


def _only(rows: SplitArrays, user: int) -> SplitArrays:
    """`user`'s rows, as user 0."""
    mine = rows.subset(rows.users == user)
    return SplitArrays(np.zeros(len(mine), dtype=np.int64), mine.items, mine.ratings, mine.timestamps)


def _users(history: History, n: int = 1) -> torch.Tensor | None:
    return None if history.user < 0 else torch.full((n,), history.user, dtype=torch.long)


def _fold_in_scores(item_vecs: torch.Tensor, history: History, targets: torch.Tensor, removed: list[int],
                    mu: float, E: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ID tower: scores <p, q_t> of a user vector fitted by ridge regression to the user's ratings
    (r_j - mu - b_j ~ <p, q_j>), from the whole history (k,) and from it without each removed position (r, k)."""
    q = item_vecs[torch.from_numpy(history.items), :E].double()  # (n, E)
    y = torch.from_numpy(history.ratings).double() - mu - item_vecs[torch.from_numpy(history.items), E].double()
    lam = RIDGE * float((q * q).sum()) / E  # the mean eigenvalue of Q^T Q is trace / E
    keep = torch.ones(1 + len(removed), len(q), dtype=torch.double)  # row 0: everything
    for r, p in enumerate(removed):
        keep[1 + r, p] = 0.0
    gram = torch.einsum("rn,ne,nf->ref", keep, q, q) + lam * torch.eye(E, dtype=torch.double)  # (1 + r, E, E)
    rhs = torch.einsum("rn,ne,n->re", keep, q, y)  # (1 + r, E)
    p = torch.linalg.solve(gram, rhs)  # (1 + r, E)
    scores = (p @ item_vecs[targets, :E].double().T).float()  # (1 + r, k)
    return scores[0], scores[1:]
