"""Hostile and careless use (the trust issue): each case once produced a wrong result with exit 0, a
hang or a deleted input; each must now give one clear line (exit status 2) or a quarantine entry."""

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
