"""The feature cache: frozen encoders run once; training on the cache gives the raw path's losses."""

import json

import pytest
import torch
from conftest import TINY

from mmrec.cli import main
from mmrec.config import load_run_config
from mmrec.data.batch import BatchCollator, ExampleBuilder, InteractionIndex
from mmrec.data.features import decode_features
from mmrec.data.reader import ReaderConfig, item_loader
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.model.tasks import MultiTaskLoss
from mmrec.shard.writer import ShardOptions, shard_catalogue
from mmrec.training.cache import build_frozen_model, cache_features, check_cache
from mmrec.training.loop import train

FROZEN = ["model.encoders.text.trainable_layers=0", "model.encoders.image.trainable_layers=0",
          "model.encoders.audio.trainable_layers=0", "model.fusion.modality_dropout=0.0",
          "model.fusion.token_budget={text: 4, image: 0, audio: 0}", "model.item_id_dropout=0.0"]


@pytest.fixture
def data(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    shard_catalogue(items_path, inter_path, tmp_path / "data", options=ShardOptions(items_per_shard=4, progress=False))
    return tmp_path / "data"


def test_cache_path_gives_the_raw_path_losses(data, tmp_path):
    cfg = load_run_config(TINY, FROZEN)
    model, pre = build_frozen_model(cfg, data)
    manifest = cache_features(model, pre, data, tmp_path / "feats", progress=False)
    assert manifest["num_items"] == 12 and manifest["token_budget"] == {"text": 4, "image": 0, "audio": 0}
    check_cache(model, tmp_path / "feats")

    vocab = RunVocabulary.from_data(data)
    index = InteractionIndex.from_split(RunSplits(data, vocab)["train"], len(vocab.item_ids))
    builder = ExampleBuilder(pre, vocab.attributes, index, pairs_per_item=4, catalogue=None)

    def batch_from(source, **kw):
        loader = item_loader(source, "eval", ReaderConfig(batch_size=12), transform=builder, collate=BatchCollator(pre),
                             rank=0, world_size=1, **kw)
        return next(iter(loader))

    raw, cached = batch_from(data), batch_from(tmp_path / "feats", decode=decode_features)
    assert raw.item_index.tolist() == cached.item_index.tolist()
    assert cached.inputs == {} and set(cached.features) == {"text", "image", "audio"}
    tasks = MultiTaskLoss(cfg.tasks, model, len(vocab.attributes))
    model.train()
    a = tasks(model, raw, generator=torch.Generator().manual_seed(0))
    b = tasks(model, cached, generator=torch.Generator().manual_seed(0))
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=2e-3, atol=2e-3), (k, a[k].item(), b[k].item())  # fp16 storage


def test_trainable_encoders_cannot_be_cached(data):
    with pytest.raises(ValueError, match="trainable"):
        build_frozen_model(load_run_config(TINY), data)


def test_training_reads_the_cache_and_checks_its_encoders(data, tmp_path):
    assert main(["cache", "--config", str(TINY), "--data", str(data), "--out", str(tmp_path / "feats"), *FROZEN]) == 0
    cfg = load_run_config(TINY, FROZEN + ["train.epochs=2", f"data.features={tmp_path / 'feats'}", "data.batch_size=4"])
    state = train(cfg, data, tmp_path / "run")
    assert state.step == 6 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    other = load_run_config(TINY, FROZEN + ["train.seed=1", f"data.features={tmp_path / 'feats'}"])
    with pytest.raises(ValueError, match=r"other \['audio', 'image', 'text'\] encoder weights"):
        train(other, data, tmp_path / "run2")


def test_models_with_fewer_modalities_train_on_a_larger_cache(data, tmp_path):
    """A text-only and an ID-only model read a text + image + audio cache; a modality it lacks is an error."""
    feats = tmp_path / "feats"
    assert main(["cache", "--config", str(TINY), "--data", str(data), "--out", str(feats), *FROZEN]) == 0
    base = FROZEN + ["train.epochs=1", f"data.features={feats}", "data.batch_size=4"]
    text_only = load_run_config(TINY, base + ['model.encoders={text: {name: hf-text, trainable_layers: 0, '
                                              'arch: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, '
                                              'intermediate_size: 64}}}'])
    assert text_only.model.modalities == ("text",)
    state = train(text_only, data, tmp_path / "text_run")
    assert state.step == 3
    id_only = load_run_config(TINY, base + ["model.encoders={}"])
    assert train(id_only, data, tmp_path / "id_run").step == 3

    text_manifest = json.loads((feats / "manifest.json").read_text())
    text_manifest["encoder_fingerprints"].pop("text")
    (feats / "manifest.json").write_text(json.dumps(text_manifest))
    with pytest.raises(ValueError, match=r"holds no \['text'\] features"):
        train(load_run_config(TINY, base), data, tmp_path / "run3")
