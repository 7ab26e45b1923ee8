"""Configs that start from another (`base:`), and the shipped presets written that way."""

import re

import pytest
import yaml

from mmrec.config import list_presets, load_run_config
from mmrec.config_io import save_config, to_dict


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _flat(d, prefix=""):
    """{"train.lr": 0.003, ...}: leaves of a nested dict by dotted key."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


COMMON = """\
model:
  embedding_dim: 48
  fusion: {width: 64, layers: 2, heads: 2}
  encoders:
    image: {name: timm-cnn, arch: {model_name: efficientnet_lite0, input_size: [224, 160]}}
train:
  epochs: 7
  lr: 2.0e-3
"""


def test_a_derived_file_is_its_base_with_its_own_keys_merged_on_top(tmp_path):
    _write(tmp_path / "common.yaml", COMMON)
    derived = _write(tmp_path / "derived.yaml", """\
base: common.yaml
model:
  fusion: {layers: 4}                          # one key of a mapping: the others are inherited
  encoders:
    image: {arch: {input_size: [96]}}          # a list replaces, it is not merged
train:
  epochs: 3
""")
    cfg = load_run_config(derived)
    assert (cfg.model.fusion.width, cfg.model.fusion.layers, cfg.model.fusion.heads) == (64, 4, 2)
    assert cfg.model.embedding_dim == 48
    assert cfg.model.encoders["image"].name == "timm-cnn"
    assert cfg.model.encoders["image"].arch == {"model_name": "efficientnet_lite0", "input_size": [96]}
    assert (cfg.train.epochs, cfg.train.lr) == (3, 2e-3)


def test_bases_chain_and_a_relative_base_is_read_from_the_including_files_folder(tmp_path, monkeypatch):
    _write(tmp_path / "common.yaml", COMMON)
    _write(tmp_path / "sub" / "middle.yaml", "base: ../common.yaml\ntrain: {epochs: 5}\n")
    top = _write(tmp_path / "sub" / "deeper" / "top.yaml", "base: ../middle.yaml\ntrain: {lr: 1.0e-4}\n")
    # decoys where the same relative names lead from the working directory: they must not be read
    elsewhere = tmp_path / "cwd"
    _write(elsewhere / "middle.yaml", "train: {epochs: 99}\n")
    _write(elsewhere / "common.yaml", "model: {embedding_dim: 16}\n")
    monkeypatch.chdir(_write(elsewhere / "sub" / "x", "").parent)
    cfg = load_run_config(top)
    assert (cfg.model.embedding_dim, cfg.train.epochs, cfg.train.lr) == (48, 5, 1e-4)


def test_a_base_may_be_a_preset_name(tmp_path):
    derived = _write(tmp_path / "mine.yaml", "base: tiny\nmodel: {fusion: {layers: 3}}\n")
    cfg, tiny = load_run_config(derived), load_run_config("tiny")
    assert cfg.model.fusion.layers == 3
    tiny.model.fusion.layers = 3
    assert cfg == tiny  # everything else is the preset's


def test_overrides_apply_on_top_of_the_merged_file(tmp_path):
    _write(tmp_path / "common.yaml", COMMON)
    derived = _write(tmp_path / "derived.yaml", "base: common.yaml\nmodel: {fusion: {layers: 4}}\n")
    cfg = load_run_config(derived, ["model.fusion.layers=6", "model.fusion.width=32"])
    assert (cfg.model.fusion.width, cfg.model.fusion.layers, cfg.model.fusion.heads) == (32, 6, 2)


def test_an_unknown_key_in_a_derived_file_is_an_error(tmp_path):
    _write(tmp_path / "common.yaml", COMMON)
    derived = _write(tmp_path / "derived.yaml", "base: common.yaml\nmodel: {fusion: {depth: 4}}\n")
    with pytest.raises(ValueError, match=r"derived\.yaml .*common\.yaml.*unknown key\(s\) \['depth'\]"):
        load_run_config(derived)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['trian'\]"):
        load_run_config(_write(tmp_path / "typo.yaml", "base: tiny\ntrian: {epochs: 2}\n"))


def test_a_base_cycle_is_one_error_naming_the_chain(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\ntrain: {epochs: 2}\n")
    _write(tmp_path / "b.yaml", "base: c.yaml\n")
    _write(tmp_path / "c.yaml", "base: a.yaml\n")
    with pytest.raises(ValueError, match=r"cycle: \S*/a\.yaml -> \S*/b\.yaml -> \S*/c\.yaml -> \S*/a\.yaml; "):
        load_run_config(tmp_path / "a.yaml")
    with pytest.raises(ValueError, match=r"cycle: \S*/self\.yaml -> \S*/self\.yaml; "):
        load_run_config(_write(tmp_path / "self.yaml", "base: self.yaml\n"))


def test_a_missing_base_names_the_file_and_the_valid_presets(tmp_path):
    derived = _write(tmp_path / "derived.yaml", "base: movielens\n")
    with pytest.raises(ValueError, match=r"derived\.yaml: base 'movielens'.*presets: "
                                         + re.escape(str(list_presets()))):
        load_run_config(derived)
    with pytest.raises(ValueError, match=r"base must be a preset name or a path"):
        load_run_config(_write(tmp_path / "listed.yaml", "base: [tiny, base]\n"))


def test_a_base_file_is_read_with_safe_load_only(tmp_path):
    _write(tmp_path / "evil.yaml", "train: !!python/object/apply:os.system ['echo pwned']\n")
    derived = _write(tmp_path / "derived.yaml", "base: evil.yaml\n")
    with pytest.raises(ValueError, match=r"evil\.yaml is not a valid YAML config"):
        load_run_config(derived)


def test_the_saved_config_is_fully_resolved_with_no_base(tmp_path):
    _write(tmp_path / "common.yaml", COMMON)
    derived = _write(tmp_path / "derived.yaml", "base: common.yaml\nmodel: {fusion: {layers: 4}}\n")
    cfg = load_run_config(derived, ["train.seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "base" not in saved
    assert saved["model"]["fusion"]["width"] == 64 and saved["model"]["fusion"]["layers"] == 4
    (tmp_path / "common.yaml").unlink()  # a run folder never depends on the file it started from
    assert load_run_config(tmp_path / "config.yaml") == cfg
    for preset in ("movielens-rating", "movielens-cold"):
        save_config(load_run_config(preset), tmp_path / f"{preset}.yaml")
        assert "base" not in yaml.safe_load((tmp_path / f"{preset}.yaml").read_text())


def test_the_movielens_presets_differ_from_ranking_only_where_their_protocol_needs():
    ranking = _flat(to_dict(load_run_config("movielens-ranking")))
    rating = _flat(to_dict(load_run_config("movielens-rating")))
    cold = _flat(to_dict(load_run_config("movielens-cold")))
    assert ranking["train.selection_metric"] == "recall@20" and ranking["tasks.retrieval_weight"] == 1.0
    assert {k: v for k, v in cold.items() if ranking[k] != v} == {"train.selection_metric": "ndcg@20"}
    assert {k: v for k, v in rating.items() if ranking[k] != v} == {
        "model.item_id_dropout": 0.0, "tasks.rating_l2": 0.1, "tasks.retrieval_weight": 0.0, "train.epochs": 20,
        "train.embedding_weight_decay": 0.0, "train.early_stopping_patience": 3, "train.selection_metric": "last"}
    assert rating.keys() == cold.keys() == ranking.keys()
