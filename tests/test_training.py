"""Training end to end on CPU: two processes under `accelerate launch`, kill-and-resume, and a model
that ranks cold items from content better than popularity."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, TWO_PROCESS_TRAIN_OVERRIDES, make_dataset
from safetensors.torch import load_file

from mmrec.config import load_run_config
from mmrec.model.factory import load_model
from mmrec.training.loop import train

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_same_steps_disjoint_items_and_loss_falls(two_process_runs):
    # train.py under `accelerate launch --multi_gpu --num_processes 2` (the fixture's launch, which then embeds
    # and evaluates another run) on make_dataset()'s 200 items in 8 shards, with TWO_PROCESS_TRAIN_OVERRIDES:
    # 2 ranks x batch 20 x 5 steps = 200 items, one epoch is exactly one pass over the shards
    assert "data.batch_size=20" in TWO_PROCESS_TRAIN_OVERRIDES and "train.epochs=3" in TWO_PROCESS_TRAIN_OVERRIDES
    run = two_process_runs[0] / "run"
    assert len(json.loads((two_process_runs[0] / "data" / "item_ids.json").read_text())) == 200
    audits = [json.loads((run / "audit" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert audits[0]["world_size"] == 2
    assert audits[0]["steps"] == audits[1]["steps"] == 15
    for epoch in ("0", "1", "2"):
        a, b = (set(x["items_per_epoch"][epoch]) for x in audits)
        assert len(a) == len(b) == 100 and not a & b  # disjoint halves of the catalogue
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    total = [r["loss/total"] for r in losses if "loss/total" in r]
    assert np.mean(total[-3:]) < 0.8 * np.mean(total[:3])
    assert (run / "model" / "model.safetensors").is_file()


def train_args(data, run, *overrides):
    """`train.py`'s arguments (`mmrec train`'s): 8 batches per epoch on the kill-and-resume dataset."""
    return ["--config", str(TINY), "--data", str(data), "--out", str(run), "data.batch_size=8", "train.epochs=2",
            "train.checkpoint_every=2", "train.keep_checkpoints=50", "train.early_stopping_patience=0", *overrides]


def run_train(data, run, *overrides):
    return [sys.executable, str(ROOT / "train.py"), *train_args(data, run, *overrides)]


def test_kill_and_resume_ends_like_an_uninterrupted_run(tmp_path):
    from mmrec.cli import main

    data = make_dataset(tmp_path, num_items=64, num_users=40, num_ratings=960, items_per_shard=16)  # 60 items rated
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    # the uninterrupted run needs no process of its own: what train.py runs (`mmrec train`), in this process,
    # single-threaded as the launched runs are
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *train_args(data, straight)]) == 0
    finally:
        torch.set_num_threads(threads)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(run_train(data, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-00000006").is_dir():  # mid-epoch: 8 batches per epoch
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-00000016").exists()
    subprocess.run(run_train(data, killed) + ["--resume"], check=True, capture_output=True, env=env, timeout=600)

    final = "checkpoints/step-00000016/model.safetensors"  # 8 batches x 2 epochs
    a, b = load_file(straight / final), load_file(killed / final)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    va = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines() if "valid/ndcg@10" in x]
    vb = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines() if "valid/ndcg@10" in x]
    assert va[-1]["valid/ndcg@10"] == pytest.approx(vb[-1]["valid/ndcg@10"], abs=1e-6)


def test_refuses_to_write_into_a_used_run_folder(tmp_path):
    data = make_dataset(tmp_path, num_items=60, num_users=20, num_ratings=600, items_per_shard=20)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("someone else's run")
    with pytest.raises(ValueError, match="not empty"):
        train(load_run_config(TINY, ["train.epochs=1"]), data, run)
    assert (run / "notes.txt").read_text() == "someone else's run" and not (run / "config.yaml").exists()


def test_a_split_without_valid_rows_needs_selection_last(tmp_path):
    """A 90/10 rating protocol has no valid split: selecting by a metric is refused, "last" keeps the final
    epoch's model (the same weights as the last checkpoint)."""
    data = make_dataset(tmp_path, num_items=60, num_users=20, num_ratings=600, items_per_shard=20,
                        protocol="ratio", ratios=(0.9, 0.0, 0.1))
    with pytest.raises(ValueError, match="empty valid split.*selection_metric=last"):
        train(load_run_config(TINY, ["train.epochs=1"]), data, tmp_path / "refused")
    run = tmp_path / "run"
    state = train(load_run_config(TINY, ["train.epochs=3", "train.selection_metric=last", "data.batch_size=20"]),
                  data, run)
    assert state.epoch == 3 and state.best_step == state.step and state.step % 3 == 0  # the final epoch's model
    kept, _, _ = load_model(run / "model")
    final = load_file(str(run / "checkpoints" / f"step-{state.step:08d}" / "model.safetensors"))
    assert torch.equal(kept.user_p.weight, final["model.user_p.weight"])


def test_memory_cache_changes_nothing_but_the_time(tmp_path):
    """Keeping preprocessed items and validation batches in memory (the default with num_workers=0)
    gives the very weights and validation numbers of re-reading the shards every time."""
    data = make_dataset(tmp_path, num_items=60, num_users=20, num_ratings=600, items_per_shard=20)
    for name, mb in (("kept", 1024), ("reread", 0)):
        train(load_run_config(TINY, ["train.epochs=3", "data.batch_size=16", f"data.memory_cache_mb={mb}"]), data,
              tmp_path / name)
    a, b = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("kept", "reread"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    va, vb = ([json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines() if "valid/rmse" in x]
              for n in ("kept", "reread"))
    assert len(va) == 3 and [r["valid/rmse"] for r in va] == [r["valid/rmse"] for r in vb]


def test_implicit_feedback_trains_ranking_only_and_reports_no_rating_error(tmp_path):
    """No rating column: the rating task is switched off (and recorded so), validation and the report
    carry no RMSE, and the report says why; selecting by RMSE, or training without the retrieval task,
    is refused."""
    import csv

    from mmrec.evaluate.evaluation import evaluate_run
    from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
    from mmrec.shard.writer import ShardOptions, shard_catalogue

    info = write_synthetic_catalogue(tmp_path / "cat", SyntheticCatalogueConfig(
        seed=1, num_items=60, num_users=20, num_ratings=600))
    clicks = tmp_path / "clicks.csv"
    with open(info["interactions"], newline="") as f, open(clicks, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["user_id", "item_id"])
        w.writerows((r["user_id"], r["item_id"]) for r in csv.DictReader(f))
    shard_catalogue(info["items"], clicks, tmp_path / "data", options=ShardOptions(items_per_shard=20, progress=False))
    data = tmp_path / "data"
    with pytest.raises(ValueError, match="implicit feedback.*selection_metric"):
        train(load_run_config(TINY, ["train.selection_metric=rmse"]), data, tmp_path / "r1")
    with pytest.raises(ValueError, match="implicit feedback.*retrieval_weight"):
        train(load_run_config(TINY, ["tasks.retrieval_weight=0"]), data, tmp_path / "r2")
    run = tmp_path / "run"
    train(load_run_config(TINY, ["train.epochs=2", "data.batch_size=16"]), data, run)
    assert load_run_config(run / "config.yaml").tasks.rating_weight == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("loss/rating" in r or "valid/rmse" in r for r in records)
    assert any("valid/ndcg@10" in r for r in records)
    report, _ = evaluate_run(run, data, tmp_path / "report", ks=[10], ablation=False)
    assert "rating" not in report and "rating" not in report["baselines"]["bias_only"]
    assert report["protocol"]["feedback"].startswith("implicit")
