"""The docs hold together: benchmarks/README.md is what benchmarks/tables.py makes of the results' JSON,
and every relative link in the Markdown guides points at a file (and a heading) that exists."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"#+\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _broken_links(paths: list[Path]) -> list[str]:
    broken = []
    for doc in paths:
        root = ROOT if doc.is_relative_to(ROOT) else doc.parent
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # links in code are examples
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(root)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(root)}: {target} (no such heading)")
    return broken


def test_benchmark_tables_are_generated_from_their_json():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tables.py"), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_relative_links_resolve():
    assert not _broken_links(DOCS)


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n[ok](a.md#title) [gone](missing.md) [bad](a.md#nowhere)\n")
    assert [b.split(": ", 1)[1] for b in _broken_links([tmp_path / "a.md"])] == [
        "missing.md (no such file)", "a.md#nowhere (no such heading)"]
