"""A catalogue row's media as shard members: each medium decoded and validated (`mmrec.data.media`).

Its own module, apart from `mmrec.shard.writer`, so the sharder's spawned workers import only
Pillow, soundfile and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmrec.data import schema
from mmrec.data.media import MediaError, audio_member, image_member
from mmrec.shard.items import ItemRecord


@dataclass
class EncodedItem:
    record: ItemRecord
    members: dict[str, bytes]  # member extension -> bytes
    dropped: list[tuple[str, str]]  # (modality, reason)


def encode_item_media(args: tuple[ItemRecord, int | None, int | None, int]) -> EncodedItem:
    """Decode an item's media and return its shard members (runs in a worker process)."""
    record, image_max_side, audio_rate, max_bytes = args
    members: dict[str, bytes] = {}
    dropped: list[tuple[str, str]] = []
    if record.text is not None:
        members[schema.TEXT_EXT] = record.text.encode("utf-8")
    for modality, path, encode, option in (
        ("image", record.image_path, image_member, image_max_side),
        ("audio", record.audio_path, audio_member, audio_rate),
    ):
        if path is None:
            continue
        try:
            ext, data = encode(path, option, max_bytes)
            members[ext] = data
        except MediaError as e:
            dropped.append((modality, str(e)))
    return EncodedItem(record, members, dropped)
