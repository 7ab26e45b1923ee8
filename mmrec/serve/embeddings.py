"""`mmrec recommend`, `mmrec similar`, `mmrec search`: answers from the exported embeddings.

- recommend: the user's exported vector against every item's (the model's exact score), items the
  user interacted with in the run's splits excluded;
- similar: cosine between the items' centred q vectors (the part of the item embedding that users score);
- search: the query text goes through the text encoder and the fusion with only text present, and
  is matched by cosine against every item's text-only fused state (the full state for items without
  text), so it works for items nobody rated.
All three are one matrix-vector product plus a top-k: milliseconds on 100k items. Loading the model
(search only) is what takes seconds: `mmrec.serve.recommender.Recommender` loads it once for many queries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mmrec.data.dataset import Dataset, SplitRows, index_of
from mmrec.data.schema import SPLITS
from mmrec.serve.similarity import similarity_vectors

if TYPE_CHECKING:  # types only: `from mmrec.serve.embeddings import Embeddings` must not build encoders
    from encoders import Preprocessor
    from mmrec.model.model import RecModel


@dataclass
class Embeddings:
    """The contents of an EMB folder written by `mmrec embed`: the ids, the vectors, their rows, and the
    item-to-item similarity (`similarity_vectors`) that `similar`, explanations and re-ranking share."""

    items: torch.Tensor  # (N, E + 2)
    item_ids: list[str]
    titles: list[str]
    users: torch.Tensor  # (U, E + 2)
    user_ids: list[str]
    states: torch.Tensor | None  # (N, D) text-only fused states (full state for items without text)
    id_terms: torch.Tensor | None = None  # (N,) bool: the row carries learned ID terms (item seen in training)
    # the id -> row indexes and the similarity vectors, built on first use and again when the ids or vectors
    # they come from are replaced or grown (`Recommender.embed_items(add=True)`)
    _indexes: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, folder: str | Path) -> Embeddings:
        folder = Path(folder)
        if not (folder / "item_embeddings.safetensors").is_file():
            raise ValueError(f"{folder} holds no embeddings: run `mmrec embed --run RUN --data DATA --out {folder}` first")
        states = folder / "item_states.safetensors"
        items = load_file(folder / "item_embeddings.safetensors")
        return cls(
            items=items["embeddings"],
            item_ids=json.loads((folder / "item_ids.json").read_text(encoding="utf-8")),
            titles=json.loads((folder / "item_titles.json").read_text(encoding="utf-8")),
            users=load_file(folder / "user_embeddings.safetensors")["embeddings"],
            user_ids=json.loads((folder / "user_ids.json").read_text(encoding="utf-8")),
            states=load_file(states)["states"] if states.is_file() else None,
            id_terms=items["id_terms"].bool() if "id_terms" in items else None,  # absent in older EMB folders
        )

    def _cached(self, name: str, sources: tuple, build):
        """`build()`, kept while each of `sources` is the same object at the same length."""
        lengths = tuple(None if obj is None else len(obj) for obj in sources)
        hit = self._indexes.get(name)
        if hit is None or hit[1] != lengths or any(a is not b for a, b in zip(hit[0], sources)):
            hit = self._indexes[name] = (sources, lengths, build())
        return hit[2]

    @property
    def item_index(self) -> dict[str, int]:
        """item id -> its row of `items` (read-only)."""
        return self._cached("items", (self.item_ids,), lambda: index_of(self.item_ids))

    @property
    def user_index(self) -> dict[str, int]:
        """user id -> its row of `users` (read-only)."""
        return self._cached("users", (self.user_ids,), lambda: index_of(self.user_ids))

    def row_of(self, item_id: str) -> int:
        """The row of `item_id` in `items` (KeyError when EMB lacks it)."""
        return self.item_index[item_id]

    def user_row(self, user_id: str) -> int:
        """The row of `user_id` in `users` (KeyError when EMB lacks it)."""
        return self.user_index[user_id]

    def similarity_vectors(self) -> torch.Tensor:
        """(N, E) unit vectors whose dot products are `similar`'s item-to-item cosines
        (`mmrec.serve.similarity.similarity_vectors` of these items)."""
        return self._cached("similarity", (self.items, self.id_terms),
                            lambda: similarity_vectors(self.items, self.id_terms))


def top_k_items(scores: torch.Tensor, k: int, exclude: set[int] = frozenset()) -> list[tuple[int, float]]:
    """The k best (item row, score) of `scores` (N,), best first, the rows in `exclude` never among them."""
    if exclude:
        scores = scores.clone()
        scores[list(exclude)] = float("-inf")
    values, idx = torch.topk(scores, min(k, scores.numel()))
    return [(int(i), float(v)) for i, v in zip(idx, values) if v != float("-inf")]


def _seen_rows(data: Dataset | str | Path) -> Iterator[SplitRows]:
    """The rows that make an item seen: every split file's (a rating in valid or test is no recommendation
    either)."""
    data = Dataset.of(data)
    return (data.split(split) for split in SPLITS)


def seen_items(data: Dataset | str | Path, user_id: str, item_ids: list[str]) -> set[int]:
    """Rows of `item_ids` (EMB's) of the items `user_id` interacted with in any split file of DATA."""
    index = index_of(item_ids)
    seen: set[int] = set()
    for rows in _seen_rows(data):
        if user_id in rows.user_ids:
            mine = rows.items[rows.users == rows.user_ids.index(user_id)]
            seen.update(index[rows.item_ids[code]] for code in mine.tolist())
    return seen


def seen_by_user(data: Dataset | str | Path, item_ids: list[str]) -> dict[str, np.ndarray]:
    """`seen_items` of every user at once, each as sorted unique rows: for a process that serves many
    queries (reading the split files per query costs seconds on a large log)."""
    index = index_of(item_ids)
    seen: dict[str, list[np.ndarray]] = {}
    for rows in _seen_rows(data):
        items = rows.items_in(index)
        order = np.argsort(rows.users, kind="stable")  # each user's rows together
        ends = np.cumsum(np.bincount(rows.users, minlength=len(rows.user_ids)))
        for user, mine in zip(rows.user_ids, np.split(items[order], ends[:-1])):
            seen.setdefault(user, []).append(mine)
    return {user: np.unique(np.concatenate(parts)) for user, parts in seen.items()}


def recommend(emb: Embeddings, user_id: str, k: int = 10, exclude: set[int] = frozenset(),
              index=None) -> list[tuple[int, float]]:
    """`index`: an `mmrec.serve.ann.ItemIndex` over `emb.items` (`ann.load_index(EMB, emb, "recommend")`), else exact."""
    if user_id not in emb.user_index:
        raise ValueError(f"unknown user {user_id!r}: the run has embeddings for {len(emb.user_ids)} users seen in "
                         "training (a new user has no vector; recommend popular or similar items instead)")
    user = emb.users[emb.user_row(user_id)]
    if index is not None:  # the same score on the index's candidates, the seen items over-fetched for and dropped
        return index.top(user, k, exclude)
    return top_k_items(emb.items @ user, k, exclude)


def similar(emb: Embeddings, item_id: str, k: int = 10, index=None) -> list[tuple[int, float]]:
    """`index`: an `mmrec.serve.ann.ItemIndex` over `emb.similarity_vectors()`
    (`ann.load_index(EMB, emb, "similar")`)."""
    if item_id not in emb.item_index:
        raise ValueError(f"unknown item {item_id!r}: not in the embedded catalogue ({len(emb.item_ids)} items)")
    i = emb.row_of(item_id)
    if index is not None:
        return index.top(index.vectors[i], k, {i})
    q = emb.similarity_vectors()
    return top_k_items(q @ q[i], k, {i})


@torch.no_grad()
def query_state(model: RecModel, preprocessors: dict[str, Preprocessor], query: str) -> torch.Tensor:
    """(D,) the fused state of `query` read as a new item with text alone (no ID terms: it is no item)."""
    from mmrec.data.batch import NEW_ITEM, BatchCollator, ExampleBuilder
    from mmrec.data.reader import DecodedItem

    if "text" not in preprocessors:
        raise ValueError("this model has no text encoder: free-text search needs one")
    example = ExampleBuilder(preprocessors, [], catalogue=None)(DecodedItem(NEW_ITEM, "query", query, None, None, None))
    batch = BatchCollator(preprocessors)([example]).to(model.global_mean.device)
    was_training = model.training
    model.eval()
    state = model.fuse(model.encode(batch), batch.present)  # (1, D)
    model.train(was_training)
    return state[0].float().cpu()


@torch.no_grad()
def search(model: RecModel | str | Path, emb: Embeddings, query: str, k: int = 10,
           preprocessors: dict[str, Preprocessor] | None = None) -> list[tuple[int, float]]:
    """Top-k (item index, score) of the items whose content matches free text.

    Args:
        model: the run's model, loaded once (`load_run_model`) with its `preprocessors`, for many
            queries; or a run folder, to load it from for this one query.
    """
    if emb.states is None or not emb.states.numel():
        raise ValueError("these embeddings have no fused content states (an ID-only model cannot search)")
    if isinstance(model, (str, Path)):
        from mmrec.model.factory import load_run_model

        model, preprocessors, _ = load_run_model(model)
    elif preprocessors is None:
        raise ValueError("pass the model's preprocessors with it (load_run_model returns both)")
    state = query_state(model, preprocessors, query)
    center = emb.states.mean(0)  # as in `similar`: compare what distinguishes items, not what they share
    scores = F.normalize(emb.states - center, dim=-1) @ F.normalize(state - center, dim=-1)
    return top_k_items(scores, k)


def format_rows(rows: Iterable[tuple[str, str, float]]) -> str:
    """(item_id, title, score) rows, best first, as the table `recommend` / `similar` / `search` print."""
    lines = [f"{'rank':>4}  {'score':>9}  {'item_id':<16} title"]
    for rank, (item_id, title, score) in enumerate(rows, start=1):
        lines.append(f"{rank:>4}  {score:>9.4f}  {item_id:<16} {title}")
    return "\n".join(lines)


def format_results(emb: Embeddings, results: list[tuple[int, float]]) -> str:
    return format_rows((emb.item_ids[i], emb.titles[i], score) for i, score in results)
