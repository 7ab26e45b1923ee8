"""The item tower over the shards: `mmrec embed`, and the passes that validation, `mmrec eval` and
`mmrec cache` share (`item_batches`, `embed_items`, `embed_batches`, `assemble`).

`mmrec embed`: every item in the shards through the item tower, and every user, into EMB/.

    mmrec embed --run RUN --data DATA --out EMB
    accelerate launch -m mmrec.cli embed --run RUN --data DATA --out EMB     (each rank its shards)

Output (docs/design.md): `item_embeddings.safetensors` (tensor `embeddings` [n_items, d]) + `item_ids.json`,
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

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from mmrec.data.batch import BatchCollator, ExampleBuilder, ItemBatch, WithExtra
from mmrec.data.fingerprint import check_dataset
from mmrec.data.reader import DecodedItem, ReaderConfig, decode_sample, item_loader, load_manifest
from mmrec.data.remote import as_location, describe, is_remote
from mmrec.data.splits import RunSplits
from mmrec.data.vocabulary import RunVocabulary
from mmrec.files import FolderLock, replace_with, sha256_of, temp_sibling
from mmrec.model.factory import WEIGHTS_FILE, load_run_model
from mmrec.model.history import UserHistory
from mmrec.model.hub import config_file
from mmrec.model.model import RecModel, user_vectors
from mmrec.precision import bf16_autocast

logger = logging.getLogger(__name__)
PARTS = "parts"
SHARDS_PER_WORKER = 8  # per part: enough that workers stay busy across a group's uneven end


@dataclass
class EmbeddedItems:
    """What one pass of the item tower over some items gives, rows in the order the items came."""

    indices: torch.Tensor  # (n,) item indices
    vectors: torch.Tensor  # (n, E + 2) export vectors [q_i, b_i, 1]
    states: torch.Tensor | None = None  # (n, D) text-only fused states, when asked for
    ablated: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (n, E + 2) without it


def item_batches(data_dir: str | Path, preprocessors: dict, attributes: list[str], *, batch_size: int = 128,
                 num_workers: int = 0, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 decode: Callable[[dict], Any] = decode_sample, shards: list[int] | None = None,
                 extra: Callable[[Any], Any] | None = None):
    """Eval-mode loader of preprocessed ItemBatches (pinned for the GPU when `device` is one).

    With `extra` (a module-level function of a decoded item) it gives (ItemBatch, [extra(item), ...])
    from the same read, e.g. each item's title.
    """
    pin = torch.device(device).type == "cuda"
    # the run's own dataset (the CLI checks its fingerprint); items new to the run: `embed_batches(content_only=True)`
    builder, collator = ExampleBuilder(preprocessors, attributes, catalogue=None), BatchCollator(preprocessors)
    transform, collate = builder, collator
    if extra is not None:
        pair = WithExtra(builder, collator, extra)
        transform, collate = pair.transform, pair.collate
    return item_loader(data_dir, "eval", ReaderConfig(batch_size=batch_size, num_workers=num_workers, pin_memory=pin),
                       transform=transform, collate=collate, rank=rank, world_size=world_size, decode=decode,
                       shards=shards)


def embed_items(model: RecModel, data_dir: str | Path, preprocessors: dict, attributes: list[str], *,
                batch_size: int = 128, num_workers: int = 0, device: torch.device | str = "cpu",
                rank: int = 0, world_size: int = 1, autocast: bool = False,
                decode: Callable[[dict], Any] = decode_sample, shards: list[int] | None = None,
                drop: tuple[str, ...] = (), with_state: bool = False) -> tuple[torch.Tensor, ...]:
    """This rank's share of the items, each exactly once: (item indices (n,), export vectors (n, E + 2)).

    `autocast` runs the encoders in bf16 on CUDA; the vectors are returned in float32 on the CPU.
    `data_dir` may be a feature cache with `decode=mmrec.training.cache.decode_features`. `shards` limits
    the pass to some shards; `drop` removes modalities at inference (ablation); `with_state` also
    returns the fused text-only states (n, D) that `mmrec search` matches queries against (the full
    state for items without text).
    """
    batches = item_batches(data_dir, preprocessors, attributes, batch_size=batch_size, num_workers=num_workers,
                           device=device, rank=rank, world_size=world_size, decode=decode, shards=shards)
    out = embed_batches(model, batches, device=device, autocast=autocast, drop=drop, with_state=with_state)
    return (out.indices, out.vectors, out.states) if with_state else (out.indices, out.vectors)


def embed_batches(model: RecModel, batches: Iterable[ItemBatch], *, device: torch.device | str = "cpu",
                  autocast: bool = False, drop: tuple[str, ...] = (), with_state: bool = False,
                  ablate: tuple[str, ...] = (), content_only: bool = False) -> EmbeddedItems:
    """The item tower over `batches` (host-side ItemBatches), rows in batch order.

    `content_only`: the items are not the run's (another dataset's indices): no ID terms, whatever
    their index (`mmrec embed-items`).

    `ablate`: for each of these modalities, also the vectors of the items as if they lacked it (the
    report's modality ablation), from the same encoder outputs: one pass instead of one per modality.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    indices, vectors, states = [], [], []
    ablated: dict[str, list[torch.Tensor]] = {m: [] for m in ablate}
    # Results come back with non-blocking copies and one synchronisation at the end: a blocking
    # `.cpu()` per batch would make the host wait for the GPU, which then idles while the host
    # launches the next batch's kernels.
    to_host = dict(device="cpu", non_blocking=device.type == "cuda")
    with torch.no_grad():
        for batch in batches:
            indices.append(batch.item_index)  # still on the host
            batch = batch.to(device, non_blocking=True)
            if content_only:
                batch.item_index = torch.full_like(batch.item_index, -1)
            for m in drop:  # ablation: the model sees the item as if it lacked m
                batch.present[m] = torch.zeros_like(batch.present[m])
                batch.inputs.pop(m, None)
                batch.features.pop(m, None)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                items, encoded = model.items(batch)
                vectors.append(model.item_export(items).float().to(**to_host))
                if with_state and items.state is not None:
                    state = items.state
                    if "text" in encoded:
                        # Free-text search compares a text-only query with the items' text-only states;
                        # items without text keep their full state (the best description they have).
                        has_text = batch.present["text"]
                        text_only = {m: has_text if m == "text" else torch.zeros_like(has_text) for m in encoded}
                        state = torch.where(has_text[:, None], model.fuse(encoded, text_only), state)
                    states.append(state.float().to(**to_host))
                for m in ablate:  # what `drop=(m,)` gives, without running the encoders again
                    present = {k: torch.zeros_like(v) if k == m else v for k, v in batch.present.items()}
                    rest = {k: v for k, v in encoded.items() if k != m}
                    state = model.fuse(rest, present) if model.fusion is not None else None
                    ablated[m].append(model.item_export(model.item_output(state, batch.item_index)).float().to(**to_host))
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the non-blocking copies above are complete only now
    model.train(was_training)
    if not indices:
        width = model.fusion.output_dim if model.fusion else 0
        return EmbeddedItems(torch.zeros(0, dtype=torch.long), torch.zeros(0, model.export_dim),
                             torch.zeros(0, width) if with_state else None,
                             {m: torch.zeros(0, model.export_dim) for m in ablate})
    return EmbeddedItems(torch.cat(indices), torch.cat(vectors),
                         (torch.cat(states) if states else torch.zeros(0)) if with_state else None,
                         {m: torch.cat(v) for m, v in ablated.items()})


def progress_shown() -> bool:
    """Progress bars are status output: shown when the `mmrec` loggers are at INFO (the CLI's default; off
    with -q, and in a library caller that has not configured logging)."""
    return logger.isEnabledFor(logging.INFO)


def counting(batches: Iterable[ItemBatch], total: int, desc: str) -> Iterator[ItemBatch]:
    """`batches` as they are, their items counted on a progress bar (see `progress_shown`)."""
    with tqdm(total=total, desc=desc, unit="item", disable=not progress_shown()) as bar:
        for batch in batches:
            bar.update(batch.size)
            yield batch


def assemble(parts: list[tuple[torch.Tensor, torch.Tensor]], num_items: int) -> torch.Tensor:
    """Merge per-rank (indices, vectors) into one (num_items, d) matrix; every item exactly once."""
    idx = torch.cat([p[0] for p in parts])
    vecs = torch.cat([p[1] for p in parts])
    if idx.numel() != num_items or torch.unique(idx).numel() != num_items:
        raise RuntimeError(f"embedding covered {torch.unique(idx).numel()} distinct of {num_items} items "
                           f"({idx.numel()} rows): the shards and the vocabulary disagree")
    out = torch.empty(num_items, vecs.shape[1])
    out[idx] = vecs
    return out


def item_title(item: DecodedItem) -> str:
    """What `recommend` / `similar` / `search` print: metadata "title", else the text's first line, else the id."""
    return str(item.metadata.get("title") or (item.text or "").split("\n")[0][:80] or item.item_id)


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the saved model's weights and config: what a part's vectors depend on besides the shards."""
    return hashlib.sha256((sha256_of(model_dir / WEIGHTS_FILE) + sha256_of(config_file(model_dir))).encode()).hexdigest()


def _part_key(path: Path) -> tuple[dict[str, str], str | None] | None:
    """({shard path: sha256} a part covers, the model fingerprint it was made with), or None when unreadable."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            return json.loads(meta["shards"]), meta.get("model")
    except Exception:  # safetensors raises its own error type for a damaged file
        return None


def valid_parts(out: Path, manifest: dict, model: str) -> tuple[dict[Path, list[str]], list[Path]]:
    """({part: shard paths} of the parts made from these shards by this model, [stale or unreadable parts]).

    A part made by another model (a retrained or resumed run writing into the same folder) is stale:
    its vectors would be mixed with the new model's users.
    """
    current = {sh["path"]: sh["sha256"] for sh in manifest["shards"]}
    valid, stale = {}, []
    for path in sorted((out / PARTS).glob("*.safetensors")):
        key = _part_key(path)
        if key and key[1] == model and all(current.get(p) == sha for p, sha in key[0].items()):
            valid[path] = list(key[0])
        else:
            stale.append(path)
    return valid, stale


def verify_shards(data_dir: Path, manifest: dict, group: list[int] | None = None) -> None:
    """The local shard files are those the manifest describes (a truncated or replaced tar would
    silently change items or their titles)."""
    if is_remote(data_dir):
        return  # remote shards are streamed, not hashed up front
    for i in range(len(manifest["shards"])) if group is None else group:
        shard = manifest["shards"][i]
        if sha256_of(data_dir / shard["path"]) != shard["sha256"]:
            raise ValueError(f"{data_dir / shard['path']} does not match the manifest's sha256 (truncated or "
                             "replaced since `mmrec shard`?): restore it or re-shard")


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
    lock, refused = None, [None]
    if state.is_main_process:  # one writer per embedding folder
        try:
            lock = FolderLock(out).acquire()
        except ValueError as e:
            refused = [str(e)]
    broadcast_object_list(refused)  # every rank stops, or none does
    if refused[0]:
        raise ValueError(refused[0])
    try:
        return _embed(state, Path(run_dir), as_location(data_dir), Path(out), batch_size, num_workers, shards_per_part,
                      progress)
    finally:
        if lock is not None:
            lock.release()


def _embed(state: PartialState, run_dir: Path, data_dir: Path, out: Path, batch_size: int, num_workers: int,
           shards_per_part: int | None, progress: bool) -> dict:
    if shards_per_part is not None and shards_per_part < 1:
        raise ValueError(f"shards_per_part={shards_per_part} must be >= 1")
    model, preprocessors, sizes = load_run_model(run_dir, device=state.device)
    vocab = RunVocabulary.load(run_dir)
    check_dataset(run_dir, data_dir)
    manifest = load_manifest(data_dir)
    if manifest["num_items"] != len(vocab.item_ids):
        raise ValueError(f"{data_dir} has {manifest['num_items']} items but the run was trained on "
                         f"{len(vocab.item_ids)}: embed with the dataset folder the run used")
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(run_dir / "model")
    if state.is_main_process:
        for path in valid_parts(out, manifest, fingerprint)[1]:
            path.unlink()  # made from other data or by another model: its items are recomputed
    state.wait_for_everyone()
    done = {p for shards in valid_parts(out, manifest, fingerprint)[0].values() for p in shards}
    autocast = bf16_autocast(state.device)
    mine = list(range(state.process_index, len(manifest["shards"]), state.num_processes))
    todo = [i for i in mine if manifest["shards"][i]["path"] not in done]
    per_part = shards_per_part or max(1, num_workers) * SHARDS_PER_WORKER
    started = time.perf_counter()
    if len(todo) < len(mine):
        logger.info(f"{len(mine) - len(todo)} of {len(mine)} shards already embedded in {out / PARTS} (same shards, "
                    "same model): embedding the rest")
    bar = tqdm(total=sum(manifest["shards"][i]["num_items"] for i in mine), desc=f"embed[{state.process_index}]",
               unit="item", disable=not progress or not state.is_local_main_process or not progress_shown())
    bar.update(sum(manifest["shards"][i]["num_items"] for i in mine if i not in todo))
    for start in range(0, len(todo), per_part):
        group = todo[start:start + per_part]
        verify_shards(data_dir, manifest, group)
        idx, vecs, states, titles = _embed_group(model, data_dir, preprocessors, vocab.attributes, group, batch_size,
                                                 num_workers, state.device, autocast, bar)
        first = manifest["shards"][group[0]]
        path = out / PARTS / f"{Path(first['path']).stem}+{len(group)}.safetensors"
        tmp = temp_sibling(path)
        tensors = {"indices": idx, "embeddings": vecs}
        if states.numel():
            tensors["states"] = states
        covered = {manifest["shards"][i]["path"]: manifest["shards"][i]["sha256"] for i in group}
        save_file(tensors, str(tmp), metadata={"shards": json.dumps(covered), "titles": json.dumps(titles),
                                               "model": fingerprint})
        replace_with(tmp, path)  # a part exists whole or not at all
        logger.debug(f"wrote {path} ({len(idx)} items of {len(group)} shards)")
    bar.close()
    state.wait_for_everyone()
    summary = {}
    if state.is_main_process:
        logger.info(f"merging the parts and computing the user vectors -> {out}")
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
    parts, _ = valid_parts(out, manifest, model_fingerprint(run_dir / "model"))
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
    # `id_terms`: which rows carry learned ID terms (items seen in training); cold rows are content alone,
    # and `similar` compares each kind against its own mean
    save_file({"embeddings": item_vecs.contiguous(), "id_terms": model.item_seen.cpu().to(torch.uint8).contiguous()},
              str(out / "item_embeddings.safetensors"))
    (out / "item_ids.json").write_text(json.dumps(vocab.item_ids, ensure_ascii=False))
    if item_states is not None:
        save_file({"states": item_states.contiguous()}, str(out / "item_states.safetensors"))
    history = None
    if model.history_tower:  # each user's vector is computed from their training history and the item vectors
        train = RunSplits(data_dir, vocab)["train"]
        history = UserHistory.from_rows(train, len(vocab.user_ids) + 1, model.config.history_length)
    users = user_vectors(model, item_vecs, history)[: len(vocab.user_ids)]  # the unknown-user row is not a user
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
        "data": describe(data_dir),
    }
