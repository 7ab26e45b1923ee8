"""The multimodal recommender: item tower (encoders -> fusion), user tower, and the scoring contract.

Item tower: each present modality goes through its encoder (only the items that have it), the
outputs are scattered back to batch positions, and the fusion transformer turns whatever an item
has into one state h_i (B, D). From h_i: q_i (B, E) and a content bias b_i; items seen in training
can add learned ID terms (`item_id_embeddings`), cold items never have them.
User tower (`model.user_tower`): "id", a user ID embedding p_u (E) and bias b_u, users unseen in
training mapping to a zero row; or "history", p_u and b_u computed from the user's interaction history
(`mmrec.model.history`), so any user with a history has a vector.

Rating: r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>  (Koren et al. 2009, "Matrix factorization
techniques for recommender systems"). The exported vectors fold the biases into two extra
dimensions, user = [p_u, 1, mu + b_u] and item = [q_i, b_i, 1], so the ranking score used
everywhere is exactly their dot product (docs/design.md "Ranking score contract").

Shape legend: B items in the batch, P (item, user) pairs, E embedding width, D fusion width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from encoders import EncoderOutput, ModalityEncoder
from fusion import FusionInput, FusionTransformer
from mmrec.data.batch import ItemBatch
from mmrec.model.config import ModelConfig
from mmrec.model.history import HistoryUserTower, UserHistory

if TYPE_CHECKING:  # types only: the model must not pull in the data readers (webdataset, PIL)
    from mmrec.data.splits import SplitArrays


@dataclass
class ItemOutput:
    """Item-tower outputs for a batch."""

    state: torch.Tensor | None  # (B, D) fused state; None for an ID-only model
    q: torch.Tensor  # (B, E)
    bias: torch.Tensor  # (B,)


class RecModel(nn.Module):
    """Encoders + fusion + ID embeddings; the tasks (`mmrec.model.tasks`) own the heads and losses."""

    def __init__(self, config: ModelConfig, encoders: dict[str, ModalityEncoder], fusion: FusionTransformer | None,
                 num_users: int, num_items: int, global_mean: float = 0.0, item_seen: torch.Tensor | None = None):
        super().__init__()
        if set(encoders) != set(config.encoders):
            raise ValueError(f"built encoders {sorted(encoders)} do not match model.encoders {sorted(config.encoders)}")
        if fusion is not None and fusion.config != config.fusion:
            # the config is what save_model writes, so it must describe the fusion actually built
            raise ValueError("config.fusion is not the built fusion's config; build with "
                             "create_fusion(config.fusion_config(widths)) and pass "
                             "dataclasses.replace(config, fusion=fusion.config), as mmrec.model.factory does")
        self.config = config
        self.num_users, self.num_items = num_users, num_items
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        E = config.embedding_dim
        if fusion is not None:
            self.item_q = nn.Linear(fusion.output_dim, E)  # h_i -> q_i
            self.item_b = nn.Linear(fusion.output_dim, 1)  # h_i -> content bias b_i
        if config.item_id_embeddings:
            self.item_id_q = nn.Embedding(num_items, E)
            self.item_id_b = nn.Embedding(num_items, 1)
            nn.init.normal_(self.item_id_q.weight, std=config.init_std)
            nn.init.zeros_(self.item_id_b.weight)
        if config.user_tower == "history":
            self.user_tower = HistoryUserTower(E, num_items, config.history_length, config.init_std,
                                               config.item_id_dropout, config.history_subsample)
        if config.user_tower == "id" or config.history_user_id:
            # Row num_users is the unknown user: never trained, zero, so r_hat = mu + b_i for cold users.
            self.user_p = nn.Embedding(num_users + 1, E)
            self.user_b = nn.Embedding(num_users + 1, 1)
            nn.init.normal_(self.user_p.weight, std=config.init_std)
            nn.init.zeros_(self.user_b.weight)
            with torch.no_grad():
                self.user_p.weight[num_users].zero_()
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        # history tower, training only (not saved): the training users' histories (`set_history`) and the
        # latest [q_i, b_i] of each item seen in a batch (`remember`), which the histories are read from
        self.history: UserHistory | None = None
        self.item_memory: torch.Tensor | None = None
        # Items with training interactions: only they use ID terms (a cold item's would be untrained noise).
        seen = torch.ones(num_items, dtype=torch.bool) if item_seen is None else item_seen.to(torch.bool)
        self.register_buffer("item_seen", seen)
        # training only, not saved: per-item ID-dropout rates (`set_item_popularity`); None = the config's rate
        self.register_buffer("item_id_drop", None, persistent=False)

    def set_item_popularity(self, counts: torch.Tensor) -> None:
        """Per-item ID-dropout rates from training interaction counts (`item_id_dropout_pivot`)."""
        pivot = self.config.item_id_dropout_pivot
        if pivot > 0:
            rate = self.config.item_id_dropout * pivot / (pivot + counts.float())
            self.item_id_drop = rate.to(self.item_seen.device)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    @property
    def export_dim(self) -> int:
        return self.config.embedding_dim + 2

    # ----------------------------------------------------------------------------------- item tower

    def encode(self, batch: ItemBatch) -> dict[str, EncoderOutput]:
        """Run each encoder on the items that have its modality; scatter back to (B, ...) with zeros."""
        B = batch.size
        out = {}
        dtype = self.global_mean.dtype  # the parameters' dtype (buffers follow .to(dtype) too)
        for m, encoder in self.encoders.items():
            if m in batch.features:  # precomputed by `mmrec cache` (fp16 on disk)
                f = batch.features[m]
                enc = EncoderOutput(f.tokens.to(dtype), f.mask, f.pooled.to(dtype))
            elif m in batch.inputs:
                enc = encoder(**batch.inputs[m])  # tokens (B_m, T, D_m), mask (B_m, T), pooled (B_m, D_m)
            else:
                continue  # no item of the batch has it: fusion treats the modality as absent
            rows = batch.rows[m]
            tokens = enc.tokens.new_zeros((B, *enc.tokens.shape[1:]))  # (B, T, D_m)
            mask = enc.mask.new_zeros((B, enc.mask.shape[1]))  # (B, T)
            pooled = enc.pooled.new_zeros((B, enc.pooled.shape[1]))  # (B, D_m)
            out[m] = EncoderOutput(tokens.index_copy(0, rows, enc.tokens), mask.index_copy(0, rows, enc.mask),
                                   pooled.index_copy(0, rows, enc.pooled))
        return out

    def fuse(self, encoded: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, D) fused item states from the encoder outputs of the present modalities."""
        inputs = {m: FusionInput(e.tokens, e.mask, e.pooled) for m, e in encoded.items()}
        # every modality's presence, also those no item of the batch has (then absent from `inputs`):
        # a batch without any of the model's modalities still has a size, and gets the content-free state
        return self.fusion(inputs, {m: present[m] for m in self.modalities if m in present}).item

    def item_output(self, state: torch.Tensor | None, item_index: torch.Tensor) -> ItemOutput:
        """q_i and b_i from the fused state plus, where enabled, the ID terms of items seen in training.

        Args:
            state: (B, D) fused states, or None for an ID-only model.
            item_index: (B,) item indices; -1 = an item the model was not trained on (content alone).
        """
        B = item_index.shape[0]
        device = self.global_mean.device
        q = torch.zeros(B, self.config.embedding_dim, device=device)
        b = torch.zeros(B, device=device)
        if state is not None:
            q = q + self.item_q(state)  # (B, E)
            b = b + self.item_b(state).squeeze(-1)  # (B,)
        if self.config.item_id_embeddings:
            known = item_index >= 0
            item_index = item_index.clamp(min=0)  # a row to look up; `known` keeps it out
            warm = self.item_seen[item_index] & known  # (B,)
            if self.training and self.config.item_id_dropout > 0 and state is not None:
                rate = self.config.item_id_dropout if self.item_id_drop is None else self.item_id_drop[item_index]
                warm = warm & (torch.rand(warm.shape, device=warm.device) >= rate)
            q = q + self.item_id_q(item_index) * warm[:, None]
            b = b + self.item_id_b(item_index).squeeze(-1) * warm
        return ItemOutput(state, q, b)

    def items(self, batch: ItemBatch) -> tuple[ItemOutput, dict[str, EncoderOutput]]:
        """The item tower for a batch: (outputs, encoder outputs for the tasks that need them)."""
        encoded = self.encode(batch) if self.encoders else {}
        state = self.fuse(encoded, batch.present) if self.fusion is not None else None
        return self.item_output(state, batch.item_index), encoded

    # ----------------------------------------------------------------------------------- user tower

    @property
    def history_tower(self) -> bool:
        return self.config.user_tower == "history"

    def user_index(self, users: torch.Tensor) -> torch.Tensor:
        """Map out-of-range indices (users unseen in training, given as -1) to the zero row."""
        return torch.where((users >= 0) & (users < self.num_users), users, self.num_users)

    def predict_rating(self, users: torch.Tensor, q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """r_hat (P,) for users (P,) and their items' q (P, E), b (P,)."""
        return rating_of(self.user_export(users), q, b)

    def set_history(self, history: UserHistory) -> None:
        """History tower, training: the training users' histories (row num_users: the empty history)."""
        if len(history) != self.num_users + 1:
            raise ValueError(f"expected histories for {self.num_users} users + the unknown one, got {len(history)}")
        self.history = history.to(self.global_mean.device)
        self.item_memory = torch.zeros(self.num_items, self.config.embedding_dim + 1, device=self.global_mean.device)

    @torch.no_grad()
    def remember(self, item_index: torch.Tensor, items: ItemOutput) -> None:
        """History tower, training: keep the batch items' latest [q_i, b_i] for the histories they are in."""
        if self.item_memory is not None:
            self._history_to_device()
            self.item_memory[item_index] = torch.cat([items.q, items.bias[:, None]], -1).float()

    def _history_to_device(self) -> None:
        """Plain attributes (not buffers: never saved, and DDP must not broadcast one rank's memory) follow
        the model when accelerate moves it."""
        device = self.global_mean.device
        if self.item_memory.device != device:
            self.history, self.item_memory = self.history.to(device), self.item_memory.to(device)

    def history_export(self, item_vecs: torch.Tensor, history: UserHistory,
                       exclude: torch.Tensor | None = None, users: torch.Tensor | None = None) -> torch.Tensor:
        """(P, E + 2) user vectors computed from P histories against item vectors (N, >= E + 1).

        users: (P,) the training users these histories belong to (-1: a user the run never saw), for the
        per-user ID residual (`history_user_id`); None = no residual (users not from training).
        """
        item_vecs, history = item_vecs.to(self.global_mean.device), history.to(self.global_mean.device)
        p, b = self.user_tower(item_vecs, history, self.item_seen, self.global_mean, exclude)
        if self.config.history_user_id and users is not None:
            u = self.user_index(users.to(self.global_mean.device))
            keep = torch.ones_like(b)
            if self.training and self.config.history_user_id_dropout > 0:
                keep = (torch.rand_like(b) >= self.config.history_user_id_dropout).to(b.dtype)
            p = p + self.user_p(u) * keep[:, None]
            b = b + self.user_b(u).squeeze(-1) * keep
        return torch.cat([p, torch.ones_like(b)[:, None], (self.global_mean + b)[:, None]], dim=-1)

    # ----------------------------------------------------------------------------------- export

    @staticmethod
    def item_export(item: ItemOutput) -> torch.Tensor:
        """(B, E + 2) = [q_i, b_i, 1]."""
        ones = torch.ones_like(item.bias)
        return torch.cat([item.q, item.bias[:, None], ones[:, None]], dim=-1)

    def user_export(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(U, E + 2) = [p_u, 1, mu + b_u], so <user, item> == r_hat(u, i).

        History tower (training): from the users' training histories and the item memory, leaving
        `exclude` (U,) (each pair's target item) out of its user's history.
        """
        u = self.user_index(users)
        if self.history_tower:
            if self.history is None:
                raise ValueError("the history tower needs the users' histories: call set_history first")
            self._history_to_device()
            return self.history_export(self.item_memory, self.history.rows(u), exclude, users)
        p, b = self.user_p(u), self.user_b(u).squeeze(-1)
        return torch.cat([p, torch.ones_like(b)[:, None], (self.global_mean + b)[:, None]], dim=-1)


def rating_of(user_vecs: torch.Tensor, q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """r_hat (P,) = <[p_u, 1, mu + b_u], [q_i, b_i, 1]> for exported users (P, E + 2) and items' q (P, E), b (P,)."""
    return (user_vecs[:, :-2] * q).sum(-1) + b + user_vecs[:, -1]


@torch.no_grad()
def user_vectors(model: RecModel, item_vecs: torch.Tensor | None = None, history: UserHistory | None = None,
                 chunk: int = 4096) -> torch.Tensor:
    """(U + 1, E + 2) exported user vectors of the training users, the last row for unseen users.

    History tower: computed from `history` (each training user's, `UserHistory.from_rows` on the
    train split, plus an empty last row) against the exported item vectors `item_vecs` (N, E + 2).
    """
    if not model.history_tower:
        return model.user_export(torch.arange(model.num_users + 1, device=model.global_mean.device)).float().cpu()
    if item_vecs is None or history is None:
        raise ValueError("a history-tower model computes user vectors from item vectors and histories: "
                         "pass item_vecs and history")
    users = torch.arange(len(history))  # the training users, then the unknown user's (empty) row
    return history_user_vectors(model, item_vecs, history, chunk, users)


@torch.no_grad()
def history_user_vectors(model: RecModel, item_vecs: torch.Tensor, history: UserHistory,
                         chunk: int = 4096, users: torch.Tensor | None = None) -> torch.Tensor:
    """(P, E + 2) user vectors for any P histories (history tower), in chunks of `chunk` users.
    users: (P,) each history's training user (-1 = none), for the ID residual (`history_user_id`)."""
    if not model.history_tower:
        raise ValueError("this model has an ID user tower (model.user_tower: id): it has vectors only for the "
                         "users it was trained on; train with model.user_tower=history to serve users from history")
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, len(history), chunk):
        rows = torch.arange(s, min(s + chunk, len(history)))
        out.append(model.history_export(item_vecs, history.rows(rows), users=None if users is None else users[rows]))
    model.train(was_training)
    return torch.cat(out).float().cpu() if out else torch.zeros(0, model.export_dim)


@torch.no_grad()
def vectors_for_histories(model: RecModel, item_vecs: torch.Tensor, rows: SplitArrays, num_users: int) -> torch.Tensor:
    """(num_users, E + 2) vectors of users who were not trained, from their histories `rows` (users
    0..num_users-1), e.g. a cold-users split's held-out users. The history tower computes them; an ID
    tower has no vector for them and gives each its unknown-user row (r_hat = mu + b_i)."""
    if model.history_tower:
        return history_user_vectors(model, item_vecs, UserHistory.from_rows(rows, num_users, model.config.history_length))
    return user_vectors(model)[-1:].expand(num_users, -1).clone()
