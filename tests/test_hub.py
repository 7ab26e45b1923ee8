"""Model folders in the Hugging Face Hub layout (issue 18): config.json + model.safetensors + README.md,
the card's facts, `mmrec eval` refreshing it, `mmrec export`, repo ids from the local HF cache, and
folders of the older layout (config.yaml + model.json)."""

import json
import shutil

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from encoders import tiny_config
from mmrec.cli import main
from mmrec.embedding import embed_items
from mmrec.evaluate import evaluation
from mmrec.files import sha256_of
from mmrec.model.card import refresh_card
from mmrec.model.config import ModelConfig
from mmrec.model.factory import (
    ModelSizes,
    create_model,
    export_model,
    from_pretrained,
    load_model,
    load_run_model,
    save_model,
)
from mmrec.model.hub import HUB_FILES


def _files(folder):
    return {p.name for p in folder.iterdir()}


def _same_parameters(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def text_model(tmp_path):
    """A tiny text model whose tokenizer is a local folder (an encoder source outside the model folder)."""
    from encoders.text import char_tokenizer

    char_tokenizer().save_pretrained(tmp_path / "tok")
    cfg = ModelConfig(encoders={"text": tiny_config("hf-text", arch={"tokenizer": str(tmp_path / "tok")})},
                      item_id_embeddings=True, embedding_dim=8)
    torch.manual_seed(0)
    model, _ = create_model(cfg, ModelSizes(num_users=4, num_items=6, attributes=["a"], global_mean=3.5))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # not the initialisation: loading must bring these back
    return model, ModelSizes(num_users=4, num_items=6, attributes=["a"], global_mean=3.5)


def test_a_run_model_is_a_hub_folder_whose_card_eval_refreshes(trained, tmp_path, monkeypatch):
    root, data = trained
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)  # eval rewrites the card: not the shared fixture's
    model_dir = run / "model"
    assert _files(model_dir) == set(HUB_FILES)
    config = json.loads((model_dir / "config.json").read_text())
    assert (config["model_type"], config["library_name"], config["format_version"]) == ("mmrec", "mmrec", 1)
    assert set(config["model"]["encoders"]) == {"text", "image", "audio"}
    assert config["sizes"]["num_items"] == 120

    # the card names the run's data, split protocol and the validation numbers that selected the model
    card = ModelCard((model_dir / "README.md").read_text())
    facts = card.data.mmrec
    assert card.data.library_name == "mmrec" and {"mmrec", "text", "image", "audio"} <= set(card.data.tags)
    assert facts["dataset"]["manifest_sha256"] == sha256_of(data / "manifest.json")
    assert "data" not in facts["dataset"]  # no local path in a card meant for the Hub
    assert facts["split"]["protocol"] == "cold-items"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    best = [x for x in lines if "valid/ndcg@10" in x and x["step"] == x["best_step"]][-1]
    assert facts["validation"]["step"] == best["step"]
    assert facts["validation"]["metrics"]["ndcg@10"] == pytest.approx(best["valid/ndcg@10"])
    # (whether it says "Not evaluated yet" depends on whether another test evaluated the shared fixture's run)
    assert f"{best['valid/ndcg@10']:.4f}" in card.text
    fingerprint = {n: sha256_of(model_dir / n) for n in ("config.json", "model.safetensors")}

    # `mmrec eval` as the CLI runs it, but for its plots (seconds of matplotlib, and not what is tested here)
    monkeypatch.setattr(evaluation, "write_report", lambda report, out, **options: {})
    report, _ = evaluation.evaluate_run(run, data, tmp_path / "report", ks=[5, 10], emb=root / "emb", ablation=False)
    card = ModelCard((model_dir / "README.md").read_text())
    test = card.data.mmrec["evaluation"]["test"]
    assert test["metrics"]["ndcg@10"] == pytest.approx(report["ranking"]["ndcg@10"])
    assert test["metrics"]["rmse"] == pytest.approx(report["rating"]["rmse"])
    assert test["protocol"]["masked_splits"] == report["protocol"]["masked_splits"] == ["train", "valid"]
    assert test["protocol"]["weights_sha256"] == fingerprint["model.safetensors"]
    assert card.data.mmrec["validation"] == facts["validation"]  # kept
    hub_results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert hub_results[("test", "ndcg@10")] == pytest.approx(report["ranking"]["ndcg@10"])
    assert "### test split" in card.text and "Not evaluated yet" not in card.text
    # the card is documentation: the weights and config (the embeddings' fingerprint) are untouched
    assert fingerprint == {n: sha256_of(model_dir / n) for n in fingerprint}


def test_an_exported_folder_round_trips_from_a_folder_and_from_the_hf_cache(trained, tmp_path, capsys):
    root, data = trained
    out = tmp_path / "export"
    assert main(["export", "--run", str(root / "run"), "--out", str(out), "--license", "apache-2.0"]) == 0
    assert _files(out) == set(HUB_FILES)  # random-init encoders: no sources to carry
    assert ModelCard((out / "README.md").read_text()).data.license == "apache-2.0"
    model, pre, sizes = from_pretrained(out)
    original, _, original_sizes = load_run_model(root / "run")
    assert sizes == original_sizes and _same_parameters(model, original)
    # the same scores: the exported model reproduces the run's exported embeddings
    idx, vecs = embed_items(model.eval(), data, pre, sizes.attributes, shards=[0, 1])  # 40 of the 120 items
    assert len(idx) == 40
    emb = load_file(root / "emb" / "item_embeddings.safetensors")["embeddings"]
    torch.testing.assert_close(vecs, emb[idx], rtol=1e-5, atol=1e-5)
    users = load_file(root / "emb" / "user_embeddings.safetensors")["embeddings"]
    with torch.no_grad():
        torch.testing.assert_close(model.user_export(torch.arange(sizes.num_users)), users, rtol=1e-5, atol=1e-5)

    # a repo id resolves through the local Hugging Face cache only (what `hf download` leaves there)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--someone--tiny-rec"
    shutil.copytree(out, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    cached, _, _ = from_pretrained("someone/tiny-rec", cache_dir=tmp_path / "hf")
    assert _same_parameters(cached, original)
    with pytest.raises(ValueError, match="never downloads"):
        from_pretrained("someone/not-cached", cache_dir=tmp_path / "hf")
    capsys.readouterr()
    assert main(["export", "--run", str(root / "run"), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_encoder_sources_are_located_or_named_and_export_carries_them(text_model, tmp_path, monkeypatch):
    model, sizes = text_model
    monkeypatch.chdir(tmp_path)
    model.config.encoders["text"].arch["tokenizer"] = "tok"  # relative to the training run's directory ...
    save_model(model, sizes, tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert saved["encoders"]["text"]["arch"]["tokenizer"] == str(tmp_path / "tok")  # ... saved as absolute

    out = export_model(tmp_path / "m", tmp_path / "export")
    assert _files(out) == {*HUB_FILES, "encoders"}
    exported = json.loads((out / "config.json").read_text())["model"]
    assert exported["encoders"]["text"]["arch"]["tokenizer"] == "encoders/text-tokenizer"  # inside the folder
    shutil.rmtree(tmp_path / "tok")  # the training machine's copy is gone
    with pytest.raises(ValueError, match=r"text encoder's arch.tokenizer .* not on this machine.*mmrec export"):
        load_model(tmp_path / "m")
    moved = shutil.move(out, tmp_path / "elsewhere" / "export")  # the exported folder is self-contained
    loaded, _, loaded_sizes = from_pretrained(moved)
    assert loaded_sizes == sizes and _same_parameters(loaded, model)


def test_older_folders_still_load_and_export_upgrades_them(text_model, tmp_path):
    model, sizes = text_model
    save_model(model, sizes, tmp_path / "new")
    old = tmp_path / "old"  # the layout before config.json: config.yaml + model.json + model.safetensors
    old.mkdir()
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    (old / "config.yaml").write_text(yaml.safe_dump(config["model"], sort_keys=False))
    (old / "model.json").write_text(json.dumps(config["sizes"]))
    shutil.copy(tmp_path / "new" / "model.safetensors", old)
    loaded, _, loaded_sizes = load_model(old)
    assert loaded_sizes == sizes and _same_parameters(loaded, model)
    assert refresh_card(old, {"protocol": {"split": "test"}}) is None  # no card to refresh: nothing written
    assert _files(old) == {"config.yaml", "model.json", "model.safetensors"}
    upgraded = export_model(old, tmp_path / "upgraded")
    assert _files(upgraded) == {*HUB_FILES, "encoders"}  # the tokenizer folder travels with it
    assert _same_parameters(load_model(upgraded)[0], model)
    (old / "model.json").unlink()
    with pytest.raises(ValueError, match="model.json is missing"):
        load_model(old)


def test_a_broken_folder_is_one_clear_error(text_model, tmp_path):
    model, sizes = text_model
    for missing in ("config.json", "model.safetensors"):
        folder = save_model(model, sizes, tmp_path / missing)
        (folder / missing).unlink()
        with pytest.raises(ValueError, match=f"{missing} is missing"):
            load_model(folder)
    folder = save_model(model, sizes, tmp_path / "m")
    (folder / "README.md").unlink()  # documentation only: the model still loads
    assert _same_parameters(load_model(folder)[0], model)
    config = json.loads((folder / "config.json").read_text())
    for change, needle in (({"model_type": "bert", "library_name": "transformers"}, "not an mmrec model"),
                           ({"format_version": 99}, "upgrade mmrec"),
                           ({"sizes": {"num_users": 4}}, "must hold num_users and num_items")):
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=needle):
            load_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(folder)
    with pytest.raises(ValueError, match="is a file"):
        from_pretrained(folder / "config.json")
