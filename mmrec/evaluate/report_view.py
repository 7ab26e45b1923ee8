"""An evaluation report dict read back for report.md and the plots: the one reading both draw from.

`ReportView.of(report, metrics)` takes the `mmrec eval` report dict (docs/design.md report.json) and the run's
metrics.jsonl and works out, once, what `mmrec.evaluate.report` writes and `mmrec.evaluate.plots` draws: the
cut-offs, every model's ranking, the slices grouped by the items they rank among, the ablation variants, the
diversity trade-off rows and the training log. Every section but `protocol` is optional, and a value that
is missing, NaN or not a number reads as missing, never as 0.

Two slices are compared only when they rank among the same candidate items: a slice ranked among the cold
items and one ranked among all items measure different tasks, so each candidate set is its own panel. A
slice of fewer than `FEW_USERS` users is flagged: its mean moves with a few users' luck.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RANK_METRICS = ("recall", "ndcg", "hit", "mrr")
LABELS = {"recall": "Recall", "ndcg": "NDCG", "hit": "Hit", "mrr": "MRR"}
MISSING = "—"
# below this many users a mean metric is a handful of users' luck (one user moves NDCG by 1/n or more)
FEW_USERS = 30


def number(value: Any, missing: float | None = None) -> float | None:
    """The value as a finite float; `missing` for None, NaN and non-numbers.

    Plots pass `missing=math.nan`: matplotlib leaves NaN out, where 0 would draw a false point or bar.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return missing


def cell(value: Any) -> str:
    """A table cell: counts as integers, metrics with 4 decimals, anything missing as an em dash."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if (x := number(value)) is not None:
        return f"{x:.4f}"
    if value is None or isinstance(value, numbers.Real):
        return MISSING
    return str(value).replace("|", "\\|")  # a literal pipe would split the markdown cell


def part(section: Any, name: str) -> dict:
    """`section[name]` when it is a non-empty dict, else {} (optional sections may be absent or None)."""
    found = section.get(name) if isinstance(section, dict) else None
    return found if isinstance(found, dict) else {}


def cutoffs(section: dict, names: tuple[str, ...] | None = None) -> list[int]:
    """The K of every `name@K` key (`ndcg@10` -> 10), optionally for the given metric names only."""
    keys = (str(key).partition("@") for key in section)
    return sorted({int(k) for name, _, k in keys if k.isdigit() and (names is None or name in names)})


def count(value: Any) -> int | None:
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def few_users(ranking: dict) -> bool:
    """Whether a ranking's mean comes from fewer than `FEW_USERS` users (an unknown count is not flagged)."""
    users = count(ranking.get("users"))
    return users is not None and users < FEW_USERS


def named_set(items: str, ranking: dict) -> str:
    """ "cold items (244 items)": the candidate set with its size, where the ranking records it."""
    n = count(ranking.get("candidates"))
    return f"{items} ({n} items)" if n is not None else items


def change(value: Any, base: Any) -> float | None:
    """The relative change of `value` against `base` in percent; None where either is missing or base is 0."""
    v, b = number(value), number(base)
    return None if v is None or not b else 100 * (v - b) / b


# ------------------------------------------------------------------------------------ the training log


@dataclass
class TrainingLog:
    """RUN/metrics.jsonl read back (docs/design.md "RUN"): each logged value by step."""

    series: dict[str, dict[int, float]]  # "loss/total", "valid/ndcg@10", ... -> {step: value}
    best_step: int | None  # the step of the model kept in RUN/model, from the last validation line
    skipped: int  # lines that were not a JSON object with an integer step (e.g. cut short by a kill)


def read_training_log(path: str | Path) -> TrainingLog:
    """Read a run's metrics.jsonl.

    A resumed run appends steps it had logged before the kill; when the step goes back, the points
    from that step on are dropped, so the curve shows the run that produced the model.
    """
    series: dict[str, dict[int, float]] = {}
    best, skipped, last = None, 0, -1
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():  # bad bytes: a skipped line
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            skipped += 1
            continue
        if step < last:  # a resume: the lines after its checkpoint belong to the killed run
            for values in series.values():
                for dropped in [s for s in values if s >= step]:
                    del values[dropped]
        last = step
        for key, value in record.items():
            if key not in ("step", "epoch", "seconds", "best_step") and (x := number(value)) is not None:
                series.setdefault(key, {})[step] = x
        if isinstance(record.get("best_step"), int):
            best = record["best_step"]
    return TrainingLog({key: values for key, values in series.items() if values}, best, skipped)


def _curve_panels(log: TrainingLog) -> list[tuple[str, list[str]]]:
    """(title, series keys) per panel: the losses, validation ranking metrics, validation rating error."""
    keys = list(log.series)
    ranking = [k for k in keys if k.startswith(("valid/recall@", "valid/ndcg@"))]  # as metrics_at_k.png: two metrics
    panels = [("Training loss", [k for k in keys if k.startswith("loss/")]),
              ("Validation ranking (valid split)", ranking),
              ("Validation rating error (valid split)", [k for k in keys if k in ("valid/rmse", "valid/mae")])]
    return [(title, names) for title, names in panels if names]


# ------------------------------------------------------------------------------------ the report's parts


def _ks(report: dict) -> list[int]:
    """The cut-offs: the protocol's `ks`, else those found in the ranking keys."""
    ks = part(report, "protocol").get("ks")
    return sorted(int(k) for k in ks) if ks else cutoffs(part(report, "ranking"), RANK_METRICS)


def _models(report: dict) -> dict[str, dict]:
    """Name -> section with optional `rating`, `ranking`, `slices`: ours first, then each baseline."""
    baselines = {name: s for name, s in part(report, "baselines").items() if isinstance(s, dict)}
    return {"mmrec (ours)": report, **baselines}


def _headline_set(p: dict) -> str:
    """The headline's candidate items in a few words ("all items", "cold items"): `protocol.candidates`
    is a sentence, and its "cold items only" is the same set as the cold-items slice's "cold items"."""
    text = str(p.get("candidates") or "all items")
    return text.split(";")[0].split(" (")[0].split(":")[0].strip().removesuffix(" only")


def _slices(models: dict[str, dict], headline: str) -> tuple[dict[str, dict[str, dict]], dict[str, str], list[str]]:
    """(slice label -> {model name: ranking dict}, slice label -> the items it ranks among, slices without users).

    Slices with users only, in first-seen order: with none (no held-out warm item on a cold-items split)
    the metrics would read 0 where nothing was measured. An item slice ("warm items") ranks among its
    own items; a user slice keeps the headline's candidates.
    """
    out: dict[str, dict[str, dict]] = {}
    among: dict[str, str] = {}
    unmeasured: list[str] = []
    for name, section in models.items():
        slices = part(section, "slices")
        named = {key.replace("_", " "): (slices[key], key.replace("_", " "))
                 for key in slices if key != "user_activity"}
        named.update({f"users with {bucket} train interactions": (ranking, headline)
                      for bucket, ranking in part(slices, "user_activity").items()})
        for label, (ranking, items) in named.items():
            if isinstance(ranking, dict) and ranking and ranking.get("users") != 0:
                out.setdefault(label, {})[name] = ranking
                among.setdefault(label, items)
            elif isinstance(ranking, dict) and ranking.get("users") == 0 and label not in unmeasured:
                unmeasured.append(label)
    return out, among, unmeasured


def _ablation_variants(full: dict, ablated: dict) -> dict[str, dict]:
    """Variant name -> section ({ranking, rating?}): the full model first, then each modality removed."""
    return {"full model": full, **{name.replace("_", " "): s for name, s in ablated.items() if isinstance(s, dict)}}


def _ablations(report: dict, headline: str) -> list[tuple[str, str, dict[str, dict]]]:
    """(what it ranks, report.md's sentence, variants): the headline, and the cold-items slice where content
    is all a cold item has (in the headline the ID terms of warm items dominate)."""
    ablations = []
    if ablation := part(report, "ablation"):
        items = named_set(headline, part(report, "ranking"))
        ablations.append((f"headline, ranked among {items}", f"Headline, ranked among {items}",
                          _ablation_variants(report, ablation)))
    if cold_ablation := part(report, "ablation_cold_items"):
        cold = part(part(report, "slices"), "cold_items")
        items = named_set("cold items", cold)
        same = (items == named_set(headline, part(report, "ranking"))
                and cold.get("users") == part(report, "ranking").get("users"))
        ablations.append((f"cold-items slice, ranked among {items}",
                          f"Cold-items slice, relevant cold items ranked among {items}: a cold item has no ID "
                          "terms, so its score is content alone and a modality's worth shows here"
                          + (" (the headline ranks these same items and users, so the tables agree)" if same else ""),
                          _ablation_variants({"ranking": cold}, cold_ablation)))
    return ablations


def _diversify(report: dict) -> tuple[dict, list[dict], int]:
    """The `diversify` section, its rows with a number at the cut-off, and that cut-off: the smallest K with a
    diversity (a list of one item has none)."""
    section = part(report, "diversify")
    rows = [r for r in section.get("rows") or [] if isinstance(r, dict) and number(r.get("lambda")) is not None]
    ks = cutoffs(rows[0], ("diversity",)) if rows else []
    k = ks[0] if ks else 10
    return section, [r for r in rows if number(r.get(f"ndcg@{k}")) is not None], k


@dataclass
class ReportView:
    """What report.md and the plots read from one report dict (see the module docstring)."""

    report: dict
    protocol: dict  # the `protocol` section
    ks: list[int]  # the cut-offs
    k0: int  # the smallest: slices and ablation report it
    where: str  # "test split, cold-items protocol, seed 0": every table and plot names it
    headline: str  # the headline's candidate items in a few words ("all items", "cold items")
    models: dict[str, dict]  # ours first, then each baseline
    ranked: dict[str, dict]  # model -> its non-empty ranking section
    slices: dict[str, dict[str, dict]]  # slice label -> {model: ranking}
    among: dict[str, str]  # slice label -> the items it ranks among
    unmeasured: list[str]  # slices without users
    slice_models: list[str]  # the models with any slice
    slice_users: dict[str, dict]  # slice label -> a ranking with its users (the same for every model)
    panels: dict[str, list[str]]  # one per candidate set: "cold items (244 items)" -> its slice labels
    ablations: list[tuple[str, str, dict[str, dict]]]  # (what it ranks, report.md's sentence, variants)
    metrics: str | Path | None  # the run's metrics.jsonl as given
    log: TrainingLog | None  # read from it, when it exists
    curves: list[tuple[str, list[str]]]  # the training curve's panels: (title, series keys)
    diversify: dict  # the `diversify` section
    div_rows: list[dict]  # its rows with a number at `div_k`
    div_k: int

    @classmethod
    def of(cls, report: dict, metrics: str | Path | None = None) -> ReportView:
        p, ks, models = part(report, "protocol"), _ks(report), _models(report)
        headline = _headline_set(p)
        slices, among, unmeasured = _slices(models, headline)
        slice_users = {label: next(iter(by_model.values())) for label, by_model in slices.items()}  # same users for all
        panels: dict[str, list[str]] = {}
        for label in slices:
            panels.setdefault(named_set(among[label], slice_users[label]), []).append(label)
        log = read_training_log(metrics) if metrics is not None and Path(metrics).is_file() else None
        diversify, div_rows, div_k = _diversify(report)
        return cls(
            report=report, protocol=p, ks=ks, k0=ks[0] if ks else 10,
            where=f"{p.get('split', '?')} split, {p.get('protocol', '?')} protocol, seed {p.get('seed', '?')}",
            headline=headline, models=models,
            ranked={name: part(s, "ranking") for name, s in models.items() if part(s, "ranking")},
            slices=slices, among=among, unmeasured=unmeasured,
            slice_models=[name for name in models if any(name in by_model for by_model in slices.values())],
            slice_users=slice_users, panels=panels, ablations=_ablations(report, headline),
            metrics=metrics, log=log, curves=_curve_panels(log) if log else [],
            diversify=diversify, div_rows=div_rows, div_k=div_k)
