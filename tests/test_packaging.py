"""A user's install: the wheel (not an editable checkout) carries the presets and the entry points.

Its metadata takes ranges (a user's own CUDA torch stays), while constraints.txt pins the exact set
CI and `make` install.

Built with `pip wheel --no-deps` and installed into a fresh virtual environment whose third-party
packages (torch, transformers, ...) are borrowed from the test environment by a plain path entry,
so nothing is downloaded and the source tree is not on the path. Then, from a folder outside the
repository: `mmrec --version`, `mmrec --help`, `python -m mmrec`, the `tiny` preset, and the demo's
first two steps (catalogue, shards).
"""

import email.parser
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import mmrec

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The mmrec wheel, built from a clean copy of the sources."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: setuptools would leave build/ in the checkout, and reuse it
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("mmrec", "encoders", "fusion"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(tmp / "dist"), str(src)], cwd=tmp)
    assert built.returncode == 0, built.stderr
    return next((tmp / "dist").glob("mmrec-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the mmrec wheel installed."""
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp).returncode == 0
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    # the test environment's packages as a plain path entry: its .pth files (our editable finder) stay inactive
    (site / "borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # this environment's pip installs into the new one (pip --python), as `pip install mmrec-*.whl` would
    done = _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                 "--no-index", str(wheel)], cwd=tmp)
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def test_the_wheel_ships_the_presets_and_entry_points(installed, tmp_path):
    version = _run([str(installed / "mmrec"), "--version"], cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"mmrec {mmrec.__version__}"
    assert _run([str(installed / "mmrec"), "--help"], cwd=tmp_path).returncode == 0
    module = _run([str(installed / "python"), "-m", "mmrec", "train", "--help"], cwd=tmp_path)
    assert module.returncode == 0 and "--config" in module.stdout

    code = ("import mmrec, pathlib, sys; from mmrec.config import list_presets, load_run_config; "
            "assert 'site-packages' in mmrec.__file__, mmrec.__file__; "
            "cfg = load_run_config('tiny'); print(sorted(list_presets()), cfg.train.epochs)")
    presets = _run([str(installed / "python"), "-c", code], cwd=tmp_path)
    assert presets.returncode == 0, presets.stderr
    assert presets.stdout.split("]")[0] == "['base', 'movielens-cold', 'movielens-ranking', 'movielens-rating', 'tiny'"


def test_the_installed_package_runs_the_demos_first_steps(installed, tmp_path):
    code = ("from pathlib import Path; "
            "from mmrec.shard.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue; "
            "info = write_synthetic_catalogue(Path('cat'), SyntheticCatalogueConfig(num_items=40, num_users=10, "
            "num_ratings=200)); print(info['num_items'])")
    made = _run([str(installed / "python"), "-c", code], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    shard = _run([str(installed / "mmrec"), "shard", "--items", "cat/items.jsonl", "--interactions",
                  "cat/interactions.csv", "--out", "data", "--no-progress"], cwd=tmp_path)
    assert shard.returncode == 0, shard.stderr
    assert "40 written" in shard.stdout and (tmp_path / "data" / "manifest.json").is_file()
    missing = _run([str(installed / "mmrec"), "train", "--config", "nosuch", "--data", "data"], cwd=tmp_path)
    assert missing.returncode == 2 and "presets: ['base', 'movielens-cold', 'movielens-ranking', 'movielens-rating', 'tiny']" in missing.stderr
    assert "Traceback" not in missing.stderr  # one line, never a traceback, from the installed script


def _constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    assert all(len(p) == 2 for p in pins), "constraints.txt holds exact name==version lines only"
    return {canonicalize_name(name): version for name, version in pins}


def test_the_wheel_is_typed_and_takes_ranges_that_the_constraints_satisfy(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = email.parser.Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert "mmrec/py.typed" in names and "Typing :: Typed" in meta.get_all("Classifier")
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    pinned = [str(r) for r in requires if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins would replace a user's own builds: {pinned} (pin in constraints.txt instead)"
    assert {r.name for r in requires if r.marker is None} >= {"torch", "torchaudio", "torchvision"}

    # every requirement, extras included, is pinned by constraints.txt to a version its range accepts
    pins = _constraints()
    for r in requires:
        name = canonicalize_name(r.name)
        assert name in pins, f"{r.name} is not pinned in constraints.txt"
        assert r.specifier.contains(pins[name], prereleases=True), f"constraints.txt {r.name}=={pins[name]} is not {r}"


def test_make_installs_the_constraints_and_reinstalls_when_they_change(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".mmrec-installed").touch()  # an install newer than pyproject.toml and constraints.txt
    dry = ["make", "-n", "-C", str(ROOT), f"VENV={venv}", "env"]
    assert "pip install" not in _run(dry, cwd=ROOT).stdout
    changed = _run(dry[:2] + ["-W", "constraints.txt"] + dry[2:], cwd=ROOT).stdout  # as if just edited
    assert "pip install --quiet -c constraints.txt -e '.[test]'" in changed
