"""A dataset folder served over HTTP (issue 19): train, embed and eval read it as they read the disk."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import TINY, free_port
from safetensors.torch import load_file

from mmrec.cli import main
from mmrec.data import remote
from mmrec.data.reader import load_manifest, shard_urls
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.evaluate import plots


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


class FlakyHandler(QuietHandler):
    """Answers 503 to the first `failures` GETs of each path, then serves it: a server restarting."""

    failures = 1
    seen: dict[str, int] = {}

    def do_GET(self):
        n = self.seen.get(self.path, 0)
        self.seen[self.path] = n + 1
        if n < self.failures:
            self.send_error(503, "warming up")
            return
        super().do_GET()


class NoHeadHandler(QuietHandler):
    """A server that refuses HEAD (as GET-only presigned object-store URLs do)."""

    def do_HEAD(self):
        self.send_error(405, "GET only")


@contextmanager
def serving(root: Path, handler=QuietHandler):
    """http://127.0.0.1:PORT serving `root`, from a thread (an ephemeral port)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_train_embed_eval_from_a_url_equal_the_disk(trained, tmp_path, monkeypatch):
    root, data = trained  # data = root/data; the run and its embeddings were made from the disk
    monkeypatch.setattr(plots, "save_figure", lambda path, *args, **kwargs: path)  # the PNGs (tested elsewhere) cost 2 s
    tiny = ["train.epochs=1", "data.steps_per_epoch=2", "data.batch_size=16"]
    with serving(root) as server:
        url = f"{server}/data"
        assert main(["train", "--config", str(TINY), "--data", url, "--out", str(tmp_path / "run_url"), *tiny]) == 0
        assert main(["embed", "--run", str(root / "run"), "--data", url, "--out", str(tmp_path / "emb_url")]) == 0
        assert main(["eval", "--run", str(root / "run"), "--data", url, "--emb", str(tmp_path / "emb_url"),
                     "--k", "5", "--no-ablation", "--out", str(tmp_path / "rep_url")]) == 0
    assert main(["train", "--config", str(TINY), "--data", str(data), "--out", str(tmp_path / "run_disk"), *tiny]) == 0
    assert main(["eval", "--run", str(root / "run"), "--data", str(data), "--emb", str(root / "emb"),
                 "--k", "5", "--no-ablation", "--out", str(tmp_path / "rep_disk")]) == 0

    # training: the same weights, and the run records the URL it read
    by_url = load_file(tmp_path / "run_url" / "model" / "model.safetensors")
    by_disk = load_file(tmp_path / "run_disk" / "model" / "model.safetensors")
    assert by_url.keys() == by_disk.keys()
    assert all(torch.equal(by_url[k], by_disk[k]) for k in by_url)
    assert json.loads((tmp_path / "run_url" / "dataset.json").read_text())["data"] == url
    assert f"path: {url}" in (tmp_path / "run_url" / "config.yaml").read_text()
    # embed: the same item vectors, made from the URL
    vecs = "item_embeddings.safetensors"
    assert torch.equal(load_file(tmp_path / "emb_url" / vecs)["embeddings"], load_file(root / "emb" / vecs)["embeddings"])
    assert json.loads((tmp_path / "emb_url" / "embedding.json").read_text())["data"] == url
    # eval: the same numbers
    rep_url = json.loads((tmp_path / "rep_url" / "report.json").read_text())
    rep_disk = json.loads((tmp_path / "rep_disk" / "report.json").read_text())
    assert rep_url["protocol"]["data"] == url and rep_disk["protocol"]["data"] == str(data.resolve())
    for section in ("ranking", "rating", "baselines"):
        assert rep_url.get(section) == rep_disk.get(section), section


def test_a_missing_file_or_an_unreachable_server_is_one_line(trained, tmp_path, capsys):
    root, data = trained
    with serving(root) as server:
        assert main(["embed", "--run", str(root / "run"), "--data", f"{server}/nowhere", "--out", str(tmp_path / "e")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{server}/nowhere/manifest.json" in err[0] and "404" in err[0], err
    dead = f"http://127.0.0.1:{free_port()}/data"  # nothing listens there
    assert main(["eval", "--run", str(root / "run"), "--data", dead, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach" in err[0] and dead in err[0], err


def test_a_missing_split_file_is_named(trained, tmp_path):
    root, data = trained
    (tmp_path / "data" / "interactions").mkdir(parents=True)
    for name in ("manifest.json", "item_ids.json", "interactions/train.csv", "interactions/test.csv"):
        (tmp_path / "data" / name).write_bytes((data / name).read_bytes())  # valid.csv left out
    for handler in (QuietHandler, NoHeadHandler):  # files found by HEAD, or by GET where HEAD is refused
        with serving(tmp_path, handler) as server:
            vocab = RunVocabulary.from_data(f"{server}/data")
            with pytest.raises(ValueError, match=r"lacks the split file\(s\) \['valid.csv'\]"):
                RunSplits(f"{server}/data", vocab)


def test_transient_errors_are_retried_then_reported(trained, monkeypatch):
    root, data = trained
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    monkeypatch.setattr(FlakyHandler, "seen", {})
    with serving(root, FlakyHandler) as server:
        url = f"{server}/data"
        assert load_manifest(url) == load_manifest(data)  # one 503, then the file
        vocab = RunVocabulary.from_data(url)
        assert vocab == RunVocabulary.from_data(data)
        splits = RunSplits(url, vocab)
        assert torch.equal(torch.from_numpy(splits["train"].items), torch.from_numpy(RunSplits(data, vocab)["train"].items))
        assert FlakyHandler.seen["/data/manifest.json"] >= 2
        assert shard_urls(url)[0] == f"{url}/{load_manifest(data)['shards'][0]['path']}"
        monkeypatch.setattr(FlakyHandler, "failures", 10**6)  # a server that never recovers
        with pytest.raises(ValueError, match=rf"cannot read {url}/item_ids.json: HTTP 503 .*after {remote.RETRIES + 1}"):
            remote.read_bytes(url, "item_ids.json")


def test_fsspec_location_streams_shards_too(trained):
    """A scheme WebDataset has no opener for (fsspec's built-in memory://) reads the files and the shards."""
    import fsspec

    from mmrec.data.reader import item_loader

    root, data = trained
    memory = fsspec.filesystem("memory")
    memory.put(str(data), "/remote19", recursive=True)
    try:
        url = "memory://remote19"
        assert remote.exists(url, "interactions/train.csv") and not remote.exists(url, "interactions/nope.csv")
        assert RunVocabulary.from_data(url) == RunVocabulary.from_data(data)
        read = [item.item_id for batch in item_loader(url, "eval", rank=0, world_size=1) for item in batch]
        assert read == [item.item_id for batch in item_loader(data, "eval", rank=0, world_size=1) for item in batch]
        with pytest.raises(FileNotFoundError, match="memory://remote19/nope.json does not exist"):
            remote.read_bytes(url, "nope.json")
    finally:
        memory.rm("/remote19", recursive=True)


def test_pipe_and_local_locations(trained, tmp_path):
    root, data = trained
    assert remote.as_location(str(data)) == data and remote.as_location("http://h:1/d") == "http://h:1/d"
    piped = f"pipe:cat {data}/{{path}}"
    assert load_manifest(piped) == load_manifest(data)
    assert remote.sha256_data(piped, "item_ids.json") == remote.sha256_data(data, "item_ids.json")
    assert not remote.exists(piped, "interactions/nope.csv")
    with pytest.raises(ValueError, match=r"must contain \{path\}"):
        load_manifest(f"pipe:cat {data}/manifest.json")
    with pytest.raises(ValueError, match="is not an mmrec dataset folder"):
        load_manifest(tmp_path)  # a local folder without a manifest: as before


class RangeHandler(QuietHandler):
    """Answers a `Range: bytes=A-B` GET with 206 and those bytes (as object stores do; the stdlib server
    ignores Range and sends the whole file, the other path `read_range` takes)."""

    ranged = 0

    def do_GET(self):
        spec = self.headers.get("Range", "")
        if not spec.startswith("bytes="):
            return super().do_GET()
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        start, end = (int(v) for v in spec[len("bytes="):].split("-"))
        body = path.read_bytes()[start:end + 1]
        type(self).ranged += 1
        self.send_response(206)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_serving_from_a_url_equals_the_disk(trained, caplog):
    """Seen items, per-attribute caps and explanations (history, attributes, modality effects) read the
    dataset at a URL as they read it on disk."""
    from mmrec.serve.recommender import Recommender

    root, data = trained
    on_disk = Recommender.from_run(root / "run", data=data)
    user = on_disk.emb.user_ids[0]
    asks = [dict(k=5), dict(k=5, diversify=0.5, max_per_attribute=1), dict(k=3, explain=True)]
    expected = [on_disk.recommend(user=user, **ask).to_dicts() for ask in asks]
    assert any(r.get("reasons") for r in expected[2])
    assert any(reason["kind"] == "modality" for r in expected[2] for reason in r["reasons"])  # content was read
    for handler in (QuietHandler, RangeHandler):
        with serving(root, handler) as server:
            by_url = Recommender.from_run(root / "run", data=f"{server}/data")
            assert [by_url.recommend(user=user, **ask).to_dicts() for ask in asks] == expected, handler
    assert RangeHandler.ranged > 0  # the explained items' members were fetched as byte ranges
    piped = Recommender.from_run(root / "run", data=f"pipe:cat {data}/{{path}}")  # cannot seek: no modality reasons
    explained = piped.recommend(user=user, k=3, explain=True).to_dicts()
    assert [r["item_id"] for r in explained] == [r["item_id"] for r in expected[2]]
    assert not any(reason["kind"] == "modality" for r in explained for reason in r.get("reasons", ()))
    assert "cannot read single items" in caplog.text


def test_read_range_everywhere(trained):
    root, data = trained
    whole = (data / "item_ids.json").read_bytes()
    assert remote.read_range(data, "item_ids.json", 3, 10) == whole[3:13]
    for handler in (QuietHandler, RangeHandler):
        with serving(root, handler) as server:
            assert remote.read_range(f"{server}/data", "item_ids.json", 3, 10) == whole[3:13]
            with pytest.raises(FileNotFoundError, match="does not exist"):
                remote.read_range(f"{server}/data", "nope.json", 0, 1)
    with pytest.raises(ValueError, match="cannot read part of"):
        remote.read_range(f"pipe:cat {data}/{{path}}", "item_ids.json", 0, 1)


def test_feature_cache_from_a_url_equals_the_disk(small_catalogue, tmp_path):
    from test_cache import FROZEN

    from mmrec.shard.writer import ShardOptions, shard_catalogue

    items_path, inter_path, _ = small_catalogue
    data = tmp_path / "data"
    shard_catalogue(items_path, inter_path, data, options=ShardOptions(items_per_shard=4, progress=False))
    assert main(["cache", "--config", str(TINY), "--data", str(data), "--out", str(tmp_path / "disk"), *FROZEN]) == 0
    with serving(tmp_path) as server:
        url = f"{server}/data"
        assert main(["cache", "--config", str(TINY), "--data", url, "--out", str(tmp_path / "url"), *FROZEN]) == 0
    disk, by_url = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("disk", "url"))
    assert by_url["source"]["data"] == url and disk["source"]["data"] == str(data.resolve())
    assert by_url["shards"] == disk["shards"] and len(disk["shards"]) > 1  # the same feature bytes, shard by shard
