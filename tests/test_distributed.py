"""The same command under torchrun: two CPU processes (gloo) against one. Run: python -m pytest -q tests/test_distributed.py"""
import json
import os
import subprocess
import sys

import pytest
import torch

import formats
import oddoneout
import runfolder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--task", "oddoneout-desserts-sauces", "--method", "dial", "--lora-r", "8", "--lora-alpha", "8",
          "--eval-rows", "40", "--eval-batch", "8", "--seed", "1"]


def launch(n, script, *argv):
    """`torchrun --nproc_per_node=n script argv` (n = 1: plain python), from the repo; returns stdout."""
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"] if n > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    out = subprocess.run(cmd + [script, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One tiny base model for every run, so that all start from the same weights."""
    folder = str(tmp_path_factory.mktemp("base"))
    texts = [t for row in oddoneout.oddoneout_rows("desserts", "train", n=200) for p, r in formats.row_sequences(row)
             for t in (p, r)]
    runfolder.make_tiny(folder, texts, 500, seed=0)
    return folder


@pytest.fixture(scope="module")
def runs(base, tmp_path_factory):
    """The same 3 steps: two processes with 2 + 2 examples per domain, one process with 4 + 4."""
    tmp = tmp_path_factory.mktemp("runs")
    launch(2, "train.py", *COMMON, "--model", base, "--out", str(tmp / "two"), "--max-steps", "3",
           "--batch-src", "2", "--batch-tgt", "2")
    launch(1, "train.py", *COMMON, "--model", base, "--out", str(tmp / "one"), "--max-steps", "3",
           "--batch-src", "4", "--batch-tgt", "4")
    return tmp


def read(run):
    state = runfolder.read_state(os.path.join(run, "state.safetensors"))
    logs = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    return state, logs, json.load(open(os.path.join(run, "summary.json")))


def test_two_processes_equal_one_with_twice_the_batch(runs):
    (two, two_logs, two_sum), (one, one_logs, one_sum) = read(runs / "two"), read(runs / "one")
    assert two["model"].keys() == one["model"].keys() and any(".critic." in k or k.startswith("critic.")
                                                               for k in one["model"])
    diff = max((two["model"][k] - one["model"][k]).abs().max().item() for k in one["model"])
    print(f"LoRA, head and critic after 3 steps, two processes vs one: max |diff| = {diff:.1e}")
    assert diff <= 1e-5  # LoRA, the head and the critic (the penalty's random draws included)
    train_two, train_one = ([r for r in logs if r["split"] == "train"] for logs in (two_logs, one_logs))
    assert len(train_two) == len(train_one) == 3  # process 0 alone writes the log
    for a, b in zip(train_two, train_one):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a if k != "split"), (a, b)  # bt, w, gp, ...
    assert (two_sum["best_step"], two_sum["val"], two_sum["test"]) == (one_sum["best_step"], one_sum["val"],
                                                                       one_sum["test"])


def test_one_run_folder(runs):
    assert sorted(os.listdir(runs)) == ["one", "two"]
    assert sorted(os.listdir(runs / "two")) == sorted(os.listdir(runs / "one"))
    assert json.load(open(runs / "two" / "config.json"))["processes"] == 2


def test_evaluation_is_the_same_under_two_processes(runs):
    one = launch(1, "eval.py", str(runs / "one"), "--split", "val")
    two = launch(2, "eval.py", str(runs / "one"), "--split", "val")
    metrics = [json.loads(out.strip().splitlines()[-1]) for out in (one, two)]
    assert metrics[0] == metrics[1] and len(two.strip().splitlines()) == len(one.strip().splitlines())
    assert metrics[0]["acc"] == json.load(open(runs / "one" / "summary.json"))["val"]["acc"]


def test_resume_under_torchrun(base, tmp_path):
    argv = [*COMMON, "--model", base, "--batch-src", "2", "--batch-tgt", "2", "--eval-every", "2"]
    launch(2, "train.py", *argv, "--out", str(tmp_path / "straight"), "--max-steps", "4")
    launch(2, "train.py", *argv, "--out", str(tmp_path / "resumed"), "--max-steps", "2")
    launch(2, "train.py", *argv, "--out", str(tmp_path / "resumed"), "--max-steps", "4", "--resume")
    a, b = (runfolder.read_state(str(tmp_path / r / "state.safetensors")) for r in ("straight", "resumed"))
    assert a["step"] == b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
