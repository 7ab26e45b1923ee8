"""Training tasks: each owns its heads and its loss, and reports it on its own (docs/design.md "Tasks").

- rating: MSE between r_hat(u, i) = mu + b_u + b_i + <p_u, q_i> and explicit ratings (each training
  interaction comes once per epoch: `ExampleBuilder.pairs`);
- feature generation: mask one present modality of each item that has at least two, fuse the rest,
  and generate the masked modality's pooled encoder feature (stop-gradient target; cosine or MSE)
  and the item's attributes (a softmax over the vocabulary, or one sigmoid each). It needs no
  ratings, so unrated catalogue items train it too, and it teaches the fused state to stand in for
  a missing modality;
- retrieval (optional): in-batch sampled softmax between the exported user and item vectors, with a
  temperature, other positives of the same user masked out, corrected for the items' sampling rates.

Shape legend: B items, P pairs, E embedding width, D fusion width, A attributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from encoders import EncoderOutput
from mmrec.data.batch import ItemBatch
from mmrec.model.config import TaskConfig
from mmrec.model.model import ItemOutput, RecModel, rating_of


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-pair losses, each pair counting for the interactions it stands for."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum()


class RatingTask(nn.Module):
    """MSE of r_hat on the batch's (item, user, rating) pairs, plus the optional per-pair L2 (`rating_l2`)."""

    def __init__(self, l2: float = 0.0):
        super().__init__()
        self.l2 = l2

    def loss(self, model: RecModel, batch: ItemBatch, items: ItemOutput, users: torch.Tensor) -> torch.Tensor | None:
        """users: (P, E + 2) the pairs' exported user vectors."""
        if batch.pair_item.numel() == 0:
            return None
        q, b = items.q[batch.pair_item], items.bias[batch.pair_item]  # (P, E), (P,)
        err = (rating_of(users, q, b) - batch.pair_rating) ** 2  # (P,)
        if self.l2 > 0:
            b_u = users[:, -1] - model.global_mean
            norms = users[:, :-2].square().sum(-1) + b_u.square() + q.square().sum(-1) + b.square()
            err = err + self.l2 * norms  # (P,)
        return _weighted_mean(err, batch.pair_weight)


class FeatureGenerationTask(nn.Module):
    """From the fused remainder of an item, generate a masked modality's feature and its attributes."""

    def __init__(self, fusion_dim: int, feature_dims: dict[str, int], num_attributes: int, loss: str = "cosine",
                 attribute_loss: str = "softmax"):
        super().__init__()
        self.loss_kind, self.attribute_loss = loss, attribute_loss
        self.feature_heads = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(fusion_dim, fusion_dim), nn.GELU(), nn.Linear(fusion_dim, dim))
            for m, dim in feature_dims.items()
        })
        self.attribute_head = nn.Linear(fusion_dim, num_attributes) if num_attributes else None

    def choose_masked(self, present: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) index into `present`'s modalities of the one to mask, or -1 for items with < 2 present."""
        names = list(present)
        has = torch.stack([present[m] for m in names], dim=1)  # (B, M)
        u = torch.rand(has.shape, generator=generator, device=has.device if generator is None else generator.device)
        pick = torch.where(has, u.to(has.device), -1.0).argmax(dim=1)  # uniform among the present ones
        return torch.where(has.sum(1) >= 2, pick, -1)

    def losses(self, model: RecModel, batch: ItemBatch, encoded: dict[str, EncoderOutput],
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        names = [m for m in model.modalities if m in encoded]
        if not names:
            return {}
        present = {m: batch.present[m] for m in names}
        masked = self.choose_masked(present, generator)  # (B,) -1: fewer than two modalities, nothing masked
        remainder = {m: present[m] & (masked != i) for i, m in enumerate(names)}
        state = model.fuse(encoded, remainder)  # (B, D) fused without the masked modality
        out: dict[str, torch.Tensor] = {}
        feature_losses = []
        for i, m in enumerate(names):
            sel = (masked == i).nonzero().squeeze(-1)
            if sel.numel() == 0 or m not in self.feature_heads:
                continue
            pred = self.feature_heads[m](state[sel])  # (n, D_m)
            target = encoded[m].pooled[sel].detach()  # stop-gradient: the encoder is not pulled to the guess
            if self.loss_kind == "cosine":
                per_item = 1 - F.cosine_similarity(pred, target, dim=-1)
            else:
                per_item = F.mse_loss(pred, target, reduction="none").mean(-1)
            feature_losses.append(per_item)
        if feature_losses:
            out["feature"] = torch.cat(feature_losses).mean()
        if self.attribute_head is not None:
            # every item with content and attributes: single-modality items predict their attributes from
            # what they have; an item without any attribute is unlabelled, not "none of them"
            labelled = torch.stack(list(remainder.values()), 1).any(1) & (batch.attributes.sum(1) > 0)
            rows = labelled.nonzero().squeeze(-1)
            if rows.numel():
                logits = self.attribute_head(state[rows])  # (B', A)
                target = batch.attributes[rows]  # (B', A) multi-hot
                if self.attribute_loss == "softmax":
                    # one distribution over the vocabulary: every label of an item competes with every
                    # other, as in a classifier (one label per item: exactly cross-entropy)
                    out["attributes"] = F.cross_entropy(logits, target / target.sum(1, keepdim=True))
                else:
                    out["attributes"] = F.binary_cross_entropy_with_logits(logits, target)
        return out


class RetrievalTask(nn.Module):
    """In-batch sampled softmax over the batch's items for each (user, item) pair."""

    def __init__(self, temperature: float, logq: bool = True):
        super().__init__()
        self.temperature, self.logq = temperature, logq

    def loss(self, model: RecModel, batch: ItemBatch, items: ItemOutput, users: torch.Tensor) -> torch.Tensor | None:
        """users: (P, E + 2) the pairs' exported user vectors."""
        if batch.pair_item.numel() == 0 or batch.size < 2:
            return None
        item_vecs = model.item_export(items)  # (B, E + 2)
        logits = users @ item_vecs.T / self.temperature  # (P, B)
        if self.logq and batch.item_visits is not None:
            logits = logits - batch.item_visits.log()[None, :]  # an item's share of the batch slots ~ its visits
        # other items of the batch this user also interacted with are not negatives
        own = F.one_hot(batch.pair_item, batch.size).float()  # (P, B)
        same_user = (batch.pair_user[:, None] == batch.pair_user[None, :]).float()  # (P, P)
        positives = (same_user @ own) > 0  # (P, B)
        # nor is another visit of the same item (a popular item can come twice, with other pairs)
        positives |= batch.item_index[batch.pair_item][:, None] == batch.item_index[None, :]
        logits = logits.masked_fill(positives & ~own.bool(), float("-inf"))
        return _weighted_mean(F.cross_entropy(logits, batch.pair_item, reduction="none"), batch.pair_weight)


class MultiTaskLoss(nn.Module):
    """All configured tasks; returns each loss on its own plus the weighted total."""

    def __init__(self, config: TaskConfig, model: RecModel, num_attributes: int):
        super().__init__()
        self.config = config
        self.rating = RatingTask(config.rating_l2)
        self.feature = None
        if model.fusion is not None and (config.feature_weight or config.attribute_weight):
            # feature generation needs a second modality to generate from; attributes do not
            dims = {m: model.encoders[m].output_dim for m in model.modalities} if len(model.modalities) >= 2 else {}
            self.feature = FeatureGenerationTask(model.fusion.output_dim, dims, num_attributes, config.feature_loss,
                                                 config.attribute_loss)
        self.retrieval = (RetrievalTask(config.retrieval_temperature, config.retrieval_logq)
                          if config.retrieval_weight > 0 else None)

    def forward(self, model: RecModel, batch: ItemBatch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        items, encoded = model.items(batch)
        model.remember(batch.item_index, items)  # history tower: the items' latest vectors, for the histories
        users = None
        if batch.pair_item.numel():
            # a pair's target item is never in the history its user vector is computed from
            users = model.user_export(batch.pair_user, exclude=batch.item_index[batch.pair_item])  # (P, E + 2)
        losses: dict[str, torch.Tensor] = {}
        weights = {"rating": self.config.rating_weight, "feature": self.config.feature_weight,
                   "attributes": self.config.attribute_weight, "retrieval": self.config.retrieval_weight}
        if self.config.rating_weight > 0 and (loss := self.rating.loss(model, batch, items, users)) is not None:
            losses["rating"] = loss
        if self.feature is not None:
            losses.update(self.feature.losses(model, batch, encoded, generator))
        if self.retrieval is not None and (loss := self.retrieval.loss(model, batch, items, users)) is not None:
            losses["retrieval"] = loss
        terms = [weights[k] * v for k, v in losses.items() if weights[k] > 0]
        # A batch with no pairs and no multi-modal item still returns a differentiable zero.
        losses["total"] = torch.stack(terms).sum() if terms else items.q.sum() * 0.0
        return losses
