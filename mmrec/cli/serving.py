"""The serving subcommands: recommend, similar, search, index, embed-users, embed-items."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmrec.cli.args import run_data

logger = logging.getLogger(__name__)


def embeddings_dir(args: argparse.Namespace) -> Path:
    """--emb, else the run's last embeddings; refused when another model made them (`find_embeddings`)."""
    from mmrec.serve.embeddings import find_embeddings

    return find_embeddings(args.run, args.emb)


def cmd_recommend(args: argparse.Namespace) -> int:
    from mmrec.data.fingerprint import check_dataset
    from mmrec.serve.embeddings import Embeddings, format_results, recommend, seen_items

    emb_dir = embeddings_dir(args)
    emb = Embeddings.load(emb_dir)
    if args.history is not None:  # a user the run never saw: the vector comes from the history tower
        from mmrec.serve.incremental import parse_history, recommend_for_history
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
        exclude = seen_items(run_data(args.run, args.data), args.user, emb.item_ids)
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
    from mmrec.serve.rerank import check_pool

    return check_pool(args.pool, args.k)


def _diversified(args: argparse.Namespace, emb, hits: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """--diversify: the pool re-ranked by maximal marginal relevance to --k items (`mmrec.serve.rerank`)."""
    if args.diversify is None:
        return hits
    from mmrec.serve.rerank import attribute_table, diversify, diversity_vectors, item_attributes

    attributes = None
    if args.max_per_attribute is not None:  # the items' attributes are in the run's dataset
        attributes = attribute_table(item_attributes(run_data(args.run, args.data), emb.item_ids))[0]
    return diversify(hits, diversity_vectors(emb.items), args.k, args.diversify, attributes, args.max_per_attribute)


def _explainer(args: argparse.Namespace, emb, model, preprocessors):
    """`recommend --explain`: the evidence comes from the run's dataset (histories, attributes, content)."""
    from mmrec.data.fingerprint import check_dataset
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.serve.explain import Explainer

    try:
        data = run_data(args.run, args.data)
        check_dataset(args.run, data)
    except ValueError as e:
        if args.history is None:
            raise  # a user's history is in the dataset
        logger.warning(f"no attribute or modality reasons ({e})")
        data = None
    return Explainer(model, preprocessors, emb, data, RunVocabulary.load(args.run))


def _explained(emb, hits: list[tuple[int, float]], reasons) -> str:
    from mmrec.serve.explain import format_explained
    from mmrec.serve.embeddings import format_results

    return format_explained(format_results(emb, hits), reasons)


def cmd_embed_users(args: argparse.Namespace) -> int:
    from mmrec.data.fingerprint import check_dataset
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.serve.incremental import embed_users
    from mmrec.model.factory import load_run_model

    args.emb = args.out
    emb_dir = embeddings_dir(args)  # refused when another model made it
    data = run_data(args.run, args.data)
    check_dataset(args.run, data)
    model, _, _ = load_run_model(args.run)
    done = embed_users(model.eval(), emb_dir, args.interactions, data, RunVocabulary.load(args.run), args.all_users)
    print(done.summary())
    return 0


def cmd_embed_items(args: argparse.Namespace) -> int:
    from mmrec.data.vocabulary import RunVocabulary
    from mmrec.serve.incremental import add_items
    from mmrec.model.factory import load_run_model

    args.emb = args.out
    emb_dir = embeddings_dir(args)  # refused when another model made it
    model, preprocessors, _ = load_run_model(args.run)
    done = add_items(model.eval(), preprocessors, RunVocabulary.load(args.run).attributes, args.data, emb_dir,
                     args.batch_size, args.workers)
    print(done.summary())
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from mmrec.serve.embeddings import Embeddings, format_results, similar

    emb_dir = embeddings_dir(args)
    emb = Embeddings.load(emb_dir)
    print(format_results(emb, similar(emb, args.item, args.k, index=_ann(args, emb_dir, emb, "similar"))))
    return 0


def _ann(args: argparse.Namespace, emb_dir: Path, emb, score: str):
    """EMB/index's index for `score` when there is a fresh one and --exact is not given, else None (exact)."""
    from mmrec.serve.ann import load_index

    return None if args.exact else load_index(emb_dir, emb, score)


def cmd_index(args: argparse.Namespace) -> int:
    from mmrec.serve.ann import IndexConfig, build_indexes

    meta = build_indexes(args.emb, IndexConfig.from_args(args.kind, args.params))
    sizes = ", ".join(f"{s} {v['bytes'] / 2**20:.1f} MiB in {v['seconds']} s" for s, v in meta["scores"].items())
    print(f"indexed {meta['items']} items ({meta['kind']}): {sizes} -> {args.emb / 'index'}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mmrec.serve.embeddings import Embeddings, format_results, search

    emb = Embeddings.load(embeddings_dir(args))
    print(format_results(emb, search(args.run, emb, args.query, args.k)))
    return 0
