"""Diversity-aware re-ranking: maximal marginal relevance over a user's top candidates.

MMR (Carbonell & Goldstein 1998, https://dl.acm.org/doi/10.1145/290941.291025) fills a list greedily; the
next item is the candidate that maximises

    (1 - LAMBDA) * relevance(c) - LAMBDA * max_{s already chosen} cos(c, s)

- relevance: the model's score, min-max normalised over the user's pool (the pool's best item is 1, its
  worst 0), so LAMBDA weighs the same on any catalogue and any score scale; a pool of equal scores is all 1.
- cos: the cosine of the items' centred q vectors (`diversity_vectors`: `mmrec similar`'s similarity,
  `mmrec.serve.similarity`), exactly the similarity behind the report's intra-list diversity
  (`beyond.diversity@K` = 1 - mean pairwise cosine), so a LAMBDA curve trades the very quantity the report
  measures.
- LAMBDA = 0 is the plain ranking (ties keep the pool's order); LAMBDA = 1 keeps the top item, then takes
  each time the item least like those chosen.
- `max_per_attribute` K: no list holds more than K items sharing one attribute (an item's `attributes` in
  items.jsonl, e.g. genres); an item without attributes is never held back. When every remaining candidate
  would break a cap, the list is completed by MMR among them rather than cut short.

Shapes: U users, P pool items per user, N catalogue items, E vector width, A attributes per item (padded).
Everything is batched over users with torch, in chunks whose gathered (C, P, E) pool vectors stay
cache-sized (~4 MB: they are read once per list position). Each position costs one batched row-vector
product, the chosen items against their pools, that updates every candidate's redundancy: no (P, P) matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch

from mmrec.data.dataset import Dataset
from mmrec.serve.similarity import similarity_vectors

DEFAULT_POOL = 200  # candidates re-ranked per user: the plain top-200
CHUNK_BYTES = 4 * 2**20  # one chunk's gathered pool vectors: read once per list position, so kept cache-sized


def check_lambda(value) -> float:
    """LAMBDA as a float in [0, 1], or a ValueError that says what it means."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"diversify LAMBDA must be a number in [0, 1] (0: the plain ranking, 1: diversity "
                         f"alone), got {value!r}")
    return float(value)


def check_pool(pool, k: int) -> int:
    """The pool size as an int >= k (MMR picks k of it)."""
    if isinstance(pool, bool) or not isinstance(pool, Integral) or pool < k:
        raise ValueError(f"the re-ranking pool must be an integer >= k = {k} (the candidates MMR chooses from), "
                         f"got {pool!r}")
    return int(pool)


def check_cap(cap) -> int | None:
    """max_per_attribute as a positive int, or None (no cap)."""
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, Integral) or cap < 1):
        raise ValueError(f"max_per_attribute must be a positive integer (or None: no cap), got {cap!r}")
    return None if cap is None else int(cap)


def diversity_vectors(item_vecs: torch.Tensor, id_terms: torch.Tensor | None) -> torch.Tensor:
    """(N, E) unit vectors whose dot products are the cosines MMR and intra-list diversity compare: `similar`'s.

    Args:
        item_vecs: export vectors (N, E + 2) `[q_i, b_i, 1]`.
        id_terms: (N,) bool, the rows with learned ID terms (EMB's `id_terms`, the model's `item_seen`).
    """
    return similarity_vectors(item_vecs, id_terms)


def intra_list_diversity(lists: np.ndarray | torch.Tensor, q: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(U,) 1 - mean pairwise cosine (`q`'s dot products) of each row's k items (k > 1)."""
    lists = torch.as_tensor(np.asarray(lists), dtype=torch.long)
    k = lists.shape[1]
    if k < 2:
        raise ValueError("intra-list diversity needs lists of at least 2 items")
    out = []
    for start in range(0, len(lists), chunk):  # (U, k, k) at once would not fit for 100k users
        v = q[lists[start : start + chunk]]  # (C, k, E)
        sims = v @ v.transpose(1, 2)  # (C, k, k)
        out.append((sims.sum((1, 2)) - sims.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1)))
    return 1 - torch.cat(out) if out else torch.zeros(0)


def attribute_table(attributes: Sequence[Sequence[str]]) -> tuple[torch.Tensor, list[str]]:
    """Items' attribute lists -> ((N, A) attribute ids padded with -1, the attribute names)."""
    names = sorted({a for item in attributes for a in item})
    code = {a: j for j, a in enumerate(names)}
    width = max((len(set(item)) for item in attributes), default=0)
    table = torch.full((len(attributes), max(width, 1)), -1, dtype=torch.long)
    for i, item in enumerate(attributes):
        ids = sorted({code[a] for a in item})  # an attribute listed twice counts once
        table[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return table, names


def item_attributes(data: Dataset | str | Path, item_ids: Sequence[str]) -> list[list[str]]:
    """Each item's `attributes` as `mmrec shard` stored them (the dataset's shard index), in `item_ids` order;
    [] for an item the dataset does not have (e.g. added later by `mmrec embed-items`)."""
    found = {item.item_id: item.attributes for item in Dataset.of(data).items().values()}
    return [list(found.get(item, [])) for item in item_ids]


@torch.no_grad()
def mmr(pool_items: torch.Tensor, pool_scores: torch.Tensor, vectors: torch.Tensor, k: int, lam: float,
        attributes: torch.Tensor | None = None, max_per_attribute: int | None = None,
        chunk_size: int | None = None) -> torch.Tensor:
    """(U, k) item indices: each user's pool re-ranked by MMR (-1 where the pool ran out).

    Args:
        pool_items: (U, P) item indices, each row the user's candidates (best first for the plain order).
        pool_scores: (U, P) the model's scores of those items; -inf marks an empty slot.
        vectors: (N, E) unit vectors (`diversity_vectors`).
        lam: LAMBDA in [0, 1].
        attributes: (N, A) attribute ids padded with -1 (`attribute_table`), with `max_per_attribute`.
        chunk_size: users per batch (default: as many as keep their gathered pool vectors in CHUNK_BYTES).
    """
    lam = check_lambda(lam)
    cap = check_cap(max_per_attribute)
    if cap is not None and attributes is None:
        raise ValueError("max_per_attribute needs the items' attributes (attribute_table(item_attributes(...)))")
    if pool_items.shape != pool_scores.shape or pool_items.ndim != 2:
        raise ValueError(f"pool_items {tuple(pool_items.shape)} and pool_scores {tuple(pool_scores.shape)} must be "
                         "the same (users, pool) shape")
    U, P = pool_items.shape
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BYTES // (4 * max(P, 1) * vectors.shape[1]))
    out = torch.full((U, k), -1, dtype=torch.long)
    for start in range(0, U, chunk_size):
        stop = min(start + chunk_size, U)
        out[start:stop] = _mmr_chunk(pool_items[start:stop].long(), pool_scores[start:stop].float(), vectors, k, lam,
                                     attributes if cap is not None else None, cap)
    return out


def _mmr_chunk(items: torch.Tensor, scores: torch.Tensor, vectors: torch.Tensor, k: int, lam: float,
               attributes: torch.Tensor | None, cap: int | None) -> torch.Tensor:
    C, P = items.shape
    valid = torch.isfinite(scores)  # (C, P)
    items = items.masked_fill(~valid, 0)
    lo = scores.masked_fill(~valid, math.inf).amin(1, keepdim=True)  # (C, 1)
    hi = scores.masked_fill(~valid, -math.inf).amax(1, keepdim=True)
    spread = hi - lo
    # min-max per user; a pool of equal scores (or a single item) is all equally relevant
    relevance = torch.where(spread > 0, (scores - lo) / spread.clamp_min(1e-30), torch.ones_like(scores))
    v = vectors[items].transpose(1, 2)  # (C, E, P), a view: bmm's row-vector products read it fastest this way
    redundancy = torch.zeros(C, P)  # max cosine to the items chosen so far (none yet: no penalty)
    taken = ~valid  # (C, P) slots that can no longer be chosen
    rows = torch.arange(C)
    out = torch.full((C, k), -1, dtype=torch.long)
    if cap is not None:
        pool_attrs = attributes[items]  # (C, P, A), -1 padding
        n_attr = int(attributes.max()) + 2  # one more column: the padding's sink, never counted
        pool_attrs = torch.where(pool_attrs >= 0, pool_attrs, n_attr - 1)
        counts = torch.zeros(C, n_attr, dtype=torch.long)
    for t in range(min(k, P)):
        value = ((1 - lam) * relevance - lam * redundancy).masked_fill(taken, -math.inf)  # (C, P)
        if cap is not None:
            full = counts >= cap  # (C, n_attr)
            full[:, -1] = False
            blocked = full.gather(1, pool_attrs.flatten(1)).view_as(pool_attrs).any(-1)  # (C, P)
            capped = value.masked_fill(blocked, -math.inf)
            # a cap is kept while some candidate allows it; past that the list is completed, not cut short
            value = torch.where(torch.isfinite(capped).any(1, keepdim=True), capped, value)
        pick = value.argmax(1)  # (C,) the first of equal values: the pool's order
        found = torch.isfinite(value[rows, pick])  # (C,) False where the pool ran out
        chosen = items[rows, pick]  # (C,)
        out[:, t] = torch.where(found, chosen, -1)
        taken[rows, pick] = True
        sims = torch.bmm(vectors[chosen].unsqueeze(1), v).squeeze(1)  # (C, P) cosine to the item just chosen
        redundancy = sims if t == 0 else torch.maximum(redundancy, sims)
        if cap is not None:
            added = torch.where(found[:, None], pool_attrs[rows, pick], n_attr - 1)  # (C, A)
            counts.scatter_add_(1, added, torch.ones_like(added))
    return out


def diversify(hits: list[tuple[int, float]], vectors: torch.Tensor, k: int, lam: float,
              attributes: torch.Tensor | None = None, max_per_attribute: int | None = None) -> list[tuple[int, float]]:
    """One user's pool `[(item index, score), ...]` (as `mmrec.serve.embeddings.recommend` returns it)
    re-ranked by MMR to k items, each with its model score."""
    if not hits:
        return []
    score = dict(hits)
    items = torch.tensor([[i for i, _ in hits]], dtype=torch.long)
    scores = torch.tensor([[s for _, s in hits]], dtype=torch.float32)
    chosen = mmr(items, scores, vectors, k, lam, attributes, max_per_attribute)[0]
    return [(int(i), score[int(i)]) for i in chosen if i >= 0]
