"""Write benchmarks/README.md from benchmarks/results/*.json, so that no table can drift from its JSON.

    python benchmarks/tables.py            # rewrite benchmarks/README.md
    python benchmarks/tables.py --check    # exit 1 if benchmarks/README.md is not what this would write

Every measured number in the generated file is read from a results JSON here; the fixed text of each
section says what the benchmark does and how to read it, and measures nothing. Each table states the machine the JSON records,
the protocol that made the numbers and the command that re-measures them. A results file no section knows
is listed at the end, so a new benchmark is never silently left out. Standard library only: the check runs
without torch.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
PY = ".venv/bin/python"


# ------------------------------------------------------------------------------------------ formatting


def f4(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def pct(x, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def change(x, base) -> str:
    return "-" if x is None or not base else f"{100 * (x - base) / base:+.1f}%"


def count(x) -> str:
    return "-" if x is None else f"{int(x):,}"


def secs(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f} s" if x >= 100 else f"{x:.1f} s" if x >= 1 else f"{x:.2f} s"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def bold_best(rows: list[list[str]], columns: list[int], lower_is_better: set[int] = frozenset()) -> None:
    """Bold the best value of each column (in place); ties are all bold."""
    for c in columns:
        values = [float(r[c]) for r in rows if r[c] not in ("-", "")]
        if len(values) < 2:
            continue
        best = min(values) if c in lower_is_better else max(values)
        for r in rows:
            if r[c] not in ("-", "") and float(r[c]) == best:
                r[c] = f"**{r[c]}**"


def params(d: dict | None) -> str:
    return "-" if not d else ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def code_list(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items) if items else "none"


# --------------------------------------------------------------------------------- machine, protocol


def machine(d: dict, file: str) -> str:
    """What the JSON records about where it ran (device field, machine block, thread counts)."""
    m = d.get("machine") or {}
    device = d.get("device") or re.sub(r".*_", "", file.removesuffix(".json"))  # files are named by device
    threads = None
    if match := re.fullmatch(r"cpu-(\d+)threads", device):
        device, threads = "cpu", int(match.group(1))
    threads = threads or d.get("threads") or m.get("torch_threads") or m.get("omp_threads")
    if device == "cpu":
        parts = [f"CPU ({m['cpu_model']})" if m.get("cpu_model") else "CPU"]
    else:
        parts = [f"GPU: {device}"]
    if m.get("cpus"):
        parts.append(f"{m['cpus']} cores")
    if m.get("memory_gb"):
        parts.append(f"{m['memory_gb']} GB RAM")
    if threads:
        parts.append(f"{threads} thread{'s' if int(threads) > 1 else ''}")
    text = ", ".join(parts)
    if m.get("load_average_1m_at_start") is not None:
        text += f"; load average {m['load_average_1m_at_start']} at start"
    if m.get("other_load"):
        text += f"; {m['other_load']}"
    software = [f"{name} {m[key]}" for name, key in (("Python", "python"), ("torch", "torch"), ("faiss", "faiss"))
                if m.get(key)]
    if software:
        text += "; " + ", ".join(software)
    if not m and "device" not in d and "threads" not in d:
        text += " (from the file name: the JSON records nothing more)"
    return text


def on(d: dict, file: str) -> str:
    """A heading's suffix naming the device, for results that are not from a CPU."""
    where = machine(d, file)
    return "" if where.startswith("CPU") else f" ({where.split(',')[0].removeprefix('GPU: ')})"


def sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


def metric_name(key: str) -> str:
    return key.replace("recall", "Recall").replace("ndcg", "NDCG").replace("rmse", "RMSE")


def split_text(split: dict) -> str:
    """A manifest's split block in words: protocol, its parameters, seed."""
    p = split["protocol"]
    words = [f"`{p}`"]
    if "ratios" in split:
        words.append("/".join(f"{r:g}" for r in split["ratios"]) + (" per user" if p == "random" else " overall"))
    if split.get("cold_fraction"):
        words.append(f"{split['cold_fraction']:g} of the {'users' if p == 'cold-users' else 'rated items'} held out")
    if split.get("warm_holdout"):
        words.append(f"warm holdout {split['warm_holdout']:g}")
    if "given" in split:
        words.append(f"{split['given']} interactions given (first by {split.get('history_order', 'time')})")
    return ", ".join(words) + f", seed {split['seed']}"


def rows_text(rows: dict) -> str:
    return ", ".join(f"{name} {count(n)}" for name, n in rows.items()) + " rows"


def cutoffs(metrics: dict) -> str:
    ks = sorted({int(k.split("@")[1]) for k in metrics if "@" in k and k.split("@")[1].isdigit()})
    return ", ".join(f"@{k}" for k in ks)


def meta(file: str, d: dict, protocol: str | None, command: str) -> list[str]:
    lines = [f"- Machine: {machine(d, file)}."]
    if protocol:
        lines.append(f"- Protocol: {protocol}")
    return lines + [f"- Re-measure: `{command}` -> [`results/{file}`](results/{file})", ""]


# ------------------------------------------------------------------------------------- the sections


def movielens(file: str, d: dict) -> list[str]:
    out = [f"### MovieLens latest-small{on(d, file)}", "",
           f"{d['data']}. Text is title, genres and user tags through a frozen all-MiniLM-L6-v2; image is the "
           "poster through a frozen ImageNet EfficientNet-Lite0 (both from local wheels, read through the feature "
           "cache). Every model, ours and the baselines, is trained and scored on the same split files in one run, "
           "each protocol from its named config; hyperparameters were chosen on valid splits only. Rows with a "
           "`valid` number are trained mmrec models (ID-only is mmrec with no encoders: matrix factorisation), "
           "selected on that number; ALS and EASE name the hyperparameters picked on valid.", ""]
    notes = d.get("protocol_notes", {})
    configs = d.get("configs", {})
    for proto, results in d["results"].items():
        split = d["protocols"][proto]
        note = notes.get(proto) or next((v for k, v in notes.items() if proto in k.split(" / ")), "")
        config = configs.get(proto.removesuffix("-2k"))
        out += [f"**`{proto}`**", ""]
        protocol = sentence(f"{split_text(split['split'])}; {rows_text(split['rows'])}; {note}")
        if config:
            protocol += f" Config `{config}`."
        out += meta(file, d, protocol, f"{PY} benchmarks/movielens.py --protocols {proto}")
        if any("rmse" in r for r in results.values()):
            header = ["model", "RMSE", "MAE", "test rows", "epochs"]
            rows = [[name, f4(r.get("rmse")), f4(r.get("mae")), count(r.get("count")), str(r.get("epochs", "-"))]
                    for name, r in results.items()]
            bold_best(rows, [1, 2], lower_is_better={1, 2})
        else:
            metrics = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
            valid = next((k for r in results.values() for k in r if k.startswith("valid_")), None)
            header = ["model", *[metric_name(m) for m in metrics],
                      "users", "candidates", f"valid {metric_name(valid.removeprefix('valid_'))}" if valid else "valid",
                      "chosen on valid"]
            rows = [[name, *[f4(r.get(m)) for m in metrics], count(r.get("users")), count(r.get("candidates")),
                     f4(r.get(valid)) if valid else "-", params(r.get("chosen_on_valid"))]
                    for name, r in results.items()]
            bold_best(rows, [1, 2, 3, 4])
        out += table(header, rows)
    return out


def new_users(file: str, d: dict) -> list[str]:
    extra = [o for o in d.get("history_overrides", []) if o != "model.user_tower=history"]
    title = "History user tower" + (f", with {code_list(extra)}" if extra else "")
    out = [f"### {title}{on(d, file)}", "",
           f"The `{Path(d['config']).stem}` config with {code_list(d.get('history_overrides', []))}: the user's "
           "vector computed from their latest interactions, so users who arrive after training are served "
           "without retraining. Baselines serve the same users from the same histories.", ""]
    cold = d.get("cold_users") or {}
    if cold:
        split = d["protocols"]["cold-users"]
        some = next(iter(next(iter(cold.values())).values()))
        protocol = (f"{split_text(split['split'])}; {rows_text(split['rows'])}; "
                    f"{sentence(d['protocol_notes']['cold-users'])} "
                    f"Test users {count(some['users'])}, ranked among {count(some['candidates'])} items; "
                    f"cut-offs {cutoffs(some)}.")
        out += ["**Cold users** (held out of training, served from their given history)", ""]
        out += meta(file, d, protocol, new_users_command(file, extra, "cold"))
        givens = [g for g in next(iter(cold.values())) if g.startswith("given ")]
        header = ["model", *[f"NDCG@20, {g}" for g in givens], *[f"Recall@20, {g}" for g in givens],
                  "chosen on valid"]
        rows = [[name, *[f4(r[g]["ndcg@20"]) for g in givens], *[f4(r[g]["recall@20"]) for g in givens],
                 params(r.get("chosen_on_valid"))] for name, r in cold.items()]
        bold_best(rows, list(range(1, 1 + 2 * len(givens))))
        out += table(header, rows)
    warm = d.get("warm_users") or {}
    if warm:
        split = d["protocols"]["ranking"]
        first = next(iter(warm.values()))
        protocol = (f"{split_text(split['split'])}; {rows_text(split['rows'])}; "
                    f"{sentence(d['protocol_notes']['ranking'])} "
                    f"{count(first['users'])} users ranked among {count(first['candidates'])} items; cut-offs "
                    f"{cutoffs(first)}.")
        out += ["**Warm users** (the ID tower against the history tower, same config otherwise)", ""]
        out += meta(file, d, protocol, new_users_command(file, extra, "warm"))
        buckets = list(first.get("by_history_length", {}))
        header = ["model", "Recall@20", "NDCG@20",
                  *[f"Recall@20, {b} training interactions ({count(first['by_history_length'][b]['users'])} users)"
                    for b in buckets], "overrides"]
        rows = [[name, f4(r["recall@20"]), f4(r["ndcg@20"]),
                 *[f4(r["by_history_length"][b]["recall@20"]) for b in buckets], code_list(r.get("overrides", []))]
                for name, r in warm.items()]
        bold_best(rows, list(range(1, 3 + len(buckets))))
        out += table(header, rows)
    speed = d.get("update_speed")
    if speed:
        s = speed["seconds"]
        out += [f"Updating the vectors of {count(speed['users'])} users from {speed['history_length']}-interaction "
                f"histories (the `mmrec embed-users` path, {speed['threads']} thread): {min(s):.2f}-{max(s):.2f} s "
                f"over {len(s)} runs.", ""]
    return out


def new_users_command(file: str, extra: list[str], part: str) -> str:
    out = "" if file == "new_users_cpu.json" else f" --out benchmarks/results/{file}"
    return f"{PY} benchmarks/new_users.py --part {part}{out}" + "".join(f" {o}" for o in extra)


def audio(file: str, d: dict) -> list[str]:
    res = d["results"]
    split = d["protocol"]
    some = next(iter(res.values()))
    out = [f"### Audio: spoken-digit clips, SEMI-SYNTHETIC users{on(d, file)}", "",
           f"{d['label']}. A small AST is trained from random weights by the recommender alone, or first trained to "
           "name the digit of the warm (not held-out) clips in a plain supervised loop, standing in for a pretrained "
           "AST, and loaded through `pretrained:`. The made-up users also rate digits they dislike, so even the "
           "generator's own liked digits (the oracle row) score low: it is the ceiling of this protocol. The learned "
           "rows move between runs; with this few test users, small differences are noise.", ""]
    protocol = (f"{split_text(split['split'])}; {rows_text(split['rows'])}; {split['metric']}; "
                f"{count(some['users'])} test users, {count(some['candidates'])} candidate clips; cut-offs "
                f"{cutoffs(some)}. Overrides of every variant: {code_list(d['overrides'])}.")
    out += meta(file, d, protocol, f"{PY} benchmarks/audio.py")
    metrics = ["ndcg@10", "recall@10", "ndcg@20", "recall@20"]
    rows = [[name, *[f4(r[m]) for m in metrics]] for name, r in res.items()]
    out += table(["model (cold clips)", "NDCG@10", "Recall@10", "NDCG@20", "Recall@20"], rows)
    learned = {n: r for n, r in res.items() if "train_seconds" in r}
    pop = res.get("popularity")
    oracle = next((r for n, r in res.items() if n.startswith("oracle")), None)
    if learned and pop and oracle:
        name, best = max(learned.items(), key=lambda kv: kv[1]["ndcg@10"])
        out += [f"The best learned row, {name}, reaches {best['ndcg@10'] / pop['ndcg@10']:.1f}x popularity's "
                f"NDCG@10 and {pct(best['ndcg@10'] / oracle['ndcg@10'], 0)} of the oracle's."]
        dropped = [r for n, r in res.items() if n.endswith("audio dropped at inference")]
        if dropped and all(r["ndcg@10"] == pop["ndcg@10"] for r in dropped):
            out += ["With the audio dropped at inference every model ranks exactly as popularity does: the audio "
                    "path carries all of it."]
        out += [""]
    return out


def attribute_task(file: str, d: dict) -> list[str]:
    out = [f"### The attribute task and the fusion read-out{on(d, file)}", "",
           "The same small AST, from random weights, learns the FSDD clips' attributes (`digit-D`, `speaker-S`) "
           "either in a plain supervised loop (a linear head on its pooled output) or through `mmrec train` with the "
           "attribute task as the only loss; a linear probe then names the digit of held-out clips, whose attributes "
           "neither saw. Each variant changes one thing. An `[ITEM]` read-out (`model.fusion.readout=item_token`) "
           "lets content reach the item state only through attention weights initialised near zero, so the "
           "encoders get almost no signal for a long time; the modality read-out, the default, passes each "
           "modality's state straight through.", ""]
    protocol = (f"{count(d['held_out_clips'])} held-out clips of {count(d['clips'])}; probe: logistic regression on "
                "the training clips' vectors, accuracy on the held-out clips' digit. Overrides of every variant: "
                f"{code_list(d['common_overrides'])}.")
    out += meta(file, d, protocol, f"{PY} benchmarks/attribute_task.py")
    rows = []
    for name, r in d["results"].items():
        rows.append([re.sub(r"^(before|now): ", "", name), code_list(r.get("overrides", [])),
                     pct(r.get("pooled_probe_accuracy")), pct(r.get("fused_probe_accuracy")),
                     r.get("attributes_kept", "-"), secs(r.get("seconds"))])
    out += table(["how the AST was trained", "overrides", "probe accuracy, pooled output", "fused item state",
                  "attributes", "time"], rows)
    return out


def diversity(file: str, d: dict) -> list[str]:
    test, valid = d["test"], d["valid"]
    chosen = d.get("chosen_on_valid", {})
    out = [f"### Diversity re-ranking (MMR) on MovieLens{on(d, file)}", "",
           "Each user's top pool is re-ranked by maximal marginal relevance (`mmrec.serve.rerank`, as `mmrec eval "
           "--diversify` does) at each LAMBDA; LAMBDA is chosen on the valid split and read on test. The model is "
           f"the `{Path(d['config']).stem}` config with {' + '.join(d['modalities'])}.", ""]
    # the protocol in words, not the JSON's notes, which also speak of the goal the run was made for
    protocol = (f"{split_text(d['protocol']['split'])}; {rows_text(d['protocol']['rows'])}; full ranking, train "
                "(+ valid on test) masked; each user's top pool re-ranked by MMR; LAMBDA chosen on valid, read on "
                "test. "
                f"{count(test['users'])} users, pool {test['pool']}, per-attribute cap "
                f"{test['max_per_attribute'] or 'none'}. Method: {test['method']}.")
    out += meta(file, d, protocol, f"{PY} benchmarks/diversity.py [--run RUN]")
    base = test["rows"][0]
    rows = [[f"{r['lambda']:g}" + (" (chosen on valid)" if r["lambda"] == chosen.get("lambda") else ""),
             f4(r["ndcg@10"]), change(r["ndcg@10"], base["ndcg@10"]), f4(r["recall@10"]), f4(r["diversity@10"]),
             change(r["diversity@10"], base["diversity@10"]), f4(r["coverage@10"]), f"{r['avg_popularity@10']:.1f}"]
            for r in test["rows"]]
    out += table(["LAMBDA", "NDCG@10", "Δ NDCG@10", "Recall@10", "diversity@10", "Δ diversity@10", "coverage@10",
                  "avg popularity@10"], rows)
    if chosen:
        out += [f"Rule for choosing LAMBDA on valid ({count(valid['users'])} users): {chosen['rule']}. The valid "
                "curve is in the JSON.", ""]
    return out


def explain_faithfulness(file: str, d: dict, everything: dict[str, dict]) -> list[str]:
    out = [f"### Explanation faithfulness on MovieLens{on(d, file)}", "",
           "For a seeded sample of users and their top-10, the top cited history item and a random other one are "
           "each removed and the score recomputed on its own path (history tower: the user vector rebuilt from the "
           "history without the item; ID tower: the user vector re-fitted by ridge regression). The share is how "
           "often the cited item's removal lowers the score more. For the history tower the cited item is chosen "
           "by that same leave-one-out, so the share says the printed explanation is the served model's own; for "
           "the ID tower it says how often the cosine citation agrees with a refit "
           "([docs/design.md](../docs/design.md#explanations)).", ""]
    checks = [r["explanation_faithfulness"] for r in d["runs"].values()]
    first = checks[0]
    protocol = (f"test split of each run's dataset; a sample of up to {max(c['sample'] for c in checks)} users "
                f"(seed {first['seed']}), their "
                f"top-{first['k']} under the report's masking and candidates. Run folders are those written by "
                "`benchmarks/movielens.py` and `benchmarks/new_users.py` under /tmp/mmrec-movielens/runs; the last "
                "column names the results files whose NDCG@10 equals the run's, which identifies the run.")
    out += meta(file, d, protocol, f"{PY} benchmarks/explain_faithfulness.py {' '.join(d['runs'])}")
    rows = []
    for name, r in d["runs"].items():
        e = r["explanation_faithfulness"]
        same = [f for f, other in everything.items() if f != file and _has_value(other, "ndcg@10", r["ndcg@10"])]
        rows.append([f"`{name}`", r["user_tower"], count(e["users"]), f"{count(e['explained'])} of "
                     f"{count(e['users'] * e['k'])}", pct(e["share"]), f"{e['mean_drop_top']:.4f} / "
                     f"{e['mean_drop_random']:.4f}", f4(r["ndcg@10"]), ", ".join(f"`{f}`" for f in same) or "-"])
    out += table(["run", "user tower", "users", "explained recommendations", "cited removal lowers the score more",
                  "mean fall: cited / random", "test NDCG@10", "same NDCG@10 in"], rows)
    return out


def _has_value(node, key: str, value: float) -> bool:
    if isinstance(node, dict):
        return any((k == key and v == value) or _has_value(v, key, value) for k, v in node.items())
    if isinstance(node, list):
        return any(_has_value(v, key, value) for v in node)
    return False


def shard_throughput(file: str, d: dict) -> list[str]:
    out = [f"### `mmrec shard`{on(d, file)}", "",
           "Validating every line and medium, splitting and writing the shards, from the catalogue files to a "
           "finished dataset folder.", ""]
    out += meta(file, d, "`random` split, seed 0; each catalogue sharded with the options shown.",
                f"{PY} benchmarks/shard_throughput.py")
    rows = [[r["catalogue"], ", ".join(f"{k} {v}" for k, v in r["options"].items()), count(r["items_written"]),
             count(r["counts"]["interaction_rows"]), f"{r['items_per_s']:,.0f}", secs(r["seconds"]), str(r["shards"]),
             f"{r['shard_bytes'] / 1e6:.1f} MB", count(r["counts"]["items_quarantined"])] for r in d["runs"]]
    out += table(["catalogue", "options", "items", "interactions", "items/s", "time", "shards", "shard bytes",
                  "items quarantined"], rows)
    return out


def model_forward(file: str, d: dict) -> list[str]:
    out = [f"### Item-tower forward{on(d, file)}", "",
           "Encoders, fusion and heads on synthetic tri-modal items (missing modalities included), preprocessing "
           "excluded (it runs in DataLoader workers).", ""]
    out += meta(file, d, f"median and minimum over {d['runs'][0]['batches_timed']} timed batches.",
                f"{PY} benchmarks/model_forward.py")
    rows = [[r["config"], count(r["parameters"]), str(r["batch_size"]), f"{r['ms_per_item_median']:.2f}",
             f"{r['ms_per_item_min']:.2f}"] for r in d["runs"]]
    out += table(["configuration", "parameters", "batch", "ms/item (median)", "ms/item (min)"], rows)
    return out


def train_throughput(file: str, d: dict) -> list[str]:
    out = [f"### Training throughput{on(d, file)}", "",
           "Items per second through the whole training step (loading, encoders, fusion, heads, optimizer), against "
           "the same encoders' own forward and backward on batches already on the device (frozen: forward only). "
           f"Data: {'; '.join(f'{k}: {v}' for k, v in d['data'].items())}.", ""]
    out += meta(file, d, f"{d['runs'][0]['steps_timed']} timed steps per configuration.",
                f"{PY} benchmarks/train_throughput.py")
    rows = [[r["config"], code_list(r["overrides"]), "yes" if r["feature_cache"] else "no", str(r["batch_size"]),
             f"{r['train_items_per_s']:,.1f}", f"{r['encoders_fwd_bwd_items_per_s']:,.1f}",
             f"{r['ratio_to_encoders']:.2f}", r.get("mixed_precision", "-"), f"{r['peak_memory_mb']:,.0f} MB"]
            for r in d["runs"]]
    out += table(["configuration", "overrides", "feature cache", "batch", "train items/s", "encoders items/s",
                  "ratio", "mixed precision", "peak memory"], rows)
    return out


def embed_throughput(file: str, d: dict) -> list[str]:
    input_only = d.get("encoders_items_per_s") is None
    both = ("Each is measured twice: with the last feature steps (audio fbank; image scaling and normalisation) in "
            "the DataLoader workers, and batched in the encoders (`features_on_device`).")
    if input_only:
        intro = ("The input pipeline alone (`--input-only`: no encoder runs): the CPU time each item costs before a "
                 f"GPU's encoders can take it. {both}")
    else:
        intro = ("Measured on the same shards, model and batch size, so the ratios say where the time goes: the "
                 "encoders alone on preprocessed batches, the loader alone (read, decode, preprocess; no model), "
                 "`embed_items` (the streaming core of `mmrec embed`) and `mmrec embed` end to end (also excluding "
                 f"the loader's first fill, which a large catalogue does not pay). {both} Both ratios are against the "
                 "first variant's encoders figure, which leaves those feature steps out.")
    out = [f"### Embedding: `{d['config']}`, {d['data']}{on(d, file)}", "", intro, ""]
    command = f"{PY} benchmarks/embed_throughput.py --config {d['config']}"
    command += " --media full --input-only" if input_only else ""
    out += meta(file, d, f"batch {d['batch_size']}, {d['workers']} workers, bf16 autocast "
                f"{'on' if d.get('bf16_autocast') else 'off'}.", command)
    runs = d["runs"]
    if not input_only:
        def value(r, key):
            return f"{r[key]:,.1f}" if r.get(key) is not None else "-"

        rows = [[name, value(r, "encoders_items_per_s"), value(r, "loader_items_per_s"),
                 value(r, "embed_items_items_per_s"), value(r, "end_to_end_items_per_s"),
                 value(r, "end_to_end_excluding_fill_items_per_s"), f"{r['ratio_to_encoders']:.3f}",
                 f"{r['ratio_to_encoders_excluding_fill']:.3f}", r.get("bottleneck", "-")] for name, r in runs.items()]
        out += table(["last feature steps", "encoders items/s", "loader items/s", "embed_items items/s",
                      "mmrec embed items/s", "... excluding first fill", "ratio to encoders",
                      "... excluding first fill", "bottleneck"], rows)
    profiles = {name: r["input_profile"] for name, r in runs.items() if r.get("input_profile")}
    if profiles:
        names = list(profiles)
        stages = list(dict.fromkeys(s for p in profiles.values() for s in p["ms_per_item"]))
        out += [f"Input pipeline, milliseconds of one CPU core per item ({profiles[names[0]]['items']} items):", ""]
        rows = [[stage, *[f"{profiles[n]['ms_per_item'].get(stage, 0):.2f}" for n in names]] for stage in stages]
        rows.append(["**total**", *[f"**{profiles[n]['total_ms_per_item']:.2f}**" for n in names]])
        rows.append(["items/s per core", *[f"{profiles[n]['items_per_s_per_core']:,.0f}" for n in names]])
        if all(runs[n].get("loader_items_per_s") for n in names):
            rows.append([f"loader items/s, {d['workers']} workers", *[f"{runs[n]['loader_items_per_s']:,.1f}"
                                                                     for n in names]])
        if all("cores_needed_at_encoder_speed" in profiles[n] for n in names):
            rows.append(["cores to keep up with the encoders",
                         *[f"{profiles[n]['cores_needed_at_encoder_speed']:.1f}" for n in names]])
        out += table(["stage", *[f"last feature steps {n.removeprefix('features ')}" for n in names]], rows)
        if len(names) == 2:
            workers, device = (profiles[n] for n in names)
            stage, ms = max(device["ms_per_item"].items(), key=lambda kv: kv[1])
            out += [f"With the last feature steps {names[1].removeprefix('features ')}, an item costs "
                    f"{pct(device['total_ms_per_item'] / workers['total_ms_per_item'], 0)} of the CPU time it costs "
                    f"with them {names[0].removeprefix('features ')}; the costliest stage left is {stage} "
                    f"({ms:.2f} ms).", ""]
    if d.get("profile") and d["profile"].get("table"):
        table_file = Path(d["profile"]["table"]).name
        out += [f"`torch.profiler` operator table of the `embed_items` pass: [`results/{table_file}`]"
                f"(results/{table_file}).", ""]
    return out


def eval_speed(file: str, d: dict) -> list[str]:
    out = [f"### Full-ranking evaluation speed{on(d, file)}", "",
           "Every user scored against every item and the top-K kept, with the engine's `top_k` (deterministic "
           "ties, chunked over users), on random vectors in the exported shape.", ""]
    protocol = (f"{count(d['users'])} users x {count(d['items'])} items, {d['dim']} columns, top-{d['k']}, "
                f"{d['excluded_per_user']} masked items per user, chunks of {count(d['chunk_size'])} users, "
                f"{d['score_block_mb']:g} MB score block.")
    out += meta(file, d, protocol, f"{PY} benchmarks/eval_speed.py")
    out += table(["time", "pairs scored/s", "users/s", "peak memory", "memory before ranking"],
                 [[secs(d["seconds"]), f"{d['pairs_scored_per_s']:.2e}", f"{d['users_per_s']:,.0f}",
                   f"{d['peak_rss_mb']:,.0f} MB", f"{d['rss_before_ranking_mb']:,.0f} MB"]])
    return out


def rerank_speed(file: str, d: dict) -> list[str]:
    s = d["setup"]
    out = [f"### MMR re-ranking speed{on(d, file)}", "",
           "`mmrec.serve.rerank` on each user's exact top pool from random vectors; the time depends only on "
           "users x pool x width x k, not on the values.", ""]
    protocol = (f"{count(s['users'])} users, {count(s['items'])} items, E = {s['dim']}, pool {s['pool']} -> "
                f"k {s['k']}, LAMBDA {s['lambda']}; the cap: {s['attributes']} attributes, at most "
                f"{s['max_per_attribute']} items sharing one.")
    out += meta(file, d, protocol, f"OMP_NUM_THREADS=1 {PY} benchmarks/rerank_speed.py")
    label = {"mmr_lambda_0": "MMR at LAMBDA 0", f"mmr_lambda_{s['lambda']}": f"MMR at LAMBDA {s['lambda']}",
             f"mmr_lambda_{s['lambda']}_max_per_attribute_{s['max_per_attribute']}":
                 f"MMR at LAMBDA {s['lambda']}, per-attribute cap {s['max_per_attribute']}",
             "full_ranking_top_pool": "for scale: the full ranking that made the pools"}
    rows = [[label.get(k, k), f"{min(v):.2f}-{max(v):.2f} s" if len(v) > 1 else secs(v[0]), str(len(v))]
            for k, v in d["seconds"].items()]
    out += table(["step", "time", "runs"], rows)
    return out


def ann(file: str, d: dict) -> list[str]:
    out = [f"### Nearest-neighbour indexes (`mmrec index`){on(d, file)}", "",
           "Synthetic clustered vectors in the exported shape, searched as `mmrec recommend` searches: over-fetch, "
           "drop each user's excluded items, re-score exactly. Recall is against exact search. Single-query "
           "latency is one user at a time; batch is all users in one call at k = 100. \"Exact fallbacks\" counts "
           "queries the index returned too few items for, answered exactly.", ""]
    protocol = (f"{count(d['queries'])} users per size ({count(d['single_queries'])} timed one at a time), "
                f"{d['excluded_per_query']} excluded items each, {d['dim']} columns, score: {d['score']}.")
    out += meta(file, d, protocol, f"{PY} benchmarks/ann.py --threads {d['machine'].get('faiss_threads', 1)}")
    rows = []
    for size in d["sizes"]:
        for kind in size["kinds"]:
            searches = kind.get("search") or [kind]
            for s in searches:
                setting = ", ".join(f"{k} {s[k]}" for k in ("ef_search", "nprobe") if k in s)
                auto = " (auto)" if kind["kind"] == size["auto_kind"] else ""
                rows.append([count(size["items"]), kind["kind"] + auto,
                             setting or "-", secs(kind.get("build_seconds")),
                             f"{kind['index_mb']:,.1f} MB" if "index_mb" in kind else "-",
                             f"{s['recall@10']:.4f}", f"{s['recall@100']:.4f}",
                             f"{s['single_ms_p50']:.2f} / {s['single_ms_p95']:.2f} ms",
                             f"{s['batch_ms_per_query']:.2f} ms",
                             str(s.get("exact_fallbacks@100", "-"))])
    out += table(["items", "kind", "setting", "build", "index", "recall@10", "recall@100", "one query p50 / p95",
                  "batch, per query", "exact fallbacks@100"], rows)
    return out


def scaling(file: str, d: dict) -> list[str]:
    names = {"shard": "`mmrec shard`", "embed": "`mmrec embed`", "index": "`mmrec index` (auto kind)",
             "eval": "`mmrec eval --no-ablation` (N/10 users)", "train_1_step": "`mmrec train` (one step)"}
    sizes = d["sizes"]
    out = [f"### Scaling with catalogue size{on(d, file)}", "",
           "Synthetic text-only catalogues, the tiny text tower, each step a process of its own so that its time "
           "and peak memory are its own. The growth exponent is log(y2 / y1) / log(N2 / N1) of what lies above "
           "each step's start-up (1: linear, 2: quadratic); the JSON also has it for the raw figures. Full-ranking "
           "eval grows as users x items, so quadratically here, where users grow with items; "
           "[docs/scaling.md](../docs/scaling.md) shares it out over processes and nodes.", ""]
    protocol = (f"N items, {d['users_per_item']:g} N users, {d['interactions_per_user']} interactions per user; model "
                f"`{d['model']}`.")
    command = f"{PY} benchmarks/scaling.py --sizes {','.join(str(s['items']) for s in sizes)}"
    out += meta(file, d, protocol, command)
    stopped = d.get("stopped") or {}
    steps = list(d["startup"])
    steps = [s for s in ("shard", "embed", "index", "eval", "train_1_step") if s in steps] + \
            [s for s in steps if s not in names]
    rows = []
    for step in steps:
        cells = [names.get(step, step)]
        for size in sizes:
            m = size["steps"].get(step)
            if m:
                cells.append(f"{secs(m['seconds'])}, {m['peak_rss_mb']:,.0f} MB")
            elif stopped.get("items") == size["items"] and stopped.get("step") == step:
                cells.append(f"stopped after {stopped['stopped_after_seconds'] / 60:.0f} min, "
                             f"{stopped['peak_rss_mb_so_far']:,.0f} MB peak so far")
            else:
                cells.append("-")
        start = d["startup"][step]
        cells.append(f"{secs(start['seconds'])}, {start['peak_rss_mb']:,.0f} MB")
        growth = d["growth_exponent_above_startup"].get(step, {})
        time_growth = []
        for n, g in enumerate(growth.get("seconds", [])):
            if g is None and step == "index":
                time_growth.append(f"({sizes[n]['index_kind']} -> {sizes[n + 1]['index_kind']})")
            else:
                time_growth.append("-" if g is None else f"{g:.2f}")
        cells.append(", ".join(time_growth) or "-")
        cells.append(", ".join("-" if g is None else f"{g:.2f}" for g in growth.get("peak_rss_mb", [])) or "-")
        rows.append(cells)
    header = ["step", *[f"{count(s['items'])} items" for s in sizes], "start-up alone",
              "growth exponent, time", "growth exponent, memory"]
    out += table(header, rows)
    if stopped:  # what it reached is measured; the JSON's "why" is an estimate, left out
        out += [f"The {count(stopped['items'])}-item `{stopped['step']}` was stopped after "
                f"{stopped['stopped_after_seconds'] / 60:.0f} min, in {stopped['reached']}.", ""]
    png = file.removesuffix(".json") + ".png"
    if (RESULTS / png).is_file():
        out += [f"Log-log plot: [`results/{png}`](results/{png}).", ""]
    return out


# ------------------------------------------------------------------------------------------ assembly

# (file-name prefix, section heading, renderer); a renderer gets (file name, its JSON)
QUALITY = [("movielens_", movielens), ("new_users_", new_users), ("audio_", audio), ("attribute_task_", attribute_task),
           ("diversity_", diversity), ("explain_faithfulness_", explain_faithfulness)]
PERFORMANCE = [("shard_throughput_", shard_throughput), ("model_forward_", model_forward),
               ("train_throughput_", train_throughput), ("embed_throughput_", embed_throughput),
               ("eval_speed_", eval_speed), ("rerank_speed_", rerank_speed), ("ann_", ann), ("scaling_", scaling)]

HEADER = """\
<!-- Generated by benchmarks/tables.py from benchmarks/results/*.json: edit the generator, not this file. -->
# Benchmarks

Every table below is generated from the JSON a benchmark script wrote under [`results/`](results/)
(`python benchmarks/tables.py`; `python benchmarks/tables.py --check` fails when this file and the JSON
disagree). Each table names the machine the JSON records, the protocol that produced its numbers and
the command that measures them again. Numbers are comparable only within one protocol: a split, its
seed, its candidate set and its cut-offs.

The quality benchmarks read `../shared/data` (MovieLens latest-small with posters, the Free Spoken Digit
clips; see its SOURCES.md); the throughput benchmarks write their own synthetic data. Scripts that
train take minutes to an hour on a CPU.
"""

GPU = """\
## On a GPU

`benchmarks/gpu/suite.sh` runs every GPU benchmark in one go on one GPU machine: it writes a full-size
synthetic catalogue (320 px JPEGs, 10.24 s FLAC clips), then `embed_throughput.py` (`configs/base.yaml`
in bf16: encoders alone, loader alone, `embed_items`, `mmrec embed`, with the last feature steps in the
workers and on the GPU, plus a `torch.profiler` table), `train_throughput.py` (frozen encoders with the
feature cache, the top 2 layers trainable, everything trainable) and `eval_speed.py --device cuda`. The
JSON files it writes are named by GPU and appear in the sections above once committed.

```bash
bash benchmarks/gpu/fetch_wheels.sh    # where a package registry is reachable: wheels into .whl/
bash benchmarks/gpu/suite.sh           # on the GPU machine; installs .whl/ only if packages are missing
SMOKE=1 PYTHON=.venv/bin/python ITEMS=96 bash benchmarks/gpu/suite.sh /tmp/smoke   # its plumbing, on a CPU
```
"""


def load_results() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(RESULTS.glob("*.json"))}


def render() -> str:
    everything = load_results()
    used: set[str] = set()
    lines = [HEADER]

    def section(title: str, renderers) -> None:
        lines.extend([f"## {title}", ""])
        for prefix, fn in renderers:
            files = [f for f in everything if f.startswith(prefix)]
            if not files:
                lines.extend([f"No `results/{prefix}*.json` yet: run `benchmarks/{prefix.rstrip('_')}.py`.", ""])
            for f in files:
                used.add(f)
                extra = (everything,) if fn is explain_faithfulness else ()
                lines.extend(fn(f, everything[f], *extra))

    section("Quality on real data", QUALITY)
    section("Performance", PERFORMANCE)
    gpus = [f for f, d in everything.items() if not machine(d, f).startswith("CPU")]
    lines.append(GPU)
    lines.append("GPU results recorded: " + (", ".join(f"[`{f}`](results/{f})" for f in gpus) if gpus else "none yet.")
                 + "\n")
    others = [f for f in everything if f not in used]
    if others:
        lines.extend(["## Other results", "", "Files no section of `tables.py` reads yet: "
                      + ", ".join(f"[`{f}`](results/{f})" for f in others) + ".", ""])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if benchmarks/README.md differs from the JSON's tables")
    args = p.parse_args(argv)
    text = render()
    if not args.check:
        README.write_text(text, encoding="utf-8")
        print(f"wrote {README.relative_to(HERE.parent)}")
        return 0
    current = README.read_text(encoding="utf-8") if README.is_file() else ""
    if current == text:
        return 0
    diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "benchmarks/README.md", "generated",
                                lineterm="")
    sys.stdout.writelines(line + "\n" for line in list(diff)[:60])
    print("benchmarks/README.md is out of date: run `python benchmarks/tables.py`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
