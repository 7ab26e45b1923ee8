"""`mmrec eval` under `accelerate launch`: the processes share the items and the users, and the report
is the one a single process writes."""

import json

import numpy as np
import pytest
from conftest import TWO_PROCESS_EVAL_ARGS
from safetensors.torch import load_file

from mmrec.cli import main
from mmrec.evaluate.evaluation import evaluate
from mmrec.evaluate.scoring import Ranks
from mmrec.model.factory import load_run_model


def leaves(tree, path=()):
    """(path, value) of every leaf of a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, (*path, key))
    elif isinstance(tree, list):
        for n, value in enumerate(tree):
            yield from leaves(value, (*path, n))
    else:
        yield path, tree


def assert_same_report(one: dict, two: dict):
    one, two = dict(leaves(one)), dict(leaves(two))
    assert one.keys() == two.keys()
    for path, value in one.items():
        if path == ("protocol", "created_at"):
            continue
        if isinstance(value, float):
            assert two[path] == pytest.approx(value, rel=0, abs=1e-9, nan_ok=True), path
        else:
            assert two[path] == value, path


class _Blocks(Ranks):
    """All the ranks' blocks of users computed in this one process: the split and the reassembly, no launch."""

    def per_user(self, users, rows_of):
        return np.concatenate([rows_of(block) for block in np.array_split(users, self.count)])


def test_more_ranks_than_users_give_the_same_report(trained):
    """64 blocks for 40 users: most ranks have no user in a ranking (a small slice has fewer still)."""
    root, data = trained
    model, _, _ = load_run_model(root / "run", device="cpu")
    items = load_file(root / "emb" / "item_embeddings.safetensors")["embeddings"]
    kw = dict(split="test", ks=[5, 10], candidates="all", diversify=[0.5], pool=20)
    one = evaluate(root / "run", data, items, {}, model, **kw)
    assert one["ranking"]["users"] > 1
    assert_same_report(one, evaluate(root / "run", data, items, {}, model, ranks=_Blocks(0, 64), **kw))


def test_two_process_eval_equals_single_process(trained, two_process_runs, tmp_path):
    root, data = trained
    # no --emb: each process embeds its shards (with the modality ablation) and the vectors are gathered;
    # --diversify: the MMR lists are shared out too. The two-process `mmrec eval` (the same arguments, under
    # `accelerate launch`) is the fixture's, run after its `mmrec embed` in the same launch.
    args = ["eval", "--run", str(root / "run"), "--data", str(data), *TWO_PROCESS_EVAL_ARGS]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    launched, stdout, stderr = two_process_runs
    assert "users shared among 2 processes" in stderr
    assert stdout.count("report:") == 1  # one writer, one summary
    one, two = (json.loads((folder / "report.json").read_text()) for folder in (tmp_path / "one", launched / "report"))
    assert {"explanation_faithfulness", "diversify", "slices", "ablation", "baselines"} <= set(one)
    assert "ndcg@10" in one["slices"]["cold_items"] and "ndcg@10" in one["ablation"]["without_text"]["ranking"]
    assert_same_report(one, two)
