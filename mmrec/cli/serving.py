"""The serving subcommands: recommend, similar, search (answered by `mmrec.Recommender`, as from Python), index,
embed-users, embed-items."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def _recommender(args: argparse.Namespace, data):
    """The run as `mmrec.Recommender.from_run` opens it: EMB (--emb, else the run's last embeddings, refused when
    another model made them), `data` checked to be the run's dataset, EMB's index unless --exact."""
    from mmrec.serve.recommender import Recommender

    return Recommender.from_run(args.run, emb=args.emb, data=data, exact=getattr(args, "exact", False))


def cmd_recommend(args: argparse.Namespace) -> int:
    from mmrec.serve.run import run_dataset

    try:
        data, missing = run_dataset(args.run, args.data, required=True), None
    except ValueError as e:  # no dataset: what needs one says why (`missing`), the rest goes on without
        data, missing = None, str(e)
    if missing is not None:
        capped = args.diversify is not None and args.max_per_attribute is not None
        if capped or (args.explain and args.user is not None):  # the items' attributes, a user's training history
            raise ValueError(missing)
        if args.explain:  # a given history explains itself; attributes and content need the dataset
            logger.warning(f"no attribute or modality reasons ({missing})")
    rec = _recommender(args, data)
    ask = {"k": args.k, "explain": args.explain, "diversify": args.diversify, "pool": args.pool,
           "max_per_attribute": args.max_per_attribute}
    if args.history is not None:  # a user the run never saw: the vector comes from the history tower
        answers = rec.recommend(history=args.history, **ask)
    else:
        answers = rec.recommend(user=args.user, exclude_seen=_seen_readable(rec, args.user, missing), **ask)
    print(answers.format(explained=args.explain))
    return 0


def _seen_readable(rec, user: str, missing: str | None) -> bool:
    """Whether `recommend --user` can exclude the user's seen items. Without a readable dataset it answers
    anyway, saying that it excludes none."""
    if missing is None:
        try:
            rec.seen_items(user)  # read now (and kept for the query), so that a read error is this warning
            return True
        except ValueError as e:
            missing = str(e)
    logger.warning(f"not excluding seen items ({missing})")
    return False


def cmd_similar(args: argparse.Namespace) -> int:
    print(_recommender(args, args.data).similar(args.item, args.k))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    print(_recommender(args, None).search(args.query, args.k))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from mmrec.serve.ann import IndexConfig, build_indexes

    meta = build_indexes(args.emb, IndexConfig.from_args(args.kind, args.params))
    sizes = ", ".join(f"{s} {v['bytes'] / 2**20:.1f} MiB in {v['seconds']} s" for s, v in meta["scores"].items())
    print(f"indexed {meta['items']} items ({meta['kind']}): {sizes} -> {args.emb / 'index'}")
    return 0


def cmd_embed_users(args: argparse.Namespace) -> int:
    from mmrec.data.fingerprint import check_dataset
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.model.factory import load_run_model
    from mmrec.serve.incremental import embed_users
    from mmrec.serve.run import find_embeddings, run_dataset

    emb_dir = find_embeddings(args.run, args.out)  # refused when another model made it
    data = run_dataset(args.run, args.data, required=True)
    check_dataset(args.run, data)
    model, _, _ = load_run_model(args.run)
    done = embed_users(model.eval(), emb_dir, args.interactions, data, RunVocabulary.load(args.run), args.all_users)
    print(done.summary())
    return 0


def cmd_embed_items(args: argparse.Namespace) -> int:
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.model.factory import load_run_model
    from mmrec.serve.incremental import add_items
    from mmrec.serve.run import find_embeddings

    emb_dir = find_embeddings(args.run, args.out)  # refused when another model made it
    model, preprocessors, _ = load_run_model(args.run)
    done = add_items(model.eval(), preprocessors, RunVocabulary.load(args.run).attributes, args.data, emb_dir,
                     args.batch_size, args.workers)
    print(done.summary())
    return 0
