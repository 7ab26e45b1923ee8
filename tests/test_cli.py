"""The `mmrec` command line as a user runs it."""

import json
import subprocess
import sys

from mmrec.cli import main


def test_demo_runs_the_whole_pipeline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "cold items (among cold)" in out and "report.md" in out  # the closing table and where the report is
    manifest = json.loads((tmp_path / "demo" / "data" / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["items_written"] == 1000 and c["item_lines"] == c["items_written"] + c["items_quarantined"]
    assert manifest["split"]["protocol"] == "cold-items"
    assert all(0.8 < v["fraction"] < 1.0 for v in manifest["modalities"].values())  # some items lack each one
    report = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert (tmp_path / "demo" / "report" / "report.md").is_file() and (tmp_path / "demo" / "emb" / "item_ids.json").is_file()
    # the content path learns: cold items (never seen in training) are ranked better than by popularity
    cold, pop = report["slices"]["cold_items"], report["baselines"]["popularity"]["slices"]["cold_items"]
    assert cold["ndcg@10"] > 1.5 * pop["ndcg@10"]


def test_console_script_reports_bad_input_with_exit_status_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmrec.cli", "shard", "--items", str(tmp_path / "missing.jsonl"),
                             "--interactions", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "d")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "input file not found" in result.stderr and "Traceback" not in result.stderr
