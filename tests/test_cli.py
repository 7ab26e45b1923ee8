"""The `mmrec` command line as a user runs it."""

import json
import subprocess
import sys

from mmrec.cli import main


def test_demo_builds_catalogue_and_shards(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "Not yet part of the demo" in out  # says which stages do not exist yet
    manifest = json.loads((tmp_path / "demo" / "data" / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["items_written"] == 1000 and c["item_lines"] == c["items_written"] + c["items_quarantined"]
    assert manifest["split"]["protocol"] == "cold-items"
    assert all(0.8 < v["fraction"] < 1.0 for v in manifest["modalities"].values())  # some items lack each one


def test_console_script_reports_bad_input_with_exit_status_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmrec.cli", "shard", "--items", str(tmp_path / "missing.jsonl"),
                             "--interactions", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "d")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "input file not found" in result.stderr and "Traceback" not in result.stderr
