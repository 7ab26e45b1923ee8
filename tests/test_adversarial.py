"""Hostile and careless use (the trust issue): each case once produced a wrong result with exit 0, a
hang or a deleted input; each must now give one clear line (exit status 2) or a quarantine entry."""

import json

import torch
from safetensors.torch import load_file, save_file

from mmrec.cli import main


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_overwrite_never_deletes_the_catalogue(small_catalogue, capsys):
    """`shard --out <the catalogue's own folder> --overwrite` once deleted items.jsonl and every medium."""
    items, interactions, _ = small_catalogue
    root = items.parent
    before = _tree(root.parent)
    for out in (root, root.parent, root / "media"):  # the folder, one above it, the media folder alone
        argv = ["shard", "--items", str(items), "--interactions", str(interactions), "--out", str(out),
                "--overwrite", "--no-progress"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "holds the input" in err and len(err.strip().splitlines()) == 1
    assert _tree(root.parent) == before  # nothing deleted, nothing half-written


def test_overwrite_onto_a_file_is_one_line(small_catalogue, tmp_path, capsys):
    items, interactions, _ = small_catalogue
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    argv = ["shard", "--items", str(items), "--interactions", str(interactions), "--out", str(target),
            "--overwrite", "--no-progress"]
    assert main(argv) == 2
    assert "is a file, not a dataset folder" in capsys.readouterr().err
    assert target.read_text() == "keep me"


# -- item 10: one line, exit 2, for every whole-input problem ----------------------------------------


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_bad_config_files_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--data", "d"]) == 2
    _one_line_error(capsys, "neither a file nor a preset")
    (tmp_path / "broken.yaml").write_text("train: {epochs: 2\n")
    assert main(["train", "--config", str(tmp_path / "broken.yaml"), "--data", "d"]) == 2
    _one_line_error(capsys, "not a valid YAML config")
    # a YAML tag that would run code in an unsafe loader: refused, and nothing ran
    (tmp_path / "evil.yaml").write_text('train: !!python/object/apply:os.system ["touch PWNED"]\n')
    assert main(["train", "--config", str(tmp_path / "evil.yaml"), "--data", "d"]) == 2
    _one_line_error(capsys, "not a valid YAML config")
    assert not (tmp_path / "PWNED").exists()
    assert main(["train", "--config", "tiny", "--data", "d", "train.selection_metric=ndcg@ten"]) == 2
    _one_line_error(capsys, "selection_metric")


def test_bad_arguments_are_one_line(tmp_path, capsys):
    import pytest

    run = tmp_path / "run"  # shaped like a run folder, so that --k is what fails
    (run / "model").mkdir(parents=True)
    (run / "vocabulary.json").write_text("{}")
    for argv, needle in ((["eval", "--run", str(tmp_path / "nope"), "--out", "r"], "does not exist"),
                         (["embed", "--run", str(tmp_path), "--data", "d", "--out", "e"], "has no model"),
                         (["eval", "--run", str(run), "--out", "r", "--k", "0"], "--k"),
                         (["similar", "--run", str(run), "--item", "x", "--k", "-3"], "--k")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        _one_line_error(capsys, needle)


def test_a_missing_split_file_stops_before_training(tmp_path, capsys):
    from conftest import make_dataset

    data = make_dataset(tmp_path, num_items=40, num_users=10, num_ratings=300, items_per_shard=20)
    (data / "interactions" / "valid.csv").unlink()
    assert main(["train", "--config", "tiny", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "valid.csv")
    assert not (tmp_path / "run").exists()  # nothing written


# -- item 8: input columns and values ----------------------------------------------------------------


def _shard(items, interactions, out, *extra):
    return main(["shard", "--items", str(items), "--interactions", str(interactions), "--out", str(out),
                 "--no-progress", *extra])


def test_column_names_match_case_insensitively_or_stop(small_catalogue, tmp_path, capsys):
    import json

    items, interactions, _ = small_catalogue
    lines = interactions.read_text().splitlines()
    upper = tmp_path / "upper.csv"
    upper.write_text("\n".join(["User_ID,Item_ID,Rating,Timestamp", *lines[1:]]) + "\n")
    assert _shard(items, upper, tmp_path / "d1") == 0
    train = (tmp_path / "d1" / "interactions" / "train.csv").read_text().splitlines()
    assert {row.split(",")[2] for row in train[1:]} != {"1.0"}  # the ratings were read, not taken as implicit
    assert json.loads((tmp_path / "d1" / "manifest.json").read_text())["counts"]["interaction_rows"] == len(lines) - 1
    typo = tmp_path / "typo.csv"
    typo.write_text("\n".join(["user_id,item_id,ratng,timestamp", *lines[1:]]) + "\n")
    capsys.readouterr()
    assert _shard(items, typo, tmp_path / "d2") == 2
    err = capsys.readouterr().err
    assert "unknown column 'ratng'" in err and len(err.strip().splitlines()) == 1


def test_absurd_ratings_are_quarantined(small_catalogue, tmp_path):
    from mmrec.shard.quarantine import read_quarantine

    items, interactions, _ = small_catalogue
    lines = interactions.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    rows = lines[1:]
    rows[0] = ",".join(rows[0].split(",")[:2] + ["1e30"] + rows[0].split(",")[3:])
    rows[1] = ",".join(rows[1].split(",")[:2] + ["-inf"] + rows[1].split(",")[3:])
    rows[2] = ",".join(rows[2].split(",")[:2] + ["7"] + rows[2].split(",")[3:])
    bad.write_text("\n".join([lines[0], *rows]) + "\n")
    assert _shard(items, bad, tmp_path / "d") == 0
    reasons = {e["line"]: e["reason"] for e in read_quarantine(tmp_path / "d" / "quarantine.jsonl")
               if e["kind"] == "interaction"}
    assert "implausible" in reasons[2] and "not a finite number" in reasons[3] and 4 not in reasons
    assert _shard(items, bad, tmp_path / "d5", "--rating-range", "1,5") == 0  # the 7 is out of range too
    reasons = {e["line"]: e["reason"] for e in read_quarantine(tmp_path / "d5" / "quarantine.jsonl")
               if e["kind"] == "interaction"}
    assert "outside the rating range" in reasons[2] and "outside the rating range" in reasons[4]


def test_a_non_finite_loss_stops_training_with_one_line(tmp_path, capsys):
    from conftest import make_dataset

    data = make_dataset(tmp_path, num_items=40, num_users=10, num_ratings=300, items_per_shard=20)
    assert main(["train", "--config", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                 "train.lr=1e30", "train.encoder_lr=1e30", "train.warmup_steps=0", "train.max_grad_norm=0",
                 "train.log_every=1", "train.epochs=3"]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()  # after the progress bar's redraws
    assert err[-1].startswith("mmrec train: error: the training loss is "), err[-1]


# -- item 9: media paths that are not files, and sizes -----------------------------------------------


def test_devices_fifos_and_oversized_media_are_dropped_unread(small_catalogue, tmp_path):
    import json
    import os

    from mmrec.shard.quarantine import read_quarantine

    items, interactions, written = small_catalogue
    fifo = tmp_path / "pipe.flac"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(2 * 2**20))
    lines = [json.loads(x) for x in items.read_text().splitlines()]
    lines[0]["image"], lines[0]["audio"] = "/dev/zero", str(fifo)  # /dev/zero would be read without end
    lines[1]["image"] = str(big)
    hostile = items.with_name("hostile.jsonl")
    hostile.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["shard", "--items", str(hostile), "--interactions", str(interactions), "--out", str(tmp_path / "d"),
                 "--no-progress", "--max-media-mb", "1"]) == 0
    dropped = {(e["line"], e["reason"].split(":")[0]) for e in read_quarantine(tmp_path / "d" / "quarantine.jsonl")
               if e["kind"] == "modality"}
    assert (1, "image path is not a regular file (a device, FIFO or socket)") in dropped
    assert (1, "audio path is not a regular file (a device, FIFO or socket)") in dropped
    assert (2, "image file is larger than the 1048576 byte cap") in dropped


def test_text_is_capped_before_tokenising():
    from encoders import create_encoder, tiny_config
    from encoders.base import CHARS_PER_TOKEN_CAP

    _, pre = create_encoder(tiny_config("hf-text", max_tokens=16))
    huge = "word " * 400_000  # 2 MB: without the cap the tokenizer would split all of it first
    calls = []
    tokenize = pre.tokenizer
    pre.tokenizer = lambda text, **kw: calls.append(len(text)) or tokenize(text, **kw)
    ids = pre(huge)["input_ids"]
    assert calls == [16 * CHARS_PER_TOKEN_CAP] and len(ids) == 16
    assert ids.tolist() == tokenize(huge[:2000], truncation=True, max_length=16)["input_ids"]  # same kept tokens


# -- items 1 and 2: resuming never unpickles, and resumes from any position ------------------------


class _Payload:
    """What a crafted checkpoint holds: unpickling it would create a folder (stands for any code)."""

    marker = ""

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def _train(data, run, *overrides, resume=False):
    from conftest import TINY

    from mmrec.config import load_run_config
    from mmrec.training.loop import train

    # an ID-only model: what is tested is the loop's bookkeeping, which is the same for every model
    cfg = load_run_config(TINY, ["model.encoders={}", "model.item_id_embeddings=true", "data.batch_size=16",
                                 "train.checkpoint_every=4", "train.keep_checkpoints=10",
                                 "train.early_stopping_patience=0", *overrides])
    return train(cfg, data, run, resume=resume)


def _weights(run, step):
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _small(tmp_path):
    from conftest import make_dataset

    return make_dataset(tmp_path, num_items=60, num_users=20, num_ratings=600, items_per_shard=20)  # 4 steps/epoch


def test_resume_at_an_epoch_boundary_and_after_the_end(tmp_path):
    import shutil

    import torch

    data = _small(tmp_path)
    straight = tmp_path / "straight"
    assert _train(data, straight, "train.epochs=2").step == 8  # checkpoints at 4 (epoch 0's last batch) and 8
    cut = tmp_path / "cut"  # the same run, stopped right after the epoch-boundary checkpoint
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000008")
    assert _train(data, cut, "train.epochs=2", resume=True).step == 8
    a, b = _weights(straight, 8), _weights(cut, 8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # after the last epoch: nothing left to train, nothing changes
    assert _train(data, straight, "train.epochs=2", resume=True).step == 8
    assert all(torch.equal(a[k], v) for k, v in _weights(straight, 8).items())
    # the reported hang: one epoch whose last checkpoint is its last batch, resumed for a second epoch
    short = tmp_path / "short"
    assert _train(data, short, "train.epochs=1").step == 4
    assert _train(data, short, "train.epochs=2", resume=True).step == 8


def test_resume_never_unpickles(tmp_path, caplog):
    import logging

    import torch

    data = _small(tmp_path)
    _Payload.marker = str(tmp_path / "PWNED")
    run = tmp_path / "run"
    _train(data, run, "train.epochs=1", "train.checkpoint_every=2")  # checkpoints at 2 and 4
    # accelerate reads registered objects from custom_checkpoint_N.pkl with weights_only=False: nothing is registered
    torch.save(_Payload(), run / "checkpoints" / "step-00000004" / "custom_checkpoint_0.pkl")
    assert _train(data, run, "train.epochs=2", "train.checkpoint_every=2", resume=True).step == 8
    # a crafted optimizer state is refused by weights_only=True: the checkpoint before is used, and that is said
    torch.save({"state": _Payload()}, run / "checkpoints" / "step-00000008" / "optimizer.bin")
    caplog.set_level(logging.INFO, logger="mmrec")  # the training loop's status lines (the CLI shows them)
    assert _train(data, run, "train.epochs=3", "train.checkpoint_every=2", resume=True).step == 12
    out = caplog.text
    assert "checkpoint step-00000008 is unreadable" in out and "resumed from step 6" in out
    assert not (tmp_path / "PWNED").exists()


# -- item 6: one writer per output folder ------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys, caplog):
    import json
    import os
    import socket
    import subprocess
    import sys

    from mmrec.files import FolderLock

    data = _small(tmp_path)
    run = tmp_path / "run"
    _train(data, run, "train.epochs=1")
    assert not (run / ".lock").exists()  # released when training ends
    # a live writer (this test's parent process stands for a `train --resume` still running)
    owner = {"pid": os.getppid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z"}
    (run / ".lock").write_text(json.dumps(owner))
    before = (run / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--config", "tiny", "--data", str(data), "--out", str(run), "--resume",
                 "model.encoders={}", "model.item_id_embeddings=true", "train.epochs=2"]) == 2
    assert f"is in use by process {os.getppid()}" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == before  # nothing written
    # a writer that died: its lock is stale and taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(json.dumps({**owner, "pid": int(dead.stdout)}))
    assert _train(data, run, "train.epochs=2", resume=True).step == 8
    assert "took over the stale lock" in caplog.text and not (run / ".lock").exists()  # a warning
    with FolderLock(tmp_path / "emb"):  # the same guard on `mmrec embed` (and `mmrec cache`)
        (tmp_path / "emb" / ".lock").write_text(json.dumps(owner))
        assert main(["embed", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "emb")]) == 2


# -- items 4 and 5: a run's steps refuse data that is not the run's ------------------------------------


def test_eval_embed_resume_refuse_another_dataset(tmp_path, capsys):
    import json
    import shutil

    from conftest import make_dataset

    data = _small(tmp_path)
    run = tmp_path / "run"
    _train(data, run, "train.epochs=1")
    assert json.loads((run / "dataset.json").read_text())["split"] == "random"
    # the same catalogue split with another seed: its test rows include the run's training rows
    other = make_dataset(tmp_path / "other", num_items=60, num_users=20, num_ratings=600, items_per_shard=20,
                         protocol="ratio", ratios=(0.8, 0.1, 0.1))
    vocab_before, config_before = (run / "vocabulary.json").read_text(), (run / "config.yaml").read_text()
    for argv in (["eval", "--run", str(run), "--data", str(other), "--out", str(tmp_path / "r"), "--no-ablation"],
                 ["embed", "--run", str(run), "--data", str(other), "--out", str(tmp_path / "e")],
                 ["train", "--config", "tiny", "--data", str(other), "--out", str(run), "--resume",
                  "model.encoders={}", "model.item_id_embeddings=true", "train.epochs=2"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert "is not the dataset" in capsys.readouterr().err
    assert (run / "vocabulary.json").read_text() == vocab_before and (run / "config.yaml").read_text() == config_before
    # a split file replaced after sharding (test.csv by train.csv) is caught on read, not certified
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    shutil.copy(copy / "interactions" / "train.csv", copy / "interactions" / "test.csv")
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--data", str(copy), "--out", str(tmp_path / "r2"), "--no-ablation"]) == 2
    assert "test.csv does not match the manifest's sha256" in capsys.readouterr().err
    # embeddings of another run are refused by eval --emb
    assert main(["embed", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "emb")]) == 0
    run2 = tmp_path / "run2"
    _train(data, run2, "train.epochs=1", "train.seed=3")
    capsys.readouterr()
    assert main(["eval", "--run", str(run2), "--data", str(data), "--out", str(tmp_path / "r3"),
                 "--emb", str(tmp_path / "emb"), "--no-ablation"]) == 2
    assert "holds embeddings of another model" in capsys.readouterr().err


def test_resume_accepts_epochs_and_lr_and_refuses_the_rest(tmp_path, capsys):
    data = _small(tmp_path)
    run = tmp_path / "run"
    _train(data, run, "train.epochs=1")
    config_before = (run / "config.yaml").read_text()
    base = ["train", "--config", "tiny", "--data", str(data), "--out", str(run), "--resume", "model.encoders={}",
            "model.item_id_embeddings=true", "data.batch_size=16", "train.checkpoint_every=4",
            "train.keep_checkpoints=10", "train.early_stopping_patience=0"]
    for change, name in (("data.batch_size=8", "data.batch_size"), ("train.seed=5", "train.seed"),
                         ("model.embedding_dim=8", "model.embedding_dim")):
        capsys.readouterr()
        assert main([*base, "train.epochs=2", change]) == 2
        err = capsys.readouterr().err
        assert f"--resume cannot change {name}" in err and len(err.strip().splitlines()) == 1
        assert (run / "config.yaml").read_text() == config_before  # nothing written
    assert main([*base, "train.epochs=2", "train.lr=5e-4"]) == 0  # how long and how fast: accepted


def test_damaged_shards_are_named_when_read(tmp_path, capsys):
    import io
    import tarfile

    data = _small(tmp_path)
    shard = sorted((data / "items").glob("*.tar"))[1]
    intact = shard.read_bytes()
    argv = ["train", "--config", "tiny", "--data", str(data), "--out", str(tmp_path / "run"), "model.encoders={}",
            "model.item_id_embeddings=true", "train.epochs=1"]
    shard.write_bytes(intact[: len(intact) // 2 + 100])  # truncated mid-member
    assert main(argv) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert err.startswith("mmrec train: error: cannot read") and shard.name in err
    # a member set without its .json (not written by `mmrec shard`)
    with tarfile.open(fileobj=io.BytesIO(intact)) as src, tarfile.open(shard, "w") as dst:
        for member in src.getmembers():
            if not member.name.endswith(".json") or member.name.split(".")[0] != src.getnames()[0].split(".")[0]:
                dst.addfile(member, src.extractfile(member))
    assert main([*argv[:6], str(tmp_path / "run2"), *argv[7:]]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "has no .json member" in err and shard.name in err


def test_a_corrupt_model_file_falls_back_to_its_checkpoint(tmp_path, capsys):
    import json

    data = _small(tmp_path)
    run = tmp_path / "run"
    _train(data, run, "train.epochs=2", "train.selection_metric=rmse")  # checkpoints kept: 4 and 8
    assert main(["eval", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "a"), "--no-ablation"]) == 0
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "b"), "--no-ablation"]) == 0
    err = capsys.readouterr().err
    assert "cannot be loaded" in err and "the checkpoint of the same step" in err
    a, b = (json.loads((tmp_path / x / "report.json").read_text()) for x in ("a", "b"))
    assert a["ranking"] == b["ranking"] and a["rating"] == b["rating"]  # the same weights


# -- items 3 and 11, on a small trained run (conftest's `trained`) --------------------------------


def test_a_small_slice_never_sinks_the_report(trained, tmp_path):
    """The cold slice has fewer items than the largest K: it reports the cut-offs it supports and says
    why not the others; the report is written (issue 14, item 11). A headline that cannot be computed
    is the one error."""
    root, data = trained
    assert main(["eval", "--run", str(root / "run"), "--data", str(data), "--k", "5,10,100", "--out",
                 str(tmp_path / "r"), "--emb", str(root / "emb"), "--candidates", "all", "--no-ablation"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    cold = report["slices"]["cold_items"]
    assert cold["candidates"] < 100 <= report["ranking"]["candidates"]
    assert {"ndcg@5", "ndcg@10"} <= set(cold) and "ndcg@100" not in cold
    assert cold["not_computable"] == {"@100": f"only {cold['candidates']} candidate items, fewer than K = 100"}
    assert "Not computable: cold items @100" in (tmp_path / "r" / "report.md").read_text()
    assert main(["eval", "--run", str(root / "run"), "--data", str(data), "--k", "10,500", "--out",
                 str(tmp_path / "r2"), "--emb", str(root / "emb"), "--candidates", "all", "--no-ablation"]) == 2


def test_embedding_parts_belong_to_one_model_and_one_set_of_shards(trained, tmp_path):
    """Re-embedding into the same folder after retraining recomputes every part (it once reused the old
    model's item vectors with the new model's users); a damaged shard is refused by name, and once
    restored the run completes with the clean output (issue 14, item 3)."""
    import shutil

    root, data = trained
    emb = tmp_path / "emb"
    assert main(["embed", "--run", str(root / "run"), "--data", str(data), "--out", str(emb)]) == 0
    # a "retrained" run: the same folder with other weights
    other = tmp_path / "other"
    shutil.copytree(root / "run", other)
    weights = load_file(other / "model" / "model.safetensors")
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()},
              other / "model" / "model.safetensors")
    assert main(["embed", "--run", str(other), "--data", str(data), "--out", str(emb)]) == 0
    fresh = tmp_path / "fresh"
    assert main(["embed", "--run", str(other), "--data", str(data), "--out", str(fresh)]) == 0
    for f in ("item_embeddings.safetensors", "user_embeddings.safetensors"):
        assert torch.equal(load_file(emb / f)["embeddings"], load_file(fresh / f)["embeddings"])
    # a truncated shard: refused by name, nothing half-made kept; restored, the run completes as before
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shard = sorted((copy / "items").glob("*.tar"))[2]
    intact = shard.read_bytes()
    shard.write_bytes(intact[: len(intact) // 2])
    out = tmp_path / "emb3"
    assert main(["embed", "--run", str(root / "run"), "--data", str(copy), "--out", str(out), "--shards-per-part",
                 "1"]) == 2
    shard.write_bytes(intact)
    assert main(["embed", "--run", str(root / "run"), "--data", str(copy), "--out", str(out), "--shards-per-part",
                 "1"]) == 0
    assert torch.equal(load_file(out / "item_embeddings.safetensors")["embeddings"],
                       load_file(root / "emb" / "item_embeddings.safetensors")["embeddings"])
