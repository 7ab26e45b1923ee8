"""`mmrec embed`: every item in the shards through the item tower, and every user, into EMB/.

    mmrec embed --run RUN --data DATA --out EMB
    accelerate launch -m mmrec.cli embed --run RUN --data DATA --out EMB     (each rank its shards)

Output (DESIGN.md): `item_embeddings.safetensors` (tensor `embeddings` [n_items, d]) + `item_ids.json`,
`user_embeddings.safetensors` + `user_ids.json`, whose dot products are exactly the model's scores.
Also `item_states.safetensors` (text-only fused states, for `search`),
`item_titles.json` and `embedding.json` (model checkpoint hash, dims, counts).

Items go through the item tower in groups of shards, one DataLoader per group, so every worker has
shards of its own to read (a shard is read by one worker): by default 8 shards per worker
(`--shards-per-part`). The same read gives each item's title, so no second pass over the media.

Resumable per group: each group's vectors, states and titles go to
`EMB/parts/<first shard>+<n>.safetensors` (written to a temporary name, then renamed), which names
the shards it covers with their sha256. A rerun skips every shard covered by a part whose shards all
still match the manifest, and deletes parts that do not (the data changed). A killed run therefore
resumes without recomputing finished groups, and the merged output is identical to an uninterrupted
run, whatever the grouping (each item's computation does not depend on the others).
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

from mmrec.data.reader import DecodedItem, load_manifest
from mmrec.data.sharding import sha256_of
from mmrec.factory import WEIGHTS_FILE, load_model
from mmrec.inference import RunVocabulary, embed_batches, item_batches, user_vectors

PARTS = "parts"
SHARDS_PER_WORKER = 8  # per part: enough that workers stay busy across a group's uneven end


def item_title(item: DecodedItem) -> str:
    """What `recommend` / `similar` / `search` print: metadata "title", else the text's first line, else the id."""
    return str(item.metadata.get("title") or (item.text or "").split("\n")[0][:80] or item.item_id)


def _part_shards(path: Path) -> dict[str, str] | None:
    """{shard path: sha256} that a part covers, or None when it is not a readable part."""
    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})["shards"])
    except Exception:  # noqa: BLE001 (safetensors raises its own error type for a damaged file)
        return None


def valid_parts(out: Path, manifest: dict) -> tuple[dict[Path, list[str]], list[Path]]:
    """({part: shard paths} of the parts that match the manifest's shards, [stale or unreadable parts])."""
    current = {sh["path"]: sh["sha256"] for sh in manifest["shards"]}
    valid, stale = {}, []
    for path in sorted((out / PARTS).glob("*.safetensors")):
        shards = _part_shards(path)
        if shards and all(current.get(p) == sha for p, sha in shards.items()):
            valid[path] = list(shards)
        else:
            stale.append(path)
    return valid, stale


def _embed_group(model, data_dir: Path, preprocessors: dict, attributes: list[str], shards: list[int],
                 batch_size: int, num_workers: int, device: torch.device, autocast: bool, bar: tqdm):
    """(indices, vectors, states, titles) of the items of these shards, from one read of them."""
    loader = item_batches(data_dir, preprocessors, attributes, batch_size=batch_size, num_workers=num_workers,
                          device=device, shards=shards, extra=item_title)
    titles: list[str] = []

    def batches():
        for batch, batch_titles in loader:
            titles.extend(batch_titles)  # in batch order, as embed_batches keeps the indices
            bar.update(batch.size)
            yield batch

    out = embed_batches(model, batches(), device=device, autocast=autocast, with_state=True)
    return out.indices, out.vectors, out.states, titles


def embed(run_dir: str | Path, data_dir: str | Path, out: str | Path, *, batch_size: int = 128,
          num_workers: int = 0, shards_per_part: int | None = None, progress: bool = True) -> dict:
    """Embed all items (this rank's shards) and, on the main process, merge and write EMB/.

    `shards_per_part` (default: 8 per DataLoader worker) sets how many shards one DataLoader reads
    and one part file holds: the unit of parallel reading and of resuming.
    """
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes from torchrun form a gloo group
    run_dir, data_dir, out = Path(run_dir), Path(data_dir), Path(out)
    if shards_per_part is not None and shards_per_part < 1:
        raise ValueError(f"shards_per_part={shards_per_part} must be >= 1")
    model, preprocessors, sizes = load_model(run_dir / "model", device=state.device)
    vocab = RunVocabulary.load(run_dir)
    manifest = load_manifest(data_dir)
    if manifest["num_items"] != len(vocab.item_ids):
        raise ValueError(f"{data_dir} has {manifest['num_items']} items but the run was trained on "
                         f"{len(vocab.item_ids)}: embed with the dataset folder the run used")
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        for path in valid_parts(out, manifest)[1]:
            path.unlink()  # made from other data: its items are recomputed
    state.wait_for_everyone()
    done = {p for shards in valid_parts(out, manifest)[0].values() for p in shards}
    autocast = state.device.type == "cuda" and torch.cuda.is_bf16_supported()
    mine = list(range(state.process_index, len(manifest["shards"]), state.num_processes))
    todo = [i for i in mine if manifest["shards"][i]["path"] not in done]
    per_part = shards_per_part or max(1, num_workers) * SHARDS_PER_WORKER
    started = time.perf_counter()
    bar = tqdm(total=sum(manifest["shards"][i]["num_items"] for i in mine), desc=f"embed[{state.process_index}]",
               unit="item", disable=not progress or not state.is_local_main_process)
    bar.update(sum(manifest["shards"][i]["num_items"] for i in mine if i not in todo))
    for start in range(0, len(todo), per_part):
        group = todo[start:start + per_part]
        idx, vecs, states, titles = _embed_group(model, data_dir, preprocessors, vocab.attributes, group, batch_size,
                                                 num_workers, state.device, autocast, bar)
        first = manifest["shards"][group[0]]
        path = out / PARTS / f"{Path(first['path']).stem}+{len(group)}.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"indices": idx, "embeddings": vecs}
        if states.numel():
            tensors["states"] = states
        covered = {manifest["shards"][i]["path"]: manifest["shards"][i]["sha256"] for i in group}
        save_file(tensors, str(tmp), metadata={"shards": json.dumps(covered), "titles": json.dumps(titles)})
        os.replace(tmp, path)  # a part exists whole or not at all
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


def _merge(out: Path, manifest: dict, model, vocab: RunVocabulary, run_dir: Path, data_dir: Path) -> dict:
    n = len(vocab.item_ids)
    item_vecs, item_states, seen = None, None, torch.zeros(n, dtype=torch.bool)
    item_titles: list[str | None] = [None] * n
    parts, _ = valid_parts(out, manifest)
    uncovered = {sh["path"] for sh in manifest["shards"]} - {p for shards in parts.values() for p in shards}
    if uncovered:
        raise RuntimeError(f"{len(uncovered)} shards have no part in {out / PARTS} (e.g. {sorted(uncovered)[0]}): "
                           "rerun `mmrec embed` to embed them")
    for path in parts:
        with safe_open(str(path), "pt") as f:
            idx, vecs = f.get_tensor("indices"), f.get_tensor("embeddings")
            states = f.get_tensor("states") if "states" in f.keys() else None
            titles = json.loads(f.metadata()["titles"])
        if item_vecs is None:
            item_vecs = torch.zeros(n, vecs.shape[1])
            item_states = torch.zeros(n, states.shape[1]) if states is not None else None
        if seen[idx].any() or len(titles) != len(idx):
            raise RuntimeError(f"{path} repeats items of another part or lacks titles: the parts folder is "
                               "inconsistent; delete it and rerun")
        seen[idx] = True
        item_vecs[idx] = vecs
        if item_states is not None:
            item_states[idx] = states
        for i, title in zip(idx.tolist(), titles):
            item_titles[i] = title
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} items have no embedding although every shard has a part: "
                           "the shards and the parts disagree")
    save_file({"embeddings": item_vecs.contiguous()}, str(out / "item_embeddings.safetensors"))
    (out / "item_ids.json").write_text(json.dumps(vocab.item_ids, ensure_ascii=False))
    if item_states is not None:
        save_file({"states": item_states.contiguous()}, str(out / "item_states.safetensors"))
    users = user_vectors(model)[: len(vocab.user_ids)]  # the unknown-user row is not a user
    save_file({"embeddings": users.contiguous()}, str(out / "user_embeddings.safetensors"))
    (out / "user_ids.json").write_text(json.dumps(vocab.user_ids, ensure_ascii=False))
    (out / "item_titles.json").write_text(json.dumps(item_titles, ensure_ascii=False))
    return {
        "items": n,
        "users": len(vocab.user_ids),
        "dim": item_vecs.shape[1],
        "score": "dot product of user and item embeddings == the model's r_hat(u, i)",
        "checkpoint": str(run_dir / "model"),
        "checkpoint_sha256": sha256_of(run_dir / "model" / WEIGHTS_FILE),
        "data": str(data_dir.resolve()),
    }
