"""The model card: MODEL/README.md, what a model folder says about itself beyond its config.

YAML front matter as the Hugging Face Hub reads it (library_name, tags, license, model-index and an `mmrec`
block with the facts below), then the same facts in words. The card names the data the model was trained
on (the dataset's fingerprint and split protocol), its encoders, the validation numbers that selected it
and, once `mmrec eval` has run, the numbers of each evaluated split with their protocol (`refresh_card`).
Like the rest of the folder's files but the weights (`mmrec.model.hub`), it is read and written without torch.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmrec import __version__
from mmrec.data.fingerprint import DATASET_FILE
from mmrec.files import atomic_write_text, sha256_of
from mmrec.model.config import ModelConfig
from mmrec.model.hub import CARD_FILE, FORMAT_VERSION, MODEL_TYPE, WEIGHTS_FILE, is_legacy, read_config


@dataclass
class CardFacts:
    """What the model card says beyond the model's config: where the model came from and how it scored.

    Kept in the card's front matter (`mmrec:`), so `mmrec eval` can add its numbers and re-render the card.
    """

    dataset: dict = field(default_factory=dict)  # RUN/dataset.json without the local path: manifest_sha256, ...
    split: dict = field(default_factory=dict)  # {protocol, seed, params}: the dataset's split protocol
    validation: dict = field(default_factory=dict)  # {step, epoch, selection_metric, metrics}: what selected it
    evaluation: dict = field(default_factory=dict)  # split -> {protocol, metrics}, written by `mmrec eval`

    @classmethod
    def for_training(cls, run_dir: str | Path, manifest_split: dict, record: dict,
                     selection_metric: str) -> CardFacts:
        """The facts of a model selected during training.

        Args:
            run_dir: the run folder (its dataset.json, the data's fingerprint).
            manifest_split: the dataset manifest's `split` section.
            record: the validation record, `{step, epoch, "valid/<metric>": value, ...}`.
            selection_metric: `train.selection_metric`.
        """
        recorded = Path(run_dir) / DATASET_FILE
        dataset = json.loads(recorded.read_text()) if recorded.is_file() else {}
        dataset.pop("data", None)  # a local path: meaningless elsewhere, and not for a public card
        metrics = {k.removeprefix("valid/"): _number(v) for k, v in record.items() if k.startswith("valid/")}
        return cls(dataset=dataset, split=_split_protocol(manifest_split),
                   validation={"step": record.get("step"), "epoch": record.get("epoch"),
                               "selection_metric": selection_metric, "metrics": metrics})


def _split_protocol(split: dict) -> dict:
    # as the report writes it: the long cold item / user lists stay in the manifest
    return {"protocol": split.get("protocol"), "seed": split.get("seed"),
            "params": {k: v for k, v in split.items() if k not in ("protocol", "seed", "cold_items", "cold_users")}}


def _number(value: Any) -> Any:
    """A metric as a plain Python number (numpy scalars would not dump as YAML); NaN and infinity, which
    the Hub's metadata checks and most readers refuse, as null (not measured)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def write_card(folder: Path, cfg: ModelConfig, sizes: dict, facts: CardFacts | None = None,
               license: str | None = None) -> Path:
    """README.md: the model card (front matter as the Hub reads it, then the facts in words)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    facts = facts or CardFacts()
    name = f"mmrec {' + '.join(cfg.modalities) or 'ID-only'} recommender"
    results = [EvalResult(task_type="recommendation", task_name="Recommendation", dataset_type="mmrec",
                          dataset_name=f"{facts.split.get('protocol', 'unknown')} split", dataset_split=split,
                          dataset_config=f"seed {entry['protocol'].get('seed')}", metric_type=metric,
                          metric_name=metric, metric_value=value)
               for split, entry in sorted(facts.evaluation.items())
               for metric, value in entry["metrics"].items()
               if value is not None and metric not in ("users", "candidates", "count")]
    data = ModelCardData(library_name=MODEL_TYPE, license=license, model_name=name if results else None,
                         tags=["mmrec", "recommendation", "multimodal", *cfg.modalities],
                         eval_results=results or None, mmrec={"format": FORMAT_VERSION, **asdict(facts)})
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_card_body(name, cfg, sizes, facts)}")
    return atomic_write_text(folder / CARD_FILE, str(card))


def read_card(folder: str | Path) -> tuple[CardFacts, str | None]:
    """(facts, license) from a model folder's README.md; empty facts when it has no card."""
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return CardFacts(), None
    try:
        card = ModelCard(path.read_text(encoding="utf-8"))  # parsed from the text: ModelCard.load may download
    except ValueError as e:
        raise ValueError(f"{path} is not a readable model card ({e}): delete it (the weights and config.json do "
                         "not depend on it) and run `mmrec eval` or `mmrec export` again") from e
    block = dict(getattr(card.data, "mmrec", None) or {})
    block.pop("format", None)
    known = {k: v for k, v in block.items() if k in CardFacts.__dataclass_fields__ and isinstance(v, dict)}
    return CardFacts(**known), card.data.license


def refresh_card(model_dir: str | Path, report: dict) -> Path | None:
    """Put a report's headline numbers, labelled with its protocol, into the card of the model it scored.

    One entry per evaluated split (a later `mmrec eval` of the same split replaces it). Returns the card's
    path, or None for a folder of the older layout (it has no card; `mmrec export` writes one).
    """
    model_dir = Path(model_dir)
    if is_legacy(model_dir):
        return None
    cfg, sizes = read_config(model_dir)
    facts, license = read_card(model_dir)
    p = report["protocol"]
    facts.evaluation[p["split"]] = {
        "protocol": {**{k: p.get(k) for k in ("protocol", "seed", "masked_splits", "relevance_threshold", "candidates",
                                              "users", "created_at")},
                     # the weights by their hash, not the report's local path: the numbers belong to these weights
                     "weights_sha256": sha256_of(model_dir / WEIGHTS_FILE)},
        "metrics": {k: _number(v) for section in ("rating", "ranking") for k, v in report.get(section, {}).items()
                    if isinstance(v, numbers.Real)},
    }
    return write_card(model_dir, cfg, sizes, facts, license)


def _card_body(name: str, cfg: ModelConfig, sizes: dict, facts: CardFacts) -> str:
    lines = [f"# {name}", "",
             f"A recommendation model trained with mmrec {__version__} (`library_name: mmrec`). Its exported vectors "
             "follow one score contract: user = [p_u, 1, mu + b_u], item = [q_i, b_i, 1], score(u, i) = <user, item> "
             "= the predicted rating, so any dot-product index reproduces its ranking.", "", "## Model", ""]
    if cfg.encoders:
        lines += ["| modality | encoder | from | trainable layers |", "|---|---|---|---|"]
        for m, enc in cfg.encoders.items():
            source = Path(enc.pretrained).name if enc.pretrained else "random init"  # no local paths in a card
            lines.append(f"| {m} | {enc.name} | {source} | {enc.trainable_layers} |")
        f = cfg.fusion
        lines += ["", f"Fusion transformer: width {f.width}, {f.layers} layers, {f.heads} heads, read-out {f.readout}."]
    else:
        lines.append("No encoders: ID-only matrix factorisation.")
    lines += ["", f"Embedding dim {cfg.embedding_dim}; user tower `{cfg.user_tower}`; item ID embeddings "
              f"{'on' if cfg.item_id_embeddings else 'off'}. Built for {sizes.get('num_users')} users, "
              f"{sizes.get('num_items')} items and {len(sizes.get('attributes') or [])} attributes; global mean "
              f"rating {sizes.get('global_mean')}.", "", "## Training data", ""]
    if facts.dataset or facts.split:
        d, s = facts.dataset, facts.split
        lines += [f"- dataset manifest sha256: `{d.get('manifest_sha256')}` ({d.get('num_items')} items)",
                  f"- split protocol: `{s.get('protocol')}`, seed {s.get('seed')}, "
                  f"parameters {json.dumps(s.get('params'))}",
                  *[f"- {name} split sha256: `{sha}`" for name, sha in (d.get("split_sha256") or {}).items()]]
    else:
        lines.append("Not recorded (the model was saved outside a training run).")
    lines += ["", "## Validation (model selection)", ""]
    v = facts.validation
    if v:
        lines += [f"Selected by `{v.get('selection_metric')}` at step {v.get('step')} (epoch {v.get('epoch')}) on "
                  "the valid split; the test split played no part.", "", *_metric_table(v.get("metrics") or {})]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Evaluation (`mmrec eval`)", ""]
    for split, entry in sorted(facts.evaluation.items()):
        p = entry["protocol"]
        lines += [f"### {split} split", "",
                  f"Protocol `{p.get('protocol')}` (seed {p.get('seed')}); "
                  f"masked: {', '.join(p.get('masked_splits') or [])}; "
                  f"candidates: {p.get('candidates')}; users: {p.get('users')}; relevance threshold: "
                  f"{p.get('relevance_threshold') or 'none (every held-out interaction)'}; "
                  f"measured {p.get('created_at')} on the weights with sha256 `{p.get('weights_sha256')}`.",
                  "", *_metric_table(entry["metrics"]), ""]
    if not facts.evaluation:
        lines += ["Not evaluated yet: `mmrec eval --run RUN --out REPORT` adds the test numbers here.", ""]
    lines += ["## Use", "", "```python", "from mmrec.model.factory import from_pretrained",
              "model, preprocessors, sizes = from_pretrained(\"path/to/folder\")  # or a repo id in the local HF cache",
              "```", ""]
    return "\n".join(lines)


def _metric_table(metrics: dict) -> list[str]:
    if not metrics:
        return ["(no metrics)"]
    return ["| metric | value |", "|---|---|",
            *[f"| {k} | {'n/a' if v is None else f'{v:.4f}' if isinstance(v, float) else v} |"
              for k, v in metrics.items()]]
