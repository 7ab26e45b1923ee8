"""What training, validation, `mmrec embed` and `mmrec eval` share: the run's id vocabulary, item
embedding over the shards, split files as index arrays, and scoring a split.

The vocabulary is fixed when training starts and stored in the run folder: item index = row of
DATA/item_ids.json (every catalogue item, rated or not), user index = position in the sorted list of
users with training interactions. Users who appear only in valid/test map to -1 (the model's zero
"unknown user" row).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from mmrec.batch import BatchCollator, ExampleBuilder, ItemBatch, WithExtra
from mmrec.data.reader import ReaderConfig, decode_sample, item_loader, load_manifest
from mmrec.data.schema import INTERACTIONS_DIR, ITEM_IDS
from mmrec.metrics import UserItems, rating_metrics, ranking_metrics, top_k
from mmrec.model import RecModel

VOCAB_FILE = "vocabulary.json"


@dataclass
class RunVocabulary:
    """The ids a model was trained with."""

    item_ids: list[str]  # item index -> item_id (DATA/item_ids.json)
    user_ids: list[str]  # user index -> user_id (users with training interactions, sorted)
    attributes: list[str]  # attribute head order (the manifest's vocabulary)
    global_mean: float  # mean training rating (mu)

    @classmethod
    def from_data(cls, data_dir: str | Path) -> "RunVocabulary":
        data_dir = Path(data_dir)
        manifest = load_manifest(data_dir)
        item_ids = json.loads((data_dir / ITEM_IDS).read_text(encoding="utf-8"))
        users, total, n = set(), 0.0, 0
        with open(data_dir / INTERACTIONS_DIR / "train.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                users.add(row["user_id"])
                total += float(row["rating"])
                n += 1
        if n == 0:
            raise ValueError(f"{data_dir}: the train split is empty; nothing to train on")
        return cls(item_ids, sorted(users), list(manifest["attributes"]), total / n)

    def save(self, run_dir: str | Path) -> None:
        (Path(run_dir) / VOCAB_FILE).write_text(json.dumps(asdict(self), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunVocabulary":
        return cls(**json.loads((Path(run_dir) / VOCAB_FILE).read_text(encoding="utf-8")))

    def item_index(self) -> dict[str, int]:
        return {item: i for i, item in enumerate(self.item_ids)}

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}


@dataclass
class SplitArrays:
    """One split file as index arrays (user -1 = not in the training vocabulary)."""

    users: np.ndarray  # (R,) int64
    items: np.ndarray  # (R,) int64
    ratings: np.ndarray  # (R,) float32


def read_split(data_dir: str | Path, split: str, vocab: RunVocabulary) -> SplitArrays:
    items_of, users_of = vocab.item_index(), vocab.user_index()
    users, items, ratings = [], [], []
    with open(Path(data_dir) / INTERACTIONS_DIR / f"{split}.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            users.append(users_of.get(row["user_id"], -1))
            items.append(items_of[row["item_id"]])
            ratings.append(float(row["rating"]))
    return SplitArrays(np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
                       np.asarray(ratings, dtype=np.float32))


@dataclass
class EmbeddedItems:
    """What one pass of the item tower over some items gives, rows in the order the items came."""

    indices: torch.Tensor  # (n,) item indices
    vectors: torch.Tensor  # (n, E + 2) export vectors [q_i, b_i, 1]
    states: torch.Tensor | None = None  # (n, D) text-only fused states, when asked for
    ablated: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (n, E + 2) without it


def item_batches(data_dir: str | Path, preprocessors: dict, attributes: list[str], *, batch_size: int = 128,
                 num_workers: int = 0, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 decode: Callable[[dict], Any] = decode_sample, shards: list[int] | None = None,
                 extra: Callable[[Any], Any] | None = None):
    """Eval-mode loader of preprocessed ItemBatches (pinned for the GPU when `device` is one).

    With `extra` (a module-level function of a decoded item) it gives (ItemBatch, [extra(item), ...])
    from the same read, e.g. each item's title.
    """
    pin = torch.device(device).type == "cuda"
    builder, collator = ExampleBuilder(preprocessors, attributes), BatchCollator(preprocessors)
    transform, collate = builder, collator
    if extra is not None:
        pair = WithExtra(builder, collator, extra)
        transform, collate = pair.transform, pair.collate
    return item_loader(data_dir, "eval", ReaderConfig(batch_size=batch_size, num_workers=num_workers, pin_memory=pin),
                       transform=transform, collate=collate, rank=rank, world_size=world_size, decode=decode,
                       shards=shards)


def embed_items(model: RecModel, data_dir: str | Path, preprocessors: dict, attributes: list[str], *,
                batch_size: int = 128, num_workers: int = 0, device: torch.device | str = "cpu",
                rank: int = 0, world_size: int = 1, autocast: bool = False,
                decode: Callable[[dict], Any] = decode_sample, shards: list[int] | None = None,
                drop: tuple[str, ...] = (), with_state: bool = False) -> tuple[torch.Tensor, ...]:
    """This rank's share of the items, each exactly once: (item indices (n,), export vectors (n, E + 2)).

    `autocast` runs the encoders in bf16 on CUDA; the vectors are returned in float32 on the CPU.
    `data_dir` may be a feature cache with `decode=mmrec.cache.decode_features`. `shards` limits
    the pass to some shards; `drop` removes modalities at inference (ablation); `with_state` also
    returns the fused text-only states (n, D) that `mmrec search` matches queries against (the full
    state for items without text).
    """
    batches = item_batches(data_dir, preprocessors, attributes, batch_size=batch_size, num_workers=num_workers,
                           device=device, rank=rank, world_size=world_size, decode=decode, shards=shards)
    out = embed_batches(model, batches, device=device, autocast=autocast, drop=drop, with_state=with_state)
    return (out.indices, out.vectors, out.states) if with_state else (out.indices, out.vectors)


def embed_batches(model: RecModel, batches: Iterable[ItemBatch], *, device: torch.device | str = "cpu",
                  autocast: bool = False, drop: tuple[str, ...] = (), with_state: bool = False,
                  ablate: tuple[str, ...] = ()) -> EmbeddedItems:
    """The item tower over `batches` (host-side ItemBatches), rows in batch order.

    `ablate`: for each of these modalities, also the vectors of the items as if they lacked it (the
    report's modality ablation), from the same encoder outputs: one pass instead of one per modality.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    indices, vectors, states = [], [], []
    ablated: dict[str, list[torch.Tensor]] = {m: [] for m in ablate}
    # Results come back with non-blocking copies and one synchronisation at the end: a blocking
    # `.cpu()` per batch would make the host wait for the GPU, which then idles while the host
    # launches the next batch's kernels.
    to_host = dict(device="cpu", non_blocking=device.type == "cuda")
    with torch.no_grad():
        for batch in batches:
            indices.append(batch.item_index)  # still on the host
            batch = batch.to(device, non_blocking=True)
            for m in drop:  # ablation: the model sees the item as if it lacked m
                batch.present[m] = torch.zeros_like(batch.present[m])
                batch.inputs.pop(m, None)
                batch.features.pop(m, None)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                items, encoded = model.items(batch)
                vectors.append(model.item_export(items).float().to(**to_host))
                if with_state and items.state is not None:
                    state = items.state
                    if "text" in encoded:
                        # Free-text search compares a text-only query with the items' text-only states;
                        # items without text keep their full state (the best description they have).
                        has_text = batch.present["text"]
                        text_only = {m: has_text if m == "text" else torch.zeros_like(has_text) for m in encoded}
                        state = torch.where(has_text[:, None], model.fuse(encoded, text_only), state)
                    states.append(state.float().to(**to_host))
                for m in ablate:  # what `drop=(m,)` gives, without running the encoders again
                    present = {k: torch.zeros_like(v) if k == m else v for k, v in batch.present.items()}
                    rest = {k: v for k, v in encoded.items() if k != m}
                    state = model.fuse(rest, present) if model.fusion is not None else None
                    ablated[m].append(model.item_export(model.item_output(state, batch.item_index)).float().to(**to_host))
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the non-blocking copies above are complete only now
    model.train(was_training)
    if not indices:
        width = model.fusion.output_dim if model.fusion else 0
        return EmbeddedItems(torch.zeros(0, dtype=torch.long), torch.zeros(0, model.export_dim),
                             torch.zeros(0, width) if with_state else None,
                             {m: torch.zeros(0, model.export_dim) for m in ablate})
    return EmbeddedItems(torch.cat(indices), torch.cat(vectors),
                         (torch.cat(states) if states else torch.zeros(0)) if with_state else None,
                         {m: torch.cat(v) for m, v in ablated.items()})


def assemble(parts: list[tuple[torch.Tensor, torch.Tensor]], num_items: int) -> torch.Tensor:
    """Merge per-rank (indices, vectors) into one (num_items, d) matrix; every item exactly once."""
    idx = torch.cat([p[0] for p in parts])
    vecs = torch.cat([p[1] for p in parts])
    if idx.numel() != num_items or torch.unique(idx).numel() != num_items:
        raise RuntimeError(f"embedding covered {torch.unique(idx).numel()} distinct of {num_items} items "
                           f"({idx.numel()} rows): the shards and the vocabulary disagree")
    out = torch.empty(num_items, vecs.shape[1])
    out[idx] = vecs
    return out


@torch.no_grad()
def evaluate_split(user_vecs: torch.Tensor, item_vecs: torch.Tensor, vocab: RunVocabulary, data_dir: str | Path,
                   split: str = "valid", masked: tuple[str, ...] = ("train",), ks: tuple[int, ...] = (10,),
                   candidates: np.ndarray | None = None, held: SplitArrays | None = None) -> dict:
    """Rating error on every row of `split`, and full ranking for known users with `masked` items excluded.

    Any scorer fits: the score of (u, i) is `user_vecs[u] @ item_vecs[i]` (DESIGN.md ranking contract).

    Args:
        user_vecs: (U + 1, d): one row per vocabulary user, the last for users unseen in training.
        item_vecs: (N, d) in item-index order.
        candidates: item indices to rank among (None: every item). The cold-start track ranks among
            the items that have no training interaction, so that a cold item competes with cold
            items, never with warm ones whose popularity alone would push every cold item down.

    Returns:
        {"rating": {rmse, mae, count}, "ranking": {recall@K, ndcg@K, hit@K, mrr@K, users, candidates}}
    """
    held = read_split(data_dir, split, vocab) if held is None else held
    num_users = len(vocab.user_ids)
    users = user_vecs.float().cpu()
    u_rows = torch.from_numpy(np.where(held.users >= 0, held.users, num_users))
    predicted = (users[u_rows] * item_vecs[torch.from_numpy(held.items)]).sum(-1)
    result = {"rating": rating_metrics(predicted.numpy(), held.ratings)}

    n_items = item_vecs.shape[0]
    cand = np.arange(n_items) if candidates is None else np.asarray(candidates, dtype=np.int64)
    in_cand = np.zeros(n_items, dtype=bool)
    in_cand[cand] = True
    # ranking needs a user vector of its own, and a relevant item among the candidates
    known = (held.users >= 0) & in_cand[held.items]
    eval_users = np.unique(held.users[known])  # rank only for users with something held out
    row_of = np.full(num_users, -1, dtype=np.int64)
    row_of[eval_users] = np.arange(len(eval_users))
    relevant = UserItems.from_pairs(row_of[held.users[known]], held.items[known], len(eval_users))
    top = ranked_lists(users, item_vecs, vocab, data_dir, eval_users, masked, cand, max(ks))
    result["ranking"] = ranking_metrics(top, relevant, list(ks)) | {"candidates": len(cand)}
    return result


def ranked_lists(user_vecs: torch.Tensor, item_vecs: torch.Tensor, vocab: RunVocabulary, data_dir: str | Path,
                 users: np.ndarray, masked: tuple[str, ...], candidates: np.ndarray, k: int) -> np.ndarray:
    """(len(users), k) item indices: each user's top-k among `candidates`, their `masked` items excluded.

    Scores and ranks on the GPU when there is one (chunked over users), else on the CPU.
    """
    row_of = np.full(len(vocab.user_ids), -1, dtype=np.int64)
    row_of[users] = np.arange(len(users))
    col_of = np.full(item_vecs.shape[0], -1, dtype=np.int64)
    col_of[candidates] = np.arange(len(candidates))
    ex_u, ex_i = [], []
    for name in masked:
        s = read_split(data_dir, name, vocab)
        keep = (s.users >= 0) & (row_of[np.maximum(s.users, 0)] >= 0) & (col_of[s.items] >= 0)
        ex_u.append(row_of[s.users[keep]])
        ex_i.append(col_of[s.items[keep]])
    exclude = UserItems.from_pairs(np.concatenate(ex_u), np.concatenate(ex_i), len(users))
    u, i = user_vecs[torch.from_numpy(users)], item_vecs[torch.from_numpy(candidates)]
    if torch.cuda.is_available():
        u, i = u.cuda(), i.cuda()
    return candidates[top_k(u, i, k, exclude=exclude).numpy()]


def user_vectors(model: RecModel) -> torch.Tensor:
    """(U + 1, E + 2) exported user vectors, the last row for users unseen in training."""
    with torch.no_grad():
        return model.user_export(torch.arange(model.num_users + 1, device=model.user_p.weight.device)).float().cpu()


def cold_items(data_dir: str | Path, vocab: RunVocabulary) -> np.ndarray:
    """Indices of the items with no training interaction (the cold-start candidates)."""
    train = read_split(data_dir, "train", vocab)
    seen = np.zeros(len(vocab.item_ids), dtype=bool)
    seen[train.items] = True
    return np.nonzero(~seen)[0]
