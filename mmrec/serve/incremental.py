"""New users, new interactions and new items without retraining: `mmrec recommend --history`,
`mmrec embed-users`, `mmrec embed-items`.

A run trained with the history user tower (`model.user_tower: history`) computes a user's vector from
the items they interacted with, read from the exported item vectors (EMB), so:

- `recommend_for_history(model, emb, [(item_id, rating), ...])`: the top-K for a user the run never
  saw, from a handful of interactions (the given items excluded);
- `embed_users(run, emb, interactions.csv, data)`: recompute the vectors of the users in the file
  (or of every user) from their training interactions plus the new ones, and write them into EMB:
  the incremental path for new interactions. Seconds for 10k users on a CPU (benchmarks/new_users.py).

- `add_items(model, ..., NEW_DATA, emb)`: new catalogue items (sharded on their own by `mmrec shard`)
  embedded from content by the run's item tower, never with another item's ID terms, and appended
  to EMB; users' histories may then name them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mmrec.data.reader import load_manifest
from mmrec.data.schema import ITEM_IDS
from mmrec.data.splits import RunSplits, SplitArrays
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import embed_batches, item_batches, item_title, verify_shards
from mmrec.files import replace_with, temp_sibling
from mmrec.model.history import UserHistory
from mmrec.model.model import RecModel, history_user_vectors
from mmrec.serve.embeddings import Embeddings, top_k_items
from mmrec.shard.interactions import read_interactions
from mmrec.shard.quarantine import write_quarantine

QUARANTINE_FILE = "embed_users_quarantine.jsonl"


def parse_history(text: str) -> list[tuple[str, float | None]]:
    """`ITEM[:RATING],...` (oldest first) -> [(item_id, rating or None)]. A suffix that is not a number
    belongs to the item id (ids may contain colons)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        item, _, rating = part.rpartition(":")
        try:
            out.append((item, float(rating)) if item else (part, None))
        except ValueError:
            out.append((part, None))
    if not out:
        raise ValueError("--history is empty: give at least one ITEM[:RATING], comma-separated")
    return out


def _need_history_tower(model: RecModel) -> None:
    if not model.history_tower:
        raise ValueError("this run's model has an ID user tower (model.user_tower: id): it has vectors only for "
                         "the users it was trained on. Train with model.user_tower=history to serve new users "
                         "from their history")


def _item_rows(emb: Embeddings, item_ids: list[str]) -> np.ndarray:
    index = emb.item_index
    unknown = [i for i in item_ids if i not in index]
    if unknown:
        raise ValueError(f"{len(unknown)} history item(s) are not in the embeddings (e.g. {unknown[0]!r}): "
                         "embed new items with `mmrec embed` first (README \"New users, new interactions, new items\")")
    return np.asarray([index[i] for i in item_ids], dtype=np.int64)


def history_vector(model: RecModel, emb: Embeddings, history: list[tuple[str, float | None]]) -> torch.Tensor:
    """(E + 2,) the vector of a user with this history (oldest first; a missing rating counts as the
    training mean, i.e. says nothing beyond the interaction)."""
    _need_history_tower(model)
    items = _item_rows(emb, [i for i, _ in history])
    mean = float(model.global_mean)
    ratings = np.asarray([mean if r is None else r for _, r in history], dtype=np.float32)
    rows = SplitArrays(np.zeros(len(items), dtype=np.int64), items, ratings, np.arange(len(items), dtype=np.float64))
    table = UserHistory.from_rows(rows, 1, model.config.history_length)
    return history_user_vectors(model, emb.items, table)[0]


def recommend_for_history(model: RecModel, emb: Embeddings, history: list[tuple[str, float | None]],
                          k: int = 10) -> list[tuple[int, float]]:
    """Top-k (item index, score) for a user given only a history; the history's items are excluded."""
    vec = history_vector(model, emb, history)
    return top_k_items(emb.items @ vec, k, set(_item_rows(emb, [i for i, _ in history]).tolist()))


@dataclass
class EmbeddedUsers:
    updated: int  # users whose vector was (re)computed
    new: int  # of which were not in EMB before
    rows_read: int  # rows of the interactions file
    rows_used: int
    rows_quarantined: int  # unknown items, bad ratings, duplicates: EMB/embed_users_quarantine.jsonl
    seconds: float

    def summary(self) -> str:
        return (f"embedded {self.updated} users ({self.new} new) from {self.rows_used} new interactions "
                f"({self.rows_quarantined} of {self.rows_read} rows quarantined) in {self.seconds:.2f} s")


def embed_users(model: RecModel, emb_dir: str | Path, interactions: str | Path, data_dir: str | Path | None,
                vocab: RunVocabulary, all_users: bool = False) -> EmbeddedUsers:
    """Recompute user vectors from their training history (DATA's train split, when given) plus the rows of
    `interactions` (user_id,item_id[,rating][,timestamp]; rows without a timestamp count as the newest, in
    file order), and write them into EMB (users in the file, or every known user with `all_users`)."""
    _need_history_tower(model)
    started = time.perf_counter()
    emb_dir = Path(emb_dir)
    emb = Embeddings.load(emb_dir)
    log = read_interactions(Path(interactions), set(emb.item_ids))
    if log.quarantine:  # unknown items, unreadable ratings, duplicates: named, never dropped silently
        write_quarantine(emb_dir / QUARANTINE_FILE, log.quarantine)
    assert log.n_rows == len(log.rows) + len(log.quarantine), "rows must reconcile"

    user_ids = list(emb.user_ids)
    index = dict(emb.user_index)  # grows with the users the file adds
    for row in log.rows:
        if row.user_id not in index:
            index[row.user_id] = len(user_ids)
            user_ids.append(row.user_id)
    item_index = emb.item_index
    users, items, ratings, times = [], [], [], []
    if data_dir is not None:  # the training interactions the run's own user vectors came from
        train = RunSplits(data_dir, vocab)["train"]
        known = train.users >= 0
        run_users = np.asarray([index[u] for u in vocab.user_ids], dtype=np.int64)
        users.append(run_users[train.users[known]])
        run_items = np.asarray([item_index[i] for i in vocab.item_ids], dtype=np.int64)
        items.append(run_items[train.items[known]])
        ratings.append(train.ratings[known])
        times.append(train.timestamps[known] if train.timestamps is not None else np.full(int(known.sum()), np.nan))
    mean = float(model.global_mean)
    users.append(np.asarray([index[r.user_id] for r in log.rows], dtype=np.int64))
    items.append(np.asarray([item_index[r.item_id] for r in log.rows], dtype=np.int64))
    ratings.append(np.asarray([mean if r.rating is None else r.rating for r in log.rows], dtype=np.float32))
    times.append(np.asarray([np.inf if r.timestamp is None else r.timestamp for r in log.rows], dtype=np.float64))
    rows = SplitArrays(np.concatenate(users), np.concatenate(items), np.concatenate(ratings), np.concatenate(times))

    chosen = np.arange(len(user_ids)) if all_users else np.unique(rows.users[-len(log.rows):] if log.rows else [])
    remap = np.full(len(user_ids), -1, dtype=np.int64)
    remap[chosen] = np.arange(len(chosen))
    table = UserHistory.from_rows(SplitArrays(remap[rows.users], rows.items, rows.ratings, rows.timestamps),
                                  len(chosen), model.config.history_length)
    # users the run was trained on keep their ID residual (`model.history_user_id`); new users have none
    run_index = vocab.user_index()
    run_users = torch.tensor([run_index.get(user_ids[c], -1) for c in chosen.tolist()], dtype=torch.long)
    vectors = history_user_vectors(model, emb.items, table, users=run_users)  # (C, E + 2)

    all_vecs = torch.zeros(len(user_ids), emb.items.shape[1])
    all_vecs[: len(emb.user_ids)] = emb.users
    all_vecs[torch.from_numpy(chosen)] = vectors
    new = int((chosen >= len(emb.user_ids)).sum())
    # a user added without a vector (in the file, but --all-users off: impossible) would stay zero; every
    # new user is in `chosen`, so EMB never holds a user without a computed vector
    tmp = temp_sibling(emb_dir / "user_embeddings.safetensors")
    save_file({"embeddings": all_vecs.contiguous()}, str(tmp))
    tmp_ids = temp_sibling(emb_dir / "user_ids.json")
    tmp_ids.write_text(json.dumps(user_ids, ensure_ascii=False), encoding="utf-8")
    replace_with(tmp, emb_dir / "user_embeddings.safetensors")
    replace_with(tmp_ids, emb_dir / "user_ids.json")
    return EmbeddedUsers(len(chosen), new, log.n_rows, len(log.rows), len(log.quarantine),
                         time.perf_counter() - started)


@dataclass
class AddedItems:
    added: int  # new rows in EMB
    already_there: int  # items of NEW_DATA whose id EMB already had: left as they were
    seconds: float

    def summary(self) -> str:
        return (f"added {self.added} items to the embeddings from their content ({self.already_there} already "
                f"there, left unchanged) in {self.seconds:.2f} s")


def add_items(model: RecModel, preprocessors: dict, attributes: list[str], new_data: str | Path,
              emb_dir: str | Path, batch_size: int = 128, num_workers: int = 0) -> AddedItems:
    """Embed the items of NEW_DATA (a dataset folder of new catalogue items, any interactions file) with
    the run's item tower, from content alone, and append the ones EMB does not have yet."""
    started = time.perf_counter()
    new_data, emb_dir = Path(new_data), Path(emb_dir)
    emb = Embeddings.load(emb_dir)
    manifest = load_manifest(new_data)
    verify_shards(new_data, manifest)
    new_ids = json.loads((new_data / ITEM_IDS).read_text(encoding="utf-8"))
    loader = item_batches(new_data, preprocessors, attributes, batch_size=batch_size, num_workers=num_workers,
                          extra=item_title)
    titles: list[str] = []

    def batches():
        for batch, batch_titles in loader:
            titles.extend(batch_titles)
            yield batch

    out = embed_batches(model, batches(), with_state=emb.states is not None, content_only=True)
    known = set(emb.item_ids)
    rows = [r for r, i in enumerate(out.indices.tolist()) if new_ids[i] not in known]
    ids = [new_ids[out.indices[r]] for r in rows]
    keep = torch.tensor(rows, dtype=torch.long)
    items = torch.cat([emb.items, out.vectors[keep]])
    id_terms = emb.id_terms if emb.id_terms is not None else torch.ones(len(emb.items), dtype=torch.bool)
    id_terms = torch.cat([id_terms, torch.zeros(len(rows), dtype=torch.bool)])  # content alone
    writes = {"item_embeddings.safetensors": {"embeddings": items.contiguous(),
                                               "id_terms": id_terms.to(torch.uint8).contiguous()}}
    if emb.states is not None:
        writes["item_states.safetensors"] = {"states": torch.cat([emb.states, out.states[keep]]).contiguous()}
    texts = {"item_ids.json": emb.item_ids + ids, "item_titles.json": emb.titles + [titles[r] for r in rows]}
    temps = []
    for name, tensors in writes.items():
        tmp = temp_sibling(emb_dir / name)
        save_file(tensors, str(tmp))
        temps.append((tmp, emb_dir / name))
    for name, value in texts.items():
        tmp = temp_sibling(emb_dir / name)
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        temps.append((tmp, emb_dir / name))
    for tmp, final in temps:  # every file written before any is replaced
        replace_with(tmp, final)
    return AddedItems(len(rows), len(out.indices) - len(rows), time.perf_counter() - started)
