"""The `mmrec` argument parser: every subcommand, its options and the function that runs it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mmrec import __version__
from mmrec.cli import pipeline, serving
from mmrec.cli.args import (
    OneLineParser,
    add_diversify,
    add_verbosity,
    cutoffs,
    data_location,
    positive,
    run_folder,
)


def build_parser() -> argparse.ArgumentParser:
    from mmrec.shard.options import add_shard_options

    parser = OneLineParser(prog="mmrec", description="Multimodal recommendation engine.")
    parser.add_argument("--version", action="version", version=f"mmrec {__version__}")
    add_verbosity(parser, default=logging.INFO)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="synthetic tri-modal catalogue -> shards (-> train -> embed -> eval)")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=pipeline.cmd_demo)

    p = sub.add_parser("train", help="train on a dataset folder (same as `accelerate launch train.py ...`)")
    pipeline.add_train_arguments(p)
    p.set_defaults(func=pipeline.cmd_train)

    p = sub.add_parser("cache", help="run frozen encoders once over the shards -> feature shards for training")
    p.add_argument("--run", type=Path, default=None, help="run folder (its trained model, or its config.yaml)")
    p.add_argument("--config", default=None,
                   help="or a YAML config / preset name (the run's seed builds the encoders)")
    p.add_argument("--data", required=True, type=data_location, help="dataset folder or URL")
    p.add_argument("--out", required=True, type=Path, help="feature cache folder to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (with --config)")
    p.set_defaults(func=pipeline.cmd_cache)

    p = sub.add_parser("embed", help="item and user embeddings of a trained run (resumable)")
    p.add_argument("--run", required=True, type=run_folder)
    p.add_argument("--data", required=True, type=data_location, help="dataset folder or URL")
    p.add_argument("--out", required=True, type=Path, help="embedding folder (EMB)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.add_argument("--shards-per-part", type=int, default=None,
                   help="shards one DataLoader reads and one part file holds, the unit of resuming "
                        "(default: 8 per worker)")
    p.set_defaults(func=pipeline.cmd_embed)

    p = sub.add_parser("eval", help="offline evaluation report: rating, ranking, beyond-accuracy, slices, baselines")
    p.add_argument("--run", required=True, type=run_folder)
    p.add_argument("--data", type=data_location, default=None, help="dataset folder or URL (default: the run's)")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--k", type=cutoffs, default=[10, 20, 50], help="cut-offs, comma-separated (default 10,20,50)")
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
    add_diversify(p, many=True)
    p.set_defaults(func=pipeline.cmd_eval)

    for name, target, helptext in (("recommend", "--user", "top-K items for a user, or for a history"),
                                   ("similar", "--item", "items most similar to an item")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--run", required=True, type=run_folder)
        if name == "recommend":
            who = p.add_mutually_exclusive_group(required=True)
            who.add_argument("--user", help="a user of the run's embeddings")
            who.add_argument("--history", metavar="ITEM[:RATING],...",
                             help="a user the run never saw, by their interactions, oldest first (needs "
                                  "model.user_tower=history); the given items are excluded")
        else:
            p.add_argument(target, required=True, dest=target.strip("-"))
        p.add_argument("--k", type=positive, default=10)
        p.add_argument("--emb", type=Path, default=None, help="embedding folder (default: the run's last `mmrec embed` output)")
        p.add_argument("--data", type=Path, default=None, help="dataset, for the user's seen items (default: the run's)")
        p.add_argument("--exact", action="store_true", help="score every item, ignoring EMB/index (`mmrec index`)")
        if name == "recommend":
            add_diversify(p, many=False)
            p.add_argument("--explain", action="store_true",
                           help="under each item, the evidence for it with its share: the user's items that carry "
                                "the score, shared attributes, and the modalities (loads the model)")
        p.set_defaults(func=serving.cmd_recommend if name == "recommend" else serving.cmd_similar)
    p = sub.add_parser("index", help="nearest-neighbour indexes (faiss) that recommend / similar then search")
    p.add_argument("--emb", required=True, type=Path, help="embedding folder (EMB); the indexes go to EMB/index")
    p.add_argument("--kind", default="auto", choices=("auto", "flat", "hnsw", "ivfpq"),
                   help="auto (default): flat (exact) below 100000 items, hnsw from there")
    p.add_argument("params", nargs="*", metavar="key=value",
                   help="index parameters, e.g. ef_search=256 or nlist=4096 nprobe=64 (mmrec.serve.ann.IndexConfig)")
    p.set_defaults(func=serving.cmd_index)
    p = sub.add_parser("embed-users", help="recompute user vectors from new interactions, no training "
                                           "(history user tower)")
    p.add_argument("--run", required=True, type=run_folder)
    p.add_argument("--interactions", required=True, type=Path,
                   help="user_id,item_id[,rating][,timestamp] rows to add to the users' histories")
    p.add_argument("--out", required=True, type=Path, help="the embedding folder (EMB) to update")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset whose train split holds the users' earlier history (default: the run's)")
    p.add_argument("--all-users", action="store_true",
                   help="recompute every user in EMB, not only the users in --interactions")
    p.set_defaults(func=serving.cmd_embed_users)

    p = sub.add_parser("embed-items", help="add new catalogue items to the embeddings from their content, no "
                                           "training")
    p.add_argument("--run", required=True, type=run_folder)
    p.add_argument("--data", required=True, type=Path, help="a dataset folder of the new items (`mmrec shard`)")
    p.add_argument("--out", required=True, type=Path, help="the embedding folder (EMB) to extend")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding media")
    p.set_defaults(func=serving.cmd_embed_items)

    p = sub.add_parser("search", help='items matching a free-text query, e.g. mmrec search --run RUN "sunny festival"')
    p.add_argument("--run", required=True, type=run_folder)
    p.add_argument("query")
    p.add_argument("--k", type=positive, default=10)
    p.add_argument("--emb", type=Path, default=None, help="embedding folder (default: the run's last `mmrec embed` output)")
    p.set_defaults(func=serving.cmd_search)

    p = sub.add_parser("export", help="a self-contained Hugging Face Hub folder of a run's model (its encoders' "
                                      "sources included), to copy or push")
    p.add_argument("--run", required=True, type=run_folder)
    p.add_argument("--out", required=True, type=Path, help="folder to write (new or empty)")
    p.add_argument("--license", default=None, help="the model card's license, a Hub license id such as apache-2.0")
    p.set_defaults(func=pipeline.cmd_export)

    p = sub.add_parser("shard", help="items.jsonl + interactions.csv -> WebDataset shards, splits, manifest")
    p.add_argument("--items", required=True, type=Path,
                   help="items.jsonl, items.parquet, or a Hugging Face datasets folder (save_to_disk; the hf extra)")
    p.add_argument("--interactions", required=True, type=Path, help="interactions.csv or .parquet")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    add_shard_options(p)
    p.set_defaults(func=pipeline.cmd_shard)
    for p in sub.choices.values():  # `mmrec eval ... -q` as well as `mmrec -q eval ...`
        add_verbosity(p, default=argparse.SUPPRESS)  # SUPPRESS: a subcommand without it keeps the top level's
    return parser
