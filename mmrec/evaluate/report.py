"""Write an evaluation report folder: report.json, report.md and PNG plots.

`report.md` is what a user opens first: the protocol block (a number is only compared with one measured
the same way, docs/design.md "Evaluation rules"), the headline table (ours against every baseline on the same
split), beyond-accuracy, slices and the modality ablation; each table names the split and protocol its
numbers come from, and each plot is linked under its table.

    from mmrec.evaluate.report import write_report
    paths = write_report(report, "REPORT", metrics="RUN/metrics.jsonl")  # {"json": ..., "md": ..., ...}

Every section but `protocol` is optional: a report from a run without baselines or ablation still
writes, and a plot whose section is missing is skipped together with its link. The training curve
comes from the run's metrics.jsonl; without one, report.md says why there is none.

Two bars are drawn on one axis only when they rank among the same candidate items: a slice ranked
among the cold items and one ranked among all items measure different tasks, so each candidate set
has its own panel, named in its title. A slice of fewer than `FEW_USERS` users is hatched and flagged
in the tables: its mean moves with a few users' luck.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

RANK_METRICS = ("recall", "ndcg", "hit", "mrr")
LABELS = {"recall": "Recall", "ndcg": "NDCG", "hit": "Hit", "mrr": "MRR"}
MISSING = "—"
# below this many users a mean metric is a handful of users' luck (one user moves NDCG by 1/n or more)
FEW_USERS = 30


def _clean(value: Any) -> Any:
    """A JSON-safe copy: NaN/inf -> None (bare NaN is not JSON), numpy/torch -> Python, Path -> str."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _clean(value.tolist())  # numpy / torch scalars and arrays
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if value is None or isinstance(value, (str, bool, int, float)) else str(value)


def _num(value: Any, missing: float | None = None) -> float | None:
    """The value as a finite float; `missing` for None, NaN and non-numbers.

    Plots pass `missing=math.nan`: matplotlib leaves NaN out, where 0 would draw a false point or bar.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return missing


def _fmt(value: Any) -> str:
    """A table cell: counts as integers, metrics with 4 decimals, anything missing as an em dash."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if (x := _num(value)) is not None:
        return f"{x:.4f}"
    if value is None or isinstance(value, numbers.Real):
        return MISSING
    return str(value).replace("|", "\\|")  # a literal pipe would split the markdown cell


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table; every cell through `_fmt`, so all numbers read the same."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _part(section: Any, name: str) -> dict:
    """`section[name]` when it is a non-empty dict, else {} (optional sections may be absent or None)."""
    part = section.get(name) if isinstance(section, dict) else None
    return part if isinstance(part, dict) else {}


def _cutoffs(section: dict, names: tuple[str, ...] | None = None) -> list[int]:
    """The K of every `name@K` key (`ndcg@10` -> 10), optionally for the given metric names only."""
    keys = (str(key).partition("@") for key in section)
    return sorted({int(k) for name, _, k in keys if k.isdigit() and (names is None or name in names)})


def _ks(report: dict) -> list[int]:
    """The cut-offs: the protocol's `ks`, else those found in the ranking keys."""
    ks = _part(report, "protocol").get("ks")
    return sorted(int(k) for k in ks) if ks else _cutoffs(_part(report, "ranking"), RANK_METRICS)


def _models(report: dict) -> dict[str, dict]:
    """Name -> section with optional `rating`, `ranking`, `slices`: ours first, then each baseline."""
    baselines = {name: s for name, s in _part(report, "baselines").items() if isinstance(s, dict)}
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
        slices = _part(section, "slices")
        named = {key.replace("_", " "): (slices[key], key.replace("_", " "))
                 for key in slices if key != "user_activity"}
        named.update({f"users with {bucket} train interactions": (ranking, headline)
                      for bucket, ranking in _part(slices, "user_activity").items()})
        for label, (ranking, items) in named.items():
            if isinstance(ranking, dict) and ranking and ranking.get("users") != 0:
                out.setdefault(label, {})[name] = ranking
                among.setdefault(label, items)
            elif isinstance(ranking, dict) and ranking.get("users") == 0 and label not in unmeasured:
                unmeasured.append(label)
    return out, among, unmeasured


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def few_users(ranking: dict) -> bool:
    """Whether a ranking's mean comes from fewer than `FEW_USERS` users (an unknown count is not flagged)."""
    users = _count(ranking.get("users"))
    return users is not None and users < FEW_USERS


def _users_cell(ranking: dict) -> Any:
    return f"{ranking['users']} (few users)" if few_users(ranking) else ranking.get("users")


def _named_set(items: str, ranking: dict) -> str:
    """ "cold items (244 items)": the candidate set with its size, where the ranking records it."""
    n = _count(ranking.get("candidates"))
    return f"{items} ({n} items)" if n is not None else items


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
            if key not in ("step", "epoch", "seconds", "best_step") and (x := _num(value)) is not None:
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


def _protocol_lines(p: dict) -> list[str]:
    """The protocol block: everything that must match before two numbers are compared."""
    params = ", ".join(f"{k}={v}" for k, v in (p.get("params") or {}).items()) or "none"
    shas = ", ".join(f"{name} `{str(sha)[:12]}`" for name, sha in (p.get("split_sha256") or {}).items())
    masked, threshold = p.get("masked_splits"), p.get("relevance_threshold")
    ks = ", ".join(map(str, p.get("ks") or [])) or MISSING
    return [
        f"- split protocol: **{_fmt(p.get('protocol'))}** ({params}), seed **{_fmt(p.get('seed'))}**",
        f"- scored split: **{_fmt(p.get('split'))}**; cut-offs K: {ks}",
        "- masking: " + (f"each user's {' and '.join(masked)} interactions are removed from the ranking"
                         if masked else "nothing masked"),
        "- relevance: " + ("every held-out interaction" if threshold is None
                           else f"held-out interactions with rating >= {threshold}"),
        f"- candidates: {_fmt(p.get('candidates'))}",
        f"- split files (sha256, first 12 hex): {shas or MISSING}",
        f"- checkpoint: {_fmt(p.get('checkpoint'))}",
        f"- data: {_fmt(p.get('data'))}",
        f"- created: {_fmt(p.get('created_at'))}",
    ]


def _plot(path: Path, draw: Callable[..., None], ncols: int = 1, widths: list[float] | None = None) -> Path:
    """Draw into a fresh Agg figure (`ncols` panels, relative `widths`) and save it as PNG.

    A bare `Figure` on an explicit Agg canvas, not pyplot: no display, no figure left open, and the
    caller's global backend untouched (a notebook calling write_report keeps its inline plots).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: `import mmrec.evaluate.report` stays cheap
    from matplotlib.figure import Figure

    width = 1.5 + (4.5 * ncols if widths is None else min(1.3 * sum(widths), 14.5))  # widths: ~1.3 in per unit
    fig = Figure(figsize=(width, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(*fig.subplots(1, ncols, squeeze=False, gridspec_kw={"width_ratios": widths})[0])
    fig.savefig(path, format="png")
    return path


def _ablation_variants(full: dict, ablated: dict) -> dict[str, dict]:
    """Variant name -> section ({ranking, rating?}): the full model first, then each modality removed."""
    return {"full model": full, **{name.replace("_", " "): s for name, s in ablated.items() if isinstance(s, dict)}}


def _ablation_table(variants: dict[str, dict], k0: int, rating: bool) -> list[str]:
    """Recall/NDCG@k0 per variant and the NDCG change against the full model (first row)."""
    ndcg = {name: _num(_part(s, "ranking").get(f"ndcg@{k0}")) for name, s in variants.items()}
    full = ndcg["full model"]
    rows = [[name] + ([_part(s, "rating").get("rmse")] if rating else [])
            + [_part(s, "ranking").get(f"recall@{k0}"), ndcg[name],
               f"{ndcg[name] - full:+.4f}" if name != "full model" and None not in (ndcg[name], full) else MISSING]
            for name, s in variants.items()]
    header = ["variant"] + (["RMSE"] if rating else []) + [f"Recall@{k0}", f"NDCG@{k0}", f"Δ NDCG@{k0} vs full"]
    return _table(header, rows)


def _diversify(report: dict) -> tuple[dict, list[dict], int]:
    """The `diversify` section, its rows with a number at the cut-off, and that cut-off: the smallest K with a
    diversity (a list of one item has none)."""
    section = _part(report, "diversify")
    rows = [r for r in section.get("rows") or [] if isinstance(r, dict) and _num(r.get("lambda")) is not None]
    ks = _cutoffs(rows[0], ("diversity",)) if rows else []
    k = ks[0] if ks else 10
    return section, [r for r in rows if _num(r.get(f"ndcg@{k}")) is not None], k


def _change(value: Any, base: Any) -> float | None:
    """The relative change of `value` against `base` in percent; None where either is missing or base is 0."""
    v, b = _num(value), _num(base)
    return None if v is None or not b else 100 * (v - b) / b


def _diversify_lines(section: dict, rows: list[dict], k: int, where: str) -> list[str]:
    """report.md's trade-off table: per LAMBDA, accuracy and beyond-accuracy at K with changes against LAMBDA 0."""
    base = next((r for r in rows if r["lambda"] == 0), rows[0])
    cap = section.get("max_per_attribute")
    table = [[f"{r['lambda']:g}", r.get(f"ndcg@{k}"), _signed(_change(r.get(f"ndcg@{k}"), base.get(f"ndcg@{k}"))),
              r.get(f"recall@{k}"), r.get(f"diversity@{k}"),
              _signed(_change(r.get(f"diversity@{k}"), base.get(f"diversity@{k}"))), r.get(f"coverage@{k}"),
              r.get(f"avg_popularity@{k}")] for r in rows]
    return [f"## Diversity re-ranking (ours, {where})", "",
            f"Each ranked user's top-{section.get('pool', '?')} re-ranked by maximal marginal relevance "
            f"({section.get('method', 'MMR')})" + (f", at most {cap} items sharing an attribute" if cap else "")
            + f"; {section.get('users', '?')} users. LAMBDA 0 is the headline ranking"
            + (" kept under the cap (the headline above has none)" if cap else "") + "; changes are against it.", "",
            *_table(["LAMBDA", f"NDCG@{k}", "Δ NDCG", f"Recall@{k}", f"diversity@{k}", "Δ diversity",
                     f"coverage@{k}", f"avg popularity@{k}"], table), ""]


def _signed(percent: float | None) -> str:
    return MISSING if percent is None else f"{percent:+.1f}%"


def _few_users_note(labels: list[str], hatched: bool = True) -> list[str]:
    if not labels:
        return []
    return [f"Few users (fewer than {FEW_USERS}{', hatched in the plot' if hatched else ''}): {', '.join(labels)}; "
            "their means move with a handful of users and are not worth comparing closely.", ""]


def _curve_lines(log: TrainingLog | None, metrics: str | Path | None, drawn: bool) -> list[str]:
    """report.md's training-curve sentence: what the plot was drawn from, or why there is none."""
    if not drawn:
        why = ("no metrics.jsonl was given" if metrics is None else f"`{metrics}` does not exist" if log is None
               else f"`{metrics}` holds no loss or validation values")
        return [f"No training curve: {why}.", ""]
    total = log.series.get("loss/total", {})
    valid = max((log.series[k] for k in log.series if k.startswith("valid/")), key=len, default={})
    return [f"From `{metrics}`: {len(total)} logged training steps" + (f" up to step {max(total)}" if total else "")
            + f", {len(valid)} validations"
            + (f"; the model kept in RUN/model is step {log.best_step}'s" if log.best_step is not None else "")
            + (f"; {log.skipped} unreadable lines skipped" if log.skipped else "") + ".", ""]


def _faithfulness_lines(section: dict, where: str) -> list[str]:
    """report.md's explanation check: one sentence with its numbers, or why it was not computed."""
    share, explained = _num(section.get("share")), _count(section.get("explained"))
    if share is None:
        return ["## Explanation faithfulness", "", f"Not computed: {section.get('method', 'no explained item')}.", ""]
    return ["## Explanation faithfulness", "",
            f"For {explained} explained recommendations (top-{section.get('k', '?')} of {section.get('users', '?')} "
            f"sampled users, {where}), removing the top cited history item lowered the item's score more than "
            f"removing a random other history item in **{share:.1%}** of cases (mean fall {_fmt(section.get('mean_drop_top'))} "
            f"against {_fmt(section.get('mean_drop_random'))}). Method: {section.get('method', MISSING)}.", ""]


def write_report(report: dict, out_dir: str | Path, metrics: str | Path | None = None) -> dict[str, Path]:
    """Write report.json, report.md and the plots of an evaluation report into `out_dir`.

    Args:
        report: the `mmrec eval` report dict (docs/design.md "Output files"); only `protocol` and
            `ranking` are expected, every other section is optional.
        out_dir: the report folder; created if missing.
        metrics: the run's metrics.jsonl, for the training curve; None or a missing file: no curve,
            and report.md says why.

    Returns:
        What was written: `json`, `md`, and `metrics_at_k` / `slices` / `ablation` / `training_curve` /
        `diversify` for the plots made.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    # allow_nan=False: fail loudly here rather than write a file strict JSON parsers reject
    paths["json"].write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    p, ks, models = _part(report, "protocol"), _ks(report), _models(report)
    k0 = ks[0] if ks else 10  # slices and ablation report the smallest cut-off
    where = f"{p.get('split', '?')} split, {p.get('protocol', '?')} protocol, seed {p.get('seed', '?')}"
    headline = _headline_set(p)
    ranked = {name: _part(s, "ranking") for name, s in models.items() if _part(s, "ranking")}
    slices, among, unmeasured = _slices(models, headline)
    slice_models = [name for name in models if any(name in by_model for by_model in slices.values())]
    slice_users = {label: next(iter(by_model.values())) for label, by_model in slices.items()}  # same users for all
    panels: dict[str, list[str]] = {}  # one per candidate set: "cold items (244 items)" -> its slices
    for label in slices:
        panels.setdefault(_named_set(among[label], slice_users[label]), []).append(label)
    # (what it ranks, report.md's sentence, variants): the headline, and the cold-items slice where content
    # is all a cold item has (in the headline the ID terms of warm items dominate)
    ablations = []
    if ablation := _part(report, "ablation"):
        items = _named_set(headline, _part(report, "ranking"))
        ablations.append((f"headline, ranked among {items}", f"Headline, ranked among {items}",
                          _ablation_variants(report, ablation)))
    if cold_ablation := _part(report, "ablation_cold_items"):
        cold = _part(_part(report, "slices"), "cold_items")
        items = _named_set("cold items", cold)
        same = (items == _named_set(headline, _part(report, "ranking"))
                and cold.get("users") == _part(report, "ranking").get("users"))
        ablations.append((f"cold-items slice, ranked among {items}",
                          f"Cold-items slice, relevant cold items ranked among {items}: a cold item has no ID "
                          "terms, so its score is content alone and a modality's worth shows here"
                          + (" (the headline ranks these same items and users, so the tables agree)" if same else ""),
                          _ablation_variants({"ranking": cold}, cold_ablation)))
    log = read_training_log(metrics) if metrics is not None and Path(metrics).is_file() else None
    curves = _curve_panels(log) if log else []

    def at_k(ndcg_ax, recall_ax):
        for ax, metric in ((ndcg_ax, "ndcg"), (recall_ax, "recall")):
            for name, ranking in ranked.items():
                ax.plot(ks, [_num(ranking.get(f"{metric}@{k}"), math.nan) for k in ks], marker="o", label=name)
            ax.set(xlabel="K", xticks=ks, title=f"{LABELS[metric]}@K")
            ax.grid(alpha=0.3)
        ndcg_ax.legend(fontsize=8)
        ndcg_ax.figure.suptitle(f"Top-K metrics ({where})", fontsize=9)

    def slice_bars(*axes):
        width = 0.8 / len(slice_models)
        for ax, (items, labels) in zip(axes, panels.items()):
            for j, name in enumerate(slice_models):
                heights = [_num(slices[s].get(name, {}).get(f"ndcg@{k0}"), math.nan) for s in labels]
                offset = (j - (len(slice_models) - 1) / 2) * width  # bars of one slice side by side, centred
                bars = ax.bar([i + offset for i in range(len(labels))], heights, width, label=name, color=f"C{j}")
                for bar, label in zip(bars, labels):
                    if few_users(slice_users[label]):
                        bar.set(hatch="//", edgecolor="black", alpha=0.6)
            ticks = [f"{s.replace(' train interactions', '')}\nn={slice_users[s].get('users')}" for s in labels]
            ax.set_xticks(range(len(labels)), ticks, fontsize=8)
            for i, label in enumerate(labels):
                if few_users(slice_users[label]):
                    top = max((_num(by_model.get(f"ndcg@{k0}"), 0.0) for by_model in slices[label].values()), default=0)
                    ax.annotate("few users", (i, top), xytext=(0, 3), textcoords="offset points", ha="center",
                                fontsize=8, color="darkred")
            ax.margins(y=0.12)  # room for the "few users" notes above the bars
            ax.set_title(f"ranked among {items}", fontsize=9)
        axes[0].set_ylabel(f"NDCG@{k0}")
        fig = axes[0].figure  # below the panels: inside one it would cover bars
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(slice_models),
                   fontsize=8)
        fig.suptitle(f"NDCG@{k0} by slice ({where})\none panel per candidate set: compare bars within a panel, "
                     "not across", fontsize=9)

    def ablation_bars(*axes):
        for ax, (title, _, variants) in zip(axes, ablations):
            ndcg = [_num(_part(s, "ranking").get(f"ndcg@{k0}")) for s in variants.values()]
            bars = ax.bar(list(variants), [math.nan if v is None else v for v in ndcg],
                          color=["tab:blue"] + ["tab:gray"] * (len(variants) - 1))
            ax.bar_label(bars, labels=[_fmt(v) for v in ndcg], fontsize=8)
            full = _part(variants["full model"], "ranking")
            if few_users(full):
                for bar in bars:
                    bar.set(hatch="//", edgecolor="black", alpha=0.6)
            users = f"{full['users']} users" + (", few users" if few_users(full) else "") if "users" in full else ""
            ax.set_title(f"{title}\n{users}", fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
        axes[0].set_ylabel(f"NDCG@{k0}")
        axes[0].figure.suptitle(f"NDCG@{k0}, one modality removed at inference ({where})", fontsize=9)

    def training_curve(*axes):
        steps_seen = [s for values in log.series.values() for s in values]
        for ax, (title, names) in zip(axes, curves):
            ax.set_xlim(min(steps_seen) - 1, max(steps_seen) + 1)  # one step axis: validations line up with losses
            for name in names:
                steps = sorted(log.series[name])
                ax.plot(steps, [log.series[name][s] for s in steps], label=name,
                        marker="o" if name.startswith("valid/") else None, markersize=3,
                        linewidth=2 if name == "loss/total" else 1)
            if log.best_step is not None and title.startswith("Validation"):
                ax.axvline(log.best_step, color="gray", linestyle="--", linewidth=1,
                           label=f"kept: step {log.best_step}")
            ax.set(xlabel="step", title=title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].figure.suptitle(f"Training curve ({Path(metrics).name})", fontsize=9)

    if any(_num(r.get(f"{m}@{k}")) is not None for r in ranked.values() for m in ("ndcg", "recall") for k in ks):
        paths["metrics_at_k"] = _plot(out / "metrics_at_k.png", at_k, ncols=2)
    if slices:
        paths["slices"] = _plot(out / "slices.png", slice_bars, ncols=len(panels),
                                widths=[max(2.2, 0.6 + len(labels)) for labels in panels.values()])
    if ablations:
        paths["ablation"] = _plot(out / "ablation.png", ablation_bars, ncols=len(ablations))
    if curves:
        paths["training_curve"] = _plot(out / "training_curve.png", training_curve, ncols=len(curves))
    diversify, div_rows, div_k = _diversify(report)

    def tradeoff(curve_ax, change_ax):  # NDCG against diversity, each point a LAMBDA; then each metric's change
        x, y = [_num(r.get(f"diversity@{div_k}"), math.nan) for r in div_rows], [r[f"ndcg@{div_k}"] for r in div_rows]
        curve_ax.plot(x, y, marker="o")
        for r, xi, yi in zip(div_rows, x, y):
            curve_ax.annotate(f"λ={r['lambda']:g}", (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=8)
        curve_ax.set(xlabel=f"intra-list diversity@{div_k}", ylabel=f"NDCG@{div_k}", title="accuracy against diversity")
        base = next((r for r in div_rows if r["lambda"] == 0), div_rows[0])
        lams = [r["lambda"] for r in div_rows]
        for metric in ("ndcg", "recall", "diversity", "coverage"):
            change_ax.plot(lams, [_change(r.get(f"{metric}@{div_k}"), base.get(f"{metric}@{div_k}")) for r in div_rows],
                           marker="o", label=f"{metric}@{div_k}")
        change_ax.axhline(0, color="gray", linewidth=1)
        change_ax.set(xlabel="LAMBDA", ylabel="change against LAMBDA 0 (%)", title="each metric against LAMBDA")
        change_ax.legend(fontsize=8)
        for ax in (curve_ax, change_ax):
            ax.grid(alpha=0.3)
        pool = diversify.get("pool", "?")
        curve_ax.figure.suptitle(f"MMR re-ranking of each user's top-{pool} ({where})", fontsize=9)

    if div_rows:
        paths["diversify"] = _plot(out / "diversify.png", tradeoff, ncols=2)

    def image(key: str) -> list[str]:  # relative link, so the folder can be moved or zipped whole
        return [f"![{key}]({paths[key].name})", ""] if key in paths else []

    md = [f"# mmrec evaluation report: {where}", "", "## Protocol", "", *_protocol_lines(p)]
    if "mmrec_version" in report:
        md.append(f"- mmrec {report['mmrec_version']}; the run's resolved config: `config` in report.json")
    md.append("")

    has_rating = any(_part(s, "rating") for s in models.values())
    header = ["model", "users"] + (["RMSE", "MAE"] if has_rating else [])
    header += [f"{LABELS[m]}@{k}" for k in ks for m in RANK_METRICS]
    rows = []
    for name, section in models.items():
        rating, ranking = _part(section, "rating"), _part(section, "ranking")
        rows.append([name, _users_cell(ranking)] + ([rating.get("rmse"), rating.get("mae")] if has_rating else [])
                    + [ranking.get(f"{m}@{k}") for k in ks for m in RANK_METRICS])
    md += [f"## Headline ({where})", "", "Ours and every baseline, scored on the same split in the same run"
           + ("; RMSE/MAE over the held-out ratings" if has_rating else "")
           + f". Candidates: {p.get('candidates', 'all items')}.",
           "", *_table(header, rows), "",
           *_few_users_note(["the headline"] if few_users(_part(report, "ranking")) else [], hatched=False),
           *image("metrics_at_k")]

    if beyond := _part(report, "beyond"):
        beyond_ks, names = _cutoffs(beyond), sorted({str(key).split("@")[0] for key in beyond})
        md += [f"## Beyond accuracy (ours, {where})", "",
               *_table(["metric"] + [f"@{k}" for k in beyond_ks],
                       [[n] + [beyond.get(f"{n}@{k}") for k in beyond_ks] for n in names]), ""]
    if div_rows:
        md += [*_diversify_lines(diversify, div_rows, div_k, where), *image("diversify")]

    if slices:
        header = ["slice", "users", "ranked among"]
        header += [f"{name} {LABELS[m]}@{k0}" for name in slice_models for m in ("recall", "ndcg")]
        rows = [[label, _users_cell(slice_users[label]), _named_set(among[label], slice_users[label])]
                + [by_model.get(name, {}).get(f"{m}@{k0}") for name in slice_models for m in ("recall", "ndcg")]
                for label, by_model in slices.items()]
        missing = sorted({f"{label} {k}: {why}" for label, by_model in slices.items()
                          for ranking in by_model.values() for k, why in _part(ranking, "not_computable").items()})
        md += [f"## Slices ({where})", "",
               "Item slices rank the relevant items of that slice among the slice's items only; "
               "user-activity slices keep the headline candidates. Slices ranked among different items "
               "measure different tasks: compare models within a row, not rows with each other.", "",
               *_table(header, rows), "", *_few_users_note([s for s in slices if few_users(slice_users[s])]),
               *([f"Not computable: {'; '.join(missing)}.", ""] if missing else []),
               *([f"Left out, no user has a relevant item there: {', '.join(unmeasured)}.", ""] if unmeasured else []),
               *image("slices")]

    if ablations:
        md += [f"## Modality ablation ({where})", "",
               "The named modality is removed from every item at inference; the model is not retrained.", ""]
        for _, intro, variants in ablations:
            full = _part(variants["full model"], "ranking")
            users = f"{full['users']} users" if "users" in full else "users unknown"
            rating = any(_part(s, "rating") for s in variants.values())
            md += [f"{intro}; {users}" + (f" (fewer than {FEW_USERS}: few users)" if few_users(full) else "") + ".",
                   "", *_ablation_table(variants, k0, rating), ""]
        md += image("ablation")

    if faithfulness := _part(report, "explanation_faithfulness"):
        md += _faithfulness_lines(faithfulness, where)
    md += ["## Training curve", "", *_curve_lines(log, metrics, drawn=bool(curves)), *image("training_curve")]

    paths["md"].write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return paths
