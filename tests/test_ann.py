"""`mmrec index` and the faiss indexes `recommend` / `similar` search (mmrec/serve/ann.py): every kind gives exact
search's top-K on small data, seen items are excluded however many there are, a stale index is never used."""

import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmrec.cli import main
from mmrec.serve.ann import INDEX_DIR, IndexConfig, ItemIndex, build_index, build_indexes, load_index
from mmrec.serve.embeddings import Embeddings, recommend, similar

pytest.importorskip("faiss")


def write_emb(folder, items=1500, users=30, dim=16, clusters=12, seed=0):
    """An EMB folder of clustered vectors in the exported shape ([q, b, 1] and [p, 1, mu + b]), so that
    neighbours are not spread evenly and an approximate index has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 2
    q = centres[torch.randint(0, clusters, (items,), generator=g)] + torch.randn(items, dim, generator=g)
    p = centres[torch.randint(0, clusters, (users,), generator=g)] + torch.randn(users, dim, generator=g)
    vectors = torch.cat([q, 0.3 * torch.randn(items, 1, generator=g), torch.ones(items, 1)], dim=1)
    id_terms = (torch.rand(items, generator=g) < 0.8).to(torch.uint8)  # some cold rows: `similar` centres per kind
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": vectors, "id_terms": id_terms}, str(folder / "item_embeddings.safetensors"))
    save_file({"embeddings": torch.cat([p, torch.ones(users, 1), 3.5 + torch.randn(users, 1, generator=g)], dim=1)},
              str(folder / "user_embeddings.safetensors"))
    ids = [f"i{n}" for n in range(items)]
    for name, value in (("item_ids", ids), ("item_titles", ids), ("user_ids", [f"u{n}" for n in range(users)])):
        (folder / f"{name}.json").write_text(json.dumps(value))
    return folder


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory):
    return write_emb(tmp_path_factory.mktemp("ann") / "emb")


# generous search settings: on 1500 items every kind should find exactly what exact search finds
GENEROUS = {"flat": {}, "hnsw": {"ef_search": 256}, "ivfpq": {"nprobe": 1000, "refine": 20}}


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_every_kind_reproduces_exact_top_k(emb_dir, tmp_path, kind):
    folder = tmp_path / "emb"
    shutil.copytree(emb_dir, folder)
    meta = build_indexes(folder, IndexConfig(kind=kind, **GENEROUS[kind]))
    assert meta["kind"] == kind and meta["items"] == 1500
    emb = Embeddings.load(folder)
    rec, sim = load_index(folder, emb, "recommend"), load_index(folder, emb, "similar")
    assert rec is not None and sim is not None and rec.kind == kind
    rng = np.random.default_rng(0)
    for user in emb.user_ids:
        exact_order = [i for i, _ in recommend(emb, user, k=30)]
        # the user's best items among the excluded: an index that does not over-fetch returns too few or them
        seen = set(exact_order[:12]) | set(rng.choice(1500, 20, replace=False).tolist())
        want, got = recommend(emb, user, 10, seen), recommend(emb, user, 10, seen, index=rec)
        assert [i for i, _ in got] == [i for i, _ in want], user
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    for item in emb.item_ids[:40]:
        assert [i for i, _ in similar(emb, item, 10, index=sim)] == [i for i, _ in similar(emb, item, 10)], item


def test_auto_kind_follows_the_catalogue_size():
    assert IndexConfig().resolve(99_999, 66).kind == "flat"
    assert IndexConfig().resolve(100_000, 66).kind == "hnsw"
    assert IndexConfig(flat_below=10).resolve(500, 66).kind == "hnsw"
    pq = IndexConfig(kind="ivfpq").resolve(1_000_000, 66)
    assert (pq.nlist, pq.pq_m) == (4000, 23)  # 67 columns (one added, see `_on_sphere`) in 23 parts
    with pytest.raises(ValueError, match="--kind flat"):
        IndexConfig(kind="ivfpq").resolve(100, 66)  # fewer items than the 256 codes of 8-bit PQ
    with pytest.raises(ValueError, match="unknown key.*ef_search"):
        IndexConfig.from_args("hnsw", ["efsearch=10"])


def test_exclusions_are_never_returned_and_never_shorten_the_list(emb_dir):
    emb = Embeddings.load(emb_dir)
    user = emb.users[0]
    exact = torch.argsort(emb.items @ user, descending=True).tolist()
    flat = ItemIndex(build_index(emb.items.numpy(), IndexConfig(kind="flat")), emb.items, IndexConfig(kind="flat"))
    # the 200 best excluded: the answer is exact ranks 200..209
    assert [i for i, _ in flat.top(user, 10, set(exact[:200]))] == exact[200:210]
    # all but three excluded: those three, best first, and no padding rows
    assert [i for i, _ in flat.top(user, 10, set(exact[3:]))] == exact[:3]
    # a batch, each row with its own exclusions, equals the rows one by one
    queries = emb.users[:4]
    excludes = [set(), {exact[0]}, set(exact[:50]), set(range(0, 1500, 2))]
    ids, _ = flat.search(queries.numpy(), 10, excludes)
    assert [row.tolist() for row in ids] == [[i for i, _ in flat.top(q, 10, e)] for q, e in zip(queries, excludes)]
    # one IVF cell of ~10 items probed: when the index has fewer than k + |excluded| items to give, the list
    # is not cut short: that query is answered exactly
    cfg = IndexConfig(kind="ivfpq", nlist=150, nprobe=1, refine=1).resolve(1500, 18)
    coarse = ItemIndex(build_index(emb.items.numpy(), cfg), emb.items, cfg)
    assert [i for i, _ in coarse.top(user, 10, set(exact[:40]))] == exact[40:50]
    assert coarse.exact_fallbacks == 1
    assert len(coarse.top(user, 3)) == 3 and coarse.exact_fallbacks == 1  # a cell holds 3: no fallback


def test_stale_or_damaged_index_is_ignored_with_a_warning(emb_dir, tmp_path, caplog):
    folder = tmp_path / "emb"
    shutil.copytree(emb_dir, folder)
    build_indexes(folder, IndexConfig(kind="flat"))
    assert load_index(folder, Embeddings.load(folder), "recommend") is not None
    # new user vectors (`mmrec embed-users`) leave the item indexes valid
    users = load_file(folder / "user_embeddings.safetensors")["embeddings"]
    save_file({"embeddings": users * 2}, str(folder / "user_embeddings.safetensors"))
    assert load_index(folder, Embeddings.load(folder), "recommend") is not None
    # an appended item (`mmrec embed-items`): every row is still there, but the index lacks the new one
    items = load_file(folder / "item_embeddings.safetensors")
    save_file({"embeddings": torch.cat([items["embeddings"], 9 * torch.ones(1, 18)]),
               "id_terms": torch.cat([items["id_terms"], torch.zeros(1, dtype=torch.uint8)])},
              str(folder / "item_embeddings.safetensors"))
    for name in ("item_ids", "item_titles"):
        (folder / f"{name}.json").write_text(json.dumps([f"i{n}" for n in range(1500)] + ["new"]))
    emb = Embeddings.load(folder)
    with caplog.at_level(logging.WARNING, logger="mmrec.serve.ann"):
        assert load_index(folder, emb, "recommend") is None and load_index(folder, emb, "similar") is None
    assert "built from other embeddings" in caplog.text and f"mmrec index --emb {folder}" in caplog.text
    assert recommend(emb, "u0", 1)[0][0] == 1500  # the new item (all 9s) tops the exact ranking the CLI falls back to
    # rebuilt: fresh again, and it knows the new item
    build_indexes(folder)
    rec = load_index(folder, Embeddings.load(folder), "recommend")
    assert rec is not None and recommend(emb, "u0", 1, index=rec)[0][0] == 1500
    caplog.clear()
    (folder / INDEX_DIR / "similar.faiss").write_bytes(b"not a faiss index")
    with caplog.at_level(logging.WARNING, logger="mmrec.serve.ann"):
        assert load_index(folder, emb, "similar") is None
    assert "ignoring" in caplog.text


def test_without_faiss_building_says_what_to_install(emb_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    assert main(["index", "--emb", str(emb_dir)]) == 2
    assert "pip install 'mmrec[faiss]'" in capsys.readouterr().err
    assert not (emb_dir / INDEX_DIR).exists()


def test_cli_index_then_recommend_and_similar_search_it(trained, tmp_path, capsys):
    root, _ = trained
    emb_dir = tmp_path / "emb"
    shutil.copytree(root / "emb", emb_dir)
    run = str(root / "run")
    assert main(["index", "--emb", str(emb_dir), "--kind", "hnsw", "bogus=1"]) == 2
    assert "unknown key(s) ['bogus']" in capsys.readouterr().err
    # a deliberately coarse index (two cells, one probed), so its answers can differ from exact search
    assert main(["index", "--emb", str(emb_dir), "--kind", "ivfpq", "nlist=2", "nprobe=1", "pq_bits=4",
                 "refine=1"]) == 0
    assert "indexed 120 items (ivfpq)" in capsys.readouterr().out
    meta = json.loads((emb_dir / INDEX_DIR / "index.json").read_text())
    assert meta["config"]["nprobe"] == 1 and set(meta["built_from"]) == {"item_embeddings.safetensors",
                                                                          "item_ids.json"}

    def listed(*argv):
        assert main([*argv, "--run", run, "--emb", str(emb_dir), "--k", "5"]) == 0
        out = capsys.readouterr()
        return [line.split()[2] for line in out.out.splitlines()[1:]], out.err

    emb = Embeddings.load(emb_dir)
    index = load_index(emb_dir, emb, "similar")
    differs = [item for item in emb.item_ids
               if similar(emb, item, 5, index=index) != similar(emb, item, 5)]
    assert differs, "the coarse index should miss some neighbours"
    item = differs[0]
    got, err = listed("similar", "--item", item)
    assert got == [emb.item_ids[i] for i, _ in similar(emb, item, 5, index=index)] and "searching" in err
    exact = [emb.item_ids[i] for i, _ in similar(emb, item, 5)]
    assert listed("similar", "--item", item, "--exact")[0] == exact != got
    user = emb.user_ids[0]
    got, _ = listed("recommend", "--user", user)
    assert len(got) == 5
    # embeddings rewritten after indexing (as `mmrec embed` does): the CLI warns and answers exactly
    items = load_file(emb_dir / "item_embeddings.safetensors")
    save_file({**items, "embeddings": items["embeddings"] * 1.5}, str(emb_dir / "item_embeddings.safetensors"))
    got, err = listed("similar", "--item", item)  # (cosines do not change with the scale: the same exact answer)
    assert got == exact and "built from other embeddings" in err and "mmrec index --emb" in err
