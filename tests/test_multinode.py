"""Two "nodes" on one machine: train, embed and eval under two `accelerate launch --num_machines 2` launchers
(one process each, gloo on CPU) give the same weights, embedding files and report as one node running the
same world size (`--num_processes 2`). Both train, embed and evaluate from one Python script (`mmrec.train`,
`mmrec.embed` then `mmrec.evaluate_run` in the same processes: the process group outlives training), launched
once each, at the same time: what differs is only the topology. (The `mmrec` commands under `accelerate launch`
are tested on one node: tests/test_training.py, test_embed_eval.py, test_distributed_eval.py.)"""

import json
import os
import subprocess
import sys

import torch
from conftest import TINY, free_port, make_dataset
from safetensors.torch import load_file

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--mixed_precision", "no", "--dynamo_backend", "no"]
TRAIN_EMBED_EVAL = """
import sys

import mmrec

config, data, out, *overrides = sys.argv[1:]
cfg = mmrec.load_run_config(config, overrides)
mmrec.train(cfg, data, f"{out}/run")
mmrec.embed(f"{out}/run", data, f"{out}/emb", progress=False)
# what `mmrec eval --emb EMB --no-ablation --k 5` runs
mmrec.evaluate_run(f"{out}/run", data, f"{out}/report", ks=[5], emb=f"{out}/emb", ablation=False)
"""


def launch_both(single: list[str], multi: list[str]) -> None:
    """At the same time: SINGLE (a script and its arguments) on one node of two processes, and MULTI on two
    nodes of one process each."""
    port = free_port()
    # `--num_machines 2` makes accelerate hand torchrun --nnodes 2 --node_rank R: each launcher starts one
    # process, and rank 1 joins the group that rank 0's launcher hosts at 127.0.0.1:port
    cmds = [[*LAUNCH, "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
             "--main_process_port", str(port), *multi] for rank in (0, 1)]
    cmds.append([*LAUNCH, "--num_machines", "1", "--main_process_port", str(free_port()), *single])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for c in cmds]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:  # a node whose peer failed waits for it until the rendezvous times out
        for p in procs:
            if p.poll() is None:
                p.terminate()  # SIGTERM: torchrun's agent passes it on to its worker (in its own session)
                p.wait(timeout=30)
    for p, log, cmd in zip(procs, logs, cmds):
        assert p.returncode == 0, f"{' '.join(cmd[-12:])}: {log[-3000:]}"


def test_two_nodes_on_localhost_equal_one_node_of_the_same_world_size(tmp_path):
    data = make_dataset(tmp_path, num_items=120, num_users=40, num_ratings=1500, items_per_shard=20)
    outs = single, multi = tmp_path / "single", tmp_path / "multi"
    overrides = ["data.batch_size=16", "data.steps_per_epoch=3", "train.epochs=1", "train.early_stopping_patience=0",
                 "train.audit_data=true"]
    script = tmp_path / "train_embed_eval.py"
    script.write_text(TRAIN_EMBED_EVAL)
    launch_both(*([str(script), str(TINY), str(data), str(out), *overrides] for out in outs))

    for out in outs:  # both are one process group of two ranks, each doing its half of the work
        audits = [json.loads((out / "run" / "audit" / f"rank-{r}.json").read_text()) for r in (0, 1)]
        assert [(x["world_size"], x["steps"]) for x in audits] == [(2, 3), (2, 3)]
        assert json.loads((out / "emb" / "embedding.json").read_text())["shards_computed_by_main"] == 3  # of 6
    a, b = (load_file(out / "run" / "model" / "model.safetensors") for out in outs)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    for f in ("item_embeddings.safetensors", "user_embeddings.safetensors"):
        x, y = (load_file(out / "emb" / f)["embeddings"] for out in outs)
        assert torch.equal(x, y), f
    assert (single / "emb" / "item_ids.json").read_text() == (multi / "emb" / "item_ids.json").read_text()
    x, y = (json.loads((out / "report" / "report.json").read_text()) for out in outs)
    assert x["ranking"]["users"] == y["ranking"]["users"] > 0  # every test user ranked once
    for key in ("rating", "ranking", "slices", "beyond", "baselines"):  # paths and times aside, the same report
        assert x[key] == y[key], key
