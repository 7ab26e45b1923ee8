"""The fusion transformer: shapes, the absent-modality contract, modality dropout, learning, config errors.

Tiny configs (width 32, 2 layers, 2 heads), CPU, fixed seeds.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fusion import (
    FusionConfig,
    FusionInput,
    FusionOutput,
    FusionTransformer,
    create_fusion,
    drop_modalities,
    list_fusions,
)
from fusion.transformer import FusionBlock

MODS = ("text", "image", "audio")
DIMS = {"text": 12, "image": 10, "audio": 7}
T_IN = {"text": 9, "image": 6, "audio": 5}  # encoder output lengths fed in
BUDGETS = {"pooled": 0, "tokens": {"text": 4, "image": 8, "audio": 0}}  # image: budget > T (padding)


def tiny(budget=0, **kw) -> FusionTransformer:
    torch.manual_seed(0)
    cfg = FusionConfig(width=32, layers=2, heads=2, modalities=MODS, input_dims=DIMS, token_budget=budget, **kw)
    return FusionTransformer(cfg).eval()


def make_inputs(B: int, seed: int = 1, lengths=T_IN, dims=DIMS) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, T in lengths.items():
        tokens = torch.randn(B, T, dims[m], generator=g)
        mask = torch.ones(B, T, dtype=torch.bool)
        mask[:, T - 1 :] = torch.rand(B, 1, generator=g) < 0.5  # some items have a padded last token
        out[m] = FusionInput(tokens, mask, torch.randn(B, dims[m], generator=g))
    return out


def rows(x: FusionInput, i: int) -> FusionInput:
    """Item i of a batch, as a batch of one."""
    return FusionInput(*(None if t is None else t[i : i + 1] for t in (x.tokens, x.mask, x.pooled)))


def bools(*xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.bool)


def garbage_like(x: torch.Tensor, T: int | None = None, seed: int = 99) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = list(x.shape)
    if T is not None:
        shape[1] = T
    return 100 * torch.randn(shape, generator=g)


# ---------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
@pytest.mark.parametrize(
    "present",
    [
        {m: bools(1, 1, 1, 1) for m in MODS},  # all
        {"text": bools(1, 0, 1, 0), "image": bools(0, 1, 1, 0), "audio": bools(0, 0, 1, 1)},  # some
        {"text": bools(1, 1, 1, 1), "image": bools(0, 0, 0, 0), "audio": bools(0, 0, 0, 0)},  # one
        {"text": bools(0, 0, 0, 0), "image": bools(0, 0, 0, 0), "audio": bools(0, 0, 0, 0)},  # none: [ITEM] only
    ],
    ids=["all", "some", "one", "none"],
)
def test_output_shapes(budget, present):
    model = tiny(budget)
    B = 4
    out = model(make_inputs(B), present)
    S = 1 + sum(max(model.config.budget(m), 1) for m in MODS)
    assert isinstance(out, FusionOutput)
    assert model.num_tokens == S and model.output_dim == 32
    assert out.item.shape == (B, 32)
    assert out.tokens.shape == (B, S, 32)
    assert out.mask.shape == (B, S) and out.mask.dtype == torch.bool
    assert out.mask[:, 0].all()  # [ITEM] is always there
    # the read-out: per item, the mean over its present modalities of each one's mean valid token
    for b in range(B):
        means = [out.tokens[b, model.token_slices[m]][out.mask[b, model.token_slices[m]]].mean(0)
                 for m in MODS if out.mask[b, model.token_slices[m]].any()]
        expected = torch.stack(means).mean(0) if means else out.tokens[b, 0]  # none: the [ITEM] token
        torch.testing.assert_close(out.item[b], expected, rtol=0, atol=1e-6)
    assert torch.isfinite(out.tokens).all()
    for m in MODS:
        slot = out.mask[:, model.token_slices[m]]
        assert not slot[~present[m]].any()  # absent modality: no valid token
        assert slot[present[m]].any(dim=1).all()  # present modality: at least one
        assert torch.equal(out.present[m], present[m])
    assert (out.tokens[~out.mask] == 0).all()


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_modality_missing_from_inputs_is_absent_for_all(budget):
    model = tiny(budget)
    inputs = make_inputs(3)
    present = {"text": bools(1, 0, 1), "image": bools(1, 1, 0), "audio": bools(0, 0, 0)}
    with_audio = model(inputs, present)
    without = model({m: inputs[m] for m in ("text", "image")}, {m: present[m] for m in ("text", "image")})
    assert without.item.shape == (3, 32)
    assert not without.present["audio"].any()
    assert torch.equal(with_audio.item, without.item)


def test_item_token_readout_is_the_item_tokens_state():
    model = tiny(BUDGETS["tokens"], readout="item_token")
    out = model(make_inputs(3), {m: bools(1, 0, 1) for m in MODS})
    assert torch.equal(out.item, out.tokens[:, 0])
    with pytest.raises(ValueError, match="readout must be one of"):
        tiny(readout="cls")


def test_present_defaults_to_everything_given():
    model = tiny(BUDGETS["tokens"])
    inputs = make_inputs(2)
    a = model(inputs)  # present=None: everything given is present
    b = model(inputs, {m: bools(1, 1) for m in MODS})
    assert torch.equal(a.item, b.item)


def test_inputs_take_one_form_only():
    """FusionInput per modality; a bare (tokens, mask, pooled) tuple or a look-alike object is refused."""

    class EncOut:  # duck-typed like encoders.EncoderOutput
        def __init__(self, tokens, mask, pooled):
            self.tokens, self.mask, self.pooled = tokens, mask, pooled

    model = tiny(BUDGETS["tokens"])
    x = make_inputs(2)["text"]
    for old in [(x.tokens, x.mask, x.pooled), EncOut(x.tokens, x.mask, x.pooled)]:
        with pytest.raises(TypeError, match=r"inputs\['text'\] must be a fusion.FusionInput.*wrap it"):
            model({"text": old})


# ---------------------------------------------------------------------------------------------------
# The contract: absent modalities and padded tokens have no influence
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
@pytest.mark.parametrize("new_T", [None, 2, 20])  # same length, shorter, longer than the budget
def test_absent_modality_garbage_is_bit_identical(budget, new_T):
    model = tiny(budget)
    B = 6
    inputs = make_inputs(B)
    present = {"text": bools(1, 1, 0, 1, 0, 1), "image": bools(0, 1, 1, 0, 0, 1), "audio": bools(1, 0, 0, 1, 1, 0)}
    ref = model(inputs, present).item

    for m in MODS:
        # Every item in the batch lacks `m`, so its whole input can be replaced, length included.
        all_absent = {**present, m: torch.zeros(B, dtype=torch.bool)}
        base = model(inputs, all_absent).item
        tokens, mask, pooled = inputs[m].tokens, inputs[m].mask, inputs[m].pooled
        T = new_T or tokens.shape[1]
        junk = FusionInput(garbage_like(tokens, T), torch.rand(B, T) < 0.5, garbage_like(pooled, seed=7))
        assert torch.equal(model({**inputs, m: junk}, all_absent).item, base), m

        # Only some items lack `m`: garbage in their rows leaves every item bit-identical.
        absent = ~present[m]
        tokens2, pooled2 = tokens.clone(), pooled.clone()
        tokens2[absent] = garbage_like(tokens)[absent]
        pooled2[absent] = garbage_like(pooled)[absent]
        assert torch.equal(model({**inputs, m: FusionInput(tokens2, mask, pooled2)}, present).item, ref), m


def test_absent_modality_nonfinite_garbage_cannot_leak():
    model = tiny(BUDGETS["tokens"])
    inputs = make_inputs(4)
    present = {"text": bools(1, 0, 1, 0), "image": bools(1, 1, 1, 1), "audio": bools(0, 1, 0, 1)}
    ref = model(inputs, present)
    text = inputs["text"]
    tokens, mask, pooled = text.tokens.clone(), text.mask, text.pooled.clone()
    tokens[1], pooled[1] = float("nan"), float("inf")
    tokens[3], pooled[3] = float("-inf"), float("nan")
    out = model({**inputs, "text": FusionInput(tokens, mask, pooled)}, present)
    assert torch.equal(out.item, ref.item)
    assert torch.isfinite(out.tokens).all()


def test_absent_modality_equals_a_model_without_that_modality():
    """Masking is not just 'a constant input': an absent modality behaves as if never configured."""
    budget = BUDGETS["tokens"]
    full = tiny(budget)
    inputs = make_inputs(4)
    present = {"text": bools(1, 1, 0, 1), "image": bools(0, 1, 1, 0), "audio": bools(1, 0, 1, 1)}
    for m in MODS:
        present_wo = {k: v for k, v in present.items() if k != m}
        rest = tuple(k for k in MODS if k != m)
        small = FusionTransformer(
            FusionConfig(width=32, layers=2, heads=2, modalities=rest, token_budget={k: budget[k] for k in rest},
                         input_dims={k: DIMS[k] for k in rest})
        ).eval()
        result = small.load_state_dict(full.state_dict(), strict=False)
        assert not result.missing_keys
        assert all(f".{m}." in k or k.endswith(f".{m}") for k in result.unexpected_keys)
        a = full(inputs, {**present_wo, m: torch.zeros(4, dtype=torch.bool)}).item
        b = small({k: inputs[k] for k in rest}, present_wo).item
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_attention_ignores_masked_keys_exactly():
    """At block level, with no input zeroing to help: masked positions' states are irrelevant."""
    torch.manual_seed(0)
    block = FusionBlock(32, 2, 4.0, 0.0).eval()
    x = torch.randn(3, 7, 32)
    key_mask = torch.tensor([[1, 1, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    y = block(x, key_mask)
    x2 = torch.where(key_mask[..., None], x, 1000 * torch.randn(3, 7, 32))
    y2 = block(x2, key_mask)
    assert torch.equal(y[key_mask], y2[key_mask])
    assert torch.isfinite(y2).all()  # masked query rows still attend to valid keys: no NaN


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_item_does_not_depend_on_the_rest_of_the_batch(budget):
    model = tiny(budget)
    inputs = make_inputs(4)
    present = {"text": bools(1, 0, 1, 1), "image": bools(1, 1, 0, 0), "audio": bools(0, 1, 1, 0)}
    batch = model(inputs, present).item
    for i in range(4):
        one = model({m: rows(x, i) for m, x in inputs.items()}, {m: p[i : i + 1] for m, p in present.items()})
        torch.testing.assert_close(one.item[0], batch[i], rtol=0, atol=1e-6)


def test_padded_and_truncated_tokens_have_no_influence():
    budget = {"text": 4, "image": 8, "audio": 0}
    model = tiny(budget)
    B = 3
    g = torch.Generator().manual_seed(3)
    text = torch.randn(B, 3, DIMS["text"], generator=g)  # 3 real tokens
    image = torch.randn(B, 5, DIMS["image"], generator=g)  # 5 real tokens (budget 8: padded)
    audio = torch.randn(B, DIMS["audio"], generator=g)
    inputs = {"text": FusionInput(text), "image": FusionInput(image), "audio": FusionInput(pooled=audio)}
    ref = model(inputs).item

    # Same real tokens followed by garbage marked as padding (mask False), at several lengths.
    for extra in (1, 6, 20):
        text_p = torch.cat([text, garbage_like(text, extra)], dim=1)
        image_p = torch.cat([image, garbage_like(image, extra, seed=5)], dim=1)
        mask_t = torch.arange(3 + extra) < 3
        mask_i = torch.arange(5 + extra) < 5
        padded = {
            "text": FusionInput(text_p, mask_t.expand(B, -1)),
            "image": FusionInput(image_p, mask_i.expand(B, -1)),
            "audio": FusionInput(pooled=audio),
        }
        assert torch.equal(model(padded).item, ref), extra

    # Real tokens beyond the budget are truncated: they cannot matter either.
    long_text = torch.cat([text, torch.randn(B, 1, DIMS["text"], generator=g), garbage_like(text, 9)], dim=1)
    a = model({**inputs, "text": FusionInput(long_text)}).item
    long_text[:, 4:] = garbage_like(text, long_text.shape[1] - 4, seed=11)
    assert torch.equal(model({**inputs, "text": FusionInput(long_text)}).item, a)


def test_padded_query_rows_are_finite_and_zeroed():
    model = tiny(BUDGETS["tokens"])
    inputs = make_inputs(2)
    inputs["text"].mask[:] = False  # a present modality with no real tokens at all
    out = model(inputs, {"text": bools(1, 1), "image": bools(0, 1), "audio": bools(0, 0)})
    assert torch.isfinite(out.tokens).all()
    assert (out.tokens[~out.mask] == 0).all()
    assert not out.mask[:, model.token_slices["text"]].any()


# ---------------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------------


def _param_grads(model: FusionTransformer, m: str) -> list[torch.Tensor | None]:
    return [p.grad for p in model.proj[m].parameters()]


def test_gradients_reach_present_projections_only():
    model = tiny(BUDGETS["tokens"])
    inputs = make_inputs(4)
    present = {"text": bools(1, 0, 1, 1), "image": bools(0, 1, 1, 0), "audio": bools(0, 0, 0, 0)}
    model(inputs, present).item.square().sum().backward()
    for m in ("text", "image"):
        assert all(g is not None and g.abs().sum() > 0 for g in _param_grads(model, m)), m
    assert all(g is None or (g == 0).all() for g in _param_grads(model, "audio"))
    assert model.type_embed["audio"].grad is None or (model.type_embed["audio"].grad == 0).all()

    # A modality missing from `inputs` altogether: same.
    model.zero_grad(set_to_none=True)
    model({m: inputs[m] for m in ("text", "image")}, {m: present[m] for m in ("text", "image")}).item.sum().backward()
    assert all(g is None or (g == 0).all() for g in _param_grads(model, "audio"))

    # Inputs get gradient only where they are real.
    model.zero_grad(set_to_none=True)
    tokens = inputs["text"].tokens.clone().requires_grad_(True)
    model({**inputs, "text": FusionInput(tokens, inputs["text"].mask)}, present).item.sum().backward()
    assert (tokens.grad[~present["text"]] == 0).all()
    assert (tokens.grad[:, 4:] == 0).all()  # beyond the budget
    assert tokens.grad[present["text"], :4].abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Modality dropout
# ---------------------------------------------------------------------------------------------------


def test_drop_modalities_keeps_one_and_drops_at_the_expected_rate():
    p, B = 0.9, 20_000
    g = torch.Generator().manual_seed(0)
    combos = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    had = combos[torch.arange(B) % 4]  # (B, 3)
    present = {m: had[:, i] for i, m in enumerate(MODS)}
    kept_total = torch.zeros(B, 3)
    draws = 10
    for _ in range(draws):
        out = drop_modalities(present, p, generator=g)
        kept = torch.stack([out[m] for m in MODS], dim=1)  # (B, 3)
        assert not (kept & ~had).any()  # never adds a modality
        assert kept[had.any(1)].any(1).all()  # never leaves an item with something present empty
        assert not kept[~had.any(1)].any()  # empty items stay empty
        assert (kept[had.sum(1) == 1] == had[had.sum(1) == 1]).all()  # a lone modality is never dropped
        kept_total += kept
    full = had.all(1)
    # Three present: each survives with probability (1 - p) + p**3 / 3 = 0.343.
    rate = kept_total[full].mean() / draws
    assert abs(rate - ((1 - p) + p**3 / 3)) < 0.01
    per_modality = kept_total[full].mean(0) / draws  # and uniformly so
    assert (per_modality - rate).abs().max() < 0.015
    two = had.sum(1) == 2  # two present: (1 - p) + p**2 / 2 = 0.505
    assert abs(kept_total[two][:, 1:].mean() / draws - ((1 - p) + p**2 / 2)) < 0.015


def test_drop_modalities_edge_cases():
    present = {m: bools(1, 1, 0) for m in MODS}
    assert all(torch.equal(v, present[k]) for k, v in drop_modalities(present, 0.0).items())
    out = drop_modalities(present, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.stack(list(out.values())).sum(0).tolist() == [1, 1, 0]  # exactly one survives
    g = torch.Generator().manual_seed(5)
    a = drop_modalities(present, 0.5, generator=g)
    b = drop_modalities(present, 0.5, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a[m], b[m]) for m in MODS)  # reproducible from a generator
    with pytest.raises(ValueError, match="probability"):
        drop_modalities(present, 1.5)


def test_modality_dropout_applies_in_training_only():
    model = tiny(0, modality_dropout=0.9)
    inputs = make_inputs(64)
    present = {m: torch.ones(64, dtype=torch.bool) for m in MODS}
    eval_a, eval_b = model(inputs, present), model(inputs, present)
    assert torch.equal(eval_a.item, eval_b.item)
    assert all(v.all() for v in eval_a.present.values())
    model.train()
    torch.manual_seed(0)
    out = model(inputs, present)
    kept = torch.stack([out.present[m] for m in MODS], dim=1)  # (B, 3)
    assert kept.any(1).all() and not kept.all(1).all()
    for m in MODS:  # the fused mask follows the dropped modalities
        assert torch.equal(out.mask[:, model.token_slices[m]].any(1), out.present[m])
    assert torch.isfinite(out.item).all()


# ---------------------------------------------------------------------------------------------------
# It learns
# ---------------------------------------------------------------------------------------------------


def test_overfits_a_tiny_synthetic_task():
    """Label = a function of the image's pooled vector; text and audio are noise and often absent."""
    model = tiny(BUDGETS["tokens"], dropout=0.1).train()
    head = torch.nn.Linear(32, 1)
    N = 64
    g = torch.Generator().manual_seed(0)
    inputs = make_inputs(N, seed=2)
    direction = torch.randn(DIMS["image"], generator=g)
    labels = (inputs["image"].pooled @ direction > 0).float()
    present = {
        "text": torch.rand(N, generator=g) < 0.5,
        "image": torch.ones(N, dtype=torch.bool),
        "audio": torch.rand(N, generator=g) < 0.5,
    }
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(75):  # by step 60 the loss is ~0.05x its start and the accuracy 1.0
        logits = head(model(inputs, present).item).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::15]
    model.eval()
    with torch.no_grad():
        acc = ((head(model(inputs, present).item).squeeze(1) > 0).float() == labels).float().mean()
    assert acc > 0.95


# ---------------------------------------------------------------------------------------------------
# Factory and config validation
# ---------------------------------------------------------------------------------------------------


def test_factory():
    assert list_fusions() == ["transformer"]
    model = create_fusion({"width": 32, "layers": 2, "heads": 2, "modalities": ["text", "image"], "token_budget": 3,
                           "input_dims": {"text": 12, "image": 10}})
    assert isinstance(model, FusionTransformer)
    assert model.config.modalities == ("text", "image")
    assert model.config.input_dims == {"text": 12, "image": 10}  # the config alone rebuilds the model
    assert model.token_slices == {"text": slice(1, 4), "image": slice(4, 7)}
    same = create_fusion(FusionConfig(width=32, layers=2, heads=2, modalities=("text",), input_dims={"text": 12}))
    assert same.output_dim == 32
    with pytest.raises(ValueError, match=r"not found. Available: \['transformer'\]"):
        create_fusion({"name": "perceiver"})
    with pytest.raises(ValueError, match="unknown fusion config keys.*'widht'.*valid keys"):
        create_fusion({"widht": 32})
    with pytest.raises(ValueError, match="no input width for modalities \\['audio'\\].*input_dims.*output_dim"):
        create_fusion({"width": 32, "heads": 2, "input_dims": {"text": 12, "image": 10}})


def test_input_widths_have_one_source():
    """FusionConfig.input_dims is the one place: a second source next to the config is refused."""
    cfg = FusionConfig(width=32, layers=2, heads=2, modalities=MODS, input_dims=DIMS)
    with pytest.raises(TypeError, match="input_dims"):
        create_fusion(cfg, input_dims=DIMS)
    with pytest.raises(TypeError, match="input_dims"):
        FusionTransformer(cfg, input_dims=DIMS)


def test_no_weight_decay_names_the_added_tokens_and_embeddings():
    model = tiny(BUDGETS["tokens"])
    names = dict(model.named_parameters())
    exempt = model.no_weight_decay()
    assert exempt <= set(names)
    assert exempt == {"item_token", *(f"type_embed.{m}" for m in MODS), "pos_embed.text", "pos_embed.image"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 30, "heads": 4}, "not divisible by heads"),
        ({"width": 0}, "must be >= 1"),
        ({"layers": 0}, "must be >= 1"),
        ({"mlp_ratio": 0}, "mlp_ratio"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"modality_dropout": -0.1}, "modality_dropout"),
        ({"modalities": ()}, "modalities is empty"),
        ({"modalities": "text"}, "not the string"),
        ({"modalities": ("text", "text")}, "duplicates"),
        ({"modalities": ("text", "my image")}, "identifiers"),
        ({"input_dims": {"video": 8}}, r"unknown modalities \['video'\]"),
        ({"input_dims": {"text": 0}}, "positive int"),
        ({"token_budget": -1}, "token_budget"),
        ({"token_budget": {"txt": 4}}, r"token_budget names unknown modalities \['txt'\]"),
        ({"token_budget": {"text": 2.5}}, "token_budget for 'text'"),
    ],
)
def test_config_validation(kwargs, match):
    base = {"width": 32, "layers": 2, "heads": 2}
    with pytest.raises(ValueError, match=match):
        FusionConfig(**{**base, **kwargs})


def test_forward_validation():
    model = tiny(BUDGETS["tokens"])
    inputs = make_inputs(2)
    with pytest.raises(ValueError, match="unknown modalities \\['video'\\]"):
        model({**inputs, "video": inputs["text"]})
    with pytest.raises(ValueError, match="inconsistent batch sizes"):
        model(inputs, {"text": bools(1, 1, 1)})
    with pytest.raises(ValueError, match=r"inputs\['text'\] tokens has shape \(2, 9, 5\), expected \(2, T, 12\)"):
        model({**inputs, "text": FusionInput(torch.randn(2, 9, 5))})
    with pytest.raises(ValueError, match="needs its pooled vector"):
        model({**inputs, "audio": FusionInput(torch.randn(2, 3, 7))})
    with pytest.raises(ValueError, match="needs its tokens"):
        model({**inputs, "text": FusionInput(pooled=torch.randn(2, 12))})
    with pytest.raises(ValueError, match="cannot tell the batch size"):
        model({})


def test_fusion_imports_neither_mmrec_nor_encoders():
    code = "import sys, fusion; bad = [m for m in sys.modules if m.split('.')[0] in ('mmrec', 'encoders')]; print(bad); assert not bad"
    subprocess.run([sys.executable, "-c", code], check=True)
