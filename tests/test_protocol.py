"""The one evaluation rule (mmrec.evaluate.protocol): validation measures what `mmrec eval` reports."""

import json

import pytest

from mmrec.evaluate.evaluation import evaluate_run
from mmrec.evaluate.protocol import EvalProtocol

COLD_ONLY = {"protocol": "cold-items", "seed": 0, "cold_fraction": 0.2}
COLD_AND_WARM = {**COLD_ONLY, "warm_holdout": 0.1}


@pytest.mark.parametrize("info, candidates", [
    ({"protocol": "random", "seed": 0}, "all"),
    ({"protocol": "temporal", "seed": 0}, "all"),
    (COLD_ONLY, "cold"),  # every held-out item is cold: ranked among the cold items
    (COLD_AND_WARM, "all"),  # held-out rows mix warm and cold items: ranked among all, slices separate them
])
def test_valid_and_test_follow_one_rule(info, candidates):
    valid, test = EvalProtocol.for_split("valid", info), EvalProtocol.for_split("test", info)
    assert valid.candidates == test.candidates == candidates
    assert valid.masked == ("train",) and test.masked == ("train", "valid")


def test_explicit_choices_and_bad_input():
    assert EvalProtocol.for_split("test", COLD_ONLY, candidates="all").candidates == "all"
    assert EvalProtocol.for_split("test", COLD_ONLY, mask="train").masked == ("train",)
    with pytest.raises(ValueError, match="'valid' or 'test'"):
        EvalProtocol.for_split("train", COLD_ONLY)
    with pytest.raises(ValueError, match="candidates must be one of"):
        EvalProtocol.for_split("test", COLD_ONLY, candidates="warm")


def test_model_selection_measures_what_eval_reports(demo, tmp_path):
    """The demo trains on a cold-items split with warm_holdout; the validation metric that picked its
    model equals `mmrec eval --split valid` on that model (before the rule was shared, validation
    ranked among cold items only and eval among all items)."""
    out, _ = demo
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if "valid/ndcg@10" in r]
    best = next(r for r in validations if r["step"] == validations[-1]["best_step"])
    report, _ = evaluate_run(out / "run", out / "data", tmp_path / "valid", split="valid", ks=[10], ablation=False)
    assert report["protocol"]["candidates"].startswith("all items")
    assert report["ranking"]["candidates"] == best["valid/candidates"] == 1000
    assert report["ranking"]["ndcg@10"] == pytest.approx(best["valid/ndcg@10"], abs=1e-6)
    assert report["ranking"]["recall@10"] == pytest.approx(best["valid/recall@10"], abs=1e-6)
