"""`FusionConfig`: the fusion transformer's architecture.

Kept apart from the model so that reading a YAML config imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

READOUTS = ("modalities", "item_token")


@dataclass
class FusionConfig:
    """The fusion transformer's architecture, input widths included, so that a saved config rebuilds it.

    `input_dims` is the one place the input widths are given (each modality's `encoder.output_dim`).
    It may stay empty while a config is only read or written, but building a model needs every one.
    """

    name: str = "transformer"  # registered fusion family: see fusion.list_fusions()
    width: int = 256  # D, the fusion width (e.g. 32 tiny, 768 base)
    layers: int = 2  # transformer blocks
    heads: int = 4  # attention heads; must divide width
    mlp_ratio: float = 4.0  # hidden width of each block's MLP = mlp_ratio * width
    dropout: float = 0.0  # dropout on embeddings, attention weights and residual branches (training only)
    modalities: tuple[str, ...] = ("text", "image", "audio")  # ordered; fixes the token layout
    input_dims: dict[str, int] = field(default_factory=dict)  # modality -> encoder output width D_m
    token_budget: int | dict[str, int] = 0  # per modality (or one int for all): 0 = pooled vector only,
    #                                         N > 0 = the first N encoder tokens (longer outputs are truncated)
    modality_dropout: float = 0.0  # training only: drop each present modality of an item with this
    #                                probability, always keeping at least one (see drop_modalities)
    # the item embedding: "modalities" = the mean over the present modalities of each one's mean final
    # token state ([ITEM]'s state for an item with none); "item_token" = the [ITEM] token's final state.
    # From scratch, an [ITEM] read-out trains its encoders far more slowly: its content arrives only
    # through attention weights initialised near zero (benchmarks/attribute_task.py measures it)
    readout: str = "modalities"

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):
            raise ValueError(f"modalities must be a list of names, e.g. ['text', 'image'], not the string {self.modalities!r}")
        self.modalities = tuple(self.modalities)  # YAML gives lists
        if not self.modalities:
            raise ValueError("modalities is empty; name at least one, e.g. modalities=('text', 'image', 'audio')")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities has duplicates: {list(self.modalities)}; list each modality once")
        for m in self.modalities:
            if not isinstance(m, str) or not m.isidentifier():
                raise ValueError(f"modality names must be identifiers such as 'text', got {m!r}")
        if self.width < 1 or self.layers < 1 or self.heads < 1:
            raise ValueError(
                f"width, layers and heads must be >= 1, got width={self.width}, layers={self.layers}, heads={self.heads}"
            )
        if self.width % self.heads:
            raise ValueError(
                f"width {self.width} is not divisible by heads {self.heads}; pick heads from "
                f"{[h for h in range(1, min(self.width, 64) + 1) if self.width % h == 0]} or change width"
            )
        if self.mlp_ratio <= 0 or int(self.mlp_ratio * self.width) < 1:
            raise ValueError(f"mlp_ratio must give an MLP width >= 1, got mlp_ratio={self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {list(READOUTS)}, got {self.readout!r}")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be a probability in [0, 1], got {self.modality_dropout}")
        self.input_dims = dict(self.input_dims)
        self._check_keys("input_dims", self.input_dims)
        for m, dim in self.input_dims.items():
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"input_dims[{m!r}] must be a positive int (the encoder output width), got {dim!r}")
        budgets = self.token_budget if isinstance(self.token_budget, Mapping) else dict.fromkeys(self.modalities, self.token_budget)
        if isinstance(self.token_budget, Mapping):
            self.token_budget = dict(self.token_budget)
            self._check_keys("token_budget", self.token_budget)
        for m, n in budgets.items():
            if not isinstance(n, int) or n < 0:
                raise ValueError(f"token_budget for {m!r} must be an int >= 0 (0 = pooled vector only), got {n!r}")

    def _check_keys(self, what: str, d: Mapping[str, Any]) -> None:
        unknown = sorted(set(d) - set(self.modalities))
        if unknown:
            raise ValueError(f"{what} names unknown modalities {unknown}; expected a subset of {list(self.modalities)}")

    def budget(self, modality: str) -> int:
        """Encoder tokens kept for `modality` (0 = its pooled vector only)."""
        if isinstance(self.token_budget, Mapping):
            return self.token_budget.get(modality, 0)
        return self.token_budget
