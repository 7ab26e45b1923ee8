"""Validate media files by fully decoding them, and turn them into shard members
(`mmrec.shard.encode` applies them to a catalogue row).

Every image is decoded to the last pixel (by content, so a PNG named `.jpg` is fine) and every audio
file is decoded with soundfile. A file that fails raises `MediaError` with a reason a user can act
on; the sharder turns that into a quarantine entry and drops only that modality.

`audio_handler` decodes the shards' audio members for a plain `wds.WebDataset(...).decode(...)`.
"""

from __future__ import annotations

import io
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from mmrec.data import schema
from mmrec.data.schema import PIL_FORMAT_TO_EXT, SOUNDFILE_FORMAT_TO_EXT

if TYPE_CHECKING:
    import torch


class MediaError(Exception):
    """A media file that cannot be used; the message is the quarantine reason."""


DEFAULT_MAX_MEDIA_BYTES = 64 * 2**20  # a poster or a few minutes of FLAC are far below; a video is not media here


def _read_nonempty(path: Path, what: str, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> bytes:
    """A regular file's bytes, at most `max_bytes` of them.

    Devices, FIFOs and sockets are refused before they are opened: `/dev/zero` would be read without
    end and opening a FIFO blocks until a writer comes.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise MediaError(f"{what} file not found: {path}") from None
    except OSError as e:
        raise MediaError(f"{what} file unreadable: {path} ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError(f"{what} path is a directory: {path}")
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(f"{what} path is not a regular file (a device, FIFO or socket): {path}")
    too_big = MediaError(f"{what} file is larger than the {max_bytes} byte cap: {path} (raise --max-media-mb)")
    if info.st_size > max_bytes:
        raise too_big
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as e:
        raise MediaError(f"{what} file unreadable: {path} ({e.strerror})") from None
    if len(data) > max_bytes:
        raise too_big
    if not data:
        raise MediaError(f"{what} file is empty: {path}")
    return data


def image_member(path: Path, max_side: int | None = None, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> tuple[str, bytes]:
    """Decode an image fully; return (member extension, bytes to store).

    JPEG, PNG and WebP are stored byte for byte unless `max_side` asks for a resize; other formats
    Pillow can read (GIF, BMP, TIFF...) are re-encoded so readers only ever see three formats.
    """
    data = _read_nonempty(path, "image", max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()  # decodes every pixel: truncated or corrupt files fail here, not in training
            image = im.copy()
    except Image.DecompressionBombError as e:
        raise MediaError(f"image too large to decode safely: {path} ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"image could not be decoded: {path} ({e})") from None
    if image.width == 0 or image.height == 0:
        raise MediaError(f"image has zero size: {path}")

    too_big = max_side is not None and max(image.size) > max_side
    if fmt in PIL_FORMAT_TO_EXT and not too_big:
        return PIL_FORMAT_TO_EXT[fmt], data
    if too_big:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image.convert("RGBA").save(out, format="PNG")  # keep the alpha channel lossless
        return "png", out.getvalue()
    image.convert("RGB").save(out, format="JPEG", quality=90)
    return "jpg", out.getvalue()


def decode_audio_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode audio bytes with soundfile; returns (float32 array [channels, frames], sample rate)."""
    wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (T, C)
    return np.ascontiguousarray(wave.T), int(rate)


def audio_handler(key: str, data: bytes) -> tuple[torch.Tensor, int] | None:
    """WebDataset decode handler for the audio members of our shards: (float32 (channels, frames), rate).

    The drop-in for webdataset's `torch_audio`, which calls `torchaudio.load`: torchaudio >= 2.9 loads
    files through torchcodec and FFmpeg, which mmrec does not install, so it fails on every member.
    This decodes with soundfile instead, exactly as `mmrec.data.reader` does.

        ds = wds.WebDataset(urls, shardshuffle=False).decode("pil", mmrec.audio_handler)

    Args:
        key: the member's extension as webdataset passes it (".flac"); other extensions return None
            so the next handler gets them.
        data: the member's bytes.

    Raises:
        ValueError: the member is not decodable audio (webdataset wraps it with the sample's key and url).
    """
    if key.rsplit(".", 1)[-1].lower() not in schema.AUDIO_EXTS:
        return None
    import torch  # here: sharding workers import this module and need no torch

    try:
        wave, rate = decode_audio_bytes(data)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ValueError(f"audio member {key} could not be decoded ({e})") from None
    return torch.from_numpy(wave), rate  # (C, T)


def audio_member(path: Path, target_rate: int | None = None, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> tuple[str, bytes]:
    """Decode an audio file fully; return (member extension, bytes to store).

    FLAC, WAV and OGG are stored as they are unless `target_rate` asks for resampling; then (and for
    any other format soundfile reads) the clip is stored as 16-bit FLAC at that rate.
    """
    data = _read_nonempty(path, "audio", max_bytes)
    try:
        fmt = sf.info(io.BytesIO(data)).format
        wave, rate = decode_audio_bytes(data)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise MediaError(f"audio could not be decoded: {path} ({e})") from None
    if wave.shape[1] == 0:
        raise MediaError(f"audio has no samples: {path}")
    if not np.isfinite(wave).all():
        raise MediaError(f"audio has non-finite samples: {path}")

    if fmt in SOUNDFILE_FORMAT_TO_EXT and (target_rate is None or target_rate == rate):
        return SOUNDFILE_FORMAT_TO_EXT[fmt], data
    if target_rate is not None and target_rate != rate:
        wave = _resample(wave, rate, target_rate)
        rate = target_rate
    out = io.BytesIO()
    sf.write(out, np.clip(wave.T, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    return "flac", out.getvalue()


def _resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    # Imported here: only resampling needs torch, and media validation runs in worker processes.
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(wave), rate, target_rate).numpy()
