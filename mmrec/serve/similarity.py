"""The one item-to-item similarity: the cosine of the items' centred q vectors.

`mmrec similar`, the ID tower's explanations (item-kNN terms), MMR re-ranking and the report's intra-list
diversity all compare items with `similarity_vectors`, so what `similar` calls alike is what re-ranking
spreads apart and what diversity@K measures. It works on tensors alone (no mmrec import), so the
evaluation, the re-ranking and serving share it without an import cycle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_vectors(item_vecs: torch.Tensor, id_terms: torch.Tensor | None = None) -> torch.Tensor:
    """(N, E) unit vectors whose dot products are the item-to-item cosines.

    Args:
        item_vecs: (N, E + 2) export vectors `[q_i, b_i, 1]`; the last two columns carry biases, not taste.
        id_terms: (N,) bool, the rows that carry learned ID terms (items seen in training); None: one kind.
    """
    q = item_vecs[:, :-2].float().clone()
    # centred: a direction shared by every item says nothing about which items are alike. Items with ID terms
    # and cold items (content alone) are centred on their own kind's mean: cold vectors share an offset from
    # the warm ones, and against the global mean every cold item would look alike (cosine ~1)
    groups = [id_terms, ~id_terms] if id_terms is not None else [torch.ones(len(q), dtype=torch.bool)]
    for rows in groups:
        if rows.any():
            q[rows] -= q[rows].mean(0)
    return F.normalize(q, dim=-1)
