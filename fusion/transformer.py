"""The cross-modal fusion transformer: encoder outputs of the present modalities -> one item embedding.

Each modality's encoder output (its pooled vector, or up to `token_budget` of its tokens) is projected
to the fusion width, tagged with a learned modality-type embedding (as in ViLT, Kim et al. 2021,
https://arxiv.org/abs/2102.03334) and per-modality position embeddings, and concatenated after a
learned [ITEM] token (BERT's [CLS], ViT's class token). A stack of pre-LN transformer blocks
(Vaswani et al. 2017, https://arxiv.org/abs/1706.03762; Xiong et al. 2020,
https://arxiv.org/abs/2002.04745) mixes them, and the item embedding is read out of the final states
(`FusionConfig.readout`): by default the mean over the present modalities of each one's mean token
state (the [ITEM] token's state for an item with no modality), or the [ITEM] token's state alone
("item_token"). Training can drop whole modalities at random (ModDrop, Neverova et al. 2015,
https://arxiv.org/abs/1501.00102) so the model learns to embed items whatever they lack.

The contract that matters most: an absent modality (or a padded encoder token) has no influence at all
on the output. Its keys are excluded from attention by a boolean mask, its inputs are zeroed before
the projection (so even NaN/inf garbage cannot leak through `0 * x`), and nothing normalises across
tokens or items. The [ITEM] key is always valid, so no attention row is ever fully masked.

The token sequence has a fixed layout that depends on the config alone: [ITEM], then one slot per
modality in `FusionConfig.modalities` order, 1 token long for a pooled-only modality and
`token_budget` tokens long otherwise (shorter encoder outputs are padded and masked). A fixed layout
makes `FusionTransformer.token_slices` meaningful and makes an item's computation independent of what
its absent modalities, or the other items in the batch, happen to contain.

Usage:
    cfg = FusionConfig(width=32, layers=2, heads=2, modalities=("text", "image"),
                       input_dims={"text": 384, "image": 768}, token_budget={"text": 8})
    fusion = FusionTransformer(cfg)  # or fusion.create_fusion(cfg)
    out = fusion({"text": FusionInput(tokens, mask), "image": FusionInput(pooled=pooled)},
                 present={"text": has_text, "image": has_image})
    out.item  # (B, D)

Shape legend:
    B  batch (items)
    M  modalities (`FusionConfig.modalities`)
    T  tokens: T_m of one modality's encoder output, S = 1 + sum of the slot lengths in the fused sequence
    D  fusion width (`FusionConfig.width`); D_m the encoder output width of modality m
    H  attention heads; hd = D // H
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fusion.config import FusionConfig

# ---------------------------------------------------------------------------------------------------
# Input and output
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusionInput:
    """One modality's encoder output, the one form `FusionTransformer.forward` takes per modality.

    A pooled-only modality (token budget 0) needs just `pooled`, a budgeted one just `tokens`; what the
    budget does not use may be left None. Defined here, not taken from `encoders`, so that this package
    depends on no encoder library: a caller converts, e.g. `FusionInput(out.tokens, out.mask, out.pooled)`.
    """

    tokens: torch.Tensor | None = None  # (B, T_m, D_m) encoder tokens
    mask: torch.Tensor | None = None  # (B, T_m) bool, True = a real token; None = all real
    pooled: torch.Tensor | None = None  # (B, D_m) one vector per item


@dataclass
class FusionOutput:
    """What the fusion transformer returns."""

    item: torch.Tensor  # (B, D) the item embedding (`FusionConfig.readout`)
    tokens: torch.Tensor  # (B, S, D) final states of all tokens, [ITEM] first; zeros where mask is False
    mask: torch.Tensor  # (B, S) bool, True = a real token (the [ITEM] token is always True)
    present: dict[str, torch.Tensor]  # modality -> (B,) bool: what was fused, after modality dropout


# ---------------------------------------------------------------------------------------------------
# Modality dropout
# ---------------------------------------------------------------------------------------------------


def drop_modalities(
    present: Mapping[str, torch.Tensor], p: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Drop each present modality of each item with probability `p`, keeping at least one per item.

    An item whose draws would drop all its present modalities keeps one of them, chosen uniformly;
    items with nothing present stay empty. For an item with k present modalities the chance that a
    given one survives is therefore (1 - p) + p**k / k, not exactly 1 - p.

    Args:
        present: modality -> (B,) bool, True where the item has that modality.
        p: drop probability in [0, 1].
        generator: random source (its device is used for the draw); the global one if None.

    Returns:
        modality -> (B,) bool, a subset of `present`.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    names = list(present)
    if not names or p == 0.0:
        return dict(present)
    had = torch.stack([present[m].bool() for m in names], dim=1)  # (B, M)
    u = torch.rand(had.shape, generator=generator, device=generator.device if generator is not None else had.device)
    u = u.to(had.device)  # (B, M) uniform in [0, 1)
    kept = had & (u >= p)  # (B, M) each survives with probability 1 - p
    # The rescued modality is the present one with the largest draw; when all were dropped those draws
    # are i.i.d. uniform on [0, p), so the choice is uniform. Reusing `u` avoids a second draw.
    pick = torch.where(had, u, -1.0).argmax(dim=1)  # (B,)
    rescue = F.one_hot(pick, len(names)).bool() & had  # (B, M) `& had`: nothing to rescue for empty items
    kept = kept | (rescue & ~kept.any(dim=1, keepdim=True))  # (B, M)
    return {m: kept[:, i] for i, m in enumerate(names)}


# ---------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention over valid keys only, via `scaled_dot_product_attention`."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, S, D)
        q = q.view(B, S, self.heads, D // self.heads).transpose(1, 2)  # (B, H, S, hd)
        k = k.view(B, S, self.heads, D // self.heads).transpose(1, 2)  # (B, H, S, hd)
        v = v.view(B, S, self.heads, D // self.heads).transpose(1, 2)  # (B, H, S, hd)
        # Boolean mask, True = may be attended to: masked keys get exactly zero weight, so whatever
        # their states hold contributes exactly nothing. Every row keeps the [ITEM] key: no NaN rows.
        attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, S, hd)
        y = y.transpose(1, 2).reshape(B, S, D)  # (B, S, D)
        return self.resid_drop(self.proj(y))  # (B, S, D)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))  # (B, S, D)


class FusionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + MLP(LN(x)). Everything but the attention
    is per token, so masked tokens reach other tokens through the attention mask or not at all."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(mlp_ratio * width), dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask)  # (B, S, D)
        x = x + self.mlp(self.ln_2(x))  # (B, S, D)
        return x


# ---------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------

class FusionTransformer(nn.Module):
    """[ITEM] + projected modality tokens -> pre-LN transformer -> item embedding (B, D).

    Args:
        config: the architecture, input widths included: `config.input_dims` is the one place they
            are given (usually `encoder.output_dim` of each built encoder), so the config alone
            rebuilds the model.
    """

    def __init__(self, config: FusionConfig):
        super().__init__()
        dims = config.input_dims
        missing = [m for m in config.modalities if m not in dims]
        if missing:
            raise ValueError(
                f"no input width for modalities {missing}; set FusionConfig.input_dims, e.g. "
                f"input_dims={{{', '.join(f'{m!r}: encoder.output_dim' for m in missing)}}}"
            )
        self.config = config
        D = config.width

        # Per-modality projection to the fusion width; the LayerNorm puts encoders of very different
        # output scales on an equal footing.
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(dims[m], D), nn.LayerNorm(D)) for m in config.modalities})
        self.item_token = nn.Parameter(torch.zeros(1, 1, D))
        # Keyed by modality (not one (M, D) table) so a model for a subset of modalities loads from a
        # full one's state dict without index shifts.
        self.type_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(D)) for m in config.modalities})
        self.pos_embed = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(config.budget(m), D)) for m in config.modalities if config.budget(m) > 0}
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            [FusionBlock(D, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.layers)]
        )
        self.ln_f = nn.LayerNorm(D)

        # Fixed token layout: [ITEM] at 0, then one slot per modality.
        self.token_slices: dict[str, slice] = {}
        start = 1
        for m in config.modalities:
            n = max(config.budget(m), 1)
            self.token_slices[m] = slice(start, start + n)
            start += n
        self.num_tokens = start  # S

        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 / nanoGPT: N(0, 0.02) weights, zero biases, residual projections scaled by depth.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.config.layers))
        nn.init.trunc_normal_(self.item_token, std=0.02)
        for p in [*self.type_embed.values(), *self.pos_embed.values()]:
            nn.init.trunc_normal_(p, std=0.02)

    @property
    def output_dim(self) -> int:
        return self.config.width

    def no_weight_decay(self) -> set[str]:
        """Parameters an optimizer should not decay (timm's convention: names relative to this module).

        The learned tokens and embeddings are added to inputs, not multiplied with them: decay would
        only pull them towards zero, as it does a bias.
        """
        return {"item_token", *(f"type_embed.{m}" for m in self.type_embed),
                *(f"pos_embed.{m}" for m in self.pos_embed)}

    def forward(
        self, inputs: Mapping[str, FusionInput], present: Mapping[str, torch.Tensor] | None = None
    ) -> FusionOutput:
        """Fuse the present modalities of a batch of items.

        Args:
            inputs: modality -> `FusionInput` (tokens (B, T_m, D_m), mask (B, T_m) bool, pooled
                (B, D_m)). A pooled-only modality needs just `pooled`, a budgeted one just `tokens`
                (mask None = all real). A configured modality missing here is absent for every item.
            present: modality -> (B,) bool, True where the item has that modality. A modality in
                `inputs` but not in `present` counts as present for every item; None = all present.

        Returns:
            FusionOutput; `item` is the item embedding.
        """
        cfg = self.config
        unknown = sorted((set(inputs) | set(present or {})) - set(cfg.modalities))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; this fusion model expects {list(cfg.modalities)}")
        for m, x in inputs.items():
            if not isinstance(x, FusionInput):
                raise TypeError(f"inputs[{m!r}] must be a fusion.FusionInput, got {type(x).__name__}; "
                                "wrap it: FusionInput(tokens=..., mask=..., pooled=...)")
        B = _batch_size(inputs, present)
        device = self.item_token.device

        # Which modality each item has, after modality dropout.
        has = {}
        for m in cfg.modalities:
            if m not in inputs:
                has[m] = torch.zeros(B, dtype=torch.bool, device=device)
            elif present is None or m not in present:
                has[m] = torch.ones(B, dtype=torch.bool, device=device)
            else:
                has[m] = present[m].to(device=device, dtype=torch.bool)  # (B,)
        if self.training and cfg.modality_dropout > 0:
            has = drop_modalities(has, cfg.modality_dropout)

        xs = [self.item_token.expand(B, 1, -1)]  # [(B, 1, D)]
        masks = [torch.ones(B, 1, dtype=torch.bool, device=device)]  # [(B, 1)]
        for m in cfg.modalities:
            feats, valid = self._slot_inputs(m, inputs.get(m), has[m])  # (B, T_m, D_m), (B, T_m)
            # Zero what is absent or padded *before* the projection: with `where` (not a multiply) even
            # NaN/inf garbage there cannot reach anything. A modality missing from `inputs` takes the
            # same path on zeros, so every parameter stays in the graph (DDP needs no unused-parameter search).
            feats = torch.where(valid[..., None], feats, 0)  # (B, T_m, D_m)
            h = self.proj[m](feats) + self.type_embed[m]  # (B, T_m, D)
            if m in self.pos_embed:
                h = h + self.pos_embed[m]  # (B, T_m, D)
            xs.append(h)
            masks.append(valid)
        x = self.drop(torch.cat(xs, dim=1))  # (B, S, D)
        mask = torch.cat(masks, dim=1)  # (B, S)

        for block in self.blocks:
            x = block(x, mask)  # (B, S, D)
        x = self.ln_f(x)  # (B, S, D)
        # Masked positions still computed states (their queries saw the valid keys); blank them so no
        # consumer of `tokens` mistakes them for content.
        x = torch.where(mask[..., None], x, 0)  # (B, S, D)
        return FusionOutput(item=self._readout(x, mask), tokens=x, mask=mask, present=has)

    def _readout(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, D) item embedding from the final states x (B, S, D) and the token mask (B, S)."""
        if self.config.readout == "item_token":
            return x[:, 0]
        # each present modality counts once, however many tokens it has (a 32-token text is not 32x an image)
        per_modality, present = [], []
        for slot in self.token_slices.values():
            valid = mask[:, slot].to(x.dtype)  # (B, n_m)
            count = valid.sum(1, keepdim=True)  # (B, 1)
            per_modality.append((x[:, slot] * valid[..., None]).sum(1) / count.clamp(min=1))  # (B, D)
            present.append(count > 0)  # (B, 1)
        present_t = torch.stack(present, 1).to(x.dtype)  # (B, M, 1)
        n = present_t.sum(1)  # (B, 1)
        mean = (torch.stack(per_modality, 1) * present_t).sum(1) / n.clamp(min=1)  # (B, D)
        return torch.where(n > 0, mean, x[:, 0])  # an item with no modality: the [ITEM] token (content-free)

    def _slot_inputs(self, m: str, part: FusionInput | None, has: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One modality's slot: features (B, n, D_m) and validity (B, n), n = max(budget, 1)."""
        B, D_m, budget = has.shape[0], self.config.input_dims[m], self.config.budget(m)
        n = max(budget, 1)
        if part is None:
            dtype = self.proj[m][0].weight.dtype
            return torch.zeros(B, n, D_m, dtype=dtype, device=has.device), torch.zeros(B, n, dtype=torch.bool, device=has.device)
        tokens, mask, pooled = part.tokens, part.mask, part.pooled
        if budget == 0:
            if pooled is None:
                raise ValueError(f"modality {m!r} has token_budget 0 and needs its pooled vector (B, {D_m}); got None")
            _check_shape(m, "pooled", pooled, (B, D_m))
            return pooled[:, None, :], has[:, None]  # (B, 1, D_m), (B, 1)
        if tokens is None:
            raise ValueError(f"modality {m!r} has token_budget {budget} and needs its tokens (B, T, {D_m}); got None")
        _check_shape(m, "tokens", tokens, (B, None, D_m))
        T = tokens.shape[1]
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=tokens.device)
        _check_shape(m, "mask", mask, (B, T))
        tokens, mask = tokens[:, :budget], mask[:, :budget].to(torch.bool)  # (B, T', D_m), (B, T')  T' = min(T, budget)
        if tokens.shape[1] < budget:  # pad to the slot length; the padding is masked
            tokens = F.pad(tokens, (0, 0, 0, budget - tokens.shape[1]))  # (B, budget, D_m)
            mask = F.pad(mask, (0, budget - mask.shape[1]), value=False)  # (B, budget)
        return tokens, mask & has[:, None]  # (B, budget, D_m), (B, budget)


def _batch_size(inputs: Mapping[str, FusionInput], present: Mapping[str, torch.Tensor] | None) -> int:
    for m, p in (present or {}).items():
        if p.dim() != 1:
            raise ValueError(f"present[{m!r}] must be a (B,) bool tensor, got shape {tuple(p.shape)}")
    sizes = {f"present[{m!r}]": p.shape[0] for m, p in (present or {}).items()}
    for m, x in inputs.items():
        sizes.update({f"inputs[{m!r}]": t.shape[0] for t in (x.tokens, x.mask, x.pooled) if t is not None})
    if not sizes:
        raise ValueError("cannot tell the batch size: give at least one modality in inputs or present")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inconsistent batch sizes: {sizes}")
    return next(iter(sizes.values()))


def _check_shape(m: str, what: str, t: torch.Tensor, shape: tuple[int | None, ...]) -> None:
    if t.dim() != len(shape) or any(s is not None and s != ts for s, ts in zip(shape, t.shape)):
        want = "(" + ", ".join("T" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"inputs[{m!r}] {what} has shape {tuple(t.shape)}, expected {want}")
