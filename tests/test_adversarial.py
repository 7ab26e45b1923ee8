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
