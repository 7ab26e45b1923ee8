"""Item-centric batches: decoded items -> encoder inputs per modality + sampled training interactions.

docs/design.md "Training data flow": each item is encoded once per visit and paired with a chunk of at
most k of its training interactions from an in-memory item -> (user, rating) index; an item gets one
visit per chunk, so a pass over the visits covers every training interaction exactly once.
`ExampleBuilder` runs per item in DataLoader workers (preprocessing included); `collate_examples`
builds an `ItemBatch`, in which
each modality's encoder inputs cover only the items that have that modality (`rows`), so absent
modalities cost no encoder work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from encoders import EncoderOutput, Preprocessor
from mmrec.data.item import DecodedItem, Visit, VisitOf

if TYPE_CHECKING:  # types only: a batch is built from split arrays, never from the split files
    from mmrec.data.splits import SplitArrays

# The item_index of an item the model was not trained on: scored from its content alone (RecModel.item_output).
# Not 0 or any row: a new catalogue numbers its rows from 0 too, and the run's item 0's ID terms are not its item's.
NEW_ITEM = -1


@dataclass
class ItemBatch:
    """B items and P (item, user, rating) pairs drawn for them.

    `present[m][b]` is True iff item b has modality m; then `rows[m]` lists those b in order and
    `inputs[m]` holds the collated encoder inputs for exactly those items.
    """

    item_index: torch.Tensor  # (B,) long: rows of item_ids.json; NEW_ITEM (-1) for an item outside the catalogue
    inputs: dict[str, dict[str, torch.Tensor]]  # modality -> encoder inputs for its B_m items
    rows: dict[str, torch.Tensor]  # modality -> (B_m,) long positions in the batch
    present: dict[str, torch.Tensor]  # modality -> (B,) bool
    attributes: torch.Tensor  # (B, A) float multi-hot over the attribute vocabulary
    pair_item: torch.Tensor  # (P,) long: position in the batch
    pair_user: torch.Tensor  # (P,) long: user index
    pair_rating: torch.Tensor  # (P,) float
    features: dict[str, EncoderOutput] = field(default_factory=dict)  # cached encoder outputs (feature cache)
    # (P,) float: optional per-pair loss weights. Training needs none: an item is visited once per chunk
    # of its interactions, so a pass already weighs every interaction once (ExampleBuilder.pairs)
    pair_weight: torch.Tensor | None = None
    # (B,) float: visits per pass of each item (training batches): how often an item comes, for the
    # retrieval loss's sampling correction (in-batch negatives are drawn in proportion to visits)
    item_visits: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.item_index.shape[0])

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ItemBatch:
        """A new batch with `fn` applied to every tensor (encoder inputs and cached features included)."""
        def move(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return fn(x)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            if isinstance(x, EncoderOutput):
                return EncoderOutput(move(x.tokens), move(x.mask), move(x.pooled))
            return x

        return ItemBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ItemBatch:
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))

    def nbytes(self) -> int:
        """Bytes held by all its tensors."""
        total = 0

        def count(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.element_size() * t.nelement()
            return t

        self.apply(count)
        return total

    def pin_memory(self) -> ItemBatch:
        """Page-locked copy (the DataLoader calls this with pin_memory=True), so `.to(cuda, non_blocking=True)`
        overlaps the copy with compute."""
        return self.apply(lambda t: t.pin_memory())


class InteractionIndex:
    """item index -> the (user index, rating) pairs of a split, held as flat numpy arrays."""

    def __init__(self, item_of_row: np.ndarray, users: np.ndarray, ratings: np.ndarray, num_items: int):
        order = np.argsort(item_of_row, kind="stable")
        self.users = users[order].astype(np.int64)
        self.ratings = ratings[order].astype(np.float32)
        counts = np.bincount(item_of_row, minlength=num_items)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    @classmethod
    def from_split(cls, rows: SplitArrays, num_items: int) -> InteractionIndex:
        """The pairs of a parsed split file; rows of users outside the vocabulary (-1) are left out."""
        known = rows.users >= 0
        return cls(rows.items[known], rows.users[known], rows.ratings[known], num_items)

    def pairs(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[item], self.offsets[item + 1]
        return self.users[lo:hi], self.ratings[lo:hi]

    def __len__(self) -> int:
        return int(self.offsets[-1])


@dataclass
class KeptItem:
    """An item whose preprocessed inputs are already in `PreparedItems`: nothing was decoded."""

    index: int


class PreparedItems:
    """Preprocessed encoder inputs kept in memory between epochs, up to a byte budget.

    The preprocessing is deterministic (tokenise, resize and crop, fbank), so an item's inputs are the
    same at every visit; only its sampled pairs change. Keeping them skips decoding and preprocessing
    from the second epoch on, with identical batches. For loading in the training process itself
    (num_workers=0): DataLoader workers would each get, and lose, a copy every epoch.
    """

    def __init__(self, budget_bytes: int):
        self.budget, self.size = budget_bytes, 0
        self.items: dict[int, dict[str, Any]] = {}

    def put(self, index: int, prepared: dict[str, Any]) -> None:
        size = sum(t.element_size() * t.nelement() for inputs in prepared["inputs"].values()
                   for t in (inputs.values() if isinstance(inputs, dict) else [inputs]) if isinstance(t, torch.Tensor))
        if self.size + size <= self.budget:
            self.items[index] = prepared
            self.size += size

    def skip_decoding(self, decode: Callable[[dict], Any]) -> Callable[[dict], Any]:
        """`decode`, except for samples already kept (their key is the item index, `schema.item_key`)."""
        def decode_unless_kept(sample: dict) -> Any:
            index = int(sample["__key__"])
            return KeptItem(index) if index in self.items else decode(sample)

        return decode_unless_kept


class ExampleBuilder:
    """Per item visit, in DataLoader workers: preprocess each present modality and take the visit's pairs.

    Pairs come from generators seeded by (seed, pass, item) for training visits (`pairs`), or (seed,
    epoch, item) for direct calls (`set_epoch`), so a seeded run is reproducible whichever worker sees
    the item. With `kept`, the preprocessed inputs are taken from / added to that in-memory store
    (see `PreparedItems`).

    Each example's `index` becomes the batch's `item_index`, where the model looks up ID terms
    (`item_index`): an item without an index (None) is NEW_ITEM, scored from content alone. Items of a
    dataset other than the run's (a new catalogue sharded on its own, rows built by hand) number their
    rows from 0 too: pass `catalogue` (the run's item ids) and an item keeps its index only if it is the
    catalogue's item at that row. `catalogue` has no default, so that no caller trusts a row number by
    accident: None says "these are the run's own dataset rows" (training, `mmrec embed` on the run's
    checked dataset).
    """

    def __init__(self, preprocessors: Mapping[str, Preprocessor], attributes: list[str],
                 interactions: InteractionIndex | None = None, pairs_per_item: int = 8, seed: int = 0,
                 kept: PreparedItems | None = None, *, catalogue: Sequence[str] | None):
        self.preprocessors = dict(preprocessors)
        self.attribute_index = {a: i for i, a in enumerate(attributes)}
        self.interactions = interactions
        self.pairs_per_item = pairs_per_item
        self.seed = seed
        self.epoch = 0
        self.kept = kept
        self.catalogue = None if catalogue is None else list(catalogue)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def raw_input(item: DecodedItem, modality: str) -> Any:
        """What a modality's preprocessor receives, or None when the item lacks it.

        A cached item (feature cache) hands over its stored encoder outputs instead of media.
        """
        if hasattr(item, "features"):
            return item.features.get(modality)
        if modality == "text":
            return item.text
        if modality == "image":
            return item.image
        if modality == "audio":
            return None if item.waveform is None else (item.waveform, item.sample_rate)
        raise ValueError(f"unknown modality {modality!r}; expected text, image or audio")

    def item_index(self, item: DecodedItem) -> int:
        """Where the model looks up the item's ID terms: its index, or NEW_ITEM (content alone) for an item
        without one, and, given `catalogue`, for one that is not the catalogue's item at that row."""
        index = getattr(item, "index", None)
        if index is None or index < 0:
            return NEW_ITEM
        if self.catalogue is not None and (index >= len(self.catalogue) or self.catalogue[index] != item.item_id):
            return NEW_ITEM
        return int(index)

    def prepare(self, item: DecodedItem) -> dict[str, Any]:
        """The deterministic part: the item's encoder inputs and attribute vector."""
        inputs = {}
        for modality, pre in self.preprocessors.items():
            raw = self.raw_input(item, modality)
            if raw is not None:
                inputs[modality] = raw if hasattr(item, "features") else pre(raw)
        attrs = np.zeros(len(self.attribute_index), dtype=np.float32)
        for a in item.attributes:
            if a in self.attribute_index:
                attrs[self.attribute_index[a]] = 1.0
        return {"index": self.item_index(item), "inputs": inputs, "attributes": attrs}

    def pairs(self, item: int, visit: Visit | None) -> tuple[np.ndarray, np.ndarray]:
        """The (users, ratings) this visit of `item` trains on.

        A training visit (`Visit`, from the reader) takes its chunk of a permutation of the item's
        interactions seeded by (seed, pass, item): the chunks of one pass are disjoint and cover every
        training interaction exactly once, so a pass weighs each interaction once (no reweighting) and
        `data.pairs_per_item` only bounds the pairs per visit. Without a visit (a direct call), up to
        `pairs_per_item` pairs drawn with the (seed, epoch, item) generator.
        """
        if self.interactions is None or self.pairs_per_item <= 0 or item == NEW_ITEM:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        users, ratings = self.interactions.pairs(item)
        if visit is not None:
            order = np.random.default_rng((self.seed, visit.pass_number, item)).permutation(len(users))
            pick = np.array_split(order, visit.chunks)[visit.chunk]
        elif len(users) > self.pairs_per_item:
            pick = np.random.default_rng((self.seed, self.epoch, item)).choice(len(users), self.pairs_per_item,
                                                                              replace=False)
        else:
            return users, ratings
        return users[pick], ratings[pick]

    def visits(self) -> np.ndarray:
        """(items,) visits per pass: ceil(interactions / pairs_per_item), at least one (content tasks)."""
        counts = np.diff(self.interactions.offsets)
        return np.maximum(1, -(-counts // self.pairs_per_item)).astype(np.int64)

    def __call__(self, item: DecodedItem | KeptItem | VisitOf) -> dict[str, Any]:
        visit = None
        if isinstance(item, VisitOf):
            item, visit = item.item, item.visit
        if isinstance(item, KeptItem):
            prepared = self.kept.items[item.index]
        else:
            prepared = self.prepare(item)
            if self.kept is not None and prepared["index"] != NEW_ITEM:
                self.kept.put(item.index, prepared)
        users, ratings = self.pairs(prepared["index"], visit)  # a new item has no training interactions
        example = {**prepared, "users": users, "ratings": ratings}
        if visit is not None:
            example["visits"] = visit.chunks
        return example


def collate_features(examples: list[dict[str, torch.Tensor]]) -> EncoderOutput:
    """Cached features of B_m items -> an EncoderOutput; token lists are right-padded and masked."""
    pooled = torch.stack([e["pooled"] for e in examples])  # (B_m, D)
    if "tokens" not in examples[0]:
        B, D = pooled.shape
        return EncoderOutput(pooled[:, None, :], torch.ones(B, 1, dtype=torch.bool), pooled)
    T = max(e["tokens"].shape[0] for e in examples)
    tokens = pooled.new_zeros(len(examples), T, pooled.shape[1])  # (B_m, T, D)
    mask = torch.zeros(len(examples), T, dtype=torch.bool)  # (B_m, T)
    for b, e in enumerate(examples):
        n = e["tokens"].shape[0]
        tokens[b, :n], mask[b, :n] = e["tokens"], e["mask"]
    return EncoderOutput(tokens, mask, pooled)


def collate_examples(examples: list[dict[str, Any]], preprocessors: Mapping[str, Preprocessor]) -> ItemBatch:
    """Stack `ExampleBuilder` outputs into an `ItemBatch`."""
    inputs, rows, present, features = {}, {}, {}, {}
    for modality, pre in preprocessors.items():
        have = [b for b, ex in enumerate(examples) if modality in ex["inputs"]]
        present[modality] = torch.zeros(len(examples), dtype=torch.bool)
        present[modality][have] = True
        rows[modality] = torch.tensor(have, dtype=torch.long)
        if not have:
            continue
        chosen = [examples[b]["inputs"][modality] for b in have]
        if "pooled" in chosen[0]:  # precomputed encoder outputs
            features[modality] = collate_features(chosen)
        else:
            inputs[modality] = pre.collate(chosen)
    pair_item = np.concatenate([np.full(len(ex["users"]), b) for b, ex in enumerate(examples)] or [np.zeros(0)])
    return ItemBatch(
        item_index=torch.tensor([ex["index"] for ex in examples], dtype=torch.long),
        inputs=inputs,
        rows=rows,
        present=present,
        attributes=torch.from_numpy(np.stack([ex["attributes"] for ex in examples])),
        pair_item=torch.from_numpy(pair_item.astype(np.int64)),
        pair_user=torch.from_numpy(np.concatenate([ex["users"] for ex in examples]).astype(np.int64)),
        pair_rating=torch.from_numpy(np.concatenate([ex["ratings"] for ex in examples]).astype(np.float32)),
        features=features,
        item_visits=(torch.tensor([float(ex["visits"]) for ex in examples])
                     if all("visits" in ex for ex in examples) else None),
    )


class BatchCollator:
    """Picklable `collate=` for `item_loader`: a list of examples -> ItemBatch."""

    def __init__(self, preprocessors: Mapping[str, Preprocessor]):
        self.preprocessors = dict(preprocessors)

    def __call__(self, examples: list[dict[str, Any]]) -> ItemBatch:
        return collate_examples(examples, self.preprocessors)


class WithExtra:
    """Picklable transform/collate pair that carries `extra(item)` of each item next to its example.

    For passes that need something besides the batch from the same read of the shards (the feature
    cache: each item's json metadata; `mmrec embed`: each item's title): `collate` gives
    (ItemBatch, [extra of each item, in batch order]). `extra` must be a module-level function.
    """

    def __init__(self, builder: ExampleBuilder, collator: BatchCollator, extra: Callable[[Any], Any]):
        self.builder, self.collator, self.extra = builder, collator, extra

    def transform(self, item: Any) -> tuple[dict[str, Any], Any]:
        return self.builder(item), self.extra(item)

    def collate(self, pairs: list[tuple[dict[str, Any], Any]]) -> tuple[ItemBatch, list[Any]]:
        return self.collator([p[0] for p in pairs]), [p[1] for p in pairs]
