"""`mmrec.Recommender`: a trained run served from Python, its model loaded once for every query.

    rec = mmrec.Recommender.from_run("RUN")                # EMB found as the CLI finds it
    rec.recommend(user="u17", k=5)                         # a user of the run (seen items excluded)
    rec.recommend(history=["it3", ("it9", 4.5)])           # a new user (history tower runs)
    rec.recommend(user="u17", diversify=0.3)               # the top-200 re-ranked for diversity (MMR)
    rec.similar("it3")
    rec.search("sunny festival")
    vectors = rec.embed_items([{"item_id": "new1", "text": "...", "image": "poster.jpg"}], add=True)

This is the one place that wires serving together (EMB, its nearest-neighbour index, the seen items, MMR
re-ranking, explanations, the history tower): `mmrec recommend / similar / search` answer through it too, so
the command line and Python give the same `Recommendation(item_id, title, score)` rows. New items are embedded
by the run's item tower from their content alone, as `mmrec embed` would embed them in a catalogue
where nobody rated them: never with another item's ID terms (docs/design.md "Python API").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrec.data.remote import as_location
from mmrec.serve.embeddings import Embeddings, format_rows, recommend, seen_by_user, similar, top_k_items
from mmrec.serve.embeddings import search as search_items
from mmrec.serve.new_items import decode_row, media_options
from mmrec.serve.rerank import (
    DEFAULT_POOL,
    attribute_table,
    check_cap,
    check_lambda,
    check_pool,
    diversity_vectors,
    item_attributes,
)
from mmrec.serve.rerank import diversify as diversify_hits
from mmrec.serve.run import check_run_folder, find_embeddings, run_dataset


@dataclass(frozen=True)
class Recommendation:
    """One answer: the item, what serving prints for it, and its score (a dot product for `recommend`,
    a cosine for `similar` and `search`)."""

    item_id: str
    title: str
    score: float
    # `recommend(..., explain=True)`: the evidence for this item, each with its number (`mmrec.serve.explain.Reason`)
    reasons: tuple = ()


class Recommendations(list):
    """The answers to one query, best first: a list of `Recommendation` that prints as the CLI's table."""

    def to_dicts(self) -> list[dict[str, Any]]:
        """[{"item_id", "title", "score"}, ...] (and "reasons" when explained): for JSON or `pandas.DataFrame(...)`."""
        return [{key: value for key, value in asdict(r).items() if key != "reasons" or value} for r in self]

    def format(self, explained: bool = False) -> str:
        """The table `mmrec recommend / similar / search` print; `explained`: each item's reasons under its row
        ("(no evidence found)" where it has none), as `mmrec recommend --explain` prints them."""
        table = format_rows((r.item_id, r.title, r.score) for r in self)
        if not explained:
            return table
        from mmrec.serve.explain import format_explained

        return format_explained(table, [r.reasons for r in self])

    def __repr__(self) -> str:  # a notebook shows the table, with the reasons when there are any
        return self.format(explained=any(r.reasons for r in self))

    __str__ = __repr__


class Recommender:
    """A run's model and embeddings, held in memory between queries.

    Args:
        run: the run folder (`mmrec train --out RUN`).
        emb: its embeddings (`Embeddings.load(EMB)`); `from_run` finds and checks them.
        data: the run's dataset (a folder or a URL), for the items each user has seen; None: none excluded.
        device: where the model runs for `search`, `recommend(history=...)` and `embed_items`.
        emb_dir: the folder `emb` was read from: `recommend(user=)` and `similar` search its nearest-neighbour
            index (`mmrec index`) when it is fresh, as the CLI does; None: every item scored exactly.
    """

    def __init__(self, run: str | Path, emb: Embeddings, data: str | Path | None = None, device: str = "cpu",
                 emb_dir: str | Path | None = None):
        self.run, self.emb, self.device = Path(run), emb, torch.device(device)
        self.data = None if data is None else as_location(data)  # a folder or a URL
        self.emb_dir = None if emb_dir is None else Path(emb_dir)
        self._model = self._preprocessors = None  # loaded on first use: `recommend(user=)` and `similar` need none
        self._seen: dict[str, np.ndarray] | None = None
        self._indexes: dict[str, Any] = {}
        self._explainer = None  # `recommend(..., explain=True)`: built on first use, keeps the user histories
        self._attributes = None  # `recommend(..., max_per_attribute=)`: the items' attribute ids, read once

    @classmethod
    def from_run(cls, run: str | Path, emb: str | Path | None = None, data: str | Path | None = None,
                 device: str = "cpu", exact: bool = False) -> Recommender:
        """Open a run: `emb` or the folder its last `mmrec embed` wrote (else RUN/emb), refused when another
        model made it; `data` or the dataset of the run's config, checked to be the one it trained on.
        `exact`: score every item even where EMB has a nearest-neighbour index (`mmrec ... --exact`)."""
        from mmrec.data.fingerprint import check_dataset

        run = check_run_folder(run)
        emb_dir = find_embeddings(run, emb)
        data = run_dataset(run, data)  # None: no dataset found, so no seen items, attributes or histories
        if data is not None:
            check_dataset(run, data)  # another dataset's interactions would exclude the wrong items
        return cls(run, Embeddings.load(emb_dir), data, device, None if exact else emb_dir)

    def __repr__(self) -> str:
        return f"Recommender(run={str(self.run)!r}, items={len(self.emb.item_ids)}, users={len(self.emb.user_ids)})"

    @property
    def model(self):
        """The run's `RecModel` (eval mode), loaded on first use and kept."""
        return self._loaded()[0]

    def _loaded(self) -> tuple[Any, dict]:
        if self._model is None:
            from mmrec.model.factory import load_run_model

            model, self._preprocessors, _ = load_run_model(self.run, self.device)
            self._model = model.eval()
        return self._model, self._preprocessors

    def _index(self, score: str):
        """EMB's `score` index ("recommend" / "similar") when there is a fresh one, else None (exact)."""
        if self.emb_dir is None:
            return None
        if score not in self._indexes:
            from mmrec.serve.ann import load_index

            self._indexes[score] = load_index(self.emb_dir, self.emb, score)
        return self._indexes[score]

    def _results(self, hits: list[tuple[int, float]]) -> Recommendations:
        return Recommendations(Recommendation(self.emb.item_ids[i], self.emb.titles[i], score) for i, score in hits)

    # ------------------------------------------------------------------------------------- queries

    def recommend(self, user: str | None = None, history: Iterable | str | None = None, k: int = 10,
                  exclude_seen: bool = True, explain: bool = False, diversify: float | None = None,
                  pool: int = DEFAULT_POOL, max_per_attribute: int | None = None) -> Recommendations:
        """Top-k items for a user of the run (`user`), or for anyone from their interactions (`history`).

        Args:
            user: a user id of the embeddings; `exclude_seen` drops the items they have in any split
                of the run's dataset (as `mmrec recommend --user`).
            history: item ids, or (item_id, rating) pairs, oldest first, or "ITEM[:RATING],..."; needs a
                history-tower run (`model.user_tower=history`); `exclude_seen` drops the given items.
            explain: fill each answer's `reasons` (`mmrec.serve.explain`): the user's interactions, attributes and
                modalities that carry its score, each with its number; loads the model.
            diversify: LAMBDA in [0, 1]: the top `pool` re-ranked by maximal marginal relevance (`mmrec.serve.rerank`;
                0 the plain ranking), at most `max_per_attribute` items sharing an attribute (from the dataset).
                Scores stay the model's, so the list is no longer sorted by them.
        """
        from mmrec.serve.incremental import history_vector, parse_history

        _check_k(k)
        fetch = k if diversify is None else check_pool(pool, k)
        if diversify is not None:
            check_lambda(diversify)
            check_cap(max_per_attribute)
        if (user is None) == (history is None):
            raise ValueError("pass exactly one of user=USER_ID (a user of the run) or history=[ITEM, ...] (anyone)")
        if user is not None:
            exclude = set(self.seen_items(user).tolist()) if exclude_seen and user in self.emb.user_index else set()
            hits = self._diversified(recommend(self.emb, user, fetch, exclude, index=self._index("recommend")), k,
                                     diversify, max_per_attribute)
            return self._explained(hits, user=user) if explain else self._results(hits)
        pairs = parse_history(history) if isinstance(history, str) else _history_pairs(history)
        vector = history_vector(self.model, self.emb, pairs)  # ValueError for an ID-tower run or an unknown item
        exclude = {self.emb.row_of(item) for item, _ in pairs} if exclude_seen else set()
        hits = self._diversified(top_k_items(self.emb.items @ vector, fetch, exclude), k, diversify, max_per_attribute)
        return self._explained(hits, pairs=pairs) if explain else self._results(hits)

    def _diversified(self, hits: list[tuple[int, float]], k: int, lam: float | None,
                     cap: int | None) -> list[tuple[int, float]]:
        """The pool `hits` re-ranked by MMR to k items (unchanged when `lam` is None)."""
        if lam is None:
            return hits
        attributes = None
        if cap is not None:
            if self.data is None:
                raise ValueError("max_per_attribute needs the items' attributes from the run's dataset: pass "
                                 "Recommender.from_run(RUN, data=DATA)")
            if self._attributes is None or len(self._attributes) != len(self.emb.item_ids):  # items may be added
                self._attributes = attribute_table(item_attributes(self.data, self.emb.item_ids))[0]
            attributes = self._attributes
        return diversify_hits(hits, diversity_vectors(self.emb.items, self.emb.id_terms), k, lam, attributes, cap)

    def _explained(self, hits: list[tuple[int, float]], user: str | None = None, pairs=None) -> Recommendations:
        """`hits` with their reasons, for a user of the run or a given history (`mmrec.serve.explain`)."""
        from mmrec.data.vocabulary import RunVocabulary
        from mmrec.serve.explain import Explainer

        if self._explainer is None:
            model, preprocessors = self._loaded()
            self._explainer = Explainer(model, preprocessors, self.emb, self.data, RunVocabulary.load(self.run))
        explainer = self._explainer
        if user is not None:
            history, vector = explainer.user_history(user), self.emb.users[self.emb.user_row(user)]
        else:
            history, vector = explainer.given_history(pairs), None
        reasons = explainer.explain(history, [i for i, _ in hits], vector)
        return Recommendations(Recommendation(self.emb.item_ids[i], self.emb.titles[i], score, why)
                               for (i, score), why in zip(hits, reasons))

    def similar(self, item: str, k: int = 10) -> Recommendations:
        """The k items most like `item` (cosine of their centred item vectors), itself excluded."""
        _check_k(k)
        return self._results(similar(self.emb, item, k, index=self._index("similar")))

    def search(self, text: str, k: int = 10) -> Recommendations:
        """The k items whose content best matches free text (the query read as a text-only item)."""
        _check_k(k)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"search text must be a non-empty string, got {text!r}")
        model, preprocessors = self._loaded()
        return self._results(search_items(model, self.emb, text, k, preprocessors))

    def seen_items(self, user: str) -> np.ndarray:
        """The rows of the items `user` has in any split file of the run's dataset (sorted; none for a user the
        dataset lacks), read once for every user."""
        if self.data is None:
            raise ValueError(f"cannot tell which items {user!r} has seen: the run's dataset was not found. Pass "
                             "Recommender.from_run(RUN, data=DATA), or recommend(..., exclude_seen=False)")
        if self._seen is None:  # every user's, from one read of the split files
            self._seen = seen_by_user(self.data, self.emb.item_ids)
        return self._seen.get(user, np.zeros(0, dtype=np.int64))

    # ------------------------------------------------------------------------------------- new items

    def embed_items(self, rows: Iterable[Mapping | str] | Mapping | str, add: bool = False,
                    batch_size: int = 64) -> torch.Tensor:
        """Export vectors (n, E + 2) of new catalogue items, from their content alone (no ID terms).

        Args:
            rows: a row or a list of rows, each a dict as a line of items.jsonl: "text" (a string);
                "image" (a file path or a PIL image); "audio" (a file path or (waveform, sample_rate),
                waveform (channels, frames) or (frames,)); "attributes"; "item_id"; other keys are
                metadata ("title" is what results print). A plain string is a row with that text. Files
                are read as `mmrec shard` reads them, with the run's dataset's resize and resample options.
            add: also add them to the catalogue served by this object (in memory; `mmrec embed-items`
                writes EMB), so `recommend`, `similar`, `search` and histories include them. Each row then
                needs an `item_id` the catalogue does not have.
        """
        from mmrec.data.batch import BatchCollator, ExampleBuilder
        from mmrec.data.vocabulary import RunVocabulary
        from mmrec.embedding import embed_batches, item_title
        from mmrec.precision import bf16_autocast

        rows = [rows] if isinstance(rows, (str, Mapping)) else list(rows)
        if not rows:
            raise ValueError("no rows to embed: pass a list of dicts with text / image / audio")
        model, preprocessors = self._loaded()
        if model.fusion is None:
            raise ValueError("this run's model has no content encoders (ID only): it cannot embed new items")
        options = media_options(self.data)
        items = [decode_row(row, n, options, tuple(preprocessors)) for n, row in enumerate(rows)]
        ids = [item.item_id for item in items]
        if add:
            self._check_new_ids(rows, ids)
        # every item is NEW_ITEM (the model's "no ID terms" index): a new item's content is all the model knows
        builder = ExampleBuilder(preprocessors, RunVocabulary.load(self.run).attributes, catalogue=None)
        collate = BatchCollator(preprocessors)
        batches = (collate([builder(item) for item in items[s:s + batch_size]]) for s in range(0, len(items), batch_size))
        with_state = add and self.emb.states is not None
        out = embed_batches(model, batches, device=self.device, autocast=bf16_autocast(self.device),
                            with_state=with_state)
        if add:
            self._append(ids, [item_title(item) for item in items], out.vectors, out.states if with_state else None)
        return out.vectors

    def _check_new_ids(self, rows: list, ids: list[str]) -> None:
        unnamed = [n for n, row in enumerate(rows) if not (isinstance(row, Mapping) and row.get("item_id") is not None)]
        if unnamed:
            raise ValueError(f"row {unnamed[0]} has no item_id: give every row one to add it to the catalogue")
        known = set(self.emb.item_ids)
        taken = [i for i in ids if i in known]
        if taken:
            raise ValueError(f"item_id {taken[0]!r} is already in the catalogue: new items need new ids")
        if len(set(ids)) < len(ids):
            raise ValueError(f"item_id {next(i for i in ids if ids.count(i) > 1)!r} is given twice")

    def _append(self, ids: list[str], titles: list[str], vectors: torch.Tensor, states: torch.Tensor | None) -> None:
        emb = self.emb
        id_terms = emb.id_terms if emb.id_terms is not None else torch.ones(len(emb.item_ids), dtype=torch.bool)
        emb.items = torch.cat([emb.items, vectors])
        emb.id_terms = torch.cat([id_terms, torch.zeros(len(ids), dtype=torch.bool)])  # content alone
        if states is not None:
            emb.states = torch.cat([emb.states, states])
        emb.item_ids = emb.item_ids + ids
        emb.titles = emb.titles + titles
        self.emb_dir, self._indexes = None, {}  # EMB's index lacks the new items: every item is scored exactly


def _check_k(k: int) -> None:
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _history_pairs(history: Iterable) -> list[tuple[str, float | None]]:
    """Item ids or (item_id, rating) pairs -> [(item_id, rating or None)]."""
    pairs = []
    for entry in history:
        if isinstance(entry, str):
            pairs.append((entry, None))
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str):
            try:
                pairs.append((entry[0], None if entry[1] is None else float(entry[1])))
            except (TypeError, ValueError):
                raise ValueError(f"history entry {entry!r}: the rating must be a number or None") from None
        else:
            raise ValueError(f"history entry {entry!r}: expected an item id or an (item_id, rating) pair")
    if not pairs:
        raise ValueError("the history is empty: give at least one item id, oldest first")
    return pairs


__all__ = ["Recommendation", "Recommendations", "Recommender"]
