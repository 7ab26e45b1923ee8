"""The subcommands of the training pipeline: shard, cache, train, embed, eval, export, demo."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mmrec.cli.args import data_location


def cmd_shard(args: argparse.Namespace) -> int:
    from mmrec.shard.options import shard_configs
    from mmrec.shard.writer import shard_catalogue

    split, options = shard_configs(args)
    report = shard_catalogue(args.items, args.interactions, args.out, split, options)
    print(report.summary())
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="a YAML file, or the name of a shipped preset (mmrec.list_presets(): tiny, base, movielens-rating, ...)")
    p.add_argument("--data", type=data_location, default=None,
                   help="dataset folder or URL (default: data.path in the config)")
    p.add_argument("--out", type=Path, default=Path("run"), help="run folder (default: run)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")


def cmd_train(args: argparse.Namespace) -> int:
    from mmrec.config import load_run_config

    cfg = load_run_config(args.config, args.overrides)  # before the training stack loads: a typo fails at once
    data = args.data or (data_location(cfg.data.path) if cfg.data.path else None)
    if data is None:
        raise ValueError("no dataset: pass --data DATA or set data.path in the config")
    cfg.data.path = str(data)
    from mmrec.training.loop import train

    state = train(cfg, data, args.out, resume=args.resume)
    metric = cfg.train.selection_metric
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one summary per run, not one per process
    chosen = ("the final model kept (train.selection_metric=last)" if metric == "last"
              else f"best valid {metric} = {state.best_metric} at step {state.best_step}")
    print(f"trained {state.step} steps; {chosen}; model in {args.out / 'model'}, metrics in {args.out / 'metrics.jsonl'}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from mmrec.config import load_run_config
    from mmrec.model.factory import load_model
    from mmrec.training.cache import build_frozen_model, cache_features

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


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_embed(args: argparse.Namespace) -> int:
    from mmrec.embedding import embed

    summary = embed(args.run, args.data, args.out, batch_size=args.batch_size, num_workers=args.workers,
                    shards_per_part=args.shards_per_part)
    if summary:
        print(f"embedded {summary['items']} items and {summary['users']} users (dim {summary['dim']}) in "
              f"{summary['seconds']} s -> {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mmrec.evaluate.evaluation import evaluate_run
    from mmrec.serve.run import run_dataset

    ks = args.k
    data = run_dataset(args.run, args.data, required=True)
    report, paths = evaluate_run(args.run, data, args.out, split=args.split, ks=ks, emb=args.emb, mask=args.mask,
                                 threshold=args.threshold, candidates=args.candidates,
                                 ablation=not args.no_ablation, batch_size=args.batch_size, num_workers=args.workers,
                                 diversify=args.diversify, pool=args.pool, max_per_attribute=args.max_per_attribute)
    if not report:  # another process of an `accelerate launch`: the main one writes and prints
        return 0
    k = ks[0]
    r, pop = report["ranking"], report["baselines"]["popularity"]["ranking"]
    rmse = f", RMSE {report['rating']['rmse']:.4f}" if report.get("rating") else ""  # none for implicit feedback
    print(f"{args.split} ({report['protocol']['protocol']}, seed {report['protocol']['seed']}): "
          f"NDCG@{k} {r[f'ndcg@{k}']:.4f} (popularity {pop[f'ndcg@{k}']:.4f}), Recall@{k} {r[f'recall@{k}']:.4f}"
          f"{rmse}")
    if rows := report.get("diversify", {}).get("rows"):  # each LAMBDA against the plain ranking (LAMBDA 0)
        kd = next((k for k in ks if f"diversity@{k}" in rows[0]), None)
        if kd is not None:
            nd, dv = f"ndcg@{kd}", f"diversity@{kd}"
            print(f"diversify (NDCG@{kd}, diversity@{kd} against LAMBDA 0): " + "; ".join(
                f"{r['lambda']:g}: {_percent(r[nd], rows[0][nd])}, {_percent(r[dv], rows[0][dv])}" for r in rows[1:]))
    print(f"report: {paths.get('md', args.out)}")
    return 0


def _percent(value: float, base: float) -> str:
    return f"{100 * (value - base) / base:+.1f}%" if base else "n/a"


def cmd_export(args: argparse.Namespace) -> int:
    from mmrec.model.factory import export_model

    out = export_model(args.run, args.out, license=args.license)
    print(f"exported {args.run / 'model'} to {out} (config.json, model.safetensors, README.md"
          f"{', encoders/' if (out / 'encoders').is_dir() else ''}): loads anywhere with "
          "mmrec.model.factory.from_pretrained, or push it with `hf upload ORG/NAME " + str(out) + "`")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmrec.demo import run_demo

    run_demo(Path(args.out), seed=args.seed)
    return 0
