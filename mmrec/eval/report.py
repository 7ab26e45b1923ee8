"""Write an evaluation report folder: report.json, report.md and PNG plots.

`report.md` is what a user opens first: the protocol block (a number is only compared with one measured
the same way, docs/design.md "Evaluation rules"), the headline table (ours against every baseline on the same
split), beyond-accuracy, slices and the modality ablation; each table names the split and protocol its
numbers come from, and each plot is linked under its table.

    from mmrec.eval.report import write_report
    paths = write_report(report, "REPORT")  # {"json": ..., "md": ..., "metrics_at_k": ..., ...}

Every section but `protocol` is optional: a report from a run without baselines or ablation still
writes, and a plot whose section is missing is skipped together with its link.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Callable

RANK_METRICS = ("recall", "ndcg", "hit", "mrr")
LABELS = {"recall": "Recall", "ndcg": "NDCG", "hit": "Hit", "mrr": "MRR"}
MISSING = "—"


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


def _slices(models: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """Slice label -> {model name: ranking dict}, non-empty slices only, in first-seen order."""
    out: dict[str, dict[str, dict]] = {}
    for name, section in models.items():
        slices = _part(section, "slices")
        named = {key.replace("_", " "): slices[key] for key in slices if key != "user_activity"}
        named.update({f"users with {bucket} train interactions": ranking
                      for bucket, ranking in _part(slices, "user_activity").items()})
        for label, ranking in named.items():
            if isinstance(ranking, dict) and ranking:
                out.setdefault(label, {})[name] = ranking
    return out


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


def _plot(path: Path, draw: Callable[..., None], ncols: int = 1) -> Path:
    """Draw into a fresh Agg figure and save it as PNG.

    A bare `Figure` on an explicit Agg canvas, not pyplot: no display, no figure left open, and the
    caller's global backend untouched (a notebook calling write_report keeps its inline plots).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: `import mmrec.eval.report` stays cheap
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.5 + 4.5 * ncols, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(*fig.subplots(1, ncols, squeeze=False)[0])
    fig.savefig(path, format="png")
    return path


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and the plots of an evaluation report into `out_dir`.

    Args:
        report: the `mmrec eval` report dict (docs/design.md "Output files"); only `protocol` and
            `ranking` are expected, every other section is optional.
        out_dir: the report folder; created if missing.

    Returns:
        What was written: `json`, `md`, and `metrics_at_k` / `slices` / `ablation` for the plots made.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    # allow_nan=False: fail loudly here rather than write a file strict JSON parsers reject
    paths["json"].write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    p, ks, models = _part(report, "protocol"), _ks(report), _models(report)
    k0 = ks[0] if ks else 10  # slices and ablation report the smallest cut-off
    where = f"{p.get('split', '?')} split, {p.get('protocol', '?')} protocol, seed {p.get('seed', '?')}"
    ranked = {name: _part(s, "ranking") for name, s in models.items() if _part(s, "ranking")}
    slices = _slices(models)
    slice_models = [name for name in models if any(name in by_model for by_model in slices.values())]
    ablation = {name: s for name, s in _part(report, "ablation").items() if isinstance(s, dict)}
    variants = {"full model": report, **{name.replace("_", " "): s for name, s in ablation.items()}}
    ndcg = {name: _num(_part(s, "ranking").get(f"ndcg@{k0}")) for name, s in variants.items()}

    def at_k(ndcg_ax, recall_ax):
        for ax, metric in ((ndcg_ax, "ndcg"), (recall_ax, "recall")):
            for name, ranking in ranked.items():
                ax.plot(ks, [_num(ranking.get(f"{metric}@{k}"), math.nan) for k in ks], marker="o", label=name)
            ax.set(xlabel="K", xticks=ks, title=f"{LABELS[metric]}@K")
            ax.grid(alpha=0.3)
        ndcg_ax.legend(fontsize=8)
        ndcg_ax.figure.suptitle(f"Top-K metrics ({where})", fontsize=9)

    def slice_bars(ax):
        labels, width = list(slices), 0.8 / len(slice_models)
        for j, name in enumerate(slice_models):
            heights = [_num(slices[s].get(name, {}).get(f"ndcg@{k0}"), math.nan) for s in labels]
            offset = (j - (len(slice_models) - 1) / 2) * width  # bars of one slice side by side, centred
            ax.bar([i + offset for i in range(len(labels))], heights, width, label=name)
        ax.set_xticks(range(len(labels)), [s.replace(" train interactions", "") for s in labels],
                      rotation=30, ha="right", fontsize=8)
        ax.set_title(f"NDCG@{k0} by slice\n({where})", fontsize=9)
        ax.set_ylabel(f"NDCG@{k0}")
        ax.legend(fontsize=8)

    def ablation_bars(ax):
        heights = [math.nan if v is None else v for v in ndcg.values()]
        bars = ax.bar(list(variants), heights, color=["tab:blue"] + ["tab:gray"] * len(ablation))
        ax.bar_label(bars, labels=[_fmt(v) for v in ndcg.values()], fontsize=8)
        ax.set_title(f"NDCG@{k0}, one modality removed at inference\n({where})", fontsize=9)
        ax.set_ylabel(f"NDCG@{k0}")

    if any(_num(r.get(f"{m}@{k}")) is not None for r in ranked.values() for m in ("ndcg", "recall") for k in ks):
        paths["metrics_at_k"] = _plot(out / "metrics_at_k.png", at_k, ncols=2)
    if slices:
        paths["slices"] = _plot(out / "slices.png", slice_bars)
    if ablation:
        paths["ablation"] = _plot(out / "ablation.png", ablation_bars)

    def image(key: str) -> list[str]:  # relative link, so the folder can be moved or zipped whole
        return [f"![{key}]({paths[key].name})", ""] if key in paths else []

    md = [f"# mmrec evaluation report: {where}", "", "## Protocol", "", *_protocol_lines(p), ""]

    has_rating = any(_part(s, "rating") for s in models.values())
    header = ["model", "users"] + (["RMSE", "MAE"] if has_rating else [])
    header += [f"{LABELS[m]}@{k}" for k in ks for m in RANK_METRICS]
    rows = []
    for name, section in models.items():
        rating, ranking = _part(section, "rating"), _part(section, "ranking")
        rows.append([name, ranking.get("users")] + ([rating.get("rmse"), rating.get("mae")] if has_rating else [])
                    + [ranking.get(f"{m}@{k}") for k in ks for m in RANK_METRICS])
    md += [f"## Headline ({where})", "", "Ours and every baseline, scored on the same split in the same run"
           + ("; RMSE/MAE over the held-out ratings" if has_rating else "")
           + f". Candidates: {p.get('candidates', 'all items')}.",
           "", *_table(header, rows), "", *image("metrics_at_k")]

    if beyond := _part(report, "beyond"):
        beyond_ks, names = _cutoffs(beyond), sorted({str(key).split("@")[0] for key in beyond})
        md += [f"## Beyond accuracy (ours, {where})", "",
               *_table(["metric"] + [f"@{k}" for k in beyond_ks],
                       [[n] + [beyond.get(f"{n}@{k}") for k in beyond_ks] for n in names]), ""]

    if slices:
        header = ["slice", "users"] + [f"{name} {LABELS[m]}@{k0}" for name in slice_models for m in ("recall", "ndcg")]
        rows = [[label, next(iter(by_model.values())).get("users")]
                + [by_model.get(name, {}).get(f"{m}@{k0}") for name in slice_models for m in ("recall", "ndcg")]
                for label, by_model in slices.items()]
        missing = sorted({f"{label} {k}: {why}" for label, by_model in slices.items()
                          for ranking in by_model.values() for k, why in _part(ranking, "not_computable").items()})
        md += [f"## Slices ({where})", "",
               "Item slices rank the relevant items of that slice among the slice's items only; "
               "user-activity slices keep the headline candidates.", "", *_table(header, rows), "",
               *([f"Not computable: {'; '.join(missing)}.", ""] if missing else []), *image("slices")]

    if ablation:
        full = ndcg["full model"]
        rows = [[name, _part(s, "rating").get("rmse"), _part(s, "ranking").get(f"recall@{k0}"), ndcg[name],
                 f"{ndcg[name] - full:+.4f}" if s is not report and None not in (ndcg[name], full) else MISSING]
                for name, s in variants.items()]
        md += [f"## Modality ablation ({where})", "",
               "The named modality is removed from every item at inference; the model is not retrained.", "",
               *_table(["variant", "RMSE", f"Recall@{k0}", f"NDCG@{k0}", f"Δ NDCG@{k0} vs full"], rows), "",
               *image("ablation")]

    paths["md"].write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return paths
