"""Compare two folders written by benchmarks/same_outputs.sh: tensors bit for bit, JSON and text with the
output folder's path and times normalised away. Prints every difference; exits 1 when there is any.

    .venv/bin/python benchmarks/compare_outputs.py OUT_BEFORE OUT_AFTER
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

# times, and the dataset manifest's sha256 (the manifest records the catalogue's path, which is under OUT)
TIME_KEYS = re.compile(r"(seconds|created_at|_s$|^time|since|elapsed|duration|wall|manifest_sha256)", re.I)
SKIPPED = ("checkpoints", "logs")  # checkpoints hold RNG and optimizer states compared through the weights


def normalised(value, root: Path):
    """`value` with every time-like key dropped and the output folder's path replaced."""
    if isinstance(value, dict):
        return {k: normalised(v, root) for k, v in value.items() if not TIME_KEYS.search(k)}
    if isinstance(value, list):
        return [normalised(v, root) for v in value]
    return value.replace(str(root), "<OUT>") if isinstance(value, str) else value


def json_differences(x, y, where: str = "") -> list[str]:
    if type(x) is not type(y):
        return [f"{where}: {type(x).__name__} vs {type(y).__name__}"]
    if isinstance(x, dict):
        out = []
        for k in sorted(set(x) | set(y)):
            if k not in x or k not in y:
                out.append(f"{where}/{k}: only in {'after' if k not in x else 'before'}")
            else:
                out += json_differences(x[k], y[k], f"{where}/{k}")
        return out
    if isinstance(x, list):
        out = [f"{where}: {len(x)} vs {len(y)} entries"] if len(x) != len(y) else []
        for i, (u, v) in enumerate(zip(x, y)):
            out += json_differences(u, v, f"{where}[{i}]")
        return out
    both_nan = isinstance(x, float) and x != x and y != y
    return [] if x == y or both_nan else [f"{where}: {str(x)[:80]} vs {str(y)[:80]}"]


def read_json(path: Path) -> list:
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]


def plain_text(path: Path, root: Path) -> str:
    text = path.read_text().replace(str(root), "<OUT>")
    text = re.sub(r"\d+(\.\d+)? (s|items/s)\b", r"<N> \2", text)  # timings and throughputs
    text = re.sub(r"(manifest(_| )sha256:? `?)[0-9a-f]{64}", r"\1<SHA>", text)
    text = re.sub(r"(measured|created(_at)?:?) \d{4}-\d\d-\d\dT[\d:]+Z", r"\1 <T>", text)
    return re.sub(r"created(_at)?\W.*", "created <T>", text)


def differences(a: Path, b: Path) -> list[str]:
    found = []
    for f in sorted(a.rglob("*")):
        rel = f.relative_to(a)
        g = b / rel
        if f.is_dir() or any(part in SKIPPED for part in rel.parts):
            continue
        if not g.exists():
            found.append(f"{rel}: missing after")
        elif f.suffix == ".safetensors":
            ta, tb = load_file(f), load_file(g)
            names = sorted(k for k in set(ta) | set(tb) if k not in ta or k not in tb or not torch.equal(ta[k], tb[k]))
            found += [f"{rel}: tensors differ: {names[:5]}"] if names else []
        elif f.suffix in (".json", ".jsonl"):
            found += [f"{rel}{d}" for d in json_differences(normalised(read_json(f), a), normalised(read_json(g), b))]
        elif f.suffix in (".txt", ".md", ".csv", ".yaml"):
            before, after = plain_text(f, a), plain_text(g, b)
            if before != after:
                diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
                found.append(f"{rel}: text differs\n    " + "\n    ".join(list(diff)[2:12]))
        elif f.suffix == ".tar" and f.read_bytes() != g.read_bytes():
            found.append(f"{rel}: bytes differ")
    found += [f"{g.relative_to(b)}: only after" for g in sorted(b.rglob("*"))
              if not (a / g.relative_to(b)).exists() and not any(p in SKIPPED for p in g.relative_to(b).parts)]
    return found


def main(argv: list[str] | None = None) -> int:
    before, after = (Path(p).resolve() for p in (argv or sys.argv[1:]))
    found = differences(before, after)
    print("\n".join(found))
    print(f"{len(found)} differences")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
