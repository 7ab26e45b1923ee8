"""The layout and its one-way imports (docs/design.md "Architecture").

Our `encoders`/`fusion` (PyPI has unrelated packages with those names), a `datasets/` folder that
must never become importable (it would shadow Hugging Face `datasets`), and the layers of `mmrec`:

    data  ->  shard, model  ->  embedding  ->  training  ->  serve  ->  evaluate  ->  demo, cli

`mmrec.evaluate.protocol` and `mmrec.evaluate.metrics` (the one evaluation rule and the metrics) import
the data layer only, so training validation uses exactly the rule `mmrec eval` reports with; the rest
of `mmrec.evaluate` sits above serving, so the report measures the diversity and the explanations that
serving answers with.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module (or package prefix) -> the mmrec modules it may import; `mmrec` alone (the version) is always allowed
BASE = {"mmrec", "mmrec.files", "mmrec.config_io", "mmrec.precision"}
DATA = {"mmrec.data"}
MODEL = DATA | {"mmrec.model", "mmrec.config"}
RULE = DATA | {"mmrec.evaluate.protocol", "mmrec.evaluate.metrics"}
PIPELINE = MODEL | RULE | {"mmrec.embedding", "mmrec.training"}
SERVE = MODEL | {"mmrec.embedding", "mmrec.shard", "mmrec.serve"}
ALLOWED = {
    "mmrec.data": DATA,
    "mmrec.shard": DATA | {"mmrec.shard"},
    "mmrec.model": MODEL,
    "mmrec.config": {"mmrec.config", "mmrec.model.config", "mmrec.data.schema"},
    "mmrec.evaluate.protocol": RULE,
    "mmrec.evaluate.metrics": RULE,
    "mmrec.embedding": MODEL | {"mmrec.embedding"},
    "mmrec.training": PIPELINE,
    "mmrec.serve": SERVE,
    # MMR re-ranking works on tensors (and reads items' attributes from DATA): the report and serving share it
    "mmrec.serve.rerank": DATA | {"mmrec.serve.rerank"},
    # the nearest-neighbour index serves the exported files: it never needs the model or the data readers
    "mmrec.serve.ann": {"mmrec.serve.ann", "mmrec.serve.embeddings", "mmrec.files", "mmrec.config_io"},
    "mmrec.evaluate": PIPELINE - {"mmrec.training"} | SERVE | {"mmrec.evaluate"},
}


def _mmrec_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmrec":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if node.module == "mmrec.data")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mmrec")
    return found


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _rule_for(module: str) -> set[str] | None:
    best = max((k for k in ALLOWED if module == k or module.startswith(k + ".")), key=len, default=None)
    return None if best is None else ALLOWED[best]


def _allowed(imported: str, allowed: set[str]) -> bool:
    return imported in BASE or any(imported == a or imported.startswith(a + ".") for a in allowed)


def test_imports_run_one_way():
    bad = []
    for path in sorted((ROOT / "mmrec").rglob("*.py")):
        module = _module_name(path)
        allowed = _rule_for(module)
        if allowed is None:
            continue  # cli, demo, __main__: the top, may import anything
        bad += [f"{module} imports {m}" for m in sorted(_mmrec_imports(path)) if not _allowed(m, allowed)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layering_check_catches_an_upward_import(tmp_path):
    """The check above can fail: a data module importing the training loop is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from mmrec.training.loop import train\nfrom mmrec.data.reader import load_manifest\n")
    imported = _mmrec_imports(bad)
    assert [m for m in imported if not _allowed(m, ALLOWED["mmrec.data"])] == ["mmrec.training.loop"]


@pytest.mark.parametrize("statement", [
    "from mmrec.config import load_run_config; load_run_config('tiny')",  # a YAML config needs no torch
    "import mmrec, encoders, fusion; mmrec.__version__; encoders.EncoderConfig; fusion.FusionConfig",
])
def test_configs_load_without_torch(statement):
    code = f"import sys; {statement}; heavy = [m for m in ('torch', 'webdataset', 'PIL') if m in sys.modules]; " \
           "print(','.join(heavy))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_the_model_needs_no_reader():
    """`ItemBatch` (what the model consumes) comes without webdataset or PIL."""
    code = "import sys, mmrec.model.model; print('webdataset' in sys.modules or 'PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_encoders_and_fusion_are_ours():
    import encoders
    import fusion

    assert Path(encoders.__file__).resolve().parent == ROOT / "encoders"
    assert Path(fusion.__file__).resolve().parent == ROOT / "fusion"


def test_datasets_folder_is_not_a_package():
    assert (ROOT / "datasets").is_dir()
    assert not (ROOT / "datasets" / "__init__.py").exists()
