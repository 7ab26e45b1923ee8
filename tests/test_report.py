"""The evaluation report folder: report.json (valid JSON, NaN -> null), report.md and the PNG plots; the
training curve from metrics.jsonl; the cold-items ablation and the report's provenance from a trained run."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrec.evaluate.report import write_report
from mmrec.evaluate.report_view import FEW_USERS, few_users, read_training_log

SHA = {"train": "a1" * 32, "valid": "b2" * 32, "test": "c3" * 32}


def ranking(scale: float, users: int = 378, candidates: int = 1000) -> dict:
    """A ranking section with every metric at K = 10, 20, 50 (values grow with K, as real ones do)."""
    out = {"users": users, "candidates": candidates}
    for k in (10, 20, 50):
        for i, metric in enumerate(("recall", "ndcg", "hit", "mrr")):
            out[f"{metric}@{k}"] = scale * (1 + i) * k / 100
    return out


def make_full_report() -> dict:
    ours = ranking(0.2)
    ours["ndcg@10"] = 0.123456  # hand-picked: shows as 0.1235 everywhere
    slices = {"warm_items": ranking(0.3, 300, 800), "cold_items": ranking(0.1, 250, 200),
              "user_activity": {"1-5": ranking(0.05, 40), "6-20": ranking(0.15, 120), "21+": {}}}
    return {
        "protocol": {"split": "test", "protocol": "cold-items", "seed": 7, "params": {"cold_fraction": 0.2},
                     "split_sha256": SHA, "masked_splits": ["train", "valid"], "relevance_threshold": None,
                     "candidates": "all items", "checkpoint": "RUN/model (sha256 0123456789abcdef)",
                     "data": "/data/DATA", "created_at": "2026-11-22T23:00:00Z", "ks": [10, 20, 50]},
        "rating": {"rmse": 0.91, "mae": 0.72, "count": 3115},
        "ranking": ours,
        "beyond": {"coverage@10": 0.31, "avg_popularity@10": 42.1, "diversity@10": 0.55,
                   "coverage@20": 0.42, "avg_popularity@20": 40.0, "diversity@20": 0.57},
        "slices": slices,
        "baselines": {
            "popularity": {"ranking": ranking(0.25),
                           "slices": {"warm_items": ranking(0.35, 300, 800), "cold_items": {}}},
            # a NaN that must become null in report.json and a dash in report.md
            "bias_only": {"rating": {"rmse": 0.93, "mae": float("nan")}, "ranking": ranking(0.01)},
        },
        "ablation": {f"without_{m}": {"ranking": ranking(0.18), "rating": {"rmse": 0.92}}
                     for m in ("text", "image", "audio")},
        "ablation_cold_items": {f"without_{m}": {"ranking": ranking(scale, 250, 200)}  # ranked among the cold items
                                for m, scale in (("text", 0.04), ("image", 0.08), ("audio", 0.095))},
    }


@pytest.fixture
def full_report() -> dict:
    return make_full_report()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict, dict, Path, dict[str, Path]]:
    """The full report written once for the tests that only read what was written (drawing the plots is
    the slow part): (the dict passed, a copy taken before, the folder, the paths returned)."""
    report = make_full_report()
    given = copy.deepcopy(report)
    out = tmp_path_factory.mktemp("full") / "report"
    return report, given, out, write_report(report, out)


def table_row(md: str, first_cell: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def assert_png(path) -> None:
    with Image.open(path) as image:
        image.verify()  # a truncated or non-PNG file fails here
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200
    assert path.stat().st_size > 5_000  # something was drawn, not an empty canvas


def test_full_report_writes_every_file(written):
    full_report, given, out, paths = written
    assert set(paths) == {"json", "md", "metrics_at_k", "slices", "ablation"}
    assert all(path.is_file() and path.parent == out for path in paths.values())
    assert str(full_report) == str(given)  # the caller's dict is left as it was (NaN != NaN, so compare text)
    for name in ("metrics_at_k", "slices", "ablation"):
        assert_png(paths[name])


def test_report_json_round_trips_with_nan_as_null(written):
    full_report, _, _, paths = written
    text = paths["json"].read_text()
    assert "NaN" not in text and text.startswith('{\n  "protocol"')  # indent=2
    loaded = json.loads(text)
    assert loaded["baselines"]["bias_only"]["rating"]["mae"] is None
    expected = copy.deepcopy(full_report)
    loaded["baselines"]["bias_only"]["rating"]["mae"] = expected["baselines"]["bias_only"]["rating"]["mae"] = None
    assert loaded == expected


def test_report_md_names_the_protocol_and_compares_with_every_baseline(written):
    md = written[3]["md"].read_text()
    assert "- split protocol: **cold-items** (cold_fraction=0.2), seed **7**" in md
    assert "each user's train and valid interactions are removed" in md
    assert "every held-out interaction" in md and "RUN/model (sha256 0123456789abcdef)" in md
    assert "train `a1a1a1a1a1a1`, valid `b2b2b2b2b2b2`, test `c3c3c3c3c3c3`" in md
    assert SHA["train"] not in md  # shortened, not the full hash
    # every table names the split, protocol and seed its numbers come from
    for section in ("Headline", "Beyond accuracy", "Slices", "Modality ablation"):
        assert any(line.startswith(f"## {section}") and "test split, cold-items protocol, seed 7" in line
                   for line in md.splitlines()), section
    header = table_row(md, "model")
    assert header[:4] == ["model", "users", "RMSE", "MAE"] and "NDCG@10" in header and "MRR@50" in header
    ours, bias = table_row(md, "mmrec (ours)"), table_row(md, "bias_only")
    assert ours[header.index("NDCG@10")] == "0.1235" and ours[header.index("RMSE")] == "0.9100"
    assert ours[header.index("users")] == "378"
    assert bias[header.index("MAE")] == "—"  # NaN
    assert table_row(md, "popularity")[header.index("RMSE")] == "—"  # no rating section
    assert table_row(md, "coverage")[1:] == ["0.3100", "0.4200"]
    warm = table_row(md, "warm items")
    assert warm[:3] == ["warm items", "300", "warm items (800 items)"] and len(warm) == 7  # ours, popularity
    assert table_row(md, "cold items")[5:] == ["—", "—"]  # popularity's cold slice is empty
    # a user slice keeps the headline's candidates ("all items" here), named with their number
    assert table_row(md, "users with 6-20 train interactions")[2] == "all items (1000 items)"
    assert not any(line.startswith("| users with 21+") for line in md.splitlines())  # empty bucket left out
    assert table_row(md, "without audio")[1:] == ["0.9200", "0.0180", "0.0360", "-0.0875"]
    for png in ("metrics_at_k.png", "slices.png", "ablation.png"):
        assert f"]({png})" in md  # relative links
    # the cold-items ablation: its own table, ranked among the cold items, after the headline's
    ablation = md_section(md, "Modality ablation")
    headline, cold = ablation.split("Cold-items slice", 1)
    assert "ranked among all items (1000 items); 378 users" in headline
    assert "ranked among cold items (200 items)" in cold and "250 users" in cold
    # the cold table's full model is the cold slice of the headline model; its deltas are against that
    cold_rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][1:]
                 for line in cold.splitlines() if line.startswith("| ")}
    assert cold_rows["variant"] == ["Recall@10", "NDCG@10", "Δ NDCG@10 vs full"]  # ranking only: no RMSE
    assert cold_rows["full model"] == ["0.0100", "0.0200", "—"]  # = slices.cold_items at K = 10
    assert cold_rows["without text"] == ["0.0040", "0.0080", "-0.0120"]


def test_minimal_report_skips_the_missing_sections(tmp_path):
    report = {"protocol": {"split": "valid", "protocol": "random", "seed": 0},
              "ranking": {"users": np.int64(5), "recall@10": np.float32(0.5), "ndcg@10": 0.25,
                          "recall@20": 0.75, "ndcg@20": math.nan}}
    paths = write_report(report, tmp_path / "new" / "folder")
    assert set(paths) == {"json", "md", "metrics_at_k"}
    assert json.loads(paths["json"].read_text())["ranking"] == {
        "users": 5, "recall@10": 0.5, "ndcg@10": 0.25, "recall@20": 0.75, "ndcg@20": None}
    md = paths["md"].read_text()
    assert "valid split, random protocol, seed 0" in md and "![metrics_at_k](metrics_at_k.png)" in md
    assert "RMSE" not in md  # no rating anywhere: no empty rating columns
    for absent in ("Beyond accuracy", "Slices", "Modality ablation", "slices.png", "ablation.png"):
        assert absent not in md
    assert not (tmp_path / "new" / "folder" / "slices.png").exists()
    row = table_row(md, "mmrec (ours)")
    assert row[:3] == ["mmrec (ours)", "5 (few users)", "0.5000"] and row[-1] == "—"
    assert "No training curve: no metrics.jsonl was given." in md
    assert_png(paths["metrics_at_k"])


def md_section(md: str, title: str) -> str:
    """The text of the `## title...` section of report.md."""
    return md.split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def test_few_users_are_flagged_by_the_threshold(full_report, tmp_path):
    assert few_users({"users": FEW_USERS - 1}) and not few_users({"users": FEW_USERS})
    assert not few_users({}) and not few_users({"users": None})  # an unknown count is not "few"
    report = {key: full_report[key] for key in ("protocol", "slices", "ablation_cold_items")}
    report["ranking"] = {"users": 378}  # no numbers to plot: only the slices and ablation plots are drawn
    report["slices"]["user_activity"] = {"1": ranking(0.05, FEW_USERS - 1), "2-5": ranking(0.1, FEW_USERS)}
    report["slices"]["cold_items"]["users"] = 12
    report["ablation_cold_items"]["without_text"]["ranking"]["users"] = 300  # the full model's count is the one
    md = write_report(report, tmp_path)["md"].read_text()
    assert table_row(md, "mmrec (ours)")[1] == "378"
    assert table_row(md, "users with 1 train interactions")[1] == f"{FEW_USERS - 1} (few users)"
    assert table_row(md, "users with 2-5 train interactions")[1] == str(FEW_USERS)
    note = next(line for line in md_section(md, "Slices").splitlines() if line.startswith("Few users"))
    assert "cold items, users with 1 train interactions;" in note and "2-5" not in note
    assert f"12 users (fewer than {FEW_USERS}: few users)" in md_section(md, "Modality ablation")


def write_log(path, lines: list) -> None:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def test_training_curve_is_read_from_metrics_jsonl(full_report, tmp_path):
    def train(step, loss):
        return {"step": step, "epoch": 0, "loss/rating": loss / 2, "loss/total": loss, "lr": 1e-3, "seconds": 1.0}

    def valid(step, ndcg, best):
        return {"step": step, "epoch": 1, "valid/rmse": 1.0 - ndcg, "valid/ndcg@10": ndcg, "valid/recall@10": ndcg,
                "valid/users": 40, "best_step": best}

    log = tmp_path / "metrics.jsonl"
    # a run killed after step 50, resumed from its step-20 checkpoint, then killed mid-line
    write_log(log, [train(1, 9.0), train(10, 5.0), train(20, 4.0), valid(20, 0.1, 20), train(30, 3.0),
                    valid(30, 0.2, 30), train(40, 2.5), train(50, 2.0),
                    train(30, 3.5), valid(30, 0.15, 20), train(40, 3.2), '{"step": 50, "loss/to'])
    read = read_training_log(log)
    assert read.series["loss/total"] == {1: 9.0, 10: 5.0, 20: 4.0, 30: 3.5, 40: 3.2}  # the killed run's 50 is gone
    assert read.series["valid/ndcg@10"] == {20: 0.1, 30: 0.15}
    assert read.best_step == 20 and read.skipped == 1
    assert not {"step", "epoch", "seconds", "best_step"} & set(read.series)

    report = {"protocol": full_report["protocol"], "ranking": {"users": 378}}  # the curve is the only plot
    paths = write_report(report, tmp_path / "report", metrics=log)
    assert set(paths) == {"json", "md", "training_curve"}
    assert_png(paths["training_curve"])
    curve = md_section(paths["md"].read_text(), "Training curve")
    assert "5 logged training steps up to step 40, 2 validations" in curve
    assert "step 20's" in curve and "1 unreadable lines skipped" in curve and "](training_curve.png)" in curve

    paths = write_report(report, tmp_path / "none", metrics=tmp_path / "absent.jsonl")
    assert set(paths) == {"json", "md"} and not (tmp_path / "none" / "training_curve.png").exists()
    assert f"No training curve: `{tmp_path / 'absent.jsonl'}` does not exist." in paths["md"].read_text()


def test_eval_writes_provenance_curve_and_cold_ablation(trained, tmp_path):
    """report.json names the code version and the run's config; the cold-items ablation ranks the cold slice."""
    import torch
    import yaml
    from safetensors.torch import load_file

    import mmrec
    from mmrec.evaluate.evaluation import evaluate, evaluate_run
    from mmrec.model.factory import load_run_model

    root, data = trained
    report, paths = evaluate_run(root / "run", data, tmp_path / "report", ks=[5], emb=root / "emb", ablation=False)
    written = json.loads(paths["json"].read_text())
    assert written["mmrec_version"] == mmrec.__version__
    assert written["config"] == yaml.safe_load((root / "run" / "config.yaml").read_text())
    assert written["config"]["data"]["batch_size"] == 16  # the fixture's override, not a default
    assert "ablation_cold_items" not in written  # no ablation asked for
    assert_png(paths["training_curve"])

    model, _, _ = load_run_model(root / "run")
    items = load_file(root / "emb" / "item_embeddings.safetensors")["embeddings"]
    noisy = items + 0.5 * torch.randn(items.shape, generator=torch.Generator().manual_seed(0))
    ablated = {"nothing": items.clone(), "noise": noisy}
    mixed = evaluate(root / "run", data, items, ablated, model, ks=[5], candidates="all")
    assert set(mixed["ablation_cold_items"]) == {"without_nothing", "without_noise"}
    # the same vectors: the cold ablation is exactly the cold slice
    assert mixed["ablation_cold_items"]["without_nothing"]["ranking"] == mixed["slices"]["cold_items"]
    # the cold-items protocol ranks its headline among the cold items: its ablation must agree
    cold = evaluate(root / "run", data, items, ablated, model, ks=[5])
    noise_cold = mixed["ablation_cold_items"]["without_noise"]["ranking"]
    assert noise_cold == pytest.approx(cold["ablation"]["without_noise"]["ranking"])
    assert noise_cold["candidates"] < mixed["ablation"]["without_noise"]["ranking"]["candidates"] == 120
