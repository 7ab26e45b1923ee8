"""The run configuration: one dataclass tree, loaded from YAML (`configs/`) with dotted overrides.

    cfg = load_run_config("configs/tiny.yaml", ["model.fusion.layers=4"])

Sections: `model` (encoders, fusion, embedding width) and `tasks` (loss weights). Unknown keys are
errors that name the valid ones; the resolved config is written into every run and model folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mmrec.config_io import load_config, save_config
from mmrec.model import ModelConfig
from mmrec.tasks import TaskConfig


@dataclass
class RunConfig:
    """Everything a run needs to rebuild its model and losses."""

    model: ModelConfig = field(default_factory=ModelConfig)  # encoders + fusion + embeddings
    tasks: TaskConfig = field(default_factory=TaskConfig)  # which losses, with which weights


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (None: defaults) and apply `section.key=value` overrides."""
    return load_config(RunConfig, path, overrides)


__all__ = ["RunConfig", "load_run_config", "save_config"]
