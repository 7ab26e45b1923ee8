"""The `mmrec` command line (docs/design.md "Command line").

Each subcommand is a small function over the library; argument errors and input errors exit with
status 2 and one clear line, never a traceback from deep inside.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from mmrec import __version__

logger = logging.getLogger(__name__)


def _cutoffs(text: str) -> list[int]:
    """--k for eval: comma-separated positive integers."""
    try:
        ks = sorted({int(k) for k in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 10,20,50, got {text!r}") from None
    if ks[0] < 1:
        raise argparse.ArgumentTypeError(f"cut-offs must be >= 1, got {text!r}")
    return ks


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _lambda(text: str) -> float:
    """--diversify for recommend: one LAMBDA in [0, 1]."""
    from mmrec.rerank import check_lambda

    try:
        return check_lambda(float(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if "LAMBDA" in str(e) else f"expected a number in [0, 1], got "
                                         f"{text!r}") from None


def _lambdas(text: str) -> list[float]:
    """--diversify for eval: comma-separated LAMBDAs in [0, 1]."""
    return sorted({_lambda(t) for t in text.split(",")})


def _add_diversify(p: argparse.ArgumentParser, many: bool) -> None:
    """--diversify, --pool, --max-per-attribute (docs/design.md "Diversity re-ranking")."""
    p.add_argument("--diversify", type=_lambdas if many else _lambda, default=None,
                   metavar="LAMBDA,..." if many else "LAMBDA",
                   help=("the accuracy / diversity trade-off of MMR re-ranking at these LAMBDAs (0 added), a section "
                         "and a plot of the report" if many else
                         "re-rank the top --pool by maximal marginal relevance: 0 the plain ranking, 1 diversity "
                         "alone (0.1-0.3 is a mild mix)"))
    p.add_argument("--pool", type=_positive, default=200, help="candidates re-ranked per user (default 200)")
    p.add_argument("--max-per-attribute", type=_positive, default=None, metavar="K",
                   help="with --diversify: at most K items sharing one attribute (e.g. genre) per list")


def _run_folder(text: str) -> Path:
    """--run: a folder written by `mmrec train` (its model and vocabulary)."""
    run = Path(text)
    missing = [name for name in ("model", "vocabulary.json") if not (run / name).exists()]
    if missing:
        what = "does not exist" if not run.exists() else f"has no {' or '.join(missing)}"
        raise argparse.ArgumentTypeError(f"{run} {what}: pass a run folder written by `mmrec train`")
    return run


def cmd_shard(args: argparse.Namespace) -> int:
    from mmrec.data.shard_options import shard_configs
    from mmrec.data.sharding import shard_catalogue

    split, options = shard_configs(args)
    report = shard_catalogue(args.items, args.interactions, args.out, split, options)
    print(report.summary())
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="a YAML file, or the name of a shipped preset (tiny, base, movielens)")
    p.add_argument("--data", type=_data_location, default=None,
                   help="dataset folder or URL (default: data.path in the config)")
    p.add_argument("--out", type=Path, default=Path("run"), help="run folder (default: run)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")


def cmd_train(args: argparse.Namespace) -> int:
    from mmrec.config import load_run_config

    cfg = load_run_config(args.config, args.overrides)  # before the training stack loads: a typo fails at once
    data = args.data or (_data_location(cfg.data.path) if cfg.data.path else None)
    if data is None:
        raise ValueError("no dataset: pass --data DATA or set data.path in the config")
    cfg.data.path = str(data)
    from mmrec.training import train

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
    from mmrec.model.factory import load_model

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


def _data_location(value: str) -> str | Path:
    """--data: a dataset folder, or a URL kept as typed (a Path would fold its '//'; `mmrec.data.remote`)."""
    from mmrec.data.remote import as_location

    return as_location(value)


def _run_data(run: Path, data: str | Path | None) -> str | Path:
    """The dataset a run trained on (a folder or a URL), unless the user names one."""
    if data is not None:
        return data
    from mmrec.config import load_run_config

    path = load_run_config(run / "config.yaml").data.path
    location = _data_location(path) if path else None
    if location is None or (isinstance(location, Path) and not location.is_dir()):
        raise ValueError(f"cannot find the run's dataset ({path!r}); pass --data DATA")
    return location


def cmd_eval(args: argparse.Namespace) -> int:
    from mmrec.eval.evaluation import evaluate_run

    ks = args.k
    report, paths = evaluate_run(args.run, _run_data(args.run, args.data), args.out, split=args.split, ks=ks,
                                 emb=args.emb, mask=args.mask, threshold=args.threshold, candidates=args.candidates,
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


def _emb_dir(args: argparse.Namespace) -> Path:
    """--emb, else the run's last embeddings; refused when another model made them (`find_embeddings`)."""
    from mmrec.serving import find_embeddings

    return find_embeddings(args.run, args.emb)


def cmd_recommend(args: argparse.Namespace) -> int:
    from mmrec.data.fingerprint import check_dataset
    from mmrec.serving import Embeddings, format_results, recommend, seen_items

    emb_dir = _emb_dir(args)
    emb = Embeddings.load(emb_dir)
    if args.history is not None:  # a user the run never saw: the vector comes from the history tower
        from mmrec.incremental import parse_history, recommend_for_history
        from mmrec.model.factory import load_run_model

        model, preprocessors, _ = load_run_model(args.run)
        pairs = parse_history(args.history)
        hits = _diversified(args, emb, recommend_for_history(model.eval(), emb, pairs, _fetch(args)))
        if args.explain:
            explainer = _explainer(args, emb, model, preprocessors)
            print(_explained(emb, hits, explainer.explain(explainer.given_history(pairs), [i for i, _ in hits])))
            return 0
        print(format_results(emb, hits))
        return 0
    if args.data is not None:
        check_dataset(args.run, args.data)  # another dataset's seen items would be the wrong ones to exclude
    exclude = set()
    try:
        exclude = seen_items(_run_data(args.run, args.data), args.user, emb.item_ids)
    except ValueError as e:
        logger.warning(f"not excluding seen items ({e})")
    index = _ann(args, emb_dir, emb, "recommend")
    hits = _diversified(args, emb, recommend(emb, args.user, _fetch(args), exclude, index=index))
    if args.explain:
        from mmrec.model.factory import load_run_model

        model, preprocessors, _ = load_run_model(args.run)
        explainer = _explainer(args, emb, model, preprocessors)
        reasons = explainer.explain(explainer.user_history(args.user), [i for i, _ in hits],
                                    emb.users[emb.user_ids.index(args.user)])
        print(_explained(emb, hits, reasons))
        return 0
    print(format_results(emb, hits))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    """How many top items to score: --k, or under --diversify the --pool that MMR re-ranks."""
    if args.diversify is None:
        return args.k
    from mmrec.rerank import check_pool

    return check_pool(args.pool, args.k)


def _diversified(args: argparse.Namespace, emb, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """--diversify: the pool re-ranked by maximal marginal relevance to --k items (`mmrec.rerank`)."""
    if args.diversify is None:
        return hits
    from mmrec.rerank import attribute_table, diversify, diversity_vectors, item_attributes

    attributes = None
    if args.max_per_attribute is not None:  # the items' attributes are in the run's dataset
        attributes = attribute_table(item_attributes(_run_data(args.run, args.data), emb.item_ids))[0]
    return diversify(hits, diversity_vectors(emb.items), args.k, args.diversify, attributes, args.max_per_attribute)


def _explainer(args: argparse.Namespace, emb, model, preprocessors):
    """`recommend --explain`: the evidence comes from the run's dataset (histories, attributes, content)."""
    from mmrec.data.fingerprint import check_dataset
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.explain import Explainer

    try:
        data = _run_data(args.run, args.data)
        check_dataset(args.run, data)
    except ValueError as e:
        if args.history is None:
            raise  # a user's history is in the dataset
        logger.warning(f"no attribute or modality reasons ({e})")
        data = None
    return Explainer(model, preprocessors, emb, data, RunVocabulary.load(args.run))


def _explained(emb, hits: list[tuple[int, float]], reasons) -> str:
    from mmrec.explain import format_explained
    from mmrec.serving import format_results

    return format_explained(format_results(emb, hits), reasons)


def cmd_embed_users(args: argparse.Namespace) -> int:
    from mmrec.data.fingerprint import check_dataset
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.incremental import embed_users
    from mmrec.model.factory import load_run_model

    args.emb = args.out
    emb_dir = _emb_dir(args)  # refused when another model made it
    data = _run_data(args.run, args.data)
    check_dataset(args.run, data)
    model, _, _ = load_run_model(args.run)
    done = embed_users(model.eval(), emb_dir, args.interactions, data, RunVocabulary.load(args.run), args.all_users)
    print(done.summary())
    return 0


def cmd_embed_items(args: argparse.Namespace) -> int:
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.incremental import add_items
    from mmrec.model.factory import load_run_model

    args.emb = args.out
    emb_dir = _emb_dir(args)  # refused when another model made it
    model, preprocessors, _ = load_run_model(args.run)
    done = add_items(model.eval(), preprocessors, RunVocabulary.load(args.run).attributes, args.data, emb_dir,
                     args.batch_size, args.workers)
    print(done.summary())
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from mmrec.serving import Embeddings, format_results, similar

    emb_dir = _emb_dir(args)
    emb = Embeddings.load(emb_dir)
    print(format_results(emb, similar(emb, args.item, args.k, index=_ann(args, emb_dir, emb, "similar"))))
    return 0


def _ann(args: argparse.Namespace, emb_dir: Path, emb, score: str):
    """EMB/index's index for `score` when there is a fresh one and --exact is not given, else None (exact)."""
    from mmrec.ann import load_index

    return None if args.exact else load_index(emb_dir, emb, score)


def cmd_index(args: argparse.Namespace) -> int:
    from mmrec.ann import IndexConfig, build_indexes

    meta = build_indexes(args.emb, IndexConfig.from_args(args.kind, args.params))
    sizes = ", ".join(f"{s} {v['bytes'] / 2**20:.1f} MiB in {v['seconds']} s" for s, v in meta["scores"].items())
    print(f"indexed {meta['items']} items ({meta['kind']}): {sizes} -> {args.emb / 'index'}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mmrec.serving import Embeddings, format_results, search

    emb = Embeddings.load(_emb_dir(args))
    print(format_results(emb, search(args.run, emb, args.query, args.k)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mmrec.model.factory import export_model

    out = export_model(args.run, args.out, license=args.license)
    print(f"exported {args.run / 'model'} to {out} (config.json, model.safetensors, README.md"
          f"{', encoders/' if (out / 'encoders').is_dir() else ''}): loads anywhere with "
          "mmrec.model.factory.from_pretrained, or push it with `hf upload ORG/NAME " + str(out) + "`")
    return 0


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def cmd_demo(args: argparse.Namespace) -> int:
    from mmrec.demo import run_demo

    run_demo(Path(args.out), seed=args.seed)
    return 0


class _LogLines(logging.Handler):
    """Status lines on the stderr of the moment (pytest swaps sys.stderr), written with `tqdm.write` so
    that a progress bar being drawn is redrawn under the line instead of being cut by it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 (logging's convention: a failing handler reports, never raises)
            self.handleError(record)


class _LevelPrefix(logging.Formatter):
    """INFO lines as they are; the others say their level ("warning: ..."), debug lines also their module."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno == logging.INFO:
            return text
        return f"debug: {record.name}: {text}" if record.levelno <= logging.DEBUG else f"{record.levelname.lower()}: {text}"


@contextlib.contextmanager
def logging_to_stderr(level: int):
    """The `mmrec` loggers for one command: `level` (-v DEBUG, default INFO, -q WARNING) on stderr; progress
    bars show at INFO and below. Under `accelerate launch` the other ranks log warnings only, so each line
    appears once. Undone afterwards: `main()` called in a process (tests, notebooks) leaves logging as it was."""
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    top = logging.getLogger("mmrec")
    handler = _LogLines()
    handler.setFormatter(_LevelPrefix("%(message)s"))
    before = top.level
    top.addHandler(handler)
    top.setLevel(level)
    try:
        yield
    finally:
        top.removeHandler(handler)
        top.setLevel(before)


def _add_verbosity(p: argparse.ArgumentParser, default) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG, default=default,
                       help="also debug messages")
    group.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                       default=default, help="only warnings and errors; no progress bars (results still print)")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (then exit status 2, as argparse does)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from mmrec.data.shard_options import add_shard_options

    parser = _OneLineParser(prog="mmrec", description="Multimodal recommendation engine.")
    parser.add_argument("--version", action="version", version=f"mmrec {__version__}")
    _add_verbosity(parser, default=logging.INFO)
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
    p.add_argument("--config", default=None,
                   help="or a YAML config / preset name (the run's seed builds the encoders)")
    p.add_argument("--data", required=True, type=_data_location, help="dataset folder or URL")
    p.add_argument("--out", required=True, type=Path, help="feature cache folder to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("embed", help="item and user embeddings of a trained run (resumable)")
    p.add_argument("--run", required=True, type=_run_folder)
    p.add_argument("--data", required=True, type=_data_location, help="dataset folder or URL")
    p.add_argument("--out", required=True, type=Path, help="embedding folder (EMB)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.add_argument("--shards-per-part", type=int, default=None,
                   help="shards one DataLoader reads and one part file holds, the unit of resuming "
                        "(default: 8 per worker)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("eval", help="offline evaluation report: rating, ranking, beyond-accuracy, slices, baselines")
    p.add_argument("--run", required=True, type=_run_folder)
    p.add_argument("--data", type=_data_location, default=None, help="dataset folder or URL (default: the run's)")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--k", type=_cutoffs, default=[10, 20, 50], help="cut-offs, comma-separated (default 10,20,50)")
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
    _add_diversify(p, many=True)
    p.set_defaults(func=cmd_eval)

    for name, target, helptext in (("recommend", "--user", "top-K items for a user, or for a history"),
                                   ("similar", "--item", "items most similar to an item")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--run", required=True, type=_run_folder)
        if name == "recommend":
            who = p.add_mutually_exclusive_group(required=True)
            who.add_argument("--user", help="a user of the run's embeddings")
            who.add_argument("--history", metavar="ITEM[:RATING],...",
                             help="a user the run never saw, by their interactions, oldest first (needs "
                                  "model.user_tower=history); the given items are excluded")
        else:
            p.add_argument(target, required=True, dest=target.strip("-"))
        p.add_argument("--k", type=_positive, default=10)
        p.add_argument("--emb", type=Path, default=None, help="embedding folder (default: the run's last `mmrec embed` output)")
        p.add_argument("--data", type=Path, default=None, help="dataset, for the user's seen items (default: the run's)")
        p.add_argument("--exact", action="store_true", help="score every item, ignoring EMB/index (`mmrec index`)")
        if name == "recommend":
            _add_diversify(p, many=False)
            p.add_argument("--explain", action="store_true",
                           help="under each item, the evidence for it with its share: the user's items that carry "
                                "the score, shared attributes, and the modalities (loads the model)")
        p.set_defaults(func=cmd_recommend if name == "recommend" else cmd_similar)
    p = sub.add_parser("index", help="nearest-neighbour indexes (faiss) that recommend / similar then search")
    p.add_argument("--emb", required=True, type=Path, help="embedding folder (EMB); the indexes go to EMB/index")
    p.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivfpq"),
                   help="auto (default): flat (exact) below 100000 items, hnsw from there")
    p.add_argument("params", nargs="*", metavar="key=value",
                   help="index parameters, e.g. ef_search=256 or nlist=4096 nprobe=64 (mmrec.ann.IndexConfig)")
    p.set_defaults(func=cmd_index)
    p = sub.add_parser("embed-users", help="recompute user vectors from new interactions, no training "
                                           "(history user tower)")
    p.add_argument("--run", required=True, type=_run_folder)
    p.add_argument("--interactions", required=True, type=Path,
                   help="user_id,item_id[,rating][,timestamp] rows to add to the users' histories")
    p.add_argument("--out", required=True, type=Path, help="the embedding folder (EMB) to update")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset whose train split holds the users' earlier history (default: the run's)")
    p.add_argument("--all-users", action="store_true",
                   help="recompute every user in EMB, not only the users in --interactions")
    p.set_defaults(func=cmd_embed_users)

    p = sub.add_parser("embed-items", help="add new catalogue items to the embeddings from their content, no "
                                           "training")
    p.add_argument("--run", required=True, type=_run_folder)
    p.add_argument("--data", required=True, type=Path, help="a dataset folder of the new items (`mmrec shard`)")
    p.add_argument("--out", required=True, type=Path, help="the embedding folder (EMB) to extend")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.set_defaults(func=cmd_embed_items)

    p = sub.add_parser("search", help='items matching a free-text query, e.g. mmrec search --run RUN "sunny festival"')
    p.add_argument("--run", required=True, type=_run_folder)
    p.add_argument("query")
    p.add_argument("--k", type=_positive, default=10)
    p.add_argument("--emb", type=Path, default=None, help="embedding folder (default: the run's last `mmrec embed` output)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="a self-contained Hugging Face Hub folder of a run's model (its encoders' "
                                      "sources included), to copy or push")
    p.add_argument("--run", required=True, type=_run_folder)
    p.add_argument("--out", required=True, type=Path, help="folder to write (new or empty)")
    p.add_argument("--license", default=None, help="the model card's license, a Hub license id such as apache-2.0")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("shard", help="items.jsonl + interactions.csv -> WebDataset shards, splits, manifest")
    p.add_argument("--items", required=True, type=Path,
                   help="items.jsonl, items.parquet, or a Hugging Face datasets folder (save_to_disk; the hf extra)")
    p.add_argument("--interactions", required=True, type=Path, help="interactions.csv or .parquet")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    add_shard_options(p)
    p.set_defaults(func=cmd_shard)
    for p in sub.choices.values():  # `mmrec eval ... -q` as well as `mmrec -q eval ...`
        _add_verbosity(p, default=argparse.SUPPRESS)  # SUPPRESS: a subcommand without it keeps the top level's
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with logging_to_stderr(args.log_level):
            return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:
        # a whole-input problem (a missing file, a folder that is not what it should be, a damaged
        # checkpoint): one line and exit status 2; MMREC_DEBUG=1 shows the traceback instead
        if os.environ.get("MMREC_DEBUG"):
            raise
        lines = str(e).strip().splitlines() or [type(e).__name__]
        print(f"mmrec {args.command}: error: {lines[0]}", file=sys.stderr)
        return 2
    finally:
        _release_process_group()


def _release_process_group() -> None:
    """Under `accelerate launch`, end the command's process group before the process exits (torch warns, and
    NCCL may lose pending work, when a group is left to the interpreter's exit)."""
    dist = sys.modules.get("torch.distributed")  # not imported: no group, and no torch import to find that out
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
