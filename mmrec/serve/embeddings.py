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

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mmrec.data import remote
from mmrec.data.schema import INTERACTIONS_DIR, SPLITS
from mmrec.files import sha256_of

if TYPE_CHECKING:  # types only: `from mmrec.serve.embeddings import Embeddings` must not build encoders
    from encoders import Preprocessor
    from mmrec.model.model import RecModel


@dataclass
class Embeddings:
    """The contents of an EMB folder written by `mmrec embed`."""

    items: torch.Tensor  # (N, E + 2)
    item_ids: list[str]
    titles: list[str]
    users: torch.Tensor  # (U, E + 2)
    user_ids: list[str]
    states: torch.Tensor | None  # (N, D) text-only fused states (full state for items without text)
    id_terms: torch.Tensor | None = None  # (N,) bool: the row carries learned ID terms (item seen in training)

    @classmethod
    def load(cls, folder: str | Path) -> "Embeddings":
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


def find_embeddings(run_dir: str | Path, emb: str | Path | None = None) -> Path:
    """A run's EMB folder: `emb`, else the folder the run's last `mmrec embed` wrote (RUN/embeddings.json),
    else RUN/emb. Refused when another model made it: its item vectors would not belong with the run's
    model (search, new users, new items) or with its users."""
    run_dir = Path(run_dir)
    if emb is None:
        pointer = run_dir / "embeddings.json"
        emb = Path(json.loads(pointer.read_text())["path"]) if pointer.is_file() else run_dir / "emb"
    emb = Path(emb)
    made = emb / "embedding.json"
    if made.is_file():
        if json.loads(made.read_text()).get("checkpoint_sha256") != sha256_of(run_dir / "model" / "model.safetensors"):
            raise ValueError(f"{emb} holds embeddings of another model than {run_dir / 'model'}: re-run "
                             "`mmrec embed` with this run, or pass its own --run")
    return emb


def _top(scores: torch.Tensor, k: int, exclude: set[int] = frozenset()) -> list[tuple[int, float]]:
    if exclude:
        scores = scores.clone()
        scores[list(exclude)] = float("-inf")
    values, idx = torch.topk(scores, min(k, scores.numel()))
    return [(int(i), float(v)) for i, v in zip(idx, values) if v != float("-inf")]


def _split_rows(data_dir: str | Path) -> Iterator[dict[str, str]]:
    for split in SPLITS:
        with remote.open_data(remote.as_location(data_dir), f"{INTERACTIONS_DIR}/{split}.csv", "r") as f:
            yield from csv.DictReader(f)


def seen_items(data_dir: str | Path, user_id: str, item_ids: list[str]) -> set[int]:
    """Indices of the items `user_id` interacted with in any split file of DATA."""
    index = {item: i for i, item in enumerate(item_ids)}
    return {index[r["item_id"]] for r in _split_rows(data_dir) if r["user_id"] == user_id}


def seen_by_user(data_dir: str | Path, item_ids: list[str]) -> dict[str, np.ndarray]:
    """`seen_items` of every user at once, from one read of the split files: for a process that serves
    many queries (re-reading the files per query costs seconds on a large log)."""
    index = {item: i for i, item in enumerate(item_ids)}
    seen: dict[str, list[int]] = {}
    for r in _split_rows(data_dir):
        seen.setdefault(r["user_id"], []).append(index[r["item_id"]])
    return {user: np.unique(np.asarray(items, dtype=np.int64)) for user, items in seen.items()}


def recommend(emb: Embeddings, user_id: str, k: int = 10, exclude: set[int] = frozenset(),
              index=None) -> list[tuple[int, float]]:
    """`index`: an `mmrec.serve.ann.ItemIndex` over `emb.items` (`ann.load_index(EMB, emb, "recommend")`), else exact."""
    if user_id not in emb.user_ids:
        raise ValueError(f"unknown user {user_id!r}: the run has embeddings for {len(emb.user_ids)} users seen in "
                         "training (a new user has no vector; recommend popular or similar items instead)")
    user = emb.users[emb.user_ids.index(user_id)]
    if index is not None:  # the same score on the index's candidates, the seen items over-fetched for and dropped
        return index.top(user, k, exclude)
    return _top(emb.items @ user, k, exclude)


def similarity_vectors(emb: Embeddings) -> torch.Tensor:
    """(N, E) unit vectors whose dot products are `similar`'s item-to-item cosines."""
    q = emb.items[:, :-2].clone()  # the last two columns carry biases, not taste
    # centred: a direction shared by every item says nothing about which items are alike. Items with ID terms
    # and cold items (content alone) are centred on their own kind's mean: cold vectors share an offset from
    # the warm ones, and against the global mean every cold item would look alike (cosine ~1)
    groups = [emb.id_terms, ~emb.id_terms] if emb.id_terms is not None else [torch.ones(len(q), dtype=torch.bool)]
    for rows in groups:
        if rows.any():
            q[rows] -= q[rows].mean(0)
    return F.normalize(q, dim=-1)


def similar(emb: Embeddings, item_id: str, k: int = 10, index=None) -> list[tuple[int, float]]:
    """`index`: an `mmrec.serve.ann.ItemIndex` over `similarity_vectors(emb)` (`ann.load_index(EMB, emb, "similar")`)."""
    if item_id not in emb.item_ids:
        raise ValueError(f"unknown item {item_id!r}: not in the embedded catalogue ({len(emb.item_ids)} items)")
    i = emb.item_ids.index(item_id)
    if index is not None:
        return index.top(index.vectors[i], k, {i})
    q = similarity_vectors(emb)
    return _top(q @ q[i], k, {i})


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
    return _top(scores, k)


def format_rows(rows: Iterable[tuple[str, str, float]]) -> str:
    """(item_id, title, score) rows, best first, as the table `recommend` / `similar` / `search` print."""
    lines = [f"{'rank':>4}  {'score':>9}  {'item_id':<16} title"]
    for rank, (item_id, title, score) in enumerate(rows, start=1):
        lines.append(f"{rank:>4}  {score:>9.4f}  {item_id:<16} {title}")
    return "\n".join(lines)


def format_results(emb: Embeddings, results: list[tuple[int, float]]) -> str:
    return format_rows((emb.item_ids[i], emb.titles[i], score) for i, score in results)
