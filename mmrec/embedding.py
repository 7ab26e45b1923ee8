"""`mmrec embed`: every item in the shards through the item tower, and every user, into EMB/.

    mmrec embed --run RUN --data DATA --out EMB
    accelerate launch -m mmrec.cli embed --run RUN --data DATA --out EMB     (each rank its shards)

Output (DESIGN.md): `item_embeddings.safetensors` (tensor `embeddings` [n_items, d]) + `item_ids.json`,
`user_embeddings.safetensors` + `user_ids.json`, whose dot products are exactly the model's scores.
Also `item_states.safetensors` (text-only fused states, for `search`),
`item_titles.json` and `embedding.json` (model checkpoint hash, dims, counts).

Resumable per shard: each shard's vectors go to `EMB/parts/<shard>.safetensors` (written to a
temporary name, then renamed), and a rerun skips the shards whose part is there and matches the
shard's sha256. A killed run therefore resumes without recomputing finished shards, and the merged
output is identical to an uninterrupted run (each shard's computation does not depend on the others).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from accelerate import PartialState
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mmrec.data.reader import item_loader, load_manifest
from mmrec.data.sharding import sha256_of
from mmrec.factory import WEIGHTS_FILE, load_model
from mmrec.inference import RunVocabulary, embed_items, user_vectors

PARTS = "parts"


def _part_path(out: Path, shard: dict) -> Path:
    return out / PARTS / (Path(shard["path"]).stem + ".safetensors")


def _part_is_done(path: Path, shard_sha: str) -> bool:
    if not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("shard_sha256") == shard_sha


def _titles(data_dir: Path, shards: list[int]) -> dict[int, str]:
    """item index -> title (metadata "title", else the text's first line), read without decoding media."""
    titles = {}
    for batch in item_loader(data_dir, "eval", rank=0, world_size=1, shards=shards, decode=_meta_only):
        for index, title in batch:
            titles[index] = title
    return titles


def _meta_only(sample: dict) -> tuple[int, str]:
    meta = json.loads(sample["json"])
    text = sample["txt"].decode("utf-8") if "txt" in sample else ""
    title = meta.get("metadata", {}).get("title") or text.split("\n")[0][:80] or meta["item_id"]
    return meta["index"], str(title)


def embed(run_dir: str | Path, data_dir: str | Path, out: str | Path, *, batch_size: int = 128,
          num_workers: int = 0, progress: bool = True) -> dict:
    """Embed all items (this rank's shards) and, on the main process, merge and write EMB/."""
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes from torchrun form a gloo group
    run_dir, data_dir, out = Path(run_dir), Path(data_dir), Path(out)
    model, preprocessors, sizes = load_model(run_dir / "model", device=state.device)
    vocab = RunVocabulary.load(run_dir)
    manifest = load_manifest(data_dir)
    if manifest["num_items"] != len(vocab.item_ids):
        raise ValueError(f"{data_dir} has {manifest['num_items']} items but the run was trained on "
                         f"{len(vocab.item_ids)}: embed with the dataset folder the run used")
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    autocast = state.device.type == "cuda" and torch.cuda.is_bf16_supported()
    mine = list(range(state.process_index, len(manifest["shards"]), state.num_processes))
    todo = [i for i in mine if not _part_is_done(_part_path(out, manifest["shards"][i]), manifest["shards"][i]["sha256"])]
    started = time.perf_counter()
    bar = tqdm(total=sum(manifest["shards"][i]["num_items"] for i in mine), desc=f"embed[{state.process_index}]",
               unit="item", disable=not progress or not state.is_local_main_process)
    bar.update(sum(manifest["shards"][i]["num_items"] for i in mine if i not in todo))
    for i in todo:
        shard = manifest["shards"][i]
        idx, vecs, states = _embed_shard(model, data_dir, preprocessors, vocab, i, batch_size, num_workers,
                                         state.device, autocast)
        path = _part_path(out, shard)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"indices": idx, "embeddings": vecs}
        if states.numel():
            tensors["states"] = states
        save_file(tensors, str(tmp), metadata={"shard_sha256": shard["sha256"]})
        os.replace(tmp, path)  # a part exists whole or not at all
        bar.update(len(idx))
    bar.close()
    state.wait_for_everyone()
    summary = {}
    if state.is_main_process:
        summary = _merge(out, manifest, model, vocab, run_dir, data_dir)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        summary["shards_computed_by_main"] = len(todo)
        (out / "embedding.json").write_text(json.dumps(summary, indent=2))
        # where `mmrec recommend/similar/search --run RUN` find these embeddings without --emb
        (run_dir / "embeddings.json").write_text(json.dumps({"path": str(out.resolve())}))
    state.wait_for_everyone()
    return summary


def _embed_shard(model, data_dir, preprocessors, vocab, shard: int, batch_size, num_workers, device, autocast):
    return embed_items(model, data_dir, preprocessors, vocab.attributes, batch_size=batch_size,
                       num_workers=num_workers, device=device, autocast=autocast, shards=[shard], with_state=True)


def _merge(out: Path, manifest: dict, model, vocab: RunVocabulary, run_dir: Path, data_dir: Path) -> dict:
    n = len(vocab.item_ids)
    item_vecs, item_states, seen = None, None, torch.zeros(n, dtype=torch.bool)
    for shard in manifest["shards"]:
        with safe_open(str(_part_path(out, shard)), "pt") as f:
            idx, vecs = f.get_tensor("indices"), f.get_tensor("embeddings")
            states = f.get_tensor("states") if "states" in f.keys() else None
        if item_vecs is None:
            item_vecs = torch.zeros(n, vecs.shape[1])
            item_states = torch.zeros(n, states.shape[1]) if states is not None else None
        if seen[idx].any():
            raise RuntimeError(f"items embedded twice in {shard['path']}: the parts folder is inconsistent")
        seen[idx] = True
        item_vecs[idx] = vecs
        if item_states is not None:
            item_states[idx] = states
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} items have no embedding: some shards were not embedded")
    save_file({"embeddings": item_vecs.contiguous()}, str(out / "item_embeddings.safetensors"))
    (out / "item_ids.json").write_text(json.dumps(vocab.item_ids, ensure_ascii=False))
    if item_states is not None:
        save_file({"states": item_states.contiguous()}, str(out / "item_states.safetensors"))
    users = user_vectors(model)[: len(vocab.user_ids)]  # the unknown-user row is not a user
    save_file({"embeddings": users.contiguous()}, str(out / "user_embeddings.safetensors"))
    (out / "user_ids.json").write_text(json.dumps(vocab.user_ids, ensure_ascii=False))
    titles = _titles(data_dir, list(range(len(manifest["shards"]))))
    (out / "item_titles.json").write_text(json.dumps([titles[i] for i in range(n)], ensure_ascii=False))
    return {
        "items": n,
        "users": len(vocab.user_ids),
        "dim": item_vecs.shape[1],
        "score": "dot product of user and item embeddings == the model's r_hat(u, i)",
        "checkpoint": str(run_dir / "model"),
        "checkpoint_sha256": sha256_of(run_dir / "model" / WEIGHTS_FILE),
        "data": str(data_dir.resolve()),
    }
