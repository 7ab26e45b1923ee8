"""The one shard schema: names and formats shared by the writer, the readers and `datasets/`.

A dataset folder written by `mmrec shard` looks like this (see docs/design.md):

    DATA/manifest.json                  schema version, counts, coverage, shards, splits
    DATA/item_ids.json                  item_id strings in item-index order
    DATA/items/items-000000.tar ...     one WebDataset sample per item, key = item index
    DATA/interactions/{train,valid,test}.csv
    DATA/quarantine.jsonl               one line per rejected row or dropped modality

A sample's members: `json` (always), `txt`, one image member and one audio member. A missing
modality is a missing member, never an empty one.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

MODALITIES = ("text", "image", "audio")

# Member extensions per modality, as they appear in the tar files.
TEXT_EXT = "txt"
IMAGE_EXTS = ("jpg", "png", "webp")
AUDIO_EXTS = ("flac", "wav", "ogg")

# Pillow format name -> member extension for formats stored as they are.
PIL_FORMAT_TO_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# soundfile major format -> member extension for formats stored as they are.
SOUNDFILE_FORMAT_TO_EXT = {"FLAC": "flac", "WAV": "wav", "OGG": "ogg"}

SPLITS = ("train", "valid", "test")
# cold-users split only: the interactions given as each held-out user's history (the rest of their rows,
# in valid / test, are to be found); written beside the three split files
HISTORY_SPLITS = {"valid": "valid_history", "test": "test_history"}
SPLIT_PROTOCOLS = ("random", "temporal", "ratio", "cold-items", "cold-users", "given")
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")

ITEMS_DIR = "items"
INTERACTIONS_DIR = "interactions"
MANIFEST = "manifest.json"
ITEM_IDS = "item_ids.json"
QUARANTINE = "quarantine.jsonl"
SHARD_PATTERN = "items-%06d.tar"

# Quarantine entry kinds.
Q_ITEM = "item"  # an items.jsonl line that was not written
Q_MODALITY = "modality"  # one modality of a written item was dropped
Q_INTERACTION = "interaction"  # an interaction row that was not written


def item_key(index: int) -> str:
    """WebDataset key of item `index`: zero-padded so that keys sort like indices."""
    return f"{index:09d}"
