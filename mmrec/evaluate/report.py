"""Write an evaluation report folder: report.json, report.md and the PNG plots (`mmrec.evaluate.plots`).

`report.md` is what a user opens first: the protocol block (a number is only compared with one measured
the same way, docs/design.md "Evaluation rules"), the headline table (ours against every baseline on the same
split), beyond-accuracy, slices and the modality ablation; each table names the split and protocol its
numbers come from, and each plot is linked under its table.

    from mmrec.evaluate.report import write_report
    paths = write_report(report, "REPORT", metrics="RUN/metrics.jsonl")  # {"json": ..., "md": ..., ...}

Every section but `protocol` is optional: a report from a run without baselines or ablation still
writes, and a plot whose section is missing is skipped together with its link. The training curve
comes from the run's metrics.jsonl; without one, report.md says why there is none. What the tables and
the plots read from the report dict is worked out once, in `mmrec.evaluate.report_view`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mmrec.evaluate.plots import draw_plots
from mmrec.evaluate.report_view import (
    FEW_USERS,
    LABELS,
    MISSING,
    RANK_METRICS,
    ReportView,
    TrainingLog,
    cell,
    change,
    count,
    cutoffs,
    few_users,
    named_set,
    number,
    part,
)


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
    view = ReportView.of(report, metrics)
    paths.update(draw_plots(view, out))

    def image(key: str) -> list[str]:  # relative link, so the folder can be moved or zipped whole
        return [f"![{key}]({paths[key].name})", ""] if key in paths else []

    md = [*_protocol_section(view), *_headline_section(view), *image("metrics_at_k"), *_beyond_section(view)]
    if view.div_rows:
        md += [*_diversify_lines(view.diversify, view.div_rows, view.div_k, view.where), *image("diversify")]
    if view.slices:
        md += [*_slices_section(view), *image("slices")]
    if view.ablations:
        md += [*_ablation_section(view), *image("ablation")]
    if faithfulness := part(report, "explanation_faithfulness"):
        md += _faithfulness_lines(faithfulness, view.where)
    md += ["## Training curve", "", *_curve_lines(view.log, metrics, drawn=bool(view.curves)), *image("training_curve")]
    paths["md"].write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    return paths


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


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table; every cell through `cell`, so all numbers read the same."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def _users_cell(ranking: dict) -> Any:
    return f"{ranking['users']} (few users)" if few_users(ranking) else ranking.get("users")


# ------------------------------------------------------------------------------------ report.md's sections


def _protocol_section(v: ReportView) -> list[str]:
    """The title and the protocol block: everything that must match before two numbers are compared."""
    p = v.protocol
    params = ", ".join(f"{k}={x}" for k, x in (p.get("params") or {}).items()) or "none"
    shas = ", ".join(f"{name} `{str(sha)[:12]}`" for name, sha in (p.get("split_sha256") or {}).items())
    masked, threshold = p.get("masked_splits"), p.get("relevance_threshold")
    ks = ", ".join(map(str, p.get("ks") or [])) or MISSING
    md = [f"# mmrec evaluation report: {v.where}", "", "## Protocol", "",
          f"- split protocol: **{cell(p.get('protocol'))}** ({params}), seed **{cell(p.get('seed'))}**",
          f"- scored split: **{cell(p.get('split'))}**; cut-offs K: {ks}",
          "- masking: " + (f"each user's {' and '.join(masked)} interactions are removed from the ranking"
                           if masked else "nothing masked"),
          "- relevance: " + ("every held-out interaction" if threshold is None
                             else f"held-out interactions with rating >= {threshold}"),
          f"- candidates: {cell(p.get('candidates'))}",
          f"- split files (sha256, first 12 hex): {shas or MISSING}",
          f"- checkpoint: {cell(p.get('checkpoint'))}",
          f"- data: {cell(p.get('data'))}",
          f"- created: {cell(p.get('created_at'))}"]
    if "mmrec_version" in v.report:
        md.append(f"- mmrec {v.report['mmrec_version']}; the run's resolved config: `config` in report.json")
    return md + [""]


def _headline_section(v: ReportView) -> list[str]:
    """Ours and every baseline on the same split: rating error (when there is one) and ranking at every K."""
    has_rating = any(part(s, "rating") for s in v.models.values())
    header = ["model", "users"] + (["RMSE", "MAE"] if has_rating else [])
    header += [f"{LABELS[m]}@{k}" for k in v.ks for m in RANK_METRICS]
    rows = []
    for name, section in v.models.items():
        rating, ranking = part(section, "rating"), part(section, "ranking")
        rows.append([name, _users_cell(ranking)] + ([rating.get("rmse"), rating.get("mae")] if has_rating else [])
                    + [ranking.get(f"{m}@{k}") for k in v.ks for m in RANK_METRICS])
    return [f"## Headline ({v.where})", "", "Ours and every baseline, scored on the same split in the same run"
            + ("; RMSE/MAE over the held-out ratings" if has_rating else "")
            + f". Candidates: {v.protocol.get('candidates', 'all items')}.",
            "", *_table(header, rows), "",
            *_few_users_note(["the headline"] if few_users(part(v.report, "ranking")) else [], hatched=False)]


def _beyond_section(v: ReportView) -> list[str]:
    if not (beyond := part(v.report, "beyond")):
        return []
    beyond_ks, names = cutoffs(beyond), sorted({str(key).split("@")[0] for key in beyond})
    return [f"## Beyond accuracy (ours, {v.where})", "",
            *_table(["metric"] + [f"@{k}" for k in beyond_ks],
                    [[n] + [beyond.get(f"{n}@{k}") for k in beyond_ks] for n in names]), ""]


def _slices_section(v: ReportView) -> list[str]:
    """Recall/NDCG@k0 per slice and model, each slice with the items it ranks among."""
    k0, slices, users = v.k0, v.slices, v.slice_users
    header = ["slice", "users", "ranked among"]
    header += [f"{name} {LABELS[m]}@{k0}" for name in v.slice_models for m in ("recall", "ndcg")]
    rows = [[label, _users_cell(users[label]), named_set(v.among[label], users[label])]
            + [by_model.get(name, {}).get(f"{m}@{k0}") for name in v.slice_models for m in ("recall", "ndcg")]
            for label, by_model in slices.items()]
    missing = sorted({f"{label} {k}: {why}" for label, by_model in slices.items()
                      for ranking in by_model.values() for k, why in part(ranking, "not_computable").items()})
    return [f"## Slices ({v.where})", "",
            "Item slices rank the relevant items of that slice among the slice's items only; "
            "user-activity slices keep the headline candidates. Slices ranked among different items "
            "measure different tasks: compare models within a row, not rows with each other.", "",
            *_table(header, rows), "", *_few_users_note([s for s in slices if few_users(users[s])]),
            *([f"Not computable: {'; '.join(missing)}.", ""] if missing else []),
            *([f"Left out, no user has a relevant item there: {', '.join(v.unmeasured)}.", ""] if v.unmeasured else [])]


def _ablation_section(v: ReportView) -> list[str]:
    md = [f"## Modality ablation ({v.where})", "",
          "The named modality is removed from every item at inference; the model is not retrained.", ""]
    for _, intro, variants in v.ablations:
        full = part(variants["full model"], "ranking")
        users = f"{full['users']} users" if "users" in full else "users unknown"
        rating = any(part(s, "rating") for s in variants.values())
        md += [f"{intro}; {users}" + (f" (fewer than {FEW_USERS}: few users)" if few_users(full) else "") + ".",
               "", *_ablation_table(variants, v.k0, rating), ""]
    return md


def _ablation_table(variants: dict[str, dict], k0: int, rating: bool) -> list[str]:
    """Recall/NDCG@k0 per variant and the NDCG change against the full model (first row)."""
    ndcg = {name: number(part(s, "ranking").get(f"ndcg@{k0}")) for name, s in variants.items()}
    full = ndcg["full model"]
    rows = [[name] + ([part(s, "rating").get("rmse")] if rating else [])
            + [part(s, "ranking").get(f"recall@{k0}"), ndcg[name],
               f"{ndcg[name] - full:+.4f}" if name != "full model" and None not in (ndcg[name], full) else MISSING]
            for name, s in variants.items()]
    header = ["variant"] + (["RMSE"] if rating else []) + [f"Recall@{k0}", f"NDCG@{k0}", f"Δ NDCG@{k0} vs full"]
    return _table(header, rows)


def _diversify_lines(section: dict, rows: list[dict], k: int, where: str) -> list[str]:
    """report.md's trade-off table: per LAMBDA, accuracy and beyond-accuracy at K with changes against LAMBDA 0."""
    base = next((r for r in rows if r["lambda"] == 0), rows[0])
    cap = section.get("max_per_attribute")
    table = [[f"{r['lambda']:g}", r.get(f"ndcg@{k}"), _signed(change(r.get(f"ndcg@{k}"), base.get(f"ndcg@{k}"))),
              r.get(f"recall@{k}"), r.get(f"diversity@{k}"),
              _signed(change(r.get(f"diversity@{k}"), base.get(f"diversity@{k}"))), r.get(f"coverage@{k}"),
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
    share, explained = number(section.get("share")), count(section.get("explained"))
    if share is None:
        return ["## Explanation faithfulness", "", f"Not computed: {section.get('method', 'no explained item')}.", ""]
    return ["## Explanation faithfulness", "",
            f"For {explained} explained recommendations (top-{section.get('k', '?')} of {section.get('users', '?')} "
            f"sampled users, {where}), removing the top cited history item lowered the item's score more than "
            f"removing a random other history item in **{share:.1%}** of cases (mean fall {cell(section.get('mean_drop_top'))} "
            f"against {cell(section.get('mean_drop_random'))}). Method: {section.get('method', MISSING)}.", ""]
