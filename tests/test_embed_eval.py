"""Embedding export (resumable, exact dot-product contract), the evaluation report, and the
recommend / similar / search commands, on a small trained run."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmrec.cli import main
from mmrec.data.splits import read_split
from mmrec.data.vocabulary import RunVocabulary
from mmrec.embedding import embed_batches, embed_items, item_batches
from mmrec.model.factory import load_model


def test_embeddings_follow_the_dot_product_contract(trained):
    root, data = trained
    items = load_file(root / "emb" / "item_embeddings.safetensors")["embeddings"]
    users = load_file(root / "emb" / "user_embeddings.safetensors")["embeddings"]
    item_ids = json.loads((root / "emb" / "item_ids.json").read_text())
    user_ids = json.loads((root / "emb" / "user_ids.json").read_text())
    assert item_ids == json.loads((data / "item_ids.json").read_text()) and items.shape == (120, 34)
    assert len(user_ids) == users.shape[0]
    model, _, _ = load_model(root / "run" / "model")
    vocab = RunVocabulary.load(root / "run")
    test = read_split(data, "test", vocab)
    known = test.users >= 0
    u, i = torch.from_numpy(test.users[known]), torch.from_numpy(test.items[known])
    with torch.no_grad():
        r_hat = model.predict_rating(u, items[i, :-2], items[i, -2])
    assert torch.allclose((users[u] * items[i]).sum(-1), r_hat, atol=1e-5)


def test_embed_resumes_to_identical_output_whatever_the_grouping(trained, tmp_path):
    """One part per shard, two lost and one made stale (its shard's sha256 no longer matches), then
    a resume that groups shards differently (2 workers): only those 3 shards are recomputed, the
    stale part is deleted, the others are kept, and every output equals the one-pass run's."""
    root, data = trained
    emb = tmp_path / "emb"
    assert main(["embed", "--run", str(root / "run"), "--data", str(data), "--out", str(emb),
                 "--shards-per-part", "1"]) == 0
    parts = sorted((emb / "parts").glob("*.safetensors"))
    assert [p.name for p in parts] == [f"items-{i:06d}+1.safetensors" for i in range(6)]
    assert len(sorted((root / "emb" / "parts").glob("*.safetensors"))) == 1  # the fixture: 8 shards per part
    for p in parts[:2]:
        p.unlink()  # as if killed before these shards were done ...
    (emb / "parts" / (parts[0].name + ".tmp")).write_bytes(b"half-written")  # ... while writing one
    stale = load_file(parts[2])
    with safe_open(str(parts[2]), "pt") as f:
        meta = f.metadata()
    save_file(stale, str(parts[2]), metadata={**meta, "shards": json.dumps(
        {k: "0" * 64 for k in json.loads(meta["shards"])})})  # as if its shard had changed since
    kept = {p.name: p.stat().st_mtime_ns for p in parts[3:]}
    for f in ("item_embeddings.safetensors", "user_embeddings.safetensors", "embedding.json"):
        (emb / f).unlink()
    assert main(["embed", "--run", str(root / "run"), "--data", str(data), "--out", str(emb), "--workers", "2"]) == 0
    assert json.loads((emb / "embedding.json").read_text())["shards_computed_by_main"] == 3
    now = {p.name: p.stat().st_mtime_ns for p in (emb / "parts").glob("*.safetensors")}
    assert not parts[2].exists() and {k: now[k] for k in kept} == kept and len(now) == 4  # 3 kept + 1 new group
    for f in ("item_embeddings.safetensors", "user_embeddings.safetensors", "item_states.safetensors"):
        a, b = load_file(root / "emb" / f), load_file(emb / f)
        assert all(torch.equal(a[k], b[k]) for k in a), f
    assert (emb / "item_titles.json").read_text() == (root / "emb" / "item_titles.json").read_text()


def test_titles_are_in_item_order(trained):
    root, data = trained
    titles = json.loads((root / "emb" / "item_titles.json").read_text())
    items = {json.loads(line)["item_id"]: json.loads(line) for line in
             (root / "cat" / "items.jsonl").read_text().splitlines() if line.strip()}
    item_ids = json.loads((data / "item_ids.json").read_text())
    assert len(titles) == len(item_ids) == 120
    # each title in its item's row: the titles travel with the batches through the DataLoader workers
    assert titles == [items[item_id]["title"] for item_id in item_ids]


def test_one_pass_ablation_equals_dropping_the_modality(trained):
    """`mmrec eval`'s ablation reuses one encoding per batch; it must equal a pass with the modality dropped."""
    root, data = trained
    model, pre, _ = load_model(root / "run" / "model")
    vocab = RunVocabulary.load(root / "run")
    out = embed_batches(model, item_batches(data, pre, vocab.attributes, batch_size=32), ablate=model.modalities)
    assert set(out.ablated) == set(model.modalities) == {"text", "image", "audio"}
    for m in model.modalities:
        idx, vecs = embed_items(model, data, pre, vocab.attributes, batch_size=32, drop=(m,))
        assert torch.equal(idx, out.indices)
        torch.testing.assert_close(out.ablated[m], vecs, rtol=1e-5, atol=1e-6)
        changed = (out.ablated[m] - out.vectors).abs().amax(1) > 1e-4  # items that had m moved
        assert 0 < changed.sum() < len(changed), (m, int(changed.sum()))  # not the items that lack m


def recompute(items, users, user_ids, item_ids, data, k):
    """Recall/NDCG@k from the exported files and the split CSVs alone, the slow obvious way."""
    import csv

    def rows(split):
        with open(data / "interactions" / f"{split}.csv") as f:
            return [(r["user_id"], r["item_id"]) for r in csv.DictReader(f)]

    uid, iid = {u: n for n, u in enumerate(user_ids)}, {i: n for n, i in enumerate(item_ids)}
    seen, held = {}, {}
    for split in ("train", "valid"):
        for u, i in rows(split):
            seen.setdefault(u, set()).add(iid[i])
    for u, i in rows("test"):
        if u in uid:
            held.setdefault(u, set()).add(iid[i])
    scores = (users @ items.T).numpy()
    recall, ndcg = [], []
    for u, rel in held.items():
        ranked = [i for i in sorted(range(len(item_ids)), key=lambda i: (-scores[uid[u], i], i)) if i not in seen.get(u, ())][:k]
        hits = [i in rel for i in ranked]
        recall.append(sum(hits) / len(rel))
        ndcg.append(sum(h / math.log2(r + 2) for r, h in enumerate(hits)) / sum(1 / math.log2(r + 2) for r in range(min(len(rel), k))))
    return float(np.mean(recall)), float(np.mean(ndcg))


def test_eval_report_matches_a_recomputation_from_the_exported_files(trained, tmp_path):
    root, data = trained
    out = tmp_path / "report"
    assert main(["eval", "--run", str(root / "run"), "--data", str(data), "--split", "test", "--k", "5,10",
                 "--out", str(out), "--emb", str(root / "emb"), "--candidates", "all"]) == 0
    report = json.loads((out / "report.json").read_text())
    p = report["protocol"]
    assert p["protocol"] == "cold-items" and p["seed"] == 0 and p["masked_splits"] == ["train", "valid"]
    assert set(p["split_sha256"]) == {"train", "valid", "test"}
    assert {"rating", "ranking", "beyond", "slices", "baselines", "ablation"} <= set(report)
    assert set(report["ablation"]) == {"without_text", "without_image", "without_audio"}
    assert {"popularity", "bias_only"} == set(report["baselines"])
    assert 0 < report["beyond"]["coverage@10"] <= 1
    items = load_file(root / "emb" / "item_embeddings.safetensors")["embeddings"]
    users = load_file(root / "emb" / "user_embeddings.safetensors")["embeddings"]
    recall, ndcg = recompute(items, users, json.loads((root / "emb" / "user_ids.json").read_text()),
                             json.loads((root / "emb" / "item_ids.json").read_text()), data, 10)
    assert report["ranking"]["recall@10"] == pytest.approx(recall, abs=1e-6)
    assert report["ranking"]["ndcg@10"] == pytest.approx(ndcg, abs=1e-6)
    assert (out / "report.md").is_file() and (out / "metrics_at_k.png").is_file()
    # the cold-items protocol's default: the headline ranks among the cold items, as the slice does
    assert main(["eval", "--run", str(root / "run"), "--data", str(data), "--k", "10", "--out", str(tmp_path / "auto"),
                 "--emb", str(root / "emb"), "--no-ablation"]) == 0
    auto = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert "cold items only" in auto["protocol"]["candidates"]
    assert auto["ranking"]["ndcg@10"] == pytest.approx(report["slices"]["cold_items"]["ndcg@10"], abs=1e-9)
    assert auto["ranking"]["candidates"] == report["slices"]["cold_items"]["candidates"] < 120


def test_recommend_similar_search(trained, capsys):
    root, data = trained
    emb = root / "emb"
    user = json.loads((emb / "user_ids.json").read_text())[0]
    assert main(["recommend", "--run", str(root / "run"), "--user", user, "--k", "5", "--emb", str(emb)]) == 0
    listed = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
    vocab = RunVocabulary.load(root / "run")
    train_rows = read_split(data, "train", vocab)
    seen = {vocab.item_ids[i] for u, i in zip(train_rows.users, train_rows.items) if vocab.user_ids[u] == user}
    assert len(listed) == 5 and not set(listed) & seen
    item = json.loads((emb / "item_ids.json").read_text())[3]
    assert main(["similar", "--run", str(root / "run"), "--item", item, "--emb", str(emb)]) == 0
    assert item not in [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert main(["search", "--run", str(root / "run"), "sunny festival parade", "--emb", str(emb), "--k", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["recommend", "--run", str(root / "run"), "--user", "nobody", "--emb", str(emb)]) == 2


def test_two_process_embed_equals_single_process(trained, two_process_runs):
    # `mmrec embed` under `accelerate launch` (2 processes): the fixture's launch, which then runs `mmrec eval`
    root, _ = trained
    out = two_process_runs[0] / "emb"
    assert json.loads((out / "embedding.json").read_text())["shards_computed_by_main"] == 3  # 6 shards, 2 ranks
    for f in ("item_embeddings.safetensors", "user_embeddings.safetensors"):
        assert torch.equal(load_file(root / "emb" / f)["embeddings"], load_file(out / f)["embeddings"])


def test_similar_centres_cold_items_on_their_own_mean():
    """Cold rows (content alone) share an offset from the rows with ID terms: centred on the global mean
    every cold item would look alike; centred on their own kind's mean they keep their differences."""
    from mmrec.serve.embeddings import Embeddings, similar

    torch.manual_seed(0)
    warm = torch.randn(20, 6) * 3
    cold = torch.tensor([[10.0, 10, 10, 10, 0, 0]]) + 0.1 * torch.randn(6, 6)  # a shared offset, small spread
    items = torch.cat([torch.cat([warm, cold]), torch.zeros(26, 2)], dim=1)
    ids = [f"i{n}" for n in range(26)]
    kinds = torch.cat([torch.ones(20, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)])
    emb = Embeddings(items, ids, ids, torch.zeros(1, 8), ["u"], None, id_terms=kinds)
    q = emb.similarity_vectors()
    cos_cold = (q[20:] @ q[20:].T).fill_diagonal_(-1)
    assert cos_cold.max() < 0.99  # distinct
    centred = (cold - cold.mean(0))
    expected = torch.nn.functional.normalize(centred, dim=-1)
    assert torch.allclose(q[20:], expected, atol=1e-5)
    legacy = Embeddings(items, ids, ids, torch.zeros(1, 8), ["u"], None)  # an EMB folder from before id_terms
    glob = legacy.similarity_vectors()
    assert (glob[20:] @ glob[20:].T).fill_diagonal_(-1).max() > 0.99  # the collapse this avoids
    scores = (q @ q[20]).index_fill(0, torch.tensor([20]), float("-inf"))
    assert [j for j, _ in similar(emb, "i20", 3)] == scores.argsort(descending=True)[:3].tolist()
