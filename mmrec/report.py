"""Write an evaluation report folder: report.json, report.md and PNG plots.

`report.md` is what a user opens first: the protocol block (so a number is only compared with one
measured the same way), then the headline table (our model against every baseline on the same split),
beyond-accuracy, slices and the modality ablation, each table naming where its numbers come from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RANK_METRICS = ("recall", "ndcg", "hit", "mrr")


def _clean(value: Any) -> Any:
    """NaN/inf -> None, so report.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _models(report: dict) -> dict[str, dict]:
    """Name -> {"rating": ..., "ranking": ..., "slices": ...} for ours and each baseline."""
    models = {"mmrec (ours)": report}
    for name, section in report.get("baselines", {}).items():
        models[name] = section
    return models


def _plot(path: Path, draw) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    draw(ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md and the plots into `out_dir`; returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(_clean(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    p = report.get("protocol", {})
    ks = p.get("ks") or sorted({int(k.split("@")[1]) for k in report.get("ranking", {}) if "@" in k})
    k0 = ks[0] if ks else 10
    split = p.get("split", "?")
    where = f"{split} split, {p.get('protocol', '?')} protocol, seed {p.get('seed', '?')}"
    models = _models(report)

    md = [f"# mmrec evaluation: {where}", "", "## Protocol", ""]
    shas = ", ".join(f"{k} `{v[:12]}`" for k, v in p.get("split_sha256", {}).items())
    md += [f"- split protocol: **{p.get('protocol')}**, seed **{p.get('seed')}**, parameters {p.get('params', {})}",
           f"- scored split: **{split}**; masked per user: {', '.join(p.get('masked_splits', []))}",
           f"- relevance: {'rating >= ' + str(p['relevance_threshold']) if p.get('relevance_threshold') is not None else 'every held-out interaction'}",
           f"- candidates: {p.get('candidates', 'all items')}",
           f"- split files (sha256): {shas}",
           f"- checkpoint: {p.get('checkpoint')}", f"- data: {p.get('data')}", f"- created: {p.get('created_at')}", ""]

    header = ["model", "RMSE", "MAE"] + [f"{m.upper() if m == 'mrr' else m.capitalize()}@{k}" for k in ks for m in RANK_METRICS]
    rows = []
    for name, section in models.items():
        rating, ranking = section.get("rating") or {}, section.get("ranking") or {}
        rows.append([name, rating.get("rmse"), rating.get("mae")] + [ranking.get(f"{m}@{k}") for k in ks for m in RANK_METRICS])
    md += [f"## Headline ({where})", "", _table(header, rows), ""]

    if report.get("beyond"):
        b = report["beyond"]
        names = sorted({key.split("@")[0] for key in b})
        md += [f"## Beyond accuracy (ours, {where})", "",
               _table(["metric"] + [f"@{k}" for k in ks], [[n] + [b.get(f"{n}@{k}") for k in ks] for n in names]), ""]

    slice_rows = []
    for name, section in models.items():
        slices = section.get("slices") or {}
        for sname in ("warm_items", "cold_items"):
            if slices.get(sname):
                slice_rows.append([name, sname, slices[sname].get("users"), slices[sname].get(f"recall@{k0}"),
                                   slices[sname].get(f"ndcg@{k0}")])
        for bucket, r in (slices.get("user_activity") or {}).items():
            slice_rows.append([name, f"users with {bucket} train interactions", r.get("users"), r.get(f"recall@{k0}"),
                               r.get(f"ndcg@{k0}")])
    if slice_rows:
        md += [f"## Slices ({where}; warm items ranked among warm items, cold among cold)", "",
               _table(["model", "slice", "users", f"Recall@{k0}", f"NDCG@{k0}"], slice_rows), ""]

    ablation = report.get("ablation") or {}
    if ablation:
        rows = [["full model", (report.get("rating") or {}).get("rmse"), report["ranking"].get(f"ndcg@{k0}")]]
        rows += [[name.replace("_", " "), (s.get("rating") or {}).get("rmse"), (s.get("ranking") or {}).get(f"ndcg@{k0}")]
                 for name, s in ablation.items()]
        md += [f"## Modality ablation ({where}; the modality removed from every item at inference)", "",
               _table(["variant", "RMSE", f"NDCG@{k0}"], rows), ""]

    def at_k(ax):
        for name, section in models.items():
            ranking = section.get("ranking") or {}
            ax.plot(ks, [ranking.get(f"ndcg@{k}") for k in ks], marker="o", label=f"{name} NDCG")
            ax.plot(ks, [ranking.get(f"recall@{k}") for k in ks], marker="s", linestyle="--", label=f"{name} Recall")
        ax.set_xlabel("K"), ax.set_title(f"Metric@K ({where})", fontsize=9), ax.legend(fontsize=7)

    if ks and report.get("ranking"):
        paths["metrics_at_k"] = _plot(out / "metrics_at_k.png", at_k)
    if slice_rows:
        def slices_plot(ax):
            labels = [f"{r[0]}\n{r[1]}" for r in slice_rows]
            ax.bar(range(len(labels)), [r[4] or 0 for r in slice_rows])
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=6)
            ax.set_title(f"NDCG@{k0} by slice ({where})", fontsize=9)
        paths["slices"] = _plot(out / "slices.png", slices_plot)
    if ablation:
        def ablation_plot(ax):
            ax.bar([r[0] for r in rows], [r[2] or 0 for r in rows])
            ax.set_title(f"NDCG@{k0} with a modality removed ({where})", fontsize=9)
        paths["ablation"] = _plot(out / "ablation.png", ablation_plot)
    md += ["## Plots", ""] + [f"![{name}]({path.name})" for name, path in paths.items() if path.suffix == ".png"]
    paths["md"].write_text("\n".join(md) + "\n", encoding="utf-8")
    return paths
