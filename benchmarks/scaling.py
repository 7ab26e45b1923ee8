"""Scaling: time and peak memory of shard, embed, index and full-ranking eval against catalogue size.

Synthetic text-only catalogues (short texts, one tag per item) of N items, N/10 users and 20
interactions per user (2N in all), written line by line. A tiny random-init text model
(hidden 32, 2 layers, 32 tokens) is trained for one step (the run folder the later steps need; skipped
from the growth check), then each step runs as its own `python -m mmrec` process, so its peak resident
memory (`ru_maxrss` from `os.wait4`) is that step's alone:

    mmrec shard   items.jsonl + interactions.csv -> DATA (random 90/0/10 split: no valid split, so the
                  one training step validates nothing)
    mmrec embed   every item through the text tower -> EMB
    mmrec index   faiss index over EMB (auto: flat below 100k items, HNSW from there)
    mmrec eval    --no-ablation --emb EMB: every test user ranked against every item, with baselines

The growth exponent between consecutive sizes is log(y2 / y1) / log(N2 / N1): 1 is linear, 2 quadratic,
near 0 a constant. Results: JSON and a log-log PNG beside it.

    python benchmarks/scaling.py [--sizes 10000,100000,1000000] [--eval-max-items N] [--out ...scaling_cpu.json]

Full-ranking eval grows as users x items (quadratically here, users being N/10): at 1M items it is hours on
one core, so `--eval-max-items` leaves it out above a size. The JSON is rewritten after every size, so a long
run that is stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mmrec.shard.synthetic import THEMES

REPO = Path(__file__).resolve().parents[1]
USERS_PER_ITEM = 0.1
INTERACTIONS_PER_USER = 20
CHUNK = 100_000  # rows generated and written at a time: the writer's memory does not grow with N
STEPS = ("shard", "embed", "index", "eval")  # the measured pipeline, in order
TEXT_MODEL = ("model.encoders={text: {name: hf-text, trainable_layers: -1, max_tokens: 32, arch: {hidden_size: 32, "
              "num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}}}")


def write_catalogue(folder: Path, num_items: int, seed: int = 0) -> dict:
    """items.jsonl (text + tag per item, a style per item) and interactions.csv, streamed in chunks."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = [(tags.split(), adjs.split(), nouns.split()) for tags, adjs, nouns in THEMES]
    styles = rng.integers(len(words), size=num_items)
    with open(folder / "items.jsonl", "w", encoding="utf-8") as f:
        for start in range(0, num_items, CHUNK):
            pick = rng.integers(6, size=(min(CHUNK, num_items - start), 4))
            lines = []
            for n, (s, (a1, n1, a2, n2)) in enumerate(zip(styles[start:start + CHUNK], pick), start):
                tags, adjs, nouns = words[s]
                lines.append(json.dumps({"item_id": f"i{n:08d}", "text": f"A {adjs[a1]} {nouns[n1]} and the "
                                         f"{adjs[a2]} {nouns[n2]}.", "attributes": [tags[a1 % len(tags)]]}))
            f.write("\n".join(lines) + "\n")
    num_users = max(1, round(num_items * USERS_PER_ITEM))
    # a skewed popularity, as real catalogues have: a few items draw most interactions
    popularity = rng.lognormal(0.0, 1.2, num_items)
    cdf = np.cumsum(popularity / popularity.sum())
    rows = 0
    with open(folder / "interactions.csv", "w", encoding="utf-8") as f:
        f.write("user_id,item_id,rating,timestamp\n")
        per_chunk = max(1, CHUNK // INTERACTIONS_PER_USER)
        for start in range(0, num_users, per_chunk):
            users = np.repeat(np.arange(start, min(num_users, start + per_chunk)), INTERACTIONS_PER_USER)
            items = np.minimum(np.searchsorted(cdf, rng.random(len(users))), num_items - 1)
            # a user rates their own styles higher: something for the ranking to find
            ratings = np.clip(3 + (styles[items] == users % len(words)) * 2 - rng.integers(2, size=len(users)), 1, 5)
            stamps = 1_577_836_800 + np.arange(rows, rows + len(users))
            f.write("".join(f"u{u:08d},i{i:08d},{r},{t}\n" for u, i, r, t in zip(users, items, ratings, stamps)))
            rows += len(users)
    return {"items": num_items, "users": num_users, "interactions": rows}


def measure(name: str, args: list[str], log: Path) -> dict:
    """Run `python -m mmrec ARGS` alone; its wall time and its own peak resident memory."""
    return _measure(name, [sys.executable, "-m", "mmrec", "-q", *args], log)


def _measure(name: str, cmd: list[str], log: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        # wait4 gives this child's rusage alone; RUSAGE_CHILDREN would be the maximum over every child so far
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"mmrec {name} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # KiB on Linux


def run_size(num_items: int, work: Path, log: Path, with_eval: bool = True) -> dict:
    cat, data, run, emb = work / "catalogue", work / "data", work / "run", work / "emb"
    started = time.perf_counter()
    sizes = write_catalogue(cat, num_items)
    result = {**sizes, "generate_seconds": round(time.perf_counter() - started, 2), "steps": {}}
    steps = result["steps"]
    steps["shard"] = measure("shard", ["shard", "--items", str(cat / "items.jsonl"), "--interactions",
                                       str(cat / "interactions.csv"), "--out", str(data), "--ratios", "0.9,0,0.1",
                                       "--no-progress"], log)
    steps["train_1_step"] = measure("train", [
        "train", "--config", "tiny", "--data", str(data), "--out", str(run), TEXT_MODEL, "data.batch_size=64",
        "data.steps_per_epoch=1", "train.epochs=1", "train.selection_metric=last", "train.early_stopping_patience=0"],
        log)
    steps["embed"] = measure("embed", ["embed", "--run", str(run), "--data", str(data), "--out", str(emb),
                                       "--batch-size", "256"], log)
    steps["index"] = measure("index", ["index", "--emb", str(emb)], log)
    if with_eval:
        steps["eval"] = measure("eval", ["eval", "--run", str(run), "--emb", str(emb), "--out", str(work / "report"),
                                         "--no-ablation", "--k", "10"], log)
        result["test_users"] = json.loads((work / "report" / "report.json").read_text())["ranking"]["users"]
    manifest = json.loads((data / "manifest.json").read_text())
    result["index_kind"] = json.loads((emb / "index" / "index.json").read_text())["kind"]
    result["shards"] = len(manifest["shards"])
    return result


# what each command imports before it touches data
STEP_IMPORTS = {"shard": "mmrec.shard.writer", "train_1_step": "mmrec.training.loop", "embed": "mmrec.embedding",
                "index": "faiss, mmrec.serve.ann", "eval": "mmrec.evaluate.evaluation, mmrec.evaluate.report"}


def startup(log: Path) -> dict:
    """{step: what it pays before it touches data}: the interpreter and its command's imports, alone."""
    return {step: _measure(f"{step} imports", [sys.executable, "-c", f"import mmrec.cli, {modules}"], log)
            for step, modules in STEP_IMPORTS.items()}


def growth(results: list[dict], base: dict | None = None) -> dict:
    """{step: {metric: [exponent between size i and i+1, ...]}}; with `base` ({step: start-up}), of what
    lies above each step's start-up.

    At small sizes the fixed start-up cost hides the growth: 3 s of imports and 600 MB of libraries
    make any step look constant. Above start-up, the exponent is the work's own (None where the
    difference is not positive: noise larger than the work).
    """
    out: dict = {}
    for a, b in zip(results, results[1:]):
        ratio = math.log(b["items"] / a["items"])
        for step in b["steps"]:
            if step not in a["steps"]:
                continue
            for metric in ("seconds", "peak_rss_mb"):
                floor = base[step][metric] if base else 0.0
                y1, y2 = a["steps"][step][metric] - floor, b["steps"][step][metric] - floor
                value = round(math.log(y2 / y1) / ratio, 2) if y1 > 0 and y2 > 0 else None
                out.setdefault(step, {}).setdefault(metric, []).append(value)
    return out


def plot(results: list[dict], base: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    items = [r["items"] for r in results]
    for ax, metric, label in zip(fig.subplots(1, 2), ("seconds", "peak_rss_mb"), ("wall time (s)", "peak RSS (MB)")):
        for step in (*STEPS, "train_1_step"):
            measured = [r for r in results if step in r["steps"]]  # eval may be left out of the largest sizes
            ax.loglog([r["items"] for r in measured], [r["steps"][step][metric] for r in measured], marker="o",
                      label=step, linestyle="--" if step == "train_1_step" else "-")
        ax.axhline(max(b[metric] for b in base.values()), color="black", linewidth=0.8,
                   label="start-up (largest step's imports)")
        if metric == "seconds":  # a slope-1 guide through the first shard point: "linear in items"
            ax.loglog(items, [results[0]["steps"]["shard"]["seconds"] * n / items[0] for n in items], ":",
                      color="grey", label="linear")
        ax.set_xlabel("items")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle("mmrec scaling, text-only tiny model, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes in items, comma-separated")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scaling_cpu.json")
    p.add_argument("--work", type=Path, default=None, help="keep the data here (default: a temporary folder)")
    p.add_argument("--eval-max-items", type=int, default=None,
                   help="run the full-ranking eval only up to this many items (default: every size)")
    args = p.parse_args(argv)
    try:
        sizes = sorted(int(s) for s in args.sizes.split(","))
    except ValueError:
        p.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if sizes[0] < 200:
        p.error("--sizes: at least 200 items, so the smallest catalogue has users with test interactions")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
               "load_average_1m_at_start": round(os.getloadavg()[0], 2)}
    results: list[dict] = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        log = Path(tmp) / "scaling.log"  # every step's output, for the error message when one fails
        base = startup(log)
        for n in sizes:
            print(f"{n} items ...", flush=True)
            with_eval = args.eval_max_items is None or n <= args.eval_max_items
            results.append(run_size(n, Path(tmp) / str(n), log, with_eval))
            print("  " + "  ".join(f"{k} {v['seconds']:.1f} s / {v['peak_rss_mb']:.0f} MB"
                                   for k, v in results[-1]["steps"].items()), flush=True)
            result = write_results(args.out, machine, base, results)  # after every size: a stopped run keeps them
    print(f"{'step':14s}" + "".join(f"{r['items']:>22,d}" for r in results))
    for step in (*STEPS, "train_1_step"):
        print(f"{step:14s}" + "".join(f"{r['steps'][step]['seconds']:>12.1f} s {r['steps'][step]['peak_rss_mb']:>6.0f} MB"
                                      if step in r["steps"] else f"{'not run':>22s}" for r in results))
    print("start-up (imports alone): " + ", ".join(f"{k} {v['seconds']:.1f} s / {v['peak_rss_mb']:.0f} MB"
                                                    for k, v in base.items()))
    for name in ("growth_exponent", "growth_exponent_above_startup"):
        print(f"{name} (seconds, peak_rss_mb):", json.dumps(result[name]))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return result


def write_results(out: Path, machine: dict, base: dict, results: list[dict], **extra) -> dict:
    """The JSON (and its PNG) of the sizes measured so far."""
    result = {"benchmark": "scaling", "machine": machine, "model": TEXT_MODEL, "users_per_item": USERS_PER_ITEM,
              "interactions_per_user": INTERACTIONS_PER_USER, "startup": base, "sizes": results,
              "growth_exponent": growth(results), "growth_exponent_above_startup": growth(results, base), **extra}
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(results, base, out.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
