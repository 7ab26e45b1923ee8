"""One opener for everything read from a dataset folder, which may be a local folder or a URL.

    open_data("https://host/data", "interactions/train.csv", "r")  # a text stream, retried, or one clear error
    open_data(Path("data"), "manifest.json")                          # a plain local file, as before

Locations (docs/design.md "Remote data"):

- a local folder (a `Path`, or a string without a scheme): files are opened as they are;
- `http://` / `https://`: fetched with urllib (fsspec's http filesystem needs aiohttp, which is not a
  dependency); transient failures (connection reset, timeouts, 408 / 429 / 5xx) are retried with
  exponential backoff; 404 or an unreachable host is one `ValueError` naming the URL; `exists` asks with
  HEAD, and with GET where a server refuses HEAD;
- any other `scheme://` (`s3://`, `gs://`, ...): through fsspec, where that protocol's package is installed;
- `pipe:COMMAND`: a shell command printing the file, as in WebDataset; `{path}` in COMMAND is replaced by
  the file's path inside the dataset (`pipe:aws s3 cp s3://bucket/data/{path} -`).

The files read here (manifest, item ids, split CSVs) are small next to the shards, so a remote one is
fetched whole: a retry restarts it cleanly and its sha256 is taken from the same bytes. Shards are
streamed by WebDataset from `url_of(data, shard_path)`; for the fsspec schemes WebDataset has no opener
of its own, so the shard reader registers one in its scheme table (`register_webdataset_opener`).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import io
import logging
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

RETRIES = 4  # further attempts after a transient failure
BACKOFF_S = 0.5  # wait before the first retry; doubles after each
TIMEOUT_S = 60  # per request: a stalled connection counts as transient
PIPE_PLACEHOLDER = "{path}"


class MissingRemoteFile(FileNotFoundError, ValueError):
    """The server answered, and has no such file (404 / 410 / fsspec's FileNotFoundError). A FileNotFoundError
    like a missing local file, and a ValueError: one line however the caller catches it."""


class _Transient(Exception):
    """A failure worth retrying (the server or the network may recover)."""


class _HeadRefused(Exception):
    """The server does not answer HEAD requests (403 / 405 / 501 to HEAD): ask with GET instead."""


def is_remote(data: str | Path) -> bool:
    """A URL (`scheme://...`) or a `pipe:` command rather than a local folder."""
    return isinstance(data, str) and ("://" in data or data.startswith("pipe:"))


def as_location(value: str | Path) -> str | Path:
    """A dataset location as the readers take it: a URL string unchanged (a `Path` would fold `//`), else a
    Path. Also the argparse `type` of `--data`."""
    value = str(value) if isinstance(value, Path) else value
    return value if is_remote(value) else Path(value)


def describe(data: str | Path) -> str:
    """What a run records as its dataset: the URL as given, or the absolute local folder."""
    return str(data) if is_remote(data) else str(Path(data).resolve())


def url_of(data: str | Path, relative: str) -> str:
    """The location of `relative` (a '/'-separated path inside the dataset) as a string WebDataset can open."""
    if not is_remote(data):
        return str(Path(data) / relative)
    if data.startswith("pipe:"):
        if PIPE_PLACEHOLDER not in data:
            raise ValueError(f"a pipe: dataset location must contain {PIPE_PLACEHOLDER} where each file's path goes, "
                             f"e.g. 'pipe:aws s3 cp s3://bucket/data/{PIPE_PLACEHOLDER} -'; got {data!r}")
        return data.replace(PIPE_PLACEHOLDER, relative)
    return f"{data.rstrip('/')}/{relative}"


def read_bytes(data: str | Path, relative: str) -> bytes:
    """The whole file. Local: as `open` reads it (a missing file raises FileNotFoundError, as before). Remote:
    retried on transient failures; a missing file or unreachable host is a ValueError naming the URL."""
    if not is_remote(data):
        return (Path(data) / relative).read_bytes()
    url = url_of(data, relative)
    return _with_retries(url, lambda: _fetch(url))


def open_data(data: str | Path, relative: str, mode: str = "rb") -> IO:
    """`relative` inside the dataset, opened for reading: "rb" bytes, "r" UTF-8 text (newline="", as csv wants)."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_data reads only; mode {mode!r} is not 'rb' or 'r'")
    if not is_remote(data):
        path = Path(data) / relative
        return open(path, "rb") if mode == "rb" else open(path, newline="", encoding="utf-8")
    raw = io.BytesIO(read_bytes(data, relative))
    return raw if mode == "rb" else io.TextIOWrapper(raw, encoding="utf-8", newline="")


def read_range(data: str | Path, relative: str, offset: int, size: int) -> bytes:
    """`size` bytes of the file from `offset` (a tar member, say), without fetching the rest where the location
    can: a local seek, an HTTP Range request (a server that ignores Range sends the whole file, which is cut
    here), fsspec's ranged read. A `pipe:` command cannot seek: a ValueError."""
    if not is_remote(data):
        with open(Path(data) / relative, "rb") as f:
            f.seek(offset)
            return f.read(size)
    url = url_of(data, relative)
    if url.startswith("pipe:"):
        raise ValueError(f"cannot read part of {url}: a pipe: command prints whole files")
    if url.startswith(("http://", "https://")):
        body, partial = _with_retries(url, lambda: _fetch_http(url, "GET", (offset, size)))
        return body if partial else body[offset:offset + size]
    fs, path = _fsspec_fs(url)
    return _with_retries(url, lambda: _fsspec_call(url, lambda: fs.cat_file(path, start=offset, end=offset + size)))


def open_stream(data: str | Path, relative: str) -> IO[bytes]:
    """The file as a forward-only byte stream, not held in memory (a shard read for its headers): the opener
    WebDataset streams shards with (local, `curl` for http(s), fsspec, `pipe:`)."""
    if not is_remote(data):
        return open(Path(data) / relative, "rb")
    return _wds_gopen().gopen(url_of(data, relative), "rb")


def exists(data: str | Path, relative: str) -> bool:
    """Whether the dataset has the file (a remote check still raises for an unreachable host)."""
    if not is_remote(data):
        return (Path(data) / relative).is_file()
    url = url_of(data, relative)
    try:
        if url.startswith(("http://", "https://")):
            try:
                _with_retries(url, lambda: _fetch(url, method="HEAD"))  # no body: a large file is not fetched
            except _HeadRefused:  # e.g. a presigned object-store URL signed for GET only
                read_bytes(data, relative)
        elif url.startswith("pipe:"):
            try:
                read_bytes(data, relative)  # a command cannot be asked; it can only be run
            except ValueError:  # its exit status does not say why it failed
                return False
        else:
            fs, path = _fsspec_fs(url)
            return _with_retries(url, lambda: fs.exists(path))
    except FileNotFoundError:
        return False
    return True


def sha256_data(data: str | Path, relative: str) -> str:
    """Hex sha256 of the file's bytes (a local file is hashed in blocks, not loaded)."""
    if not is_remote(data):
        from mmrec.files import sha256_of

        return sha256_of(Path(data) / relative)
    return hashlib.sha256(read_bytes(data, relative)).hexdigest()


def _with_retries(url: str, attempt):
    for n in range(RETRIES + 1):
        try:
            return attempt()
        except _Transient as e:
            if n == RETRIES:
                raise ValueError(f"cannot read {url}: {e} (still failing after {RETRIES + 1} attempts); "
                                 "check the server, or copy the dataset locally") from e
            delay = BACKOFF_S * 2**n
            logger.warning(f"reading {url}: {e}; retrying in {delay:g} s")
            time.sleep(delay)


def _fetch(url: str, method: str = "GET") -> bytes:
    if url.startswith(("http://", "https://")):
        return _fetch_http(url, method)
    if url.startswith("pipe:"):
        return _fetch_pipe(url)
    fs, path = _fsspec_fs(url)
    return _fsspec_call(url, lambda: fs.cat_file(path))


def _fsspec_call(url: str, call):
    try:
        return call()
    except FileNotFoundError as e:
        raise MissingRemoteFile(f"{url} does not exist") from e
    except (ConnectionError, TimeoutError) as e:
        raise _Transient(f"{type(e).__name__}: {e}") from e


def _fetch_http(url: str, method: str, byte_range: tuple[int, int] | None = None):
    """The body; with `byte_range` (offset, size), (body, whether the server sent just that range)."""
    headers = {"User-Agent": "mmrec"}
    if byte_range is not None:
        headers["Range"] = f"bytes={byte_range[0]}-{byte_range[0] + byte_range[1] - 1}"
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            body = response.read()
            return body if byte_range is None else (body, response.status == 206)
    except urllib.error.HTTPError as e:  # the server answered with an error status
        if e.code in (404, 410):
            raise MissingRemoteFile(f"{url} does not exist (HTTP {e.code})") from e
        if method == "HEAD" and e.code in (403, 405, 501):
            raise _HeadRefused() from e
        if e.code in (408, 429) or e.code >= 500:
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise ValueError(f"cannot read {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:  # no answer: refused or unknown host is final, a dropped one is not
        if isinstance(e.reason, (ConnectionRefusedError, socket.gaierror)):
            raise ValueError(f"cannot reach {url}: {e.reason}; is the server running and the URL right?") from e
        raise _Transient(str(e.reason)) from e
    except (ConnectionError, TimeoutError, http.client.HTTPException) as e:  # reset or cut mid-response
        raise _Transient(f"{type(e).__name__}: {e}") from e


def _fetch_pipe(url: str) -> bytes:
    # shell=True as WebDataset's own pipe: opener: the command is the user's, on the user's machine
    done = subprocess.run(url[len("pipe:"):], shell=True, capture_output=True)
    if done.returncode != 0:
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"cannot read {url}: the command exited with status {done.returncode} ({why})")
    return done.stdout


def _fsspec_fs(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # "Protocol not known", or e.g. "Install s3fs to access S3"
        raise ValueError(f"cannot open {url}: {e}") from e


def _wds_gopen():
    """webdataset's opener module, with `_gopen_fsspec` in its scheme table. Imported on use, so that reading a
    dataset's small files needs no webdataset."""
    # the module, not the function `webdataset.gopen` that the package exports under the same name
    gopen = importlib.import_module("webdataset.gopen")
    # its table falls back to an error for unknown schemes; fsspec knows many more. Its own entries (pipe:,
    # http via curl, gs via gsutil, ...) are kept
    if gopen.gopen_schemes.get("__default__") is gopen.gopen_error:
        gopen.gopen_schemes["__default__"] = _gopen_fsspec
    return gopen


def _gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    """WebDataset opener for the schemes it has none for (s3://, ...): stream the shard through fsspec."""
    if mode != "rb":
        return _wds_gopen().gopen_error(url)
    fs, path = _fsspec_fs(url)
    return fs.open(path, "rb")


def register_webdataset_opener() -> None:
    """Let WebDataset stream shards from every fsspec scheme: called by the shard reader, which hands
    shard URLs to WebDataset."""
    _wds_gopen()
