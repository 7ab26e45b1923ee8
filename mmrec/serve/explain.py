"""Why this item: for each recommendation, the evidence the model's own vectors support, each with its number.

    mmrec recommend --run RUN --user u17 --explain
    Recommender.from_run(RUN).recommend(user="u17", explain=True)[0].reasons

Three kinds of reason (docs/design.md "Explanations"), measured on the exported files plus the run's model,
never made up, and citing only items the user interacted with:

- history: the user's own interactions that carry the score.
  History tower (`model.user_tower: history`): each history item's exact leave-one-out effect, the score
  minus the score of the user vector recomputed from the history without that item (read as the tower would
  read it then: the latest `history_length` interactions, so an older one moves into the window). All of a
  user's leave-one-out vectors come from one batched pass of the tower.
  ID tower: a user vector is a trained parameter, not a function of a history, so no removal is exact
  without retraining. The user's training items are cited by their term in the mean-centred item-kNN score of
  the recommended item (Sarwar et al. 2001, "Item-based collaborative filtering"): the cosine of the two
  items' centred q vectors (the part of the item vector users score: `mmrec similar`'s similarity,
  `mmrec.serve.similarity`) times the user's rating of the history item minus their mean rating (1 when their ratings do not
  vary, e.g. implicit feedback).
- attribute: attributes of the recommended item that the user's highly rated history items (rating >= the
  user's mean) also carry, measured by the history evidence those items carry together.
- modality: how much the score falls when a modality is dropped from the item's fused state (as the
  report's ablation drops it; recomputed for the explained items only), and, for an item seen in training,
  the part its learned ID terms add.

Every reason has an `effect` (score points; neighbourhood-score points for an ID tower's history and
attributes) and a `share`: its effect over the sum of |effect| of all the evidence of its kind for that item
(every history item, every modality), so one kind's shares have absolute values summing to 1 (attribute
shares overlap: one history item may carry several attributes). Only evidence with a positive effect, and at
least `MIN_SHARE` of its kind's, is cited.

`mmrec eval` checks that these reasons carry the score: `mmrec.serve.faithfulness`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmrec.data import remote
from mmrec.data.dataset import Dataset
from mmrec.data.item import DecodedItem
from mmrec.data.reader import decode_sample
from mmrec.data.splits import RunSplits, SplitArrays
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import embed_batches
from mmrec.model.history import UserHistory
from mmrec.model.model import RecModel, history_user_vectors

logger = logging.getLogger(__name__)
ID_TERMS = "id terms"  # the modality reason of a warm item's learned ID embedding
MIN_SHARE = 0.01  # evidence below 1% of its kind's is not cited: noise next to the reasons that matter


@dataclass(frozen=True)
class Reason:
    """One piece of evidence for one recommended item."""

    kind: str  # "history", "attribute" or "modality"
    name: str  # the history item's id, the attribute, the modality ("text", "image", "audio", "id terms")
    effect: float  # what it adds to the score (module docstring: score points, or neighbourhood-score points)
    share: float  # effect / sum of |effect| over all the evidence of this kind for the item
    detail: str  # the evidence in words, with its number

    def __str__(self) -> str:
        return f"{self.share:>4.0%}  {self.kind:<9}  {self.detail}"


@dataclass
class History:
    """A user's interactions as the model reads them, oldest first."""

    items: np.ndarray  # (n,) int64 rows of the item vectors
    ratings: np.ndarray  # (n,) float32
    user: int = -1  # the training user they belong to (their ID residual / ID vector); -1: none

    @classmethod
    def from_rows(cls, rows: SplitArrays, user: int, trained: bool = True) -> History:
        """`user`'s rows of a split, in the order the history tower reads them (time, then file order)."""
        mine = rows.subset(rows.users == user)
        mine = SplitArrays(np.zeros(len(mine), dtype=np.int64), mine.items, mine.ratings, mine.timestamps)
        table = UserHistory.from_rows(mine, 1, max(len(mine), 1))
        keep = table.mask[0].numpy()
        return cls(table.items[0].numpy()[keep], table.ratings[0].numpy()[keep], user if trained else -1)

    def __len__(self) -> int:
        return len(self.items)


# ------------------------------------------------------------------------------------------ the evidence


@torch.no_grad()
def history_effects(model: RecModel, item_vecs: torch.Tensor, history: History,
                    targets: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """History tower: each history item's exact leave-one-out effect on the targets' scores.

    Returns:
        (the history positions read by the tower (m,), effects (m, k) = score - score without that item,
        the user's vector (E + 2,) from the whole history).
    """
    L = model.config.history_length
    start = max(0, len(history) - L - 1)  # an item older than this never enters the window, removal or not
    items, ratings = history.items[start:], history.ratings[start:]
    n = len(items)
    window = np.arange(max(0, n - L), n)  # what the tower reads now
    # row 0: the history; row 1 + r: without window[r], the latest L of the rest (left-aligned, oldest first)
    keep = [np.arange(n)[-L:]] + [np.delete(np.arange(n), j)[-L:] for j in window]
    table = UserHistory(torch.zeros(len(keep), L, dtype=torch.long), torch.zeros(len(keep), L),
                        torch.zeros(len(keep), L, dtype=torch.bool))
    for r, cols in enumerate(keep):
        table.items[r, : len(cols)] = torch.from_numpy(items[cols])
        table.ratings[r, : len(cols)] = torch.from_numpy(ratings[cols].astype(np.float32))
        table.mask[r, : len(cols)] = True
    users = None if history.user < 0 else torch.full((len(keep),), history.user, dtype=torch.long)
    vecs = history_user_vectors(model, item_vecs, table, users=users)  # (1 + m, E + 2)
    scores = vecs @ item_vecs[targets].T  # (1 + m, k)
    return start + window, scores[0] - scores[1:], vecs[0]


def rating_weights(ratings: np.ndarray) -> np.ndarray:
    """The user's ratings minus their mean; all 1 when they do not vary (implicit feedback, one value)."""
    centred = ratings.astype(np.float64) - ratings.astype(np.float64).mean()
    return centred if np.abs(centred).max(initial=0.0) > 1e-6 else np.ones(len(ratings))


def neighbour_effects(unit_q: torch.Tensor, history: History, targets: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """ID tower: each training item's term in the mean-centred item-kNN score of each target.

    Returns: (effects (n, k) = max(cosine, 0) x rating weight, the cosines (n, k)). Only similar items are
    neighbours (as in item-kNN): a dissimilar item the user disliked is no reason for this one.
    """
    cos = unit_q[torch.from_numpy(history.items)] @ unit_q[targets].T  # (n, k)
    weights = torch.from_numpy(rating_weights(history.ratings)).float()
    return cos.clamp(min=0) * weights[:, None], cos.numpy()


@torch.no_grad()
def modality_effects(model: RecModel, preprocessors: dict, items: list[DecodedItem],
                     user_vec: torch.Tensor) -> list[dict[str, float]]:
    """Per item, {modality: score - score with it dropped from the fused state} for the modalities it has,
    plus {"id terms": what its learned ID terms add} for an item seen in training."""
    from mmrec.data.batch import BatchCollator, ExampleBuilder

    builder = ExampleBuilder(preprocessors, [], catalogue=None)  # the run's own rows: warm items keep ID terms
    batch = BatchCollator(preprocessors)([builder(item) for item in items])
    out = embed_batches(model, [batch], device=model.global_mean.device, ablate=tuple(model.modalities))
    u = user_vec.float()
    full = out.vectors @ u  # (k,)
    effects = [{m: float(full[r] - out.ablated[m][r] @ u) for m in model.modalities if item.present.get(m)}
               for r, item in enumerate(items)]
    if model.config.item_id_embeddings:  # [q_id, b_id, 0] is the part of the item vector the ID terms give
        index = out.indices.clamp(min=0).to(model.global_mean.device)
        warm = (model.item_seen[index] & (out.indices >= 0).to(index.device)).cpu()
        id_part = (model.item_id_q(index).float().cpu() @ u[:-2] + model.item_id_b(index).squeeze(-1).float().cpu())
        for r in range(len(items)):
            if warm[r]:
                effects[r][ID_TERMS] = float(id_part[r])
    return effects


def _share(effects: np.ndarray) -> np.ndarray:
    total = np.abs(effects).sum()
    return effects / total if total > 0 else np.zeros_like(effects)


# ------------------------------------------------------------------------------------------ the catalogue


class ShardCatalogue:
    """DATA's items as its shard index has them (`mmrec.data.dataset.Dataset.items`): each item's attributes, and
    its content decoded from the byte ranges of its members, so that the few explained items are decoded without
    reading whole shards (a `pipe:` DATA cannot seek, so its items' content is not read)."""

    def __init__(self, data: Dataset | str | Path):
        self.dataset = Dataset.of(data)
        self.data_dir = self.dataset.location
        self._seekable = not str(self.data_dir).startswith("pipe:")
        if not self._seekable:
            logger.warning(f"{self.data_dir}: a pipe: command cannot read single items, so the explanations "
                           "name no modality effects (history and attribute reasons only)")
        self.attributes: dict[int, list[str]] = {index: list(item.attributes)
                                                 for index, item in self.dataset.items().items()}

    def item(self, index: int) -> DecodedItem | None:
        """The decoded item at `index` (as the shard reader gives it), or None when DATA lacks it."""
        sample = self.dataset.item_sample(index) if self._seekable else None
        return None if sample is None else decode_sample(sample)


# ------------------------------------------------------------------------------------------ explaining


class Explainer:
    """Explains recommendations of one run from its exported embeddings, its model and its dataset.

    Args:
        model: the run's model (`load_run_model`), put in eval mode.
        preprocessors: its preprocessors (for the modality reasons); None: no modality reasons.
        emb: the run's `mmrec.serve.embeddings.Embeddings` (item vectors, ids, titles, user vectors).
        data: the run's dataset folder: the users' training histories, the items' attributes and content.
            None: only a given history can be explained, without attribute or modality reasons.
        vocab: the run's vocabulary (its users' indices).
    """

    def __init__(self, model: RecModel, preprocessors: dict | None, emb, data: str | Path | None,
                 vocab: RunVocabulary):
        self.model, self.preprocessors, self.emb, self.vocab = model.eval(), preprocessors, emb, vocab
        self.data = None if data is None else remote.as_location(data)  # a folder or a URL
        self._train: SplitArrays | None = None
        self._catalogue: ShardCatalogue | None = None

    @property
    def catalogue(self) -> ShardCatalogue | None:
        if self._catalogue is None and self.data is not None:
            self._catalogue = ShardCatalogue(self.data)
        return self._catalogue

    def user_history(self, user_id: str) -> History:
        """A user of the run: their training interactions (what their vector was computed or trained from)."""
        if self.data is None:
            raise ValueError(f"explaining {user_id!r}'s recommendations needs the run's dataset (their training "
                             "history): pass --data DATA, or Recommender.from_run(RUN, data=DATA)")
        users = self.vocab.user_index()
        if user_id not in users:
            raise ValueError(f"{user_id!r} has no training interactions in {self.data}: nothing to explain from "
                             "(a user added by `mmrec embed-users`? explain with --history instead)")
        if self._train is None:
            self._train = RunSplits(self.data, self.vocab)["train"]
        return History.from_rows(self._train, users[user_id])

    def given_history(self, pairs: Sequence[tuple[str, float | None]]) -> History:
        """A history given as (item_id, rating or None) pairs, oldest first, as `recommend --history` reads it."""
        index = self.emb.item_index
        unknown = [item for item, _ in pairs if item not in index]
        if unknown:
            raise ValueError(f"history item {unknown[0]!r} is not in the embeddings")
        mean = float(self.model.global_mean)
        return History(np.asarray([index[item] for item, _ in pairs], dtype=np.int64),
                       np.asarray([mean if r is None else r for _, r in pairs], dtype=np.float32))

    def explain(self, history: History, targets: Sequence[int], user_vec: torch.Tensor | None = None,
                top: int = 3) -> list[tuple[Reason, ...]]:
        """The reasons for each target item (rows of the embeddings), best first within each kind.

        Args:
            history: the user's interactions (`user_history`, `given_history`).
            user_vec: the user's exported vector; an ID tower needs it (EMB's row), a history tower
                recomputes it from `history`.
            top: at most this many history items and attributes per item.
        """
        if not targets:
            return []
        if len(history) == 0:
            raise ValueError("the history is empty: there is nothing to explain the recommendations from")
        items = self.emb.items
        t = torch.as_tensor(list(targets), dtype=torch.long)
        if self.model.history_tower:
            served = user_vec
            positions, effects, user_vec = history_effects(self.model, items, history, t)
            cosines = None
            if served is not None and not torch.allclose(served, user_vec, atol=1e-4):
                logger.warning("EMB's vector for this user is not the one of their training history (updated by "
                               "`mmrec embed-users`?): the reasons explain the vector of the training history")
        else:
            if user_vec is None:
                raise ValueError("an ID-tower run explains a user of the run only: pass their exported vector")
            positions = np.arange(len(history))
            effects, cosines = neighbour_effects(self.emb.similarity_vectors(), history, t)
        effects = effects.numpy().astype(np.float64)  # (m, k)
        catalogue = self.catalogue
        content = self._modalities(t.tolist(), user_vec) if catalogue is not None else [{} for _ in targets]
        out = []
        for col, target in enumerate(t.tolist()):
            reasons = self._history_reasons(history, positions, effects[:, col],
                                            None if cosines is None else cosines[:, col], top)
            if catalogue is not None:
                reasons += self._attribute_reasons(history, positions, effects[:, col], catalogue, target, top)
            values = content[col]
            shares = _share(np.asarray(list(values.values()), dtype=np.float64))
            reasons += sorted((Reason("modality", m, v, float(s), f"{m}: without it the score falls by {v:.3f}")
                               for (m, v), s in zip(values.items(), shares) if v > 0 and s >= MIN_SHARE),
                              key=lambda r: -r.share)
            out.append(tuple(reasons))
        return out

    def _history_reasons(self, history: History, positions: np.ndarray, effects: np.ndarray,
                         cosines: np.ndarray | None, top: int) -> list[Reason]:
        shares = _share(effects)
        weights = None if cosines is None else rating_weights(history.ratings)
        reasons = []
        for r in np.argsort(-effects, kind="stable")[:top]:
            if effects[r] <= 0 or shares[r] < MIN_SHARE:
                break
            j = int(history.items[positions[r]])
            rated = float(history.ratings[positions[r]])
            said = f'{self.emb.item_ids[j]} "{self.emb.titles[j]}" (you rated it {rated:g})'
            if cosines is None:
                detail = f"{said}: without it the score falls by {effects[r]:.3f}"
            else:
                weight = ("1 (your ratings do not vary)" if weights is not None and weights.std() == 0 else
                          f"{weights[positions[r]]:+.2f} (your rating minus your mean)")
                detail = f"{said}: cosine {cosines[r]:.2f} to this item x {weight} = {effects[r]:.3f}"
            reasons.append(Reason("history", self.emb.item_ids[j], float(effects[r]), float(shares[r]), detail))
        return reasons

    def _attribute_reasons(self, history: History, positions: np.ndarray, effects: np.ndarray,
                           catalogue: ShardCatalogue, target: int, top: int) -> list[Reason]:
        ratings = history.ratings[positions]
        high = ratings >= ratings.mean() - 1e-6  # every item when the ratings do not vary
        total = np.abs(effects).sum()
        found = []
        for attribute in catalogue.attributes.get(target, []):
            carriers = [r for r in np.nonzero(high)[0]
                        if attribute in catalogue.attributes.get(int(history.items[positions[r]]), ())]
            value = float(np.clip(effects[carriers], 0, None).sum()) if carriers else 0.0
            if value > 0 and total > 0 and value / total >= MIN_SHARE:
                detail = (f'"{attribute}": shared with {len(carriers)} of your {int(high.sum())} highly rated '
                          f"items (rated >= {ratings.mean():.2g}), whose evidence for this item adds {value:.3f}")
                found.append(Reason("attribute", attribute, value, value / total, detail))
        return sorted(found, key=lambda r: -r.share)[:top]

    def _modalities(self, targets: list[int], user_vec: torch.Tensor) -> list[dict[str, float]]:
        """Modality effects of the targets that DATA holds (items added after training have none here)."""
        out: list[dict[str, float]] = [{} for _ in targets]
        if self.model.fusion is None or not self.preprocessors:
            return out
        decoded = [(r, self.catalogue.item(t)) for r, t in enumerate(targets)]
        decoded = [(r, item) for r, item in decoded if item is not None]
        if decoded:
            effects = modality_effects(self.model, self.preprocessors, [item for _, item in decoded], user_vec)
            for (r, _), values in zip(decoded, effects):
                out[r] = values
        return out


def format_explained(table: str, reasons: Sequence[Sequence[Reason]]) -> str:
    """`table` (the serving table: a header line, then one line per item) with each item's reasons under it."""
    header, *rows = table.split("\n")
    lines = [header]
    for row, why in zip(rows, reasons):
        lines.append(row)
        lines += [f"{'':>17}{reason}" for reason in why] or [f"{'':>17}(no evidence found)"]
    return "\n".join(lines)
