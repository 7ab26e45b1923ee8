"""What a run says and where (issue 18): trackers through `train.log_with`, status lines and progress bars on
stderr at the level of -v / -q, the command's answer on stdout, and the demo's closing commands that work."""

import json
import shlex

import pytest

from mmrec.cli import main

# an ID-only model: what is tested is what the loop reports, not what it learns
ID_ONLY = ["model.encoders={}", "model.item_id_embeddings=true", "data.batch_size=16", "train.early_stopping_patience=0"]


def _lines(stream: str) -> list[str]:
    return [line for line in stream.replace("\r", "\n").splitlines() if line.strip()]  # progress bars redraw with \r


def test_tensorboard_tracker_gets_the_losses_and_validations_and_v_shows_debug(trained, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, data = trained  # its dataset; a run of its own: one epoch of 4 steps, validated every 2
    run = tmp_path / "run"
    assert main(["-v", "train", "--config", "tiny", "--data", str(data), "--out", str(run), *ID_ONLY,
                 "data.steps_per_epoch=4", "train.epochs=1", "train.eval_every=2", "train.log_every=1",
                 "train.log_with=tensorboard"]) == 0
    out, err = capsys.readouterr()
    assert list((run / "logs" / "mmrec").glob("events.out.tfevents.*")), sorted(map(str, run.rglob("*")))
    events = EventAccumulator(str(run / "logs" / "mmrec"))
    events.Reload()
    assert {"loss/total", "lr", "valid/ndcg@10", "valid/rmse"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]
    # the same numbers as metrics.jsonl (the contract), at the same steps
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if "valid/ndcg@10" in r]
    assert [e.step for e in events.Scalars("valid/ndcg@10")] == [r["step"] for r in valid] == [2, 4]
    assert [e.value for e in events.Scalars("valid/ndcg@10")] == pytest.approx([r["valid/ndcg@10"] for r in valid])
    # the answer on stdout; on stderr one line per validation, and -v's debug lines
    assert out.startswith("trained 4 steps;") and len(out.splitlines()) == 1
    lines = _lines(err)
    assert sum(line.startswith("validation at step") for line in lines) == len(valid) == 2
    assert any(line.startswith("debug: mmrec.training.checkpoints: checkpoint") for line in lines), lines


def test_quiet_keeps_the_answer_and_drops_status_and_bars(small_catalogue, tmp_path, capsys):
    items, interactions, _ = small_catalogue
    shard = ["shard", "--items", str(items), "--interactions", str(interactions)]
    assert main([*shard, "--out", str(tmp_path / "d1")]) == 0
    out, err = capsys.readouterr()
    assert "items: 100%" in err and not any(line.startswith("debug:") for line in _lines(err))  # INFO: the bar
    assert main(["-v", *shard, "--out", str(tmp_path / "d2")]) == 0
    assert "debug: mmrec.shard.writer: " in capsys.readouterr().err
    assert main([*shard, "--out", str(tmp_path / "d3"), "-q"]) == 0  # -q after the subcommand too
    quiet_out, quiet_err = capsys.readouterr()
    assert quiet_err == ""
    assert "12 written" in quiet_out and quiet_out.splitlines()[:3] == out.splitlines()[:3]  # the same answer


def test_tracker_names_are_checked_with_one_clear_line(tmp_path, capsys, monkeypatch):
    import mmrec.training.reporting
    from mmrec.config import load_run_config

    assert main(["train", "--config", "tiny", "--data", str(tmp_path), "train.log_with=tensorbord"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown tracker(s) ['tensorbord']" in err and "'wandb'" in err, err
    assert load_run_config("tiny").train.log_with == []  # off unless asked
    assert load_run_config("tiny", ["train.log_with=[TensorBoard, wandb]"]).train.log_with == ["tensorboard", "wandb"]
    # a known tracker whose package is missing: named, with what to install (accelerate would skip it silently)
    monkeypatch.setattr(mmrec.training.reporting, "get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match=r"\['tensorboard'\], whose package is not installed: pip install 'mmrec\[tensorboard\]'"):
        mmrec.training.reporting.resolve_trackers(["tensorboard"])
    with pytest.raises(ValueError, match="no tracker package is installed"):
        mmrec.training.reporting.resolve_trackers(["all"])


def test_the_demos_closing_commands_work_when_pasted(demo, capsys):
    _, printed = demo
    commands = [shlex.split(line)[1:] for line in printed.splitlines() if line.startswith("  mmrec ")]
    assert [argv[0] for argv in commands] == ["recommend", "similar", "search"]
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 0, argv
        answer = capsys.readouterr().out.splitlines()
        assert len(answer) >= 5, (argv, answer)  # a ranked list, not a message
