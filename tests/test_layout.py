"""The layout and its one-way imports (docs/design.md "Architecture").

Our `encoders`/`fusion` (PyPI has unrelated packages with those names), a `datasets/` folder that
must never become importable (it would shadow Hugging Face `datasets`), and the layers of `mmrec`:

    data  ->  shard, model  ->  embedding  ->  training  ->  serve  ->  evaluate  ->  demo, cli

`mmrec.evaluate.protocol` and `mmrec.evaluate.metrics` (the one evaluation rule and the metrics) import
the data layer only, so training validation uses exactly the rule `mmrec eval` reports with; the rest
of `mmrec.evaluate` sits above serving, so the report measures the diversity and the explanations that
serving answers with.

The import graph is read from the sources (every `import`, at module level, inside a function or under
`if TYPE_CHECKING:`), and every module of `mmrec` must have a rule below unless it is one of the top
(`TOP`), so a new module cannot slip past the check. Beyond the layers: no module reaches into another
one's private names, and no two modules import each other, however indirectly. Each check has a test
beside it that feeds it a small bad tree, so it is known to be able to fail.
"""

import ast
import functools
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
    # importable from every layer, so they import nothing of mmrec but one another
    "mmrec.files": BASE,
    "mmrec.config_io": BASE,
    "mmrec.precision": BASE,
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
    "mmrec.serve.rerank": DATA | {"mmrec.serve.rerank", "mmrec.serve.similarity"},
    # the one item-to-item similarity, on tensors alone: `similar`, re-ranking and the report's diversity share it
    "mmrec.serve.similarity": set(),
    # the nearest-neighbour index serves the exported files: it never needs the model or the data readers
    "mmrec.serve.ann": {"mmrec.serve.ann", "mmrec.serve.embeddings", "mmrec.files", "mmrec.config_io"},
    "mmrec.evaluate": PIPELINE - {"mmrec.training"} | SERVE | {"mmrec.evaluate"},
}
# the top: the package (its lazy public API), `python -m mmrec`, the demo and the command line import anything
TOP = {"mmrec", "mmrec.__main__", "mmrec.demo", "mmrec.cli"}
# what each of the other two packages may import of the three; neither imports mmrec, fusion takes tensors
PACKAGES = {"encoders": {"encoders", "fusion"}, "fusion": {"fusion"}}


def _is_top(module: str) -> bool:
    return module in TOP or module.startswith("mmrec.cli.")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@functools.cache
def _modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` under `root`: dotted name -> file (a package is its `__init__.py`)."""
    return {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted((root / package).rglob("*.py"))}


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _from_base(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute module a `from ... import` reads from (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
    return f"{package}.{node.module}" if node.module else package


def _imports(root: Path, module: str, ours: tuple[str, ...] = ("mmrec",)) -> dict[str, int]:
    """The modules of the `ours` packages that `module` imports, each with the line of its first import.

    Every import counts, wherever it is. `from P import name` imports `P.name` when that is a module
    (`from mmrec.serve import rerank` imports `mmrec.serve.rerank`), and `P` otherwise.
    """
    known = {m for p in ours for m in _modules(root, p)}
    path = _modules(root, module.split(".")[0])[module]
    found: dict[str, int] = {}
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, module, path)
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            names = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        for name in names:
            if name.split(".")[0] in ours:
                found[name] = min(found.get(name, node.lineno), node.lineno)
    return found


def _rule_for(module: str) -> set[str] | None:
    best = max((k for k in ALLOWED if _under(module, k)), key=len, default=None)
    return None if best is None else ALLOWED[best]


def _allowed(imported: str, allowed: set[str]) -> bool:
    return imported in BASE or any(_under(imported, a) for a in allowed)


def _layering_violations(root: Path) -> list[str]:
    bad = []
    for module in _modules(root, "mmrec"):
        allowed = _rule_for(module)
        if allowed is None:
            if not _is_top(module):
                bad.append(f"{module} has no rule (add it to ALLOWED, or to TOP if it is the top)")
            continue
        bad += [f"{module} imports {m} (line {line})" for m, line in sorted(_imports(root, module).items())
                if not _allowed(m, allowed)]
    return bad


def _resolve(expr: ast.expr, bound: dict[str, str]) -> str | None:
    """The dotted name `expr` stands for when its head is a bound name (`mmrec.data.reader`), else None."""
    if isinstance(expr, ast.Name):
        return bound.get(expr.id)
    if isinstance(expr, ast.Attribute) and (parent := _resolve(expr.value, bound)):
        return f"{parent}.{expr.attr}"
    return None


def _private_violations(root: Path) -> list[str]:
    """`from mmrec.x import _y`, and `mmrec.x._y` / `x._y` / `getattr(x, "_y")` on an imported mmrec module."""
    known = set(_modules(root, "mmrec"))
    bad = []
    for module, path in _modules(root, "mmrec").items():
        tree = _tree(path)
        bound: dict[str, str] = {}  # local name -> the mmrec module it is
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "mmrec":
                        bound[a.asname or "mmrec"] = a.name if a.asname else "mmrec"
            elif isinstance(node, ast.ImportFrom):
                base = _from_base(node, module, path)
                if base.split(".")[0] != "mmrec":
                    continue
                for a in node.names:
                    if f"{base}.{a.name}" in known:
                        bound[a.asname or a.name] = f"{base}.{a.name}"
                    if _is_private(a.name) and base != module:
                        bad.append(f"{module} imports {base}.{a.name} (line {node.lineno})")

        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner, name = _resolve(node.value, bound), node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr")
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str) and _is_private(node.args[1].value)):
                owner, name = _resolve(node.args[0], bound), node.args[1].value
            else:
                continue
            if owner in known and owner != module:
                bad.append(f"{module} uses {owner}.{name} (line {node.lineno})")
    return sorted(set(bad))


def _cycles(root: Path) -> list[str]:
    """Each group of mmrec modules that import one another (directly or not), with one cycle through it."""
    graph = {m: sorted(set(_imports(root, m)) & set(_modules(root, "mmrec"))) for m in _modules(root, "mmrec")}
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in graph[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                group.append(stack.pop())
                if group[-1] == m:
                    break
            if len(group) > 1 or m in graph[m]:
                groups.append(sorted(group))

    for m in graph:
        if m not in index:
            visit(m)

    def cycle(group: list[str]) -> list[str]:
        """The shortest cycle through the group's first module (breadth first, inside the group)."""
        start, paths = group[0], {group[0]: [group[0]]}
        queue = [start]
        for m in queue:
            for n in graph[m]:
                if n == start:
                    return paths[m] + [start]
                if n in group and n not in paths:
                    paths[n] = paths[m] + [n]
                    queue.append(n)
        raise AssertionError(f"no cycle through {start}")  # a component always has one

    def edges(group: list[str]) -> str:
        return ", ".join(f"{m} -> {n} (line {line})" for m in group for n, line in sorted(_imports(root, m).items())
                         if n in group)

    return [f"{' -> '.join(cycle(g))}; all imports inside the group: {edges(g)}" for g in sorted(groups)]


def _package_violations(root: Path) -> list[str]:
    bad = []
    for package, allowed in PACKAGES.items():
        for module in _modules(root, package):
            imported = _imports(root, module, ours=("mmrec", "encoders", "fusion"))
            bad += [f"{module} imports {m} (line {line})" for m, line in sorted(imported.items())
                    if m.split(".")[0] not in allowed]
    return bad


def _tree_of(root: Path, files: dict[str, str]) -> Path:
    """A small package tree under `root`: {"mmrec/data/a.py": source, ...} (empty `__init__.py`s added)."""
    for name, source in files.items():
        path = root / name
        for folder in path.relative_to(root).parents:
            if folder != Path("."):
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / "__init__.py").touch()
        path.write_text(source)
    return root


def test_imports_run_one_way():
    bad = _layering_violations(ROOT)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layering_check_catches_an_upward_import(tmp_path):
    """The check above can fail: a data module importing the training loop is reported, at any depth."""
    root = _tree_of(tmp_path, {
        "mmrec/data/reader.py": "def load_manifest(): ...\n",
        "mmrec/training/loop.py": "def train(): ...\n",
        "mmrec/data/bad.py": "from mmrec.training.loop import train\nfrom mmrec.data.reader import load_manifest\n",
        "mmrec/data/lazy.py": "def f():\n    import mmrec.training.loop\n",
        "mmrec/data/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mmrec import training\n",
    })
    assert _layering_violations(root) == [
        "mmrec.data.bad imports mmrec.training.loop (line 1)",
        "mmrec.data.lazy imports mmrec.training.loop (line 2)",
        "mmrec.data.typed imports mmrec.training (line 3)",
    ]


def test_a_module_without_a_rule_is_reported(tmp_path):
    """A new module must be placed in the layering: only the declared top may import anything."""
    root = _tree_of(tmp_path, {
        "mmrec/__main__.py": "from mmrec.cli import main\n",
        "mmrec/demo.py": "import mmrec.training.loop\n",
        "mmrec/cli/commands/run.py": "import mmrec.training.loop\n",
        "mmrec/training/loop.py": "",
        "mmrec/api.py": "",
        "mmrec/serve2/__init__.py": "",
    })
    assert _layering_violations(root) == [
        "mmrec.api has no rule (add it to ALLOWED, or to TOP if it is the top)",
        "mmrec.serve2 has no rule (add it to ALLOWED, or to TOP if it is the top)",
    ]


def test_from_a_package_import_a_submodule_imports_that_submodule(tmp_path):
    """`from mmrec.pkg import sub` is an import of `mmrec.pkg.sub`; `from mmrec.pkg import name` of `mmrec.pkg`."""
    root = _tree_of(tmp_path, {
        "mmrec/serve/rerank.py": "",
        "mmrec/serve/explain.py": "",
        "mmrec/serve/__init__.py": "NAME = 1\n",
        "mmrec/evaluate/metrics.py": "from mmrec.serve import rerank, NAME\nfrom mmrec.serve import explain as e\n",
    })
    assert _imports(root, "mmrec.evaluate.metrics") == {"mmrec.serve.rerank": 1, "mmrec.serve": 1,
                                                        "mmrec.serve.explain": 2}
    # the rule for metrics (the data layer only) names each of them
    assert _layering_violations(root) == [
        "mmrec.evaluate.metrics imports mmrec.serve (line 1)",
        "mmrec.evaluate.metrics imports mmrec.serve.explain (line 2)",
        "mmrec.evaluate.metrics imports mmrec.serve.rerank (line 1)",
    ]


def test_no_module_uses_another_modules_private_names():
    bad = _private_violations(ROOT)
    assert not bad, "private names used outside their module (make them public, or move the code):\n" + "\n".join(bad)


def test_the_private_name_check_catches_each_form(tmp_path):
    root = _tree_of(tmp_path, {
        "mmrec/__init__.py": "__version__ = '0'\n",
        "mmrec/data/reader.py": "def _helper(): ...\nx = _helper()\n",
        "mmrec/shard/a.py": "from mmrec.data.reader import _helper\n",
        "mmrec/shard/b.py": "import mmrec.data.reader\nmmrec.data.reader._helper()\n",
        "mmrec/shard/c.py": "from mmrec.data import reader as r\nr._helper()\n",
        "mmrec/shard/d.py": "import mmrec.data.reader as r\ngetattr(r, '_helper')()\n",
        "mmrec/shard/fine.py": "from mmrec import __version__\nfrom mmrec.data import reader\nreader.__name__\n"
                               "class A:\n    def f(self):\n        return self._x\n",
    })
    assert _private_violations(root) == [
        "mmrec.shard.a imports mmrec.data.reader._helper (line 1)",
        "mmrec.shard.b uses mmrec.data.reader._helper (line 2)",
        "mmrec.shard.c uses mmrec.data.reader._helper (line 2)",
        "mmrec.shard.d uses mmrec.data.reader._helper (line 2)",
    ]


def test_no_import_cycles():
    cycles = _cycles(ROOT)
    assert not cycles, "mmrec modules that import one another (counting function-level and TYPE_CHECKING imports):\n" \
        + "\n".join(cycles)


def test_the_cycle_check_catches_a_hidden_cycle(tmp_path):
    """A cycle closed only by a function-level import and one under TYPE_CHECKING is still a cycle."""
    root = _tree_of(tmp_path, {
        "mmrec/data/a.py": "from mmrec.data import b\n",
        "mmrec/data/b.py": "def f():\n    from mmrec.data.c import g\n",
        "mmrec/data/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import mmrec.data.a\ndef g(): ...\n",
        "mmrec/data/d.py": "import mmrec.data.a\n",  # depends on the cycle, is not part of it
        "mmrec/model/x.py": "from mmrec.model import x\n",
    })
    assert _cycles(root) == [
        "mmrec.data.a -> mmrec.data.b -> mmrec.data.c -> mmrec.data.a; all imports inside the group: "
        "mmrec.data.a -> mmrec.data.b (line 1), mmrec.data.b -> mmrec.data.c (line 2), "
        "mmrec.data.c -> mmrec.data.a (line 3)",
        "mmrec.model.x -> mmrec.model.x; all imports inside the group: mmrec.model.x -> mmrec.model.x (line 1)",
    ]


def test_encoders_and_fusion_never_import_mmrec():
    bad = _package_violations(ROOT)
    assert not bad, "encoders and fusion never import mmrec; fusion never imports encoders:\n" + "\n".join(bad)


def test_the_package_check_catches_an_import_of_mmrec(tmp_path):
    root = _tree_of(tmp_path, {
        "mmrec/data/schema.py": "",
        "encoders/text.py": "import fusion\ndef f():\n    from mmrec.data import schema\n",
        "fusion/transformer.py": "from encoders.text import f\n",
    })
    assert _package_violations(root) == [
        "encoders.text imports mmrec.data.schema (line 3)",
        "fusion.transformer imports encoders.text (line 1)",
    ]


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
