"""The run configuration: one dataclass tree, loaded from YAML (`configs/`) with dotted overrides.

    cfg = load_run_config("tiny", ["model.fusion.layers=4"])      # a preset shipped with the package
    cfg = load_run_config("my.yaml", ["train.lr=3e-4"])            # or any YAML file

Sections: `model` (encoders, fusion, embedding width), `tasks` (loss weights), `data` (what is
read and how it is batched) and `train` (optimisation, validation, checkpoints). Unknown keys are
errors that name the valid ones; the resolved config is written into every run folder. Reading a
config imports no torch.

Presets (`mmrec/configs/*.yaml`, installed with the package): `tiny` (CPU: tests, the demo), `base`
(GPU: BERT-base / ViT-B/16 / AST-base sizes), and the MovieLens benchmark's model, one per protocol:
`movielens-ranking`, with `movielens-rating` and `movielens-cold` written as `base: movielens-ranking`
plus what differs. A config's `base:` is a preset name or a YAML path (relative to that config's folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmrec.config_io import load_config, save_config
from mmrec.model.config import ModelConfig, TaskConfig

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
# Accelerate's experiment trackers (`accelerate.utils.LoggerType`), named here so that a config is
# checked without importing accelerate (and so torch); whether the package is installed is checked
# when training starts.
TRACKERS = ("tensorboard", "wandb", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab")


@dataclass
class DataConfig:
    """What training reads and how it is batched (per process)."""

    path: str | None = None  # dataset folder written by `mmrec shard` (`--data` on the command line)
    features: str | None = None  # feature cache written by `mmrec cache`: read it instead of media
    batch_size: int = 64  # items per batch per process
    pairs_per_item: int = 8  # k: training interactions per item visit (an item gets ceil(n / k) visits per epoch)
    num_workers: int = 0  # DataLoader worker processes (decode + preprocessing)
    shuffle_buffer: int = 500  # items shuffled across shards
    steps_per_epoch: int | None = None  # batches per process per epoch (None: one pass: every training interaction once)
    eval_batch_size: int = 128  # items per batch when embedding for validation
    # Preprocessing is deterministic, so what it makes can be kept in memory instead of decoding the media
    # again every epoch: the validation batches (this rank's share) and, when loading runs in the training
    # process (num_workers=0), each training item's encoder inputs, each up to this many MiB (0: re-read
    # the shards every time). Same batches, same numbers: only decoding and preprocessing are saved.
    memory_cache_mb: int = 1024

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.pairs_per_item < 0 or self.num_workers < 0 or self.memory_cache_mb < 0:
            raise ValueError("data.pairs_per_item, data.num_workers and data.memory_cache_mb must be >= 0")


@dataclass
class TrainConfig:
    """Optimisation, validation and checkpoints."""

    seed: int = 0  # model init, data order, pair sampling, modality dropout
    epochs: int = 10  # upper bound; early stopping may end sooner
    lr: float = 1e-3  # fusion, heads, ID embeddings
    encoder_lr: float = 1e-4  # trainable encoder layers
    weight_decay: float = 0.01  # AdamW, on weight matrices only (not biases, norms, embeddings)
    embedding_weight_decay: float = 0.0  # AdamW decay on the user / item ID embeddings and biases (MF regulariser)
    warmup_steps: int = 50  # linear warm-up, then cosine decay to 0 over the run
    # warm-up in epochs instead (overrides warmup_steps): the same share of training on any catalogue shape
    warmup_epochs: float | None = None
    grad_accum: int = 1  # optimizer step every N batches
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    mixed_precision: str = "auto"  # "auto" (bf16 on a GPU that has it, else none), "no", "bf16", "fp16"
    eval_every: int = 0  # validate every N optimizer steps (0: at the end of each epoch)
    checkpoint_every: int = 0  # save Accelerate state every N optimizer steps (0: each epoch)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    # validation metric that picks the best model ("rmse": lower is better); "last" keeps the model of the
    # final epoch (no selection: for a split without a valid part, e.g. a 90/10 rating protocol)
    selection_metric: str = "ndcg@10"
    early_stopping_patience: int = 3  # validations without improvement before stopping (0: never stop)
    log_every: int = 10  # write metrics.jsonl every N optimizer steps
    # experiment trackers that also receive the losses, lr and validation metrics (metrics.jsonl is always
    # written): "none", "tensorboard", "wandb", ... (TRACKERS), a list or comma-separated string of them,
    # or "all" (every tracker whose package is installed). Off by default: nothing starts a tracker, or
    # an online service, unasked. Read back as a list ([] for none).
    log_with: str | list[str] = "none"
    audit_data: bool = False  # record which items each rank trained on per epoch (RUN/audit/)

    def __post_init__(self) -> None:
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.epochs < 1 or self.grad_accum < 1 or self.log_every < 1:
            raise ValueError("train.epochs, train.grad_accum and train.log_every must be >= 1")
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            raise ValueError(f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        name, _, k = self.selection_metric.partition("@")
        if self.selection_metric not in ("rmse", "last") and not (
                name in ("ndcg", "recall", "hit", "mrr") and k.isdigit() and int(k) >= 1):
            raise ValueError(f"train.selection_metric must be rmse, last or ndcg@K / recall@K / hit@K / mrr@K, "
                             f"got {self.selection_metric!r}")
        self.log_with = _tracker_names(self.log_with)


def _tracker_names(value: str | list[str]) -> list[str]:
    """train.log_with as a list of tracker names (["all"] stays as is; [] for none), or a ValueError."""
    if value is None:
        return []
    names = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"train.log_with must be a tracker name or a list of them, got {value!r}")
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in names if n not in ("none", "all", *TRACKERS)]
    if unknown:
        raise ValueError(f"train.log_with: unknown tracker(s) {unknown}; expected none, all or any of {list(TRACKERS)} "
                         "(e.g. train.log_with=tensorboard)")
    if "all" in names:
        return ["all"]
    return list(dict.fromkeys(n for n in names if n != "none"))  # in the given order, each once


@dataclass
class RunConfig:
    """Everything a run needs: the model, its losses, its data and how it trains."""

    model: ModelConfig = field(default_factory=ModelConfig)  # encoders + fusion + embeddings
    tasks: TaskConfig = field(default_factory=TaskConfig)  # which losses, with which weights
    data: DataConfig = field(default_factory=DataConfig)  # shards, batching
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation, validation, checkpoints


def list_presets() -> list[str]:
    """Names of the configs shipped with the package (`--config NAME`)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _preset(name: Path) -> Path | None:
    """The shipped preset `name` means (`tiny`, `tiny.yaml`, `configs/tiny.yaml`), or None."""
    preset = PRESETS_DIR / f"{name.name.removesuffix('.yaml')}.yaml"
    if str(name.parent) in (".", "configs") and preset.is_file():
        return preset  # a bare name, or configs/NAME.yaml from a checkout's old docs
    return None


def resolve_config(name_or_path: str | Path, relative_to: str | Path | None = None) -> Path:
    """A YAML file that exists, else the shipped preset of that name (`tiny`, `tiny.yaml`).

    Args:
        name_or_path: a path or a preset name.
        relative_to: the folder a relative path is read from (a config's `base:` is relative to the
            config's own folder); None: the working directory.
    """
    path = Path(name_or_path)
    file = path if relative_to is None else Path(relative_to) / path  # an absolute path stays as it is
    if file.is_file():
        return file
    preset = _preset(path)
    if preset is not None:
        return preset
    where = "" if relative_to is None else f" (in {str(relative_to)!r})"
    raise ValueError(f"config {str(name_or_path)!r} is neither a file{where} nor a preset; presets: {list_presets()}")


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config or preset (None: defaults) with its `base:` chain; apply `section.key=value` overrides."""
    return load_config(RunConfig, None if path is None else resolve_config(path), overrides,
                       resolve_base=lambda base, folder: resolve_config(base, relative_to=folder))


__all__ = ["TRACKERS", "DataConfig", "RunConfig", "TrainConfig", "list_presets", "load_run_config", "resolve_config",
           "save_config"]
