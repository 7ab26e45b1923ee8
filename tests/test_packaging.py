"""A user's install: the wheel (not an editable checkout) carries the presets and the entry points.

Built with `pip wheel --no-deps` and installed into a fresh virtual environment whose third-party
packages (torch, transformers, ...) are borrowed from the test environment by a plain path entry,
so nothing is downloaded and the source tree is not on the path. Then, from a folder outside the
repository: `mmrec --version`, `mmrec --help`, `python -m mmrec`, the `tiny` preset, and the demo's
first two steps (catalogue, shards).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import mmrec

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv with the mmrec wheel installed."""
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
    wheel = next((tmp / "dist").glob("mmrec-*.whl"))
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
            "from mmrec.data.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue; "
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
