"""Explanation faithfulness on MovieLens runs (issue 20's goal: the top cited history item's removal lowers the
item's score more than a random history item's for at least 80% of explained recommendations).

    .venv/bin/python benchmarks/explain_faithfulness.py ranking-text+image history-warm cold-users-history

Each name is a run folder under --work/runs written by benchmarks/movielens.py (e.g. `ranking-text+image`, an
ID-tower model) or benchmarks/new_users.py (`history-warm`, `cold-users-history`: history-tower models). The item
vectors come from the run's feature cache (the frozen encoders' outputs training read), then
`mmrec.evaluate.evaluation.evaluate` on the test split, whose report carries the check (`explanation_faithfulness`:
a seeded sample of users, their top-10, the method named: exact leave-one-out for the history tower, a ridge
refit of the user vector without the item for the ID tower). Writes benchmarks/results/explain_faithfulness_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmrec.config import load_run_config  # noqa: E402
from mmrec.data.features import decode_features  # noqa: E402
from mmrec.data.vocabulary import RunVocabulary  # noqa: E402
from mmrec.embedding import assemble, embed_batches, item_batches  # noqa: E402
from mmrec.evaluate.evaluation import evaluate  # noqa: E402
from mmrec.model.factory import load_run_model  # noqa: E402


def measure(run: Path) -> dict:
    cfg = load_run_config(run / "config.yaml")
    started = time.perf_counter()
    model, pre, _ = load_run_model(run)
    vocab = RunVocabulary.load(run)
    tower = embed_batches(model.eval(), item_batches(cfg.data.features, pre, vocab.attributes, decode=decode_features))
    vecs = assemble([(tower.indices, tower.vectors)], len(vocab.item_ids))
    report = evaluate(run, Path(cfg.data.path), vecs, {}, model, "test", [10])
    return {"user_tower": model.config.user_tower, "split": report["protocol"]["split"],
            "explanation_faithfulness": report["explanation_faithfulness"], "ndcg@10": report["ranking"]["ndcg@10"],
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folder names under WORK/runs")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmrec-movielens"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "explain_faithfulness_cpu.json")
    args = p.parse_args(argv)
    out = {"benchmark": "explanation faithfulness (MovieLens latest-small)", "threads": torch.get_num_threads(),
           "goal": "share >= 0.8", "runs": {}}
    for name in args.runs:
        run = args.work / "runs" / name
        if not (run / "model").is_dir():
            sys.exit(f"{run} is not a trained run: run benchmarks/movielens.py or benchmarks/new_users.py first")
        out["runs"][name] = measure(run)
        f = out["runs"][name]["explanation_faithfulness"]
        print(f"{name}: share {f['share']:.3f} of {f['explained']} explained ({f['method']})", flush=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
