"""One dataset folder (DATA, or its URL) as every reader sees it, each of its files read once.

    data = Dataset("DATA")                # or "https://host/DATA", "s3://bucket/DATA", "pipe:cat DATA/{path}"
    data.manifest["num_items"]
    data.item_ids[3]; data.item_index()["it3"]
    data.split("train").user_ids          # a split file, parsed once and checked against the manifest's sha256
    data.items()[3].attributes            # the shards' items, from one pass over their tar headers

A `Dataset` owns what docs/design.md "The dataset folder (DATA)" promises about reading DATA: the schema
version, the split files' sha256, where each item's members lie in the shards. Nothing else opens a split file
or scans a shard's headers; the shard streams of training and `mmrec embed` (`mmrec.data.reader`) take the
manifest from here. It needs neither webdataset nor PIL, so the evaluation rule and the model builder
(which take split arrays, `mmrec.data.splits`) import no reader.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import numpy as np

from mmrec.data import remote, schema


def load_manifest(data_dir: str | Path) -> dict:
    """Read DATA/manifest.json; `data_dir` may be a local folder or a URL (`mmrec.data.remote`)."""
    data_dir = remote.as_location(data_dir)
    location = remote.url_of(data_dir, schema.MANIFEST)
    try:
        manifest = json.loads(remote.read_bytes(data_dir, schema.MANIFEST))  # local, http(s), fsspec, pipe:
    except FileNotFoundError as e:  # a missing local file, or a remote one the server does not have
        why = str(e) if isinstance(e, remote.MissingRemoteFile) else f"cannot read {location}: {e}"  # names the URL
        raise ValueError(f"{data_dir} is not an mmrec dataset folder ({why}); create one with `mmrec shard`") from e
    except OSError as e:
        raise ValueError(f"cannot read {location}: {e}") from e
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise ValueError(f"{location}: schema version {manifest.get('schema_version')} is not "
                         f"{schema.SCHEMA_VERSION}; re-run `mmrec shard` with this mmrec version")
    return manifest


def index_of(ids: Sequence[str]) -> dict[str, int]:
    """id -> its row: the one inverse of an id list (item_ids.json, a vocabulary's users, EMB's ids)."""
    return {key: row for row, key in enumerate(ids)}


def split_file(split: str) -> str:
    """The path of a split file inside DATA."""
    return f"{schema.INTERACTIONS_DIR}/{split}.csv"


@dataclass(frozen=True)
class SplitRows:
    """One split file as parsed, rows in file order; each id column coded by first appearance, so the rows
    are mapped into any id list (a run's vocabulary, EMB's rows) without parsing the file again."""

    user_ids: list[str]  # the distinct users, in order of first appearance
    item_ids: list[str]  # the distinct items, in order of first appearance
    users: np.ndarray  # (R,) int64 rows of user_ids
    items: np.ndarray  # (R,) int64 rows of item_ids
    ratings: np.ndarray  # (R,) float32
    timestamps: np.ndarray  # (R,) float64, NaN where a row has none

    def __len__(self) -> int:
        return len(self.users)

    def users_in(self, index: dict[str, int], unknown: int = -1) -> np.ndarray:
        """(R,) int64 each row's user by `index`; `unknown` for a user it lacks."""
        return np.asarray([index.get(u, unknown) for u in self.user_ids], dtype=np.int64)[self.users]

    def items_in(self, index: dict[str, int]) -> np.ndarray:
        """(R,) int64 each row's item by `index` (a KeyError names an item it lacks)."""
        return np.asarray([index[i] for i in self.item_ids], dtype=np.int64)[self.items]

    @classmethod
    def parse(cls, f: IO[str]) -> SplitRows:
        user_code: dict[str, int] = {}
        item_code: dict[str, int] = {}
        users, items, ratings, times = [], [], [], []
        for row in csv.DictReader(f):
            users.append(user_code.setdefault(row["user_id"], len(user_code)))
            items.append(item_code.setdefault(row["item_id"], len(item_code)))
            ratings.append(float(row["rating"]))
            times.append(float(row["timestamp"]) if row.get("timestamp") else np.nan)
        return cls(list(user_code), list(item_code), np.asarray(users, dtype=np.int64),
                   np.asarray(items, dtype=np.int64), np.asarray(ratings, dtype=np.float32),
                   np.asarray(times, dtype=np.float64))


@dataclass(frozen=True)
class ShardItem:
    """One item of DATA's shards, from the shard's tar headers and its json member."""

    index: int  # its row of item_ids.json
    item_id: str
    shard: str  # the shard's path inside DATA
    attributes: list[str]  # as `mmrec shard` stored them
    members: dict[str, tuple[int, int]]  # extension ("json", "txt", "png", ...) -> (offset, size) of its bytes


class Dataset:
    """A dataset folder written by `mmrec shard`, or a URL with the same layout (`mmrec.data.remote`).

    Each file is read on first use and kept: build one per command and hand it to every step that reads
    DATA. `Dataset.of(x)` takes a `Dataset` as it is and wraps a folder or URL.
    """

    def __init__(self, location: str | Path):
        self.location = remote.as_location(location)  # a local Path or a URL string
        self._splits: dict[str, SplitRows] = {}
        self._items: dict[int, ShardItem] | None = None

    @classmethod
    def of(cls, data: Dataset | str | Path) -> Dataset:
        return data if isinstance(data, Dataset) else cls(data)

    def __repr__(self) -> str:
        return f"Dataset({str(self.location)!r})"

    @cached_property
    def manifest(self) -> dict:
        """DATA/manifest.json, its schema version checked."""
        return load_manifest(self.location)

    @cached_property
    def item_ids(self) -> list[str]:
        """Item index -> item_id (DATA/item_ids.json)."""
        return json.loads(remote.read_bytes(self.location, schema.ITEM_IDS))

    @cached_property
    def _item_index(self) -> dict[str, int]:
        return index_of(self.item_ids)

    def item_index(self) -> dict[str, int]:
        """item_id -> item index (built once; do not modify it)."""
        return self._item_index

    # ------------------------------------------------------------------------------------- split files

    def missing_splits(self, splits: Sequence[str] = schema.SPLITS) -> list[str]:
        """Those of `splits` whose file DATA lacks."""
        return [s for s in splits if not remote.exists(self.location, split_file(s))]

    def split(self, split: str) -> SplitRows:
        """DATA/interactions/{split}.csv, checked against the manifest's sha256, then parsed (once)."""
        if split not in self._splits:
            with self._checked_split(split) as f:
                self._splits[split] = SplitRows.parse(f)
        return self._splits[split]

    def training_users(self) -> list[str]:
        """The users with training interactions, sorted: a run's user vocabulary."""
        return sorted(self.split("train").user_ids)

    def _checked_split(self, split: str) -> IO[str]:
        """The split file, opened for the csv reader once its bytes matched the manifest's sha256."""
        relative = split_file(split)
        if remote.is_remote(self.location):  # fetched once: hashed and parsed from the same bytes
            raw = remote.read_bytes(self.location, relative)
            self._check_sha256(split, hashlib.sha256(raw).hexdigest())
            return io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline="")
        self._check_sha256(split, remote.sha256_data(self.location, relative))  # hashed in blocks, then read
        return remote.open_data(self.location, relative, "r")

    def _check_sha256(self, split: str, found: str) -> None:
        if found != self.manifest["interactions"][split]["sha256"]:
            raise ValueError(f"{remote.url_of(self.location, split_file(split))} does not match the manifest's "
                             "sha256 (replaced or edited since `mmrec shard`): re-shard, or restore it")

    # ------------------------------------------------------------------------------------- shard index

    def items(self) -> dict[int, ShardItem]:
        """Item index -> `ShardItem`, in shard order, from one pass over the shards (only their headers and
        json members where the file can seek; a remote shard is streamed once, its media skipped over)."""
        if self._items is None:
            items: dict[int, ShardItem] = {}
            for shard in self.manifest["shards"]:
                members: dict[str, dict[str, tuple[int, int]]] = {}
                metas: dict[str, dict] = {}
                for key, ext, offset, size, meta in self._scan(shard["path"]):
                    members.setdefault(key, {})[ext] = (offset, size)
                    if meta is not None:
                        metas[key] = meta
                for key, meta in metas.items():
                    index = int(meta["index"])
                    items[index] = ShardItem(index, meta["item_id"], shard["path"],
                                             list(meta.get("attributes") or []), members[key])
            self._items = items
        return self._items

    def item_sample(self, index: int) -> dict[str, Any] | None:
        """Item `index`'s raw members, as WebDataset gives a sample (`mmrec.data.reader.decode_sample` decodes
        it), read by byte range; None when DATA lacks it. A `pipe:` location cannot seek: a ValueError."""
        item = self.items().get(index)
        if item is None:
            return None
        sample: dict[str, Any] = {"__key__": schema.item_key(index), "__url__": remote.url_of(self.location, item.shard)}
        for ext, (offset, size) in item.members.items():
            sample[ext] = remote.read_range(self.location, item.shard, offset, size)
        return sample

    def _scan(self, shard_path: str) -> Iterator[tuple[str, str, int, int, dict | None]]:
        """(key, extension, offset, size, parsed json member or None) of each file of a shard, in tar order."""
        location = remote.url_of(self.location, shard_path)
        try:
            if remote.is_remote(self.location):
                tar = tarfile.open(fileobj=remote.open_stream(self.location, shard_path), mode="r|")
            else:
                tar = tarfile.open(location)
            with tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.rpartition("/")[2].partition(".")
                    meta = json.loads(tar.extractfile(member).read()) if ext == "json" else None
                    yield key, ext, member.offset_data, member.size, meta
        except (OSError, tarfile.TarError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {location} ({e}): restore it or re-shard") from e
