"""The requested layout: our `encoders`/`fusion` (PyPI has unrelated packages with those names) and
a `datasets/` folder that must never become importable (it would shadow Hugging Face `datasets`)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_encoders_and_fusion_are_ours():
    import encoders
    import fusion

    assert Path(encoders.__file__).resolve().parent == ROOT / "encoders"
    assert Path(fusion.__file__).resolve().parent == ROOT / "fusion"


def test_datasets_folder_is_not_a_package():
    assert (ROOT / "datasets").is_dir()
    assert not (ROOT / "datasets" / "__init__.py").exists()


def test_top_level_layout():
    for name in ("pyproject.toml", "README.md", "mmrec", "encoders", "fusion", "datasets", "tests"):
        assert (ROOT / name).exists(), name
