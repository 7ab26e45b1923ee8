"""Shared pytest fixtures."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

# Read-only public data next to the repository (../shared/data); absent on a user's machine.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# `mmrec demo` is the suite's longest piece (about two minutes). When a selected test needs it, it
# starts in a subprocess as soon as collection ends and runs on one core while the other tests run on
# the other (each process single-threaded: two OpenMP teams on two cores would spin against each
# other); the tests that read it run last.
_DEMO: dict = {}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: "demo" in getattr(item, "fixturenames", ()))  # stable: demo readers last


def pytest_collection_finish(session):
    if session.config.option.collectonly or not any("demo" in getattr(i, "fixturenames", ()) for i in session.items):
        return
    import subprocess
    import sys
    import tempfile

    import torch

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="mmrec-demo-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(root / "demo.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mmrec", "demo", "--out", str(root / "demo")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    _DEMO.update(root=root, proc=proc, log=log)


def pytest_sessionfinish(session, exitstatus):
    if _DEMO:
        _DEMO["proc"].kill()
        _DEMO["proc"].wait()
        _DEMO["log"].close()
        shutil.rmtree(_DEMO["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def demo() -> tuple[Path, str]:
    """`mmrec demo` (one run for the whole session): (its output folder, what it printed).

    Several tests read its run, embeddings and report instead of training their own.
    """
    assert _DEMO, "the demo was not started (pytest_collection_finish)"
    returncode = _DEMO["proc"].wait(timeout=1800)
    _DEMO["log"].seek(0)
    printed = _DEMO["log"].read()
    assert returncode == 0, f"mmrec demo failed (exit {returncode}):\n{printed[-3000:]}"
    return _DEMO["root"] / "demo", printed


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small tiny-config run on a cold-items split, embedded: (root with run/ and emb/, its DATA)."""
    from mmrec.cli import main
    from mmrec.config import load_run_config
    from mmrec.training.loop import train

    root = tmp_path_factory.mktemp("trained")
    data = make_dataset(root, num_items=120, num_users=40, num_ratings=1500, items_per_shard=20, protocol="cold-items")
    train(load_run_config(TINY, ["train.epochs=2", "data.batch_size=16"]), data, root / "run")
    assert main(["embed", "--run", str(root / "run"), "--data", str(data), "--out", str(root / "emb")]) == 0
    return root, data


# One `accelerate launch` of 2 processes for the tests that compare what two processes make with what one
# makes (test_training.py, test_embed_eval.py, test_distributed_eval.py), as the CLI runs each command, one
# after the other in the same two processes: `train.py` (the launch entry, `mmrec train`), then `mmrec embed`
# and `mmrec eval` (`python -m mmrec.cli`'s main). Each start-up of two processes (torch, transformers, ...)
# costs more than the work of these small runs.
_CLI_SEQUENCE = """
import json
import sys

sys.path.insert(0, sys.argv[1])  # the repository root, for train.py
from train import main as train_py

import mmrec.cli

release = mmrec.cli._release_process_group
# the commands share the one process group (its end, after each command, waits for the last): the group
# outlives a command as in tests/test_multinode.py's script
mmrec.cli._release_process_group = lambda: None
try:
    for entry, argv in json.loads(sys.argv[2]):
        code = (train_py if entry == "train.py" else mmrec.cli.main)(argv)
        if code:
            sys.exit(code)
finally:
    release()
"""

# `mmrec eval`'s options in the launch (test_distributed_eval.py runs the same in one process)
TWO_PROCESS_EVAL_ARGS = ["--split", "test", "--k", "5,10", "--candidates", "all", "--diversify", "0.5", "--pool", "20"]
# train.py's in the launch (test_training.py): 2 ranks x batch 20 x 5 steps = 200 items: one epoch is exactly one
# pass over the shards (one visit per item: pairs_per_item above every item's count)
TWO_PROCESS_TRAIN_OVERRIDES = ["data.batch_size=20", "data.pairs_per_item=1000", "train.epochs=3",
                               "train.audit_data=true", "train.log_every=1", "train.early_stopping_patience=0"]


@pytest.fixture(scope="session")
def two_process_runs(trained, tmp_path_factory):
    """One `accelerate launch` of 2 processes (gloo on CPU) running, in order: train.py on a fresh make_dataset()
    (200 items in 8 shards) with TWO_PROCESS_TRAIN_OVERRIDES into run/; `mmrec embed` of the `trained` run into
    emb/; `mmrec eval` of the `trained` run with TWO_PROCESS_EVAL_ARGS and no --emb into report/.

    Returns (its folder with data/, run/, emb/ and report/, stdout, stderr).
    """
    import json
    import subprocess
    import sys

    root, data = trained
    out = tmp_path_factory.mktemp("two-process")
    train_data = make_dataset(out)
    script = out / "cli_sequence.py"
    script.write_text(_CLI_SEQUENCE)
    run = ["--run", str(root / "run"), "--data", str(data)]
    commands = [["train.py", ["--config", str(TINY), "--data", str(train_data), "--out", str(out / "run"),
                              *TWO_PROCESS_TRAIN_OVERRIDES]],
                ["mmrec", ["embed", *run, "--out", str(out / "emb")]],
                ["mmrec", ["eval", *run, *TWO_PROCESS_EVAL_ARGS, "--out", str(out / "report")]]]
    # `accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is installed; the torchrun
    # launcher (--multi_gpu) starts two, and with no GPU they form a gloo process group.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           str(script), str(ROOT), json.dumps(commands)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout, result.stderr


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The ../shared/data folder; skips the test where it is absent.

    Tests that use it should also carry `@pytest.mark.shared_data`, so `-m "not shared_data"`
    deselects them.
    """
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not found (only present on dev machines)")
    return SHARED_DATA


def write_png(path: Path, size: tuple[int, int] = (16, 12), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, color).save(path, format="PNG")
    return path


def write_jpeg(path: Path, size: tuple[int, int] = (16, 12), color: tuple[int, int, int] = (30, 200, 30)) -> Path:
    from PIL import Image

    Image.new("RGB", size, color).save(path, format="JPEG", quality=90)
    return path


def write_tone(path: Path, freq: float = 440.0, rate: int = 8000, seconds: float = 0.25, fmt: str | None = None) -> Path:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), rate, format=fmt)
    return path


@pytest.fixture
def small_catalogue(tmp_path: Path):
    """A hand-built catalogue: 12 items cycling through modality combinations, 8 users, timestamps.

    Returns (items.jsonl path, interactions.csv path, list of item dicts as written).
    """
    import csv
    import json

    root = tmp_path / "catalogue"
    media = root / "media"
    media.mkdir(parents=True)
    combos = [("text", "image", "audio"), ("text",), ("image",), ("audio",), ("text", "image"), ("image", "audio")]
    items = []
    for i in range(12):
        item = {"item_id": f"it{i:02d}", "attributes": [f"tag{i % 3}"], "title": f"Item {i}"}
        mods = combos[i % len(combos)]
        if "text" in mods:
            item["text"] = f"item number {i} with words w{i % 4}"
        if "image" in mods:
            name = f"img{i}.png" if i % 2 else f"img{i}.jpg"
            (write_png if i % 2 else write_jpeg)(media / name, color=(20 * i, 100, 255 - 20 * i))
            item["image"] = f"media/{name}"
        if "audio" in mods:
            name = f"aud{i}.flac" if i % 2 else f"aud{i}.wav"
            write_tone(media / name, freq=200 + 50 * i)
            item["audio"] = f"media/{name}"
        items.append(item)
    items_path = root / "items.jsonl"
    items_path.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    inter_path = root / "interactions.csv"
    with open(inter_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "rating", "timestamp"])
        t = 1_000_000
        for u in range(8):
            for k in range(6):
                t += 17
                w.writerow([f"u{u}", f"it{(u * 5 + k * 7) % 12:02d}", 1 + (u + k) % 5, t])
    return items_path, inter_path, items


# -- helpers the test modules import (`from conftest import ...`) ---------------------------------


def make_dataset(root: Path, num_items=200, num_users=60, num_ratings=3000, items_per_shard=25, protocol="random",
                 ratios=(0.8, 0.1, 0.1)) -> Path:
    """A synthetic catalogue (seed 1) sharded into root/data with the given split protocol."""
    from mmrec.shard.protocols import SplitConfig
    from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
    from mmrec.shard.writer import ShardOptions, shard_catalogue

    info = write_synthetic_catalogue(root / "cat", SyntheticCatalogueConfig(
        seed=1, num_items=num_items, num_users=num_users, num_ratings=num_ratings))
    shard_catalogue(info["items"], info["interactions"], root / "data",
                    SplitConfig(protocol=protocol, seed=0, ratios=ratios),
                    ShardOptions(items_per_shard=items_per_shard, progress=False))
    return root / "data"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
