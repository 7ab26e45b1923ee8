"""The evaluation report folder: report.json (valid JSON, NaN -> null), report.md and the PNG plots."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from PIL import Image

from mmrec.eval.report import write_report

SHA = {"train": "a1" * 32, "valid": "b2" * 32, "test": "c3" * 32}


def ranking(scale: float, users: int = 378) -> dict:
    """A ranking section with every metric at K = 10, 20, 50 (values grow with K, as real ones do)."""
    out = {"users": users}
    for k in (10, 20, 50):
        for i, metric in enumerate(("recall", "ndcg", "hit", "mrr")):
            out[f"{metric}@{k}"] = scale * (1 + i) * k / 100
    return out


@pytest.fixture
def full_report() -> dict:
    ours = ranking(0.2)
    ours["ndcg@10"] = 0.123456  # hand-picked: shows as 0.1235 everywhere
    slices = {"warm_items": ranking(0.3, 300), "cold_items": ranking(0.1, 250),
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
            "popularity": {"ranking": ranking(0.25), "slices": {"warm_items": ranking(0.35, 300), "cold_items": {}}},
            # a NaN that must become null in report.json and a dash in report.md
            "bias_only": {"rating": {"rmse": 0.93, "mae": float("nan")}, "ranking": ranking(0.01)},
        },
        "ablation": {f"without_{m}": {"ranking": ranking(0.18), "rating": {"rmse": 0.92}}
                     for m in ("text", "image", "audio")},
    }


def table_row(md: str, first_cell: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def assert_png(path) -> None:
    with Image.open(path) as image:
        image.verify()  # a truncated or non-PNG file fails here
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200
    assert path.stat().st_size > 5_000  # something was drawn, not an empty canvas


def test_full_report_writes_every_file(full_report, tmp_path):
    given = copy.deepcopy(full_report)
    paths = write_report(full_report, tmp_path / "report")
    assert set(paths) == {"json", "md", "metrics_at_k", "slices", "ablation"}
    assert all(path.is_file() and path.parent == tmp_path / "report" for path in paths.values())
    assert str(full_report) == str(given)  # the caller's dict is left as it was (NaN != NaN, so compare text)
    for name in ("metrics_at_k", "slices", "ablation"):
        assert_png(paths[name])


def test_report_json_round_trips_with_nan_as_null(full_report, tmp_path):
    text = write_report(full_report, tmp_path)["json"].read_text()
    assert "NaN" not in text and text.startswith('{\n  "protocol"')  # indent=2
    loaded = json.loads(text)
    assert loaded["baselines"]["bias_only"]["rating"]["mae"] is None
    loaded["baselines"]["bias_only"]["rating"]["mae"] = full_report["baselines"]["bias_only"]["rating"]["mae"] = None
    assert loaded == full_report


def test_report_md_names_the_protocol_and_compares_with_every_baseline(full_report, tmp_path):
    md = write_report(full_report, tmp_path)["md"].read_text()
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
    assert warm[:2] == ["warm items", "300"] and len(warm) == 6  # ours and popularity side by side
    assert table_row(md, "cold items")[4:] == ["—", "—"]  # popularity's cold slice is empty
    assert not any(line.startswith("| users with 21+") for line in md.splitlines())  # empty bucket left out
    assert table_row(md, "without audio")[1:] == ["0.9200", "0.0180", "0.0360", "-0.0875"]
    for png in ("metrics_at_k.png", "slices.png", "ablation.png"):
        assert f"]({png})" in md  # relative links


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
    assert row[:3] == ["mmrec (ours)", "5", "0.5000"] and row[-1] == "—"
    assert_png(paths["metrics_at_k"])
