"""The multitask model on real item batches: shapes, the dot-product contract, missing-modality
invariance, every loss falling on an overfit batch, save -> load, configs."""

import json

import numpy as np
import pytest
import torch

from encoders import EncoderConfig, tiny_config
from fusion import FusionConfig, FusionInput
from mmrec.config import load_run_config
from mmrec.config_io import apply_overrides
from mmrec.data.batch import BatchCollator, ExampleBuilder, InteractionIndex, ItemBatch
from mmrec.data.reader import ReaderConfig, item_loader
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.model.config import ModelConfig, TaskConfig
from mmrec.model.factory import ModelSizes, create_model, load_model, save_model
from mmrec.model.tasks import MultiTaskLoss
from mmrec.shard.writer import ShardOptions, shard_catalogue

TINY = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


@pytest.fixture
def dataset(small_catalogue, tmp_path):
    items_path, inter_path, _ = small_catalogue
    m = shard_catalogue(items_path, inter_path, tmp_path / "data", options=ShardOptions(items_per_shard=4, progress=False)).manifest
    return tmp_path / "data", m


def build(data, manifest, overrides=(), seed=0):
    torch.manual_seed(seed)
    cfg = load_run_config(TINY, list(overrides))
    vocab = RunVocabulary.from_data(data)  # the vocabulary training uses, not a copy of its rules
    splits = RunSplits(data, vocab)
    sizes = ModelSizes.for_training(vocab, splits)
    model, pre = create_model(cfg.model, sizes)
    index = InteractionIndex.from_split(splits["train"], sizes.num_items)
    return cfg, model, pre, sizes, index


def one_batch(data, pre, attributes, index) -> ItemBatch:
    builder = ExampleBuilder(pre, attributes, index, pairs_per_item=4, catalogue=None)
    loader = item_loader(data, "eval", ReaderConfig(batch_size=12), transform=builder,
                         collate=BatchCollator(pre), rank=0, world_size=1)
    return next(iter(loader))


def test_batch_layout_and_dot_product_contract(dataset):
    data, manifest = dataset
    cfg, model, pre, sizes, index = build(data, manifest)
    builder = ExampleBuilder(pre, manifest["attributes"], index, pairs_per_item=4, catalogue=None)
    in_workers = item_loader(data, "eval", ReaderConfig(batch_size=12, num_workers=2), transform=builder,
                             collate=BatchCollator(pre), rank=0, world_size=1)
    assert sorted(i for b in in_workers for i in b.item_index.tolist()) == list(range(12))  # pickles and runs in workers
    batch = one_batch(data, pre, manifest["attributes"], index)
    assert batch.size == 12
    for m in ("text", "image", "audio"):
        assert batch.rows[m].tolist() == batch.present[m].nonzero().squeeze(-1).tolist()
    assert batch.pair_item.shape == batch.pair_user.shape == batch.pair_rating.shape
    assert batch.pair_item.numel() > 0 and (batch.attributes.sum(1) == 1).all()

    model.eval()
    with torch.no_grad():
        items, _ = model.items(batch)
        assert items.q.shape == (12, 32) and items.bias.shape == (12,)
        export = model.item_export(items)  # (B, E + 2)
        users = torch.arange(sizes.num_users + 1)  # the last one is unseen: index num_users
        user_vecs = model.user_export(users)
        for b in range(12):
            r_hat = model.predict_rating(users, items.q[b].expand(len(users), -1), items.bias[b].expand(len(users)))
            assert torch.allclose(user_vecs @ export[b], r_hat, atol=1e-5)


def test_absent_modality_has_no_influence(dataset):
    data, manifest = dataset
    _, model, pre, _, index = build(data, manifest)
    batch = one_batch(data, pre, manifest["attributes"], index)
    model.eval()
    with torch.no_grad():
        encoded = model.encode(batch)
        clean = model.fuse(encoded, batch.present)
        for m, e in encoded.items():
            absent = ~batch.present[m]
            assert absent.any()
            e.tokens[absent] = torch.randn_like(e.tokens[absent]) * 100
            e.pooled[absent] = torch.randn_like(e.pooled[absent]) * 100
            e.mask[absent] = True  # even a mask claiming real tokens cannot bring an absent modality in
        assert torch.equal(model.fuse(encoded, batch.present), clean)


def test_a_batch_without_any_of_the_models_modalities_gets_the_content_free_state(dataset):
    """An image-only model meets a batch in which no item has an image (e.g. a shard of poster-less movies)."""
    data, manifest = dataset
    _, model, pre, _, index = build(data, manifest, ['model.encoders={image: {name: timm-vit, trainable_layers: -1, '
                                                     'arch: {model_name: vit_tiny_patch16_224, img_size: 32, '
                                                     'patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}}}'])
    batch = one_batch(data, pre, manifest["attributes"], index)
    has_image = batch.present["image"]
    assert has_image.any() and not has_image.all()
    model.eval()
    with torch.no_grad():
        mixed, _ = model.items(batch)
        batch.present["image"] = torch.zeros_like(has_image)
        batch.inputs.pop("image")
        blank, _ = model.items(batch)  # no image anywhere: no encoder run, no error
    assert blank.state.shape == mixed.state.shape
    assert torch.allclose(blank.state[~has_image], mixed.state[~has_image], atol=1e-6)  # same as before for those
    assert torch.allclose(blank.state, blank.state[:1].expand_as(blank.state), atol=1e-6)  # one content-free state


@pytest.mark.parametrize("task", ["rating", "feature", "attributes", "retrieval"])
def test_each_loss_falls_when_overfitting_one_batch(dataset, task):
    data, manifest = dataset
    overrides = ["model.fusion.modality_dropout=0.0", "tasks.retrieval_weight=1.0"]
    cfg, model, pre, _, index = build(data, manifest, overrides)
    batch = one_batch(data, pre, manifest["attributes"], index)
    tasks = MultiTaskLoss(cfg.tasks, model, len(manifest["attributes"]))
    params = list(model.parameters()) + list(tasks.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    model.train()
    history = []
    for _ in range(30):  # each loss is below 0.4x its start by step 30 (rating, the slowest: 0.33x)
        losses = tasks(model, batch, generator=torch.Generator().manual_seed(0))  # same masking each step
        history.append(losses[task].item())
        opt.zero_grad()
        losses[task].backward()
        opt.step()
    assert history[-1] < 0.5 * history[0], (task, history[0], history[-1])


def test_total_loss_combines_weighted_terms(dataset):
    data, manifest = dataset
    cfg, model, pre, _, index = build(data, manifest, ["tasks.retrieval_weight=0.5", "model.fusion.modality_dropout=0.0"])
    batch = one_batch(data, pre, manifest["attributes"], index)
    tasks = MultiTaskLoss(cfg.tasks, model, len(manifest["attributes"]))
    losses = tasks(model, batch, generator=torch.Generator().manual_seed(1))
    assert set(losses) == {"rating", "feature", "attributes", "retrieval", "total"}
    w = cfg.tasks
    assert (w.rating_weight, w.feature_weight, w.retrieval_weight) == (1.0, 1.0, 0.5)  # attribute weight varies
    expected = (losses["rating"] + losses["feature"] + w.attribute_weight * losses["attributes"]
                + 0.5 * losses["retrieval"])
    assert torch.allclose(losses["total"], expected)


def test_save_then_load_gives_identical_outputs(dataset, tmp_path):
    data, manifest = dataset
    cfg, model, pre, sizes, index = build(data, manifest)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # not just the initialisation
    batch = one_batch(data, pre, manifest["attributes"], index)
    model.eval()
    save_model(model, sizes, tmp_path / "model")
    loaded, pre2, sizes2 = load_model(tmp_path / "model")
    loaded.eval()
    assert sizes2 == sizes
    batch2 = one_batch(data, pre2, manifest["attributes"], index)  # the reloaded preprocessing
    with torch.no_grad():
        a = model.item_export(model.items(batch)[0])
        b = loaded.item_export(loaded.items(batch2)[0])
        assert torch.equal(a, b)
        users = torch.arange(sizes.num_users)
        assert torch.equal(model.user_export(users), loaded.user_export(users))

    # config.json records the fusion as built: its modalities and the encoders' output widths
    hub_config = json.loads((tmp_path / "model" / "config.json").read_text())
    saved = hub_config["model"]
    assert saved["fusion"]["modalities"] == ["text", "image", "audio"]
    assert saved["fusion"]["input_dims"] == {m: e.output_dim for m, e in model.encoders.items()}
    assert loaded.config.fusion == model.fusion.config
    # models saved before the widths were recorded (input_dims: {}) load the same
    saved["fusion"]["input_dims"] = {}
    (tmp_path / "model" / "config.json").write_text(json.dumps(hub_config))
    older, _, _ = load_model(tmp_path / "model")
    assert older.config.fusion == model.fusion.config
    with torch.no_grad():
        assert torch.equal(older.eval().item_export(older.items(batch2)[0]), b)
    # models saved before `fusion.readout` existed read out the [ITEM] token, and still do
    assert saved["fusion"]["readout"] == "modalities"
    del saved["fusion"]["readout"]
    (tmp_path / "model" / "config.json").write_text(json.dumps(hub_config))
    oldest, _, _ = load_model(tmp_path / "model")
    assert oldest.config.fusion.readout == "item_token"
    with torch.no_grad():
        encoded = oldest.eval().encode(batch2)
        fused = oldest.fusion({m: FusionInput(e.tokens, e.mask, e.pooled) for m, e in encoded.items()}, batch2.present)
        assert torch.equal(oldest.fuse(encoded, batch2.present), fused.tokens[:, 0])


def test_id_only_model_is_matrix_factorisation(dataset):
    data, manifest = dataset
    cfg = ModelConfig(encoders={}, item_id_embeddings=True, embedding_dim=8)
    model, pre = create_model(cfg, ModelSizes(num_users=8, num_items=12))
    assert pre == {} and model.fusion is None
    batch = one_batch(data, {}, manifest["attributes"], build(data, manifest)[4])
    items, encoded = model.items(batch)
    assert encoded == {} and items.q.shape == (12, 8)
    with pytest.raises(ValueError, match="no item representation"):
        ModelConfig(encoders={}, item_id_embeddings=False)


def test_rating_l2_is_the_classic_per_rating_ridge_term(dataset):
    """rating_l2 adds lambda * (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2) to each pair's squared error, weighted like it."""
    from mmrec.model.tasks import RatingTask

    data, manifest = dataset
    model, _ = create_model(ModelConfig(encoders={}, item_id_embeddings=True, embedding_dim=8),
                            ModelSizes(num_users=8, num_items=12, global_mean=3.0))
    with torch.no_grad():
        for t in (model.user_p.weight, model.user_b.weight, model.item_id_q.weight, model.item_id_b.weight):
            t.normal_(0, 0.5)
    batch = one_batch(data, {}, manifest["attributes"], build(data, manifest)[4])
    batch.pair_weight = torch.rand(batch.pair_item.shape[0]) + 0.5
    items, _ = model.items(batch)
    lam = 0.3
    got = RatingTask(l2=lam).loss(model, batch, items, model.user_export(batch.pair_user))
    u, i = batch.pair_user, batch.item_index[batch.pair_item]
    p, bu = model.user_p.weight[u], model.user_b.weight[u, 0]
    q, bi = model.item_id_q.weight[i], model.item_id_b.weight[i, 0]
    err = (3.0 + bu + bi + (p * q).sum(-1) - batch.pair_rating) ** 2
    per_pair = err + lam * (p.square().sum(-1) + q.square().sum(-1) + bu**2 + bi**2)
    expected = (per_pair * batch.pair_weight).sum() / batch.pair_weight.sum()
    assert torch.allclose(got, expected, rtol=1e-5)
    assert got > RatingTask().loss(model, batch, items, model.user_export(batch.pair_user))


def test_pairs_are_sampled_per_item_reproducibly(dataset):
    """The draw depends on (seed, epoch, item) alone: two separately built builders (as two DataLoader
    workers or a resumed run have) agree; another epoch or seed draws differently."""
    import pickle

    data, manifest = dataset
    _, _, _, _, index = build(data, manifest)
    items = [it for b in item_loader(data, "eval", rank=0, world_size=1) for it in b]
    assert sum(len(index.pairs(i)[0]) for i in range(12)) == len(index)

    def draws(seed, epoch=0, builder=None):
        builder = builder or ExampleBuilder({}, manifest["attributes"], index, pairs_per_item=2, seed=seed, catalogue=None)
        builder.set_epoch(epoch)
        return [list(builder(it)["users"]) for it in items]

    first = draws(5)
    for it, users in zip(items, first):
        available = index.pairs(it.index)[0]
        assert len(users) == min(2, len(available)) and set(users) <= set(available)
    shipped = pickle.loads(pickle.dumps(ExampleBuilder({}, manifest["attributes"], index, pairs_per_item=2, seed=5, catalogue=None)))
    assert draws(5) == first and draws(5, builder=shipped) == first  # a fresh builder, one sent to a worker
    choosy = [k for k, it in enumerate(items) if len(index.pairs(it.index)[0]) > 2]  # items where the draw can vary
    assert choosy
    assert [draws(5, epoch=1)[k] for k in choosy] != [first[k] for k in choosy]
    assert [draws(6)[k] for k in choosy] != [first[k] for k in choosy]


def test_configs_load_with_overrides_and_reject_unknown_keys():
    cfg = load_run_config(TINY, ["model.fusion.layers=4", "tasks.retrieval_weight=0.25"])
    assert cfg.model.fusion.layers == 4 and cfg.tasks.retrieval_weight == 0.25
    assert cfg.model.fusion.modalities == ("text", "image", "audio")
    base = load_run_config(TINY.replace("tiny.yaml", "base.yaml"))
    assert base.model.encoders["text"].arch["num_hidden_layers"] == 12 and base.model.fusion.width == 768
    with pytest.raises(ValueError, match="unknown key"):
        load_run_config(TINY, ["model.fusion.depth=4"])
    with pytest.raises(ValueError, match="unknown key"):
        load_run_config(TINY, ["model.encoders.text.trainable=all"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["model.fusion.layers"])


def test_fusion_follows_the_encoders_explicitly():
    """fusion.modalities left out follows model.encoders; set otherwise it is an error, never overwritten."""
    encoders = {"text": EncoderConfig("hf-text"), "image": EncoderConfig("timm-vit")}
    cfg = ModelConfig(encoders=encoders, fusion=FusionConfig(width=32, heads=2, token_budget={"text": 4, "audio": 2}))
    assert cfg.fusion.modalities == ("text", "image", "audio")  # as written: nothing is replaced in place
    built = cfg.fusion_config({"image": 10, "text": 12})
    assert built.modalities == ("text", "image") and built.input_dims == {"text": 12, "image": 10}
    assert built.token_budget == {"text": 4}  # the budget of a modality without an encoder does not apply
    restated = ModelConfig(encoders=encoders, fusion=FusionConfig(modalities=("text", "image")))
    assert restated.fusion_config({"text": 12, "image": 10}).modalities == ("text", "image")
    with pytest.raises(ValueError, match=r"model.fusion.modalities \['text'\] disagrees with model.encoders "
                                         r"\['text', 'image'\].*Leave fusion.modalities out"):
        ModelConfig(encoders=encoders, fusion=FusionConfig(modalities=("text",)))
    with pytest.raises(ValueError, match="disagrees with model.encoders"):
        ModelConfig(encoders=encoders, fusion=FusionConfig(modalities=("image", "text")))  # the order is fixed
    recorded = ModelConfig(encoders=encoders, fusion=FusionConfig(input_dims={"text": 12, "image": 9}))
    with pytest.raises(ValueError, match=r"input_dims .* disagrees with the encoders' output widths"
                                         r".*leave input_dims out"):
        recorded.fusion_config({"text": 12, "image": 10})


def test_every_preset_is_listed_with_a_movielens_config_per_protocol():
    from mmrec.config import list_presets

    assert {"tiny", "base", "movielens-rating", "movielens-ranking", "movielens-cold"} <= set(list_presets())
    rating, ranking = load_run_config("movielens-rating"), load_run_config("movielens-ranking")
    assert rating.tasks.retrieval_weight == 0 and rating.train.selection_metric == "last"
    assert ranking.tasks.retrieval_weight > 0 and ranking.train.selection_metric == "recall@20"
    assert load_run_config("movielens-cold").train.selection_metric == "ndcg@20"


@pytest.mark.parametrize("preset", ["tiny", "base", "movielens-rating", "movielens-ranking", "movielens-cold"])
def test_presets_load_and_build_their_fusion_config(preset):
    cfg = load_run_config(preset).model
    built = cfg.fusion_config(dict.fromkeys(cfg.modalities, 8))
    assert built.modalities == cfg.modalities
    assert all(built.budget(m) == cfg.fusion.budget(m) for m in cfg.modalities)


def test_weight_decay_groups():
    """Decay on weight matrices, a ViT's patch projection included; none on what the models exempt
    (pos_embed, cls_token, the fusion's tokens), biases and norms; the ID embeddings' own decay."""
    from mmrec.training.optimizer import param_groups

    cfg = ModelConfig(encoders={"image": tiny_config("timm-vit", trainable_layers=-1)}, item_id_embeddings=True,
                      embedding_dim=8)
    model, _ = create_model(cfg, ModelSizes(num_users=5, num_items=7))
    tasks = MultiTaskLoss(TaskConfig(), model, 3)
    groups = param_groups(model, tasks, lr=1e-3, encoder_lr=1e-4, weight_decay=0.05, embedding_weight_decay=0.5)
    got = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    trainable = [p for m in (model, tasks) for p in m.parameters() if p.requires_grad]
    assert len(got) == len(trainable) == sum(len(g["params"]) for g in groups)  # each once
    params = dict(model.named_parameters())

    def of(name: str) -> tuple[float, float]:
        return got[id(params[name])]

    vit = "encoders.image.model."
    assert of(vit + "patch_embed.proj.weight") == (1e-4, 0.05)  # a convolution, not an embedding table
    assert of(vit + "blocks.0.attn.qkv.weight") == (1e-4, 0.05)
    for name in ("pos_embed", "cls_token", "patch_embed.proj.bias", "blocks.0.norm1.weight"):
        assert of(vit + name) == (1e-4, 0.0), name
    for name in ("user_p.weight", "user_b.weight", "item_id_q.weight", "item_id_b.weight"):
        assert of(name) == (1e-3, 0.5), name
    for name in ("fusion.item_token", "fusion.type_embed.image", "fusion.blocks.0.ln_1.weight", "item_q.bias"):
        assert of(name) == (1e-3, 0.0), name
    assert of("fusion.blocks.0.attn.qkv.weight") == of("item_q.weight") == (1e-3, 0.05)


def test_a_pass_of_visits_covers_every_training_interaction_exactly_once(dataset):
    """Training draws no sample: an item gets ceil(n / k) visits per pass, whose chunks are disjoint
    and together hold each of its n training interactions once; the next pass cuts other chunks."""
    from collections import Counter

    from mmrec.data.item import Visit, VisitOf

    data, manifest = dataset
    _, _, _, _, index = build(data, manifest)
    items = [it for b in item_loader(data, "eval", rank=0, world_size=1) for it in b]
    builder = ExampleBuilder({}, manifest["attributes"], index, pairs_per_item=2, seed=3, catalogue=None)
    visits = builder.visits()
    counts = [len(index.pairs(i)[0]) for i in range(len(visits))]
    assert visits.tolist() == [max(1, -(-n // 2)) for n in counts]

    def chunks(item, pass_number):
        n = int(visits[item.index])
        return [builder(VisitOf(item, Visit(pass_number, c, n))) for c in range(n)]

    cut_differently = False
    for item in items:
        users, ratings = index.pairs(item.index)
        first = chunks(item, 0)
        assert all(len(ex["users"]) <= 2 and ex["visits"] == visits[item.index] for ex in first)
        drawn = Counter(zip(*(np.concatenate([ex[k] for ex in first]).tolist() for k in ("users", "ratings"))))
        assert drawn == Counter(zip(users.tolist(), ratings.tolist()))  # every interaction once, none invented
        cut_differently |= [list(ex["users"]) for ex in chunks(item, 1)] != [list(ex["users"]) for ex in first]
    assert cut_differently


def test_retrieval_masks_other_visits_of_the_same_item_and_corrects_for_visits():
    """A second visit of the positive item is not a negative; with logQ, an item's logit drops by
    log(its visits), so a popular item is not over-penalised as a negative."""
    import torch.nn.functional as F

    from mmrec.model.tasks import RetrievalTask

    model, _ = create_model(ModelConfig(encoders={}, item_id_embeddings=True, embedding_dim=4),
                            ModelSizes(num_users=3, num_items=3, global_mean=0.0))
    with torch.no_grad():
        for t in (model.user_p.weight, model.item_id_q.weight):
            t.normal_(0, 1.0)
    # batch: item 0, item 1, item 0 again (another chunk); user 0 -> position 0, user 1 -> position 1
    batch = ItemBatch(item_index=torch.tensor([0, 1, 0]), inputs={}, rows={}, present={},
                      attributes=torch.zeros(3, 0), pair_item=torch.tensor([0, 1]), pair_user=torch.tensor([0, 1]),
                      pair_rating=torch.ones(2), item_visits=torch.tensor([2.0, 1.0, 2.0]))
    items, _ = model.items(batch)
    users, vecs = model.user_export(batch.pair_user), model.item_export(items)
    logits = users @ vecs.T / 0.5
    for logq, shift in ((False, torch.zeros(3)), (True, torch.tensor([2.0, 1.0, 2.0]).log())):
        got = RetrievalTask(0.5, logq=logq).loss(model, batch, items, model.user_export(batch.pair_user))
        z = logits - shift
        row0 = F.cross_entropy(z[0, :2][None], torch.tensor([0]))  # position 2 (item 0 again) masked
        row1 = F.cross_entropy(z[1][None], torch.tensor([1]))
        assert torch.allclose(got, (row0 + row1) / 2, atol=1e-6), logq


def test_item_id_dropout_by_popularity_hides_rarely_rated_items_ids_more_often():
    """With a pivot n0 the rate is item_id_dropout x n0 / (n0 + n_i): an item rated 90 times keeps its ID
    terms far more often than one rated once; evaluation never drops them; the rates are not saved."""
    cfg = ModelConfig(encoders={"text": tiny_config("hf-text")}, item_id_embeddings=True, embedding_dim=4,
                      item_id_dropout=0.5, item_id_dropout_pivot=10.0)
    model, _ = create_model(cfg, ModelSizes(num_users=2, num_items=2))
    model.set_item_popularity(torch.tensor([1, 90]))
    assert torch.allclose(model.item_id_drop, torch.tensor([0.5 * 10 / 11, 0.5 * 10 / 100]))
    assert "item_id_drop" not in model.state_dict()
    with torch.no_grad():
        model.item_id_q.weight.fill_(1.0)
    state = torch.zeros(4000, model.fusion.output_dim)
    items = torch.tensor([0, 1]).repeat(2000)
    torch.manual_seed(0)
    model.train()
    kept = (model.item_output(state, items).q - model.item_q(state)).abs().sum(-1) > 0  # ID terms present
    assert abs(kept[items == 0].float().mean().item() - (1 - 0.5 * 10 / 11)) < 0.05
    assert abs(kept[items == 1].float().mean().item() - (1 - 0.05)) < 0.03
    model.eval()
    assert ((model.item_output(state, items).q - model.item_q(state)).abs().sum(-1) > 0).all()
    # what was built follows the config and the sizes: one ID row per item, embedding_dim wide; the heads map
    # the configured fusion width to it; the fusion reads the text encoder at its configured width
    E, D, D_text = cfg.embedding_dim, cfg.fusion.width, cfg.encoders["text"].arch["hidden_size"]
    assert model.item_id_q.weight.shape == (2, E) and model.item_id_b.weight.shape == (2, 1)
    assert model.item_q.weight.shape == (E, D) and model.item_b.weight.shape == (1, D)
    assert model.fusion.proj["text"][0].weight.shape == (D, D_text) and len(model.fusion.blocks) == cfg.fusion.layers
    assert model.item_export(model.item_output(state[:2], items[:2])).shape == (2, E + 2)
