"""The `mmrec` command line (DESIGN.md "Command line").

Each subcommand is a small function over the library; argument errors and input errors exit with
status 2 and one clear line, never a traceback from deep inside.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from mmrec.data.schema import SPLIT_PROTOCOLS


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected train,valid,test (three numbers), got {text!r}")
    return parts


def _add_shard_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="random", choices=SPLIT_PROTOCOLS, help="split protocol (default: random)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice in the split")
    p.add_argument("--ratios", type=_ratios, default=(0.8, 0.1, 0.1),
                   help="train,valid,test fractions for the random and ratio splits (default 0.8,0.1,0.1)")
    p.add_argument("--cold-fraction", type=float, default=0.2,
                   help="cold-items split: fraction of rated items held out entirely (default 0.2)")
    p.add_argument("--warm-holdout", type=float, default=0.0,
                   help="cold-items split: also hold out this per-user share of warm rows (default 0)")
    p.add_argument("--items-per-shard", type=int, default=1000, help="items per tar file (default 1000)")
    p.add_argument("--image-max-side", type=int, default=None,
                   help="resize images whose longer side exceeds this many pixels (default: keep)")
    p.add_argument("--audio-rate", type=int, default=None,
                   help="resample all audio to this rate and store it as FLAC (default: keep)")
    p.add_argument("--text-template", default=None,
                   help='build item text from fields, e.g. "{title}. Genres: {genres}" (default: the text field)')
    p.add_argument("--workers", type=int, default=1, help="processes decoding media (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _shard_configs(args: argparse.Namespace):
    from mmrec.data.sharding import ShardOptions
    from mmrec.data.splits import SplitConfig

    split = SplitConfig(protocol=args.split, seed=args.seed, ratios=args.ratios, cold_fraction=args.cold_fraction,
                        warm_holdout=args.warm_holdout)
    options = ShardOptions(items_per_shard=args.items_per_shard, image_max_side=args.image_max_side,
                           audio_rate=args.audio_rate, text_template=args.text_template, workers=args.workers,
                           progress=not args.no_progress, overwrite=args.overwrite)
    return split, options


def cmd_shard(args: argparse.Namespace) -> int:
    from mmrec.data.sharding import shard_catalogue

    split, options = _shard_configs(args)
    report = shard_catalogue(args.items, args.interactions, args.out, split, options)
    print(report.summary())
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="YAML config, e.g. configs/tiny.yaml")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: data.path in the config)")
    p.add_argument("--out", type=Path, default=Path("run"), help="run folder (default: run)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")


def cmd_train(args: argparse.Namespace) -> int:
    from mmrec.config import load_run_config
    from mmrec.training import train

    cfg = load_run_config(args.config, args.overrides)
    data = args.data or (Path(cfg.data.path) if cfg.data.path else None)
    if data is None:
        raise ValueError("no dataset: pass --data DATA or set data.path in the config")
    cfg.data.path = str(data)
    state = train(cfg, data, args.out, resume=args.resume)
    metric = cfg.train.selection_metric
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one summary per run, not one per process
    chosen = ("the final model kept (train.selection_metric=last)" if metric == "last"
              else f"best valid {metric} = {state.best_metric} at step {state.best_step}")
    print(f"trained {state.step} steps; {chosen}; model in {args.out / 'model'}, metrics in {args.out / 'metrics.jsonl'}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from mmrec.cache import build_frozen_model, cache_features
    from mmrec.config import load_run_config
    from mmrec.factory import load_model

    if (args.run is None) == (args.config is None):
        raise ValueError("pass exactly one of --run RUN (a run folder) or --config CONFIG")
    if args.run is not None and (args.run / "model" / "model.safetensors").is_file():
        model, preprocessors, _ = load_model(args.run / "model")  # the trained run's own encoders
    else:
        config = args.run / "config.yaml" if args.run is not None else args.config
        model, preprocessors = build_frozen_model(load_run_config(config, args.overrides), args.data)
    manifest = cache_features(model, preprocessors, args.data, args.out, batch_size=args.batch_size,
                              num_workers=args.workers, device="cuda" if torch_cuda() else "cpu")
    print(f"cached {manifest['num_items']} items in {len(manifest['shards'])} feature shards -> {args.out}; "
          f"train on them with data.features={args.out}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from mmrec.embedding import embed

    summary = embed(args.run, args.data, args.out, batch_size=args.batch_size, num_workers=args.workers,
                    shards_per_part=args.shards_per_part)
    if summary:
        print(f"embedded {summary['items']} items and {summary['users']} users (dim {summary['dim']}) in "
              f"{summary['seconds']} s -> {args.out}")
    return 0


def _run_data(run: Path, data: Path | None) -> Path:
    """The dataset a run trained on, unless the user names one."""
    if data is not None:
        return data
    from mmrec.config import load_run_config

    path = load_run_config(run / "config.yaml").data.path
    if not path or not Path(path).is_dir():
        raise ValueError(f"cannot find the run's dataset ({path!r}); pass --data DATA")
    return Path(path)


def cmd_eval(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import load_file

    from mmrec.evaluation import evaluate
    from mmrec.factory import load_model
    from mmrec.inference import RunVocabulary, assemble, embed_batches, item_batches
    from mmrec.report import write_report

    data = _run_data(args.run, args.data)
    ks = sorted({int(k) for k in args.k.split(",")})
    device = torch.device("cuda" if torch_cuda() else "cpu")
    model, pre, _ = load_model(args.run / "model", device=device)
    vocab = RunVocabulary.load(args.run)
    n = len(vocab.item_ids)
    item_vecs = load_file(args.emb / "item_embeddings.safetensors")["embeddings"] if args.emb is not None else None
    ablate = () if args.no_ablation else tuple(model.modalities)
    ablated = {}
    if item_vecs is None or ablate:
        # one pass over the items gives the vectors and every modality's ablation (the encoders run once)
        out = embed_batches(model, item_batches(data, pre, vocab.attributes, batch_size=args.batch_size,
                                                num_workers=args.workers, device=device),
                            device=device, autocast=device.type == "cuda" and torch.cuda.is_bf16_supported(),
                            ablate=ablate)
        item_vecs = assemble([(out.indices, out.vectors)], n) if item_vecs is None else item_vecs
        ablated = {m: assemble([(out.indices, v)], n) for m, v in out.ablated.items()}
    report = evaluate(args.run, data, item_vecs, ablated, model, args.split, ks, args.mask, args.threshold,
                      args.candidates)
    paths = write_report(report, args.out)
    k = ks[0]
    r, pop = report["ranking"], report["baselines"]["popularity"]["ranking"]
    print(f"{args.split} ({report['protocol']['protocol']}, seed {report['protocol']['seed']}): "
          f"NDCG@{k} {r[f'ndcg@{k}']:.4f} (popularity {pop[f'ndcg@{k}']:.4f}), Recall@{k} {r[f'recall@{k}']:.4f}, "
          f"RMSE {report['rating']['rmse']:.4f}")
    print(f"report: {paths.get('md', args.out)}")
    return 0


def _emb_dir(args: argparse.Namespace) -> Path:
    """--emb, else the folder the run's last `mmrec embed` wrote, else RUN/emb."""
    if args.emb is not None:
        return args.emb
    pointer = args.run / "embeddings.json"
    return Path(json.loads(pointer.read_text())["path"]) if pointer.is_file() else args.run / "emb"


def cmd_recommend(args: argparse.Namespace) -> int:
    from mmrec.serving import Embeddings, format_results, recommend, seen_items

    emb = Embeddings.load(_emb_dir(args))
    exclude = set()
    try:
        exclude = seen_items(_run_data(args.run, args.data), args.user, emb.item_ids)
    except ValueError as e:
        print(f"note: not excluding seen items ({e})", file=sys.stderr)
    print(format_results(emb, recommend(emb, args.user, args.k, exclude)))
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from mmrec.serving import Embeddings, format_results, similar

    emb = Embeddings.load(_emb_dir(args))
    print(format_results(emb, similar(emb, args.item, args.k)))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mmrec.serving import Embeddings, format_results, search

    emb = Embeddings.load(_emb_dir(args))
    print(format_results(emb, search(args.run, emb, args.query, args.k)))
    return 0


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_demo(args: argparse.Namespace) -> int:
    from mmrec.config import load_run_config
    from mmrec.data.sharding import ShardOptions, shard_catalogue
    from mmrec.data.splits import SplitConfig
    from mmrec.synthetic import SyntheticCatalogueConfig, write_synthetic_catalogue
    from mmrec.training import train

    out = Path(args.out)
    started = time.perf_counter()
    catalogue, data, run = out / "catalogue", out / "data", out / "run"
    print(f"[1/5] synthetic tri-modal catalogue -> {catalogue}")
    info = write_synthetic_catalogue(catalogue, SyntheticCatalogueConfig(seed=args.seed))
    print(f"      {info['num_items']} items, {info['num_users']} users, {info['num_ratings']} ratings")
    print(f"[2/5] shards + cold-items split (20% of items held out, plus 10% of each user's warm rows) -> {data}")
    report = shard_catalogue(catalogue / "items.jsonl", catalogue / "interactions.csv", data,
                             SplitConfig(protocol="cold-items", seed=args.seed, warm_holdout=0.1),
                             ShardOptions(items_per_shard=125, progress=False, overwrite=True))
    print(report.summary())
    print(f"[3/5] train configs/tiny.yaml on CPU -> {run}")
    cfg = load_run_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", [f"train.seed={args.seed}"])
    if run.exists():
        shutil.rmtree(run)  # the demo always starts fresh
    state = train(cfg, data, run)
    print(f"      {state.step} steps; best validation {cfg.train.selection_metric} {state.best_metric:.4f} "
          f"(cold items ranked among cold items) at step {state.best_step}")
    print(f"[4/5] embed every item and user -> {out / 'emb'}")
    main(["embed", "--run", str(run), "--data", str(data), "--out", str(out / "emb")])
    print(f"[5/5] evaluate on the test split -> {out / 'report'}")
    main(["eval", "--run", str(run), "--data", str(data), "--out", str(out / "report"), "--emb", str(out / "emb"),
          "--k", "10,20,50"])
    rep = json.loads((out / "report" / "report.json").read_text())
    rows = [("warm items (among warm)", rep["slices"]["warm_items"], rep["baselines"]["popularity"]["slices"]["warm_items"]),
            ("cold items (among cold)", rep["slices"]["cold_items"], rep["baselines"]["popularity"]["slices"]["cold_items"])]
    print(f"\n  test split, cold-items protocol, seed {args.seed}  |  NDCG@10: mmrec  popularity  |  Recall@10: mmrec  popularity")
    for name, ours, pop in rows:
        print(f"  {name:<40s}  |  {ours.get('ndcg@10', float('nan')):.4f}  {pop.get('ndcg@10', float('nan')):.4f}"
              f"      |  {ours.get('recall@10', float('nan')):.4f}  {pop.get('recall@10', float('nan')):.4f}")
    print(f"  rating RMSE on all test rows: mmrec {rep['rating']['rmse']:.4f}, bias-only "
          f"{rep['baselines']['bias_only']['rating']['rmse']:.4f}")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s. Report: {out / 'report' / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmrec", description="Multimodal recommendation engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic tri-modal catalogue -> shards (-> train -> embed -> eval)")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train on a dataset folder (same as `accelerate launch train.py ...`)")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cache", help="run frozen encoders once over the shards -> feature shards for training")
    p.add_argument("--run", type=Path, default=None, help="run folder (its trained model, or its config.yaml)")
    p.add_argument("--config", type=Path, default=None, help="or a YAML config (the run's seed builds the encoders)")
    p.add_argument("--data", required=True, type=Path, help="dataset folder")
    p.add_argument("--out", required=True, type=Path, help="feature cache folder to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("embed", help="item and user embeddings of a trained run (resumable)")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="embedding folder (EMB)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.add_argument("--shards-per-part", type=int, default=None,
                   help="shards one DataLoader reads and one part file holds, the unit of resuming "
                        "(default: 8 per worker)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("eval", help="offline evaluation report: rating, ranking, beyond-accuracy, slices, baselines")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the run's)")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--k", default="10,20,50", help="cut-offs, comma-separated (default 10,20,50)")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--emb", type=Path, default=None, help="use these item embeddings instead of recomputing")
    p.add_argument("--mask", default="auto", choices=("auto", "train"),
                   help="auto: test masks train+valid, valid masks train; train: mask train only (MMRec)")
    p.add_argument("--threshold", type=float, default=None, help="only held-out ratings >= this are relevant")
    p.add_argument("--candidates", default="auto", choices=("auto", "all", "cold"),
                   help="items ranked: all, cold only, or auto (cold for the cold-items protocol, else all)")
    p.add_argument("--no-ablation", action="store_true", help="skip the modality ablation")
    p.add_argument("--batch-size", type=int, default=128, help="items per batch when embedding")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media when embedding")
    p.set_defaults(func=cmd_eval)

    for name, target, helptext in (("recommend", "--user", "top-K items for a user"),
                                   ("similar", "--item", "items most similar to an item")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--run", required=True, type=Path)
        p.add_argument(target, required=True, dest=target.strip("-"))
        p.add_argument("--k", type=int, default=10)
        p.add_argument("--emb", type=Path, default=None, help="embedding folder (default: the run's last `mmrec embed` output)")
        p.add_argument("--data", type=Path, default=None, help="dataset, for the user's seen items (default: the run's)")
        p.set_defaults(func=cmd_recommend if name == "recommend" else cmd_similar)
    p = sub.add_parser("search", help='items matching a free-text query, e.g. mmrec search --run RUN "sunny festival"')
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("query")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--emb", type=Path, default=None, help="embedding folder (default: the run's last `mmrec embed` output)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("shard", help="items.jsonl + interactions.csv -> WebDataset shards, splits, manifest")
    p.add_argument("--items", required=True, type=Path, help="items.jsonl")
    p.add_argument("--interactions", required=True, type=Path, help="interactions.csv or .parquet")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    _add_shard_options(p)
    p.set_defaults(func=cmd_shard)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"mmrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
