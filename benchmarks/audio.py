"""Audio as a first-class modality: cold-start spoken-digit clips, SEMI-SYNTHETIC (real clips, made-up users).

    .venv/bin/python benchmarks/audio.py        # reads ../shared/data/fsdd; about 9 minutes on 2 CPU cores

Items are the 1,800 real Free Spoken Digit Dataset clips; the users and their ratings are SYNTHETIC
(`datasets/fsdd.py`): each user likes 1-3 digits and rates clips of those digits 4-5, others 1-3,
so only what a clip says explains its ratings. Split `cold-items` (seed 0): 20% of the clips are
held out with all their ratings; the test clips are ranked among the never-trained clips.

No pretrained AST can be had offline, so the script makes its own in a stage 1: a small Audio
Spectrogram Transformer learns clip -> spoken digit (a plain supervised loop) on the clips that are
NOT held out (no rating is read), and is saved as a local Hugging Face folder, the `pretrained:` path
a user with real AST weights takes. The recommender then trains on ratings + in-batch retrieval only.

Reported on the cold test clips, NDCG@10/20 and Recall@10/20 of:
- the audio model with the AST (a) from random weights, trained by the recommender on the ratings
  alone, (b) pretrained in stage 1 and frozen, (c) pretrained in stage 1 and fine-tuned;
- each of them with the audio dropped at inference: every cold clip then gets the same content-free
  vector and popularity is all that is left; the gap to it is what the audio path carries;
- popularity, a random ranking (the mean over 20 random scorers), and the oracle: the generator's
  own liked digits as the score, the ceiling of this protocol (every held-out rating counts as
  relevant, and users also rate digits they do not like, so even the oracle scores low).

Writes benchmarks/results/audio_<device>.json; every output says the users are synthetic.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from encoders.audio import create_hf_ast  # noqa: E402
from encoders.base import EncoderConfig  # noqa: E402
from mmrec.config import load_run_config  # noqa: E402
from mmrec.data.reader import load_manifest  # noqa: E402
from mmrec.data.splits import RunSplits  # noqa: E402
from mmrec.data.vocabulary import RunVocabulary  # noqa: E402
from mmrec.embedding import assemble, embed_items  # noqa: E402
from mmrec.evaluate.baselines import popularity_vectors  # noqa: E402
from mmrec.evaluate.protocol import EvalProtocol, evaluate_split  # noqa: E402
from mmrec.model.factory import load_model  # noqa: E402
from mmrec.model.model import user_vectors  # noqa: E402
from mmrec.training.loop import train  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
KS = (10, 20)
ORACLE = "oracle: the synthetic users' liked digits (mean of 20 tie-breaks)"
LABEL = "SEMI-SYNTHETIC: real FSDD clips, synthetic users who like 1-3 digits (datasets/fsdd.py)"
# a small AST on 32 mel bins x 96 frames (0.96 s: FSDD clips are 0.1-2.3 s, most under 1 s)
AST_ARCH = ("{hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128, "
            "num_mel_bins: 32, max_length: 96, patch_size: 8, frequency_stride: 8, time_stride: 8}")
SCRATCH_AST = f"model.encoders={{audio: {{name: hf-ast, trainable_layers: -1, arch: {AST_ARCH}}}}}"
# Recommender training. Only ratings and retrieval: the attribute task would train on the held-out
# clips' digit labels too (the item shards hold every clip), which this protocol must not see.
OVERRIDES = ["model.embedding_dim=32", "model.item_id_dropout=0.5", "tasks.attribute_weight=0",
             "tasks.feature_weight=0", "train.epochs=60", "train.early_stopping_patience=15",
             "train.selection_metric=ndcg@10", "data.batch_size=64"]
# Stage 1 ("pretraining", standing in for the pretrained AST a user would bring): the same AST
# learns clip -> spoken digit (cross-entropy, a linear head on its pooled output) on the clips that
# are NOT held out; no rating is read. After its 20 epochs a linear probe of the pooled output named
# the digit of 92% of the held-out clips (measured once, while developing this script).
STAGE1_EPOCHS, STAGE1_LR, STAGE1_BATCH = 20, 3e-3, 64


def variants(pretrained: Path) -> dict[str, list[str]]:
    stage1 = f"model.encoders={{audio: {{name: hf-ast, pretrained: {pretrained}, trainable_layers: %d}}}}"
    return {
        "AST from random weights, trained by the recommender": [SCRATCH_AST, "train.encoder_lr=3e-3"],
        "AST pretrained on the warm clips (stage 1), frozen": [stage1 % 0],
        "AST pretrained on the warm clips (stage 1), fine-tuned": [stage1 % -1, "train.encoder_lr=1e-4"],
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pretrain_ast(work: Path, data: Path) -> tuple[Path, dict]:
    """Stage 1: the AST learns to name the spoken digit of every clip the split does not hold out.

    A plain supervised loop, as whoever pretrained the user's AST would have run it. It goes
    through mmrec's own encoder factory and preprocessing, and saves a local Hugging Face folder
    (config.json, model.safetensors, preprocessor_config.json): the `pretrained:` path a user with
    real AST weights takes. Returns the folder and the loop's numbers.
    """
    held_out = set(sum(load_manifest(data)["split"]["cold_items"].values(), []))
    with (work / "catalogue" / "items.jsonl").open(encoding="utf-8") as f:  # what datasets/fsdd.py wrote
        clips = [item for item in map(json.loads, f) if item["item_id"] not in held_out]
    torch.manual_seed(0)
    encoder, pre = create_hf_ast(EncoderConfig(name="hf-ast", trainable_layers=-1, arch=yaml.safe_load(AST_ARCH)))
    inputs = torch.stack([pre(sf.read(c["audio"], dtype="float32"))["input_values"] for c in clips])  # (n, frames, mel)
    digits = torch.tensor([c["digit"] for c in clips])
    head = torch.nn.Linear(encoder.output_dim, 10)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=STAGE1_LR)
    order = torch.Generator().manual_seed(0)
    encoder.train()
    for _ in range(STAGE1_EPOCHS):
        correct = 0
        for rows in torch.randperm(len(clips), generator=order).split(STAGE1_BATCH):
            logits = head(encoder(input_values=inputs[rows]).pooled)  # (b, 10)
            loss = torch.nn.functional.cross_entropy(logits, digits[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(-1) == digits[rows]).sum())
    out = work / "ast-stage1"
    encoder.model.save_pretrained(out)
    pre.fe.save_pretrained(out)
    return out, {"clips": len(clips), "held_out_clips_excluded": len(held_out), "epochs": STAGE1_EPOCHS,
                 "last_epoch_train_accuracy": correct / len(clips), "last_loss": float(loss.detach())}


def oracle_vectors(work: Path, vocab: RunVocabulary, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's ground truth as a scorer: a user's liked digits first, ties in random order.
    The ceiling of this protocol: no model can know more than which digits a user likes."""
    liked = json.loads((work / "catalogue" / "synthetic_users.json").read_text(encoding="utf-8"))["users"]
    users = torch.zeros(len(vocab.user_ids) + 1, 11)  # (U + 1, 10 digits + tie-break); the last row: unknown user
    users[:, 10] = 1.0
    for u, user_id in enumerate(vocab.user_ids):
        users[u, liked[user_id]["liked_digits"]] = 1.0
    items = torch.zeros(len(vocab.item_ids), 11)
    items[torch.arange(len(items)), torch.tensor([int(i.split("_")[0]) for i in vocab.item_ids])] = 1.0
    items[:, 10] = 1e-3 * torch.rand(len(items), generator=generator)
    return users, items


def score(user_vecs: torch.Tensor, item_vecs: torch.Tensor, splits: RunSplits, rule: EvalProtocol) -> dict:
    """Cold test clips ranked among the never-trained clips, train and valid masked (the engine's rule
    for a cold-items split)."""
    result = evaluate_split(user_vecs, item_vecs, splits, rule, KS)
    return {k: v for k, v in result["ranking"].items() if k.split("@")[0] in ("recall", "ndcg") or k in ("users", "candidates")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=Path, default=SHARED / "fsdd" / "clips")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmrec-audio"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.clips.is_dir():
        sys.exit(f"FSDD clips not found in {args.clips} (see ../shared/data/SOURCES.md)")
    started = time.perf_counter()
    data = args.work / "data"
    if not (data / "manifest.json").is_file():
        log("building the catalogue (SYNTHETIC users) and sharding it, split cold-items seed 0")
        subprocess.run([sys.executable, str(REPO / "datasets" / "fsdd.py"), "--clips", str(args.clips), "--out",
                        str(args.work), "--split", "cold-items", "--seed", "0", "--no-progress", "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL)
    vocab = RunVocabulary.from_data(data)
    splits = RunSplits(data, vocab)
    rule = EvalProtocol.for_split("test", load_manifest(data)["split"])
    if rule.candidates != "cold":
        sys.exit(f"{data} is not a cold-items split without warm_holdout; rebuild it (delete {args.work})")
    U, N = splits.num_users, splits.num_items
    results: dict[str, dict] = {"popularity": score(*popularity_vectors(splits["train"], U, N), splits, rule)}
    g = torch.Generator().manual_seed(0)
    randoms = [score(torch.randn(U + 1, 8, generator=g), torch.randn(N, 8, generator=g), splits, rule)
               for _ in range(20)]
    results["random (mean of 20)"] = {k: float(np.mean([r[k] for r in randoms])) for k in randoms[0]}
    oracles = [score(*oracle_vectors(args.work, vocab, g), splits, rule) for _ in range(20)]
    results[ORACLE] = {k: float(np.mean([r[k] for r in oracles])) for k in oracles[0]}

    log("stage 1: the AST learns to name the digit of the clips that are not held out")
    t0 = time.perf_counter()
    ast_folder, stage1 = pretrain_ast(args.work, data)
    stage1_seconds = time.perf_counter() - t0
    runs = variants(ast_folder)
    for i, (name, extra) in enumerate(runs.items()):
        log(f"training: {name}")
        run = args.work / "runs" / f"variant-{i}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        cfg = load_run_config(REPO / "configs" / "tiny.yaml", extra + OVERRIDES)
        state = train(cfg, data, run)
        model, pre, _ = load_model(run / "model")
        full = assemble([embed_items(model, data, pre, vocab.attributes)], N)
        dropped = assemble([embed_items(model, data, pre, vocab.attributes, drop=("audio",))], N)
        users = user_vectors(model)
        results[name] = {**score(users, full, splits, rule), "epochs": state.epoch, "best_step": state.best_step,
                         "train_seconds": round(time.perf_counter() - t0, 1)}
        results[f"{name}, audio dropped at inference"] = score(users, dropped, splits, rule)
        log(f"   ndcg@10 {results[name]['ndcg@10']:.4f}, audio dropped "
            f"{results[f'{name}, audio dropped at inference']['ndcg@10']:.4f}")

    manifest = load_manifest(data)
    best = max((results[n]["ndcg@10"], n) for n in runs)
    report = {
        "benchmark": "audio (FSDD cold clips)",
        "label": LABEL,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu-{torch.get_num_threads()}threads",
        "protocol": {"split": manifest["split"], "rows": {s: v["rows"] for s, v in manifest["interactions"].items()},
                     "sha256": {s: v["sha256"] for s, v in manifest["interactions"].items()},
                     "metric": "test clips ranked among the never-trained clips; train+valid masked; all held-out "
                               "ratings relevant"},
        "overrides": OVERRIDES, "variants": {n: [o.replace(str(ast_folder), "<stage 1 AST>") for o in v] for n, v in runs.items()},
        "stage1": {**stage1, "lr": STAGE1_LR, "batch_size": STAGE1_BATCH, "seconds": round(stage1_seconds, 1)},
        "results": results,
        "goal": {"best": best[1], "audio_ndcg@10": best[0], "popularity_ndcg@10": results["popularity"]["ndcg@10"],
                 "beats_popularity": best[0] > results["popularity"]["ndcg@10"],
                 "oracle_ndcg@10": results[ORACLE]["ndcg@10"],
                 "audio_dropped_ndcg@10": results[f"{best[1]}, audio dropped at inference"]["ndcg@10"]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = args.out or REPO / "benchmarks" / "results" / f"audio_{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{LABEL}\n| model | cold NDCG@10 | cold Recall@10 | cold NDCG@20 |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ndcg@10']:.4f} | {r['recall@10']:.4f} | {r['ndcg@20']:.4f} |")
    log(f"wrote {out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
