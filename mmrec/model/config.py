"""The model's and the tasks' configs: plain dataclasses, importable without torch.

`ModelConfig` is the whole model (encoders, fusion, ID embeddings); `TaskConfig` the losses and
their weights. `mmrec.config.RunConfig` holds both, with the data and training sections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from encoders.config import EncoderConfig
from fusion.config import FusionConfig
from mmrec.data.schema import MODALITIES

# `fusion.modalities` left at FusionConfig's default (every modality) means: those in `model.encoders`
_FOLLOW_ENCODERS = next(f.default for f in dataclasses.fields(FusionConfig) if f.name == "modalities")


@dataclass
class ModelConfig:
    """The whole model.

    The fusion model fuses exactly the modalities that have an encoder, in text, image, audio order
    (`modalities`). `fusion` holds its architecture, and `fusion_config` derives the config it is built
    from (the one a saved model records):
    - `fusion.modalities`: leave it out (it follows `encoders`) or list exactly the encoders' modalities;
      anything else is an error, never silently replaced.
    - `fusion.token_budget`: a per-modality dict may name modalities without an encoder (so a preset's
      budgets survive `model.encoders=...`); those entries do not apply.
    - `fusion.input_dims`: leave it out: the widths come from the built encoders. A saved model's config
      records them, and then they must match.
    """

    encoders: dict[str, EncoderConfig] = field(default_factory=dict)  # modality -> encoder; empty = ID-only MF
    fusion: FusionConfig = field(default_factory=FusionConfig)  # cross-modal fusion transformer (see above)
    embedding_dim: int = 32  # E: width of p_u and q_i
    item_id_embeddings: bool = False  # add learned per-item q/b terms for items seen in training
    item_id_dropout: float = 0.0  # training: hide an item's ID terms with this probability, so the content
    #                               path must predict its ratings alone (cold start; DropoutNet, Volkovs et al. 2017)
    # With a pivot n0 > 0 the rate is per item: item_id_dropout x n0 / (n0 + n_i) for an item with n_i training
    # interactions. Rarely rated items (like cold ones) train the content path alone; popular items keep their
    # ID terms, which then learn a residual on top of content instead of trading warm accuracy for cold.
    item_id_dropout_pivot: float = 0.0
    init_std: float = 0.01  # std of the ID embeddings at initialisation
    # "id": a learned vector per training user (matrix factorisation); "history": the user's vector is
    # computed from the items they interacted with (mmrec.model.history), so users who arrive after
    # training, and new interactions, are served without retraining
    user_tower: str = "id"
    history_length: int = 50  # history tower: the latest interactions a user's vector is computed from
    # history tower, training: compute each pair's user vector from a random subset of the history (a
    # rate drawn per pair), so the tower also learns to serve users with a handful of interactions
    history_subsample: bool = True
    # history tower: also learn a per-user ID residual for the users seen in training, added to the
    # history's vector (SVD++, Koren 2008: p_u + a pooled history). Users who arrive later have none
    # and are served from their history alone; the residual is hidden with `history_user_id_dropout`
    # in training so the history part keeps standing alone for them
    history_user_id: bool = False
    history_user_id_dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.user_tower not in ("id", "history"):
            raise ValueError(f"model.user_tower must be 'id' or 'history', got {self.user_tower!r}")
        if not 0.0 <= self.history_user_id_dropout < 1.0:
            raise ValueError(f"model.history_user_id_dropout must be in [0, 1), got {self.history_user_id_dropout}")
        if self.history_user_id and self.user_tower != "history":
            raise ValueError("model.history_user_id is a residual of the history tower: set model.user_tower=history")
        if self.history_length < 1:
            raise ValueError(f"model.history_length must be >= 1, got {self.history_length}")
        unknown = sorted(set(self.encoders) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modality {unknown} in model.encoders; expected any of {list(MODALITIES)}")
        if not 0.0 <= self.item_id_dropout < 1.0:
            raise ValueError(f"item_id_dropout must be in [0, 1), got {self.item_id_dropout}")
        if self.item_id_dropout_pivot < 0:
            raise ValueError(f"item_id_dropout_pivot must be >= 0, got {self.item_id_dropout_pivot}")
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.encoders and not self.item_id_embeddings:
            raise ValueError("the model has no item representation: configure model.encoders or set "
                             "model.item_id_embeddings=true (ID-only matrix factorisation)")
        if self.encoders and self.fusion.modalities not in (_FOLLOW_ENCODERS, self.modalities):
            raise ValueError(f"model.fusion.modalities {list(self.fusion.modalities)} disagrees with model.encoders "
                             f"{list(self.modalities)}: the fusion fuses exactly the modalities that have an encoder. "
                             "Leave fusion.modalities out (it follows model.encoders) or set it to "
                             f"{list(self.modalities)}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.encoders)

    def fusion_config(self, input_dims: Mapping[str, int]) -> FusionConfig:
        """The config the fusion model is built from: `fusion` for exactly `modalities`, with these widths.

        Args:
            input_dims: each built encoder's output width (`encoder.output_dim`), by modality.
        """
        if set(input_dims) != set(self.modalities):
            raise ValueError(f"input widths for {sorted(input_dims)}, but the model's encoders are "
                             f"{list(self.modalities)}")
        dims = {m: input_dims[m] for m in self.modalities}
        if self.fusion.input_dims and self.fusion.input_dims != dims:
            raise ValueError(f"model.fusion.input_dims {self.fusion.input_dims} disagrees with the encoders' output "
                             f"widths {dims}; leave input_dims out: the widths come from the built encoders")
        budget = self.fusion.token_budget
        if isinstance(budget, Mapping):
            budget = {m: n for m, n in budget.items() if m in self.encoders}  # see the class docstring
        return dataclasses.replace(self.fusion, modalities=self.modalities, input_dims=dims, token_budget=budget)


@dataclass
class TaskConfig:
    """Which tasks train, and their weights in the total loss."""

    rating_weight: float = 1.0  # rating MSE
    # L2 of the classic MF objective, per rating pair: lambda * (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2). Unlike
    # weight decay it shrinks an item rated once far more than one rated a hundred times (ridge).
    rating_l2: float = 0.0
    feature_weight: float = 1.0  # generation of a masked modality's pooled feature
    feature_loss: str = "cosine"  # "cosine" (1 - cos) or "mse" against the stop-gradient target
    attribute_weight: float = 0.5  # multi-label attributes from the masked remainder (whole item if single-modality)
    # "softmax": cross-entropy against the item's attributes as a distribution (multi-hot / count);
    # "bce": one sigmoid per attribute. Softmax is the default: trained from scratch on the attribute
    # task alone, it teaches the encoders more of their items' content in as many steps
    # (benchmarks/attribute_task.py)
    attribute_loss: str = "softmax"
    retrieval_weight: float = 0.0  # in-batch sampled softmax (0 = off)
    retrieval_temperature: float = 0.1  # softmax temperature for retrieval
    # Subtract log(sampling probability) from each in-batch item's logit (Yi et al. 2019, "Sampling-bias-
    # corrected neural modeling"): batches hold an item once per chunk of its interactions, so popular
    # items are over-represented as negatives; the correction makes the loss estimate the full softmax.
    retrieval_logq: bool = True

    def __post_init__(self) -> None:
        if self.feature_loss not in ("cosine", "mse"):
            raise ValueError(f"feature_loss must be 'cosine' or 'mse', got {self.feature_loss!r}")
        if self.attribute_loss not in ("softmax", "bce"):
            raise ValueError(f"attribute_loss must be 'softmax' or 'bce', got {self.attribute_loss!r}")
        for name in ("rating_weight", "rating_l2", "feature_weight", "attribute_weight", "retrieval_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.retrieval_temperature <= 0:
            raise ValueError(f"retrieval_temperature must be > 0, got {self.retrieval_temperature}")
