"""The PNG plots of an evaluation report folder, each drawn by one function from a `ReportView`.

    metrics_at_k.png    NDCG@K and Recall@K of ours and every baseline
    slices.png          NDCG@k0 by slice, one panel per candidate set (compare bars within a panel only)
    ablation.png        NDCG@k0 with one modality removed at inference
    training_curve.png  losses and validation metrics by step, from the run's metrics.jsonl
    diversify.png       MMR re-ranking: accuracy against diversity, and each metric's change by LAMBDA

A plot whose section is missing is not drawn (`draw_plots` says which were). Slices and ablation bars of
fewer than `FEW_USERS` users are hatched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mmrec.evaluate.report_view import LABELS, ReportView, cell, change, few_users, number, part


def save_figure(path: Path, draw: Callable[..., None], ncols: int = 1, widths: list[float] | None = None) -> Path:
    """Draw into a fresh Agg figure (`ncols` panels, relative `widths`) and save it as PNG.

    A bare `Figure` on an explicit Agg canvas, not pyplot: no display, no figure left open, and the
    caller's global backend untouched (a notebook calling write_report keeps its inline plots).
    """
    # imported here: `import mmrec.evaluate.report` stays cheap
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 1.5 + (4.5 * ncols if widths is None else min(1.3 * sum(widths), 14.5))  # widths: ~1.3 in per unit
    fig = Figure(figsize=(width, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    draw(*fig.subplots(1, ncols, squeeze=False, gridspec_kw={"width_ratios": widths})[0])
    fig.savefig(path, format="png")
    return path


def draw_plots(view: ReportView, out: Path) -> dict[str, Path]:
    """Every plot the report has the numbers for, into `out`: {name: path}, in report.md's order."""
    v, paths = view, {}
    if any(number(r.get(f"{m}@{k}")) is not None for r in v.ranked.values() for m in ("ndcg", "recall") for k in v.ks):
        paths["metrics_at_k"] = save_figure(out / "metrics_at_k.png", partial(metrics_at_k, v), ncols=2)
    if v.slices:
        paths["slices"] = save_figure(out / "slices.png", partial(slice_bars, v), ncols=len(v.panels),
                                      widths=[max(2.2, 0.6 + len(labels)) for labels in v.panels.values()])
    if v.ablations:
        paths["ablation"] = save_figure(out / "ablation.png", partial(ablation_bars, v), ncols=len(v.ablations))
    if v.curves:
        paths["training_curve"] = save_figure(out / "training_curve.png", partial(training_curve, v),
                                              ncols=len(v.curves))
    if v.div_rows:
        paths["diversify"] = save_figure(out / "diversify.png", partial(diversity_tradeoff, v), ncols=2)
    return paths


def metrics_at_k(v: ReportView, ndcg_ax, recall_ax) -> None:
    """NDCG@K and Recall@K against K, one line per model."""
    for ax, metric in ((ndcg_ax, "ndcg"), (recall_ax, "recall")):
        for name, ranking in v.ranked.items():
            ax.plot(v.ks, [number(ranking.get(f"{metric}@{k}"), math.nan) for k in v.ks], marker="o", label=name)
        ax.set(xlabel="K", xticks=v.ks, title=f"{LABELS[metric]}@K")
        ax.grid(alpha=0.3)
    ndcg_ax.legend(fontsize=8)
    ndcg_ax.figure.suptitle(f"Top-K metrics ({v.where})", fontsize=9)


def slice_bars(v: ReportView, *axes) -> None:
    """NDCG@k0 by slice, the models side by side; one panel per candidate set."""
    k0, width = v.k0, 0.8 / len(v.slice_models)
    for ax, (items, labels) in zip(axes, v.panels.items()):
        for j, name in enumerate(v.slice_models):
            heights = [number(v.slices[s].get(name, {}).get(f"ndcg@{k0}"), math.nan) for s in labels]
            offset = (j - (len(v.slice_models) - 1) / 2) * width  # bars of one slice side by side, centred
            bars = ax.bar([i + offset for i in range(len(labels))], heights, width, label=name, color=f"C{j}")
            for bar, label in zip(bars, labels):
                if few_users(v.slice_users[label]):
                    bar.set(hatch="//", edgecolor="black", alpha=0.6)
        ticks = [f"{s.replace(' train interactions', '')}\nn={v.slice_users[s].get('users')}" for s in labels]
        ax.set_xticks(range(len(labels)), ticks, fontsize=8)
        for i, label in enumerate(labels):
            if few_users(v.slice_users[label]):
                top = max((number(by_model.get(f"ndcg@{k0}"), 0.0) for by_model in v.slices[label].values()), default=0)
                ax.annotate("few users", (i, top), xytext=(0, 3), textcoords="offset points", ha="center",
                            fontsize=8, color="darkred")
        ax.margins(y=0.12)  # room for the "few users" notes above the bars
        ax.set_title(f"ranked among {items}", fontsize=9)
    axes[0].set_ylabel(f"NDCG@{k0}")
    fig = axes[0].figure  # below the panels: inside one it would cover bars
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(v.slice_models),
               fontsize=8)
    fig.suptitle(f"NDCG@{k0} by slice ({v.where})\none panel per candidate set: compare bars within a panel, "
                 "not across", fontsize=9)


def ablation_bars(v: ReportView, *axes) -> None:
    """NDCG@k0 of the full model and of each modality removed, one panel per ablation."""
    k0 = v.k0
    for ax, (title, _, variants) in zip(axes, v.ablations):
        ndcg = [number(part(s, "ranking").get(f"ndcg@{k0}")) for s in variants.values()]
        bars = ax.bar(list(variants), [math.nan if x is None else x for x in ndcg],
                      color=["tab:blue"] + ["tab:gray"] * (len(variants) - 1))
        ax.bar_label(bars, labels=[cell(x) for x in ndcg], fontsize=8)
        full = part(variants["full model"], "ranking")
        if few_users(full):
            for bar in bars:
                bar.set(hatch="//", edgecolor="black", alpha=0.6)
        users = f"{full['users']} users" + (", few users" if few_users(full) else "") if "users" in full else ""
        ax.set_title(f"{title}\n{users}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    axes[0].set_ylabel(f"NDCG@{k0}")
    axes[0].figure.suptitle(f"NDCG@{k0}, one modality removed at inference ({v.where})", fontsize=9)


def training_curve(v: ReportView, *axes) -> None:
    """The logged losses and validation metrics on one step axis; the kept model's step marked."""
    log = v.log
    steps_seen = [s for values in log.series.values() for s in values]
    for ax, (title, names) in zip(axes, v.curves):
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
    axes[0].figure.suptitle(f"Training curve ({Path(v.metrics).name})", fontsize=9)


def diversity_tradeoff(v: ReportView, curve_ax, change_ax) -> None:
    """NDCG against diversity, each point a LAMBDA; then each metric's change against LAMBDA 0."""
    rows, k = v.div_rows, v.div_k
    x, y = [number(r.get(f"diversity@{k}"), math.nan) for r in rows], [r[f"ndcg@{k}"] for r in rows]
    curve_ax.plot(x, y, marker="o")
    for r, xi, yi in zip(rows, x, y):
        curve_ax.annotate(f"λ={r['lambda']:g}", (xi, yi), xytext=(4, 4), textcoords="offset points", fontsize=8)
    curve_ax.set(xlabel=f"intra-list diversity@{k}", ylabel=f"NDCG@{k}", title="accuracy against diversity")
    base = next((r for r in rows if r["lambda"] == 0), rows[0])
    lams = [r["lambda"] for r in rows]
    for metric in ("ndcg", "recall", "diversity", "coverage"):
        change_ax.plot(lams, [change(r.get(f"{metric}@{k}"), base.get(f"{metric}@{k}")) for r in rows],
                       marker="o", label=f"{metric}@{k}")
    change_ax.axhline(0, color="gray", linewidth=1)
    change_ax.set(xlabel="LAMBDA", ylabel="change against LAMBDA 0 (%)", title="each metric against LAMBDA")
    change_ax.legend(fontsize=8)
    for ax in (curve_ax, change_ax):
        ax.grid(alpha=0.3)
    pool = v.diversify.get("pool", "?")
    curve_ax.figure.suptitle(f"MMR re-ranking of each user's top-{pool} ({v.where})", fontsize=9)
