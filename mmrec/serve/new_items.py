"""New catalogue items given to the Python API (`Recommender.embed_items`): each row decoded into the
`DecodedItem` the shard reader would give for it, validated by `mmrec shard`'s row rules
(`mmrec.shard.items`) and its files read as `mmrec shard` reads them."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrec.data.dataset import Dataset
from mmrec.shard.items import row_attributes, text_problem

ROW_KEYS = ("item_id", "text", "image", "audio", "attributes")  # a row's other keys are metadata (e.g. "title")


def media_options(data: Dataset | str | Path | None) -> dict[str, Any]:
    """The run's dataset's `mmrec shard` media options, so a file is read into what its shards would hold."""
    options = Dataset.of(data).manifest.get("options", {}) if data is not None else {}
    return {"image_max_side": options.get("image_max_side"), "audio_rate": options.get("audio_rate")}


def decode_row(row: Mapping | str, n: int, options: dict[str, Any], modalities: tuple[str, ...]):
    """A row -> the `DecodedItem` the shard reader would give for it, with index NEW_ITEM."""
    from PIL import Image

    from mmrec.data.batch import NEW_ITEM
    from mmrec.data.item import DecodedItem
    from mmrec.data.media import MediaError, audio_member, image_member
    from mmrec.data.reader import decode_image, decode_waveform

    if isinstance(row, str):
        row = {"text": row}
    if not isinstance(row, Mapping):
        raise ValueError(f"row {n}: expected a dict with text / image / audio (or a string: the text), got "
                         f"{type(row).__name__}")
    item_id = str(row["item_id"]) if row.get("item_id") is not None else f"new-{n}"
    text, image, audio = row.get("text"), row.get("image"), row.get("audio")
    # a row is read as `mmrec shard` reads a line of items.jsonl: the same rules, the same reasons
    if text is not None and (problem := text_problem(text)) is not None:
        raise ValueError(f"row {n} ({item_id}): {problem}")
    try:
        attributes = row_attributes(row.get("attributes"))
    except ValueError as e:
        raise ValueError(f"row {n} ({item_id}): {e}") from None
    try:
        if isinstance(image, (str, Path)):  # as `mmrec shard` stores it, then as the reader decodes it
            ext, data = image_member(Path(image), options["image_max_side"])
            image = decode_image({ext: data})
        elif isinstance(image, Image.Image):
            image = image.convert("RGB")
        elif image is not None:
            raise ValueError(f"row {n} ({item_id}): image must be a file path or a PIL image, got "
                             f"{type(image).__name__}")
        waveform = rate = None
        if isinstance(audio, (str, Path)):
            ext, data = audio_member(Path(audio), options["audio_rate"])
            waveform, rate = decode_waveform({ext: data})
        elif audio is not None:
            waveform, rate = waveform_of(audio, n, item_id)
    except MediaError as e:
        raise ValueError(f"row {n} ({item_id}): {e}") from None
    item = DecodedItem(NEW_ITEM, item_id, text, image, waveform, rate, attributes,
                       {k: v for k, v in row.items() if k not in ROW_KEYS})
    if not any(item.present[m] for m in modalities):
        raise ValueError(f"row {n} ({item_id}) has none of the model's modalities ({', '.join(modalities)})")
    return item


def waveform_of(audio: Any, n: int, item_id: str) -> tuple[torch.Tensor, int]:
    """An in-memory (waveform, sample_rate) -> a (channels, frames) float32 tensor and its rate."""
    if not (isinstance(audio, (tuple, list)) and len(audio) == 2):
        raise ValueError(f"row {n} ({item_id}): audio must be a file path or (waveform, sample_rate)")
    wave, rate = torch.as_tensor(np.asarray(audio[0], dtype=np.float32)), audio[1]
    wave = wave[None] if wave.ndim == 1 else wave
    if wave.ndim != 2 or wave.shape[1] == 0 or not isinstance(rate, Integral) or rate <= 0:
        raise ValueError(f"row {n} ({item_id}): audio must be (waveform (channels, frames), sample_rate > 0), "
                         f"got shape {tuple(wave.shape)} and rate {rate!r}")
    return wave, int(rate)
