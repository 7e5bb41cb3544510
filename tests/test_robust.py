"""The run folder under a hostile or unlucky user: crafted files never run code, divergence never saves a non-finite
file, resume rebuilds the run from its own folder and refuses changed data, one process owns a folder, a kill at any
write point leaves a folder that resumes to the same result, SIGTERM is Ctrl-C, and bad flags get one sentence.
Run: python -m pytest -q tests/test_robust.py"""
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import dial
import eval as evaluation
import formats
import gemma
import oddoneout
import runfolder
import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--task", "oddoneout-desserts-fruits", "--lora-r", "2", "--lora-alpha", "2", "--batch-src", "2",
         "--batch-tgt", "2", "--eval-rows", "8", "--eval-batch", "8"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One tiny base model (random weights, a tokenizer trained on the task's text) for every run of this file."""
    folder = str(tmp_path_factory.mktemp("base"))
    rows = oddoneout.oddoneout_rows("desserts", "train", n=200) + oddoneout.oddoneout_rows("fruits", "train", n=200)
    texts = [t for row in rows
             for p, r in formats.row_sequences(row) for t in (p, r) if t]
    runfolder.make_tiny(folder, texts, 400, seed=0)
    return folder


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small custom odd-one-out task (40 source and target questions, 8 for validation, 8 for test): cheap."""
    d = tmp_path_factory.mktemp("files")
    for name, rows in (("src.jsonl", oddoneout.oddoneout_rows("desserts", "train", n=40)),
                       ("tgt.jsonl", oddoneout.oddoneout_rows("fruits", "train", n=40)),
                       ("val.jsonl", oddoneout.oddoneout_rows("fruits", "val", n=8)),
                       ("test.jsonl", oddoneout.oddoneout_rows("fruits", "test", n=8))):
        (d / name).write_text("\n".join(json.dumps(r) for r in rows))
    return d


def result(out):
    """Everything a run leaves that must not depend on how it got there: weights, optimiser, best, logs, summary."""
    state = runfolder.read_state(os.path.join(out, runfolder.STATE))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        log = f.read()
    summary = runfolder.read_json(os.path.join(out, "summary.json"))
    return state, log, summary


def same(a, b):
    (sa, la, ma), (sb, lb, mb) = a, b
    assert sa["step"] == sb["step"] and sa["best"] == sb["best"] and la == lb and ma == mb
    for key in ("model", "best_weights"):
        assert sa[key].keys() == sb[key].keys() and all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key]), key
    for k, v in sa["opt"]["state"].items():
        assert all(torch.equal(v[n], sb["opt"]["state"][k][n]) for n in v)


# -----------------------------------------------------------------------------
# nothing in a run folder or adapter runs code


class Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this creates the marker file
        return open, (self.path, "w")


def test_crafted_pickle_never_runs(tmp_path, base):
    out, marker = str(tmp_path / "run"), str(tmp_path / "marker")
    train.main(["--out", out, "--model", base, "--max-steps", "1", *SMALL])
    pickle.loads(pickle.dumps(Marker(marker)))  # the payload works ...
    assert os.path.exists(marker)
    os.remove(marker)
    for name, write in ((runfolder.STATE, lambda p: torch.save({"step": Marker(marker)}, p)),
                        (runfolder.STATE, lambda p: open(p, "wb").write(pickle.dumps(Marker(marker))))):
        write(os.path.join(out, name))
        with pytest.raises(SystemExit, match="is damaged or not a training state of train.py"):
            train.main(["--out", out, "--resume"])
    os.remove(os.path.join(out, runfolder.STATE))  # ... an old-style state.pt is never loaded either
    torch.save({"step": Marker(marker)}, os.path.join(out, "state.pt"))
    with pytest.raises(SystemExit, match="nothing to resume"):
        train.main(["--out", out, "--resume"])
    with pytest.raises(SystemExit, match="a pickle from an older version of train.py, which is never loaded"):
        train.main(["--out", out, "--model", base, "--max-steps", "1", *SMALL])
    assert not os.path.exists(marker)


def test_adapter_files_are_checked(tmp_path, base):
    out = str(tmp_path / "run")
    train.main(["--out", out, "--model", base, "--max-steps", "1", *SMALL])
    config = os.path.join(out, "adapter", "adapter_config.json")
    good = json.load(open(config))
    for targets, says in (("(a+)+$", "only a list of module names"), ([], "non-empty list of module names"),
                          ([1], "non-empty list of module names")):
        json.dump({**good, "target_modules": targets}, open(config, "w"))
        with pytest.raises(SystemExit, match=says):
            evaluation.main([out])
    json.dump(good, open(config, "w"))
    from safetensors.torch import load_file, save_file
    critic = os.path.join(out, "adapter", "critic.safetensors")
    tensors = load_file(critic)
    tensors[next(iter(tensors))][0] = float("nan")
    save_file(tensors, critic)
    with pytest.raises(SystemExit, match="critic.safetensors: '.*' holds NaN or Inf"):
        evaluation.main([out])


# -----------------------------------------------------------------------------
# finite or nothing


def test_nan_rewards_never_count_as_wins():
    nan = float("nan")
    assert evaluation.pairwise_accuracy([nan, 1.0], [0.0, 0.0]) == 0.5  # the NaN pair fails, the other wins
    assert evaluation.pairwise_accuracy([nan], [nan]) == 0.0  # not a tie
    assert evaluation.mcq_accuracy([nan, nan], [[nan] * 4, [0.0] * 4]) == 0.0  # NaN > x is False: looked like a win
    assert evaluation.mcq_rank([nan], [[0.0] * 4]) == 4.0  # last
    assert np.isnan(evaluation.pearson([1.0, nan, 2.0], [1, 2, 3])) and np.isnan(evaluation.spearman([1, nan, 2], [1, 2, 3]))


def test_divergence_never_saves_a_non_finite_file(tmp_path, base, monkeypatch):
    out = str(tmp_path / "run")
    real = dial.train_step

    def poisoned(model, *a, **k):  # the update of step 3 makes one LoRA matrix NaN; its loss (before it) is finite
        logs = real(model, *a, **k)
        if poisoned.calls == 2:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))
        poisoned.calls += 1
        return logs
    poisoned.calls = 0
    with monkeypatch.context() as m:
        m.setattr(dial, "train_step", poisoned)
        with pytest.raises(SystemExit, match=r"'.*lora_B' holds NaN or Inf values at step 3; nothing of that step was "
                                             r"saved, and the last saved state \(step 2\) is finite"):
            train.main(["--out", out, "--model", base, "--max-steps", "4", "--eval-every", "1", *SMALL])
    state = runfolder.read_state(os.path.join(out, runfolder.STATE))
    assert state["step"] == 2 and state["best"]["step"] <= 2
    for tensors in (state["model"], state["best_weights"]):
        runfolder.check_finite(tensors, "saved")
    evaluation.load_reward_model(out)  # the best adapter on disk: finite (the loader refuses NaN)
    # the advice works: a lower learning rate from the last state, logged in config.json
    was = runfolder.read_json(os.path.join(out, "config.json"))["lr"]
    summary = train.main(["--out", out, "--resume", "--lr", "1e-5"])
    assert summary["steps"] == 4
    assert runfolder.read_json(os.path.join(out, "config.json"))["lr_changes"] == [{"step": 2, "lr": 1e-5, "was": was}]
    for lr in ("inf", "1e39"):
        with pytest.raises(SystemExit, match=re.escape(f"--lr must be a positive finite number, got {float(lr)}")):
            train.main(["--out", str(tmp_path / "inf"), "--model", base, "--lr", lr, *SMALL])
    with pytest.raises(SystemExit, match=r"at step [12]; nothing of that step was saved, and the last saved state "
                                         r"\(step 0\) is finite"):
        train.main(["--out", str(tmp_path / "huge"), "--model", base, "--lr", "2e38", "--max-steps", "2", *SMALL])
    runfolder.check_finite(runfolder.read_state(str(tmp_path / "huge" / runfolder.STATE))["model"], "saved")
    assert runfolder.read_state(str(tmp_path / "huge" / runfolder.STATE))["best"]["step"] == 0  # step 0's evaluation
    evaluation.load_reward_model(str(tmp_path / "huge"))  # its adapter, the only one saved: finite


# -----------------------------------------------------------------------------
# resume: the run's own settings and data


def test_resume_alone_rebuilds_the_run_and_refuses_changes(tmp_path, base, monkeypatch):
    d = tmp_path / "files"
    d.mkdir()
    rows = oddoneout.oddoneout_rows("desserts", "train", n=40)
    (d / "src.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "tgt.jsonl").write_text("\n".join(json.dumps(r) for r in oddoneout.oddoneout_rows("fruits", "train", n=40)))
    (d / "val.jsonl").write_text("\n".join(json.dumps(r) for r in oddoneout.oddoneout_rows("fruits", "val", n=8)))
    (d / "test.jsonl").write_text("\n".join(json.dumps(r) for r in oddoneout.oddoneout_rows("fruits", "test", n=8)))
    argv = ["--task", "custom", "--source", "src.jsonl", "--target", "tgt.jsonl", "--val", "val.jsonl", "--test",
            "test.jsonl", "--model", base, "--lora-r", "2", "--lora-alpha", "2", "--batch-src", "2", "--batch-tgt", "2", "--eval-every", "2"]
    monkeypatch.chdir(d)  # relative paths: the run records them absolute
    full = train.main(["--out", str(tmp_path / "full"), "--max-steps", "4", *argv])
    train.main(["--out", str(tmp_path / "half"), "--max-steps", "2", *argv])
    for flag, value in (("--task", "oddoneout-desserts-fruits"), ("--source", "tgt.jsonl"), ("--lora-r", "4"),
                        ("--method", "src-pref"), ("--seed", "1"), ("--test", "val.jsonl"), ("--n-source", "10"),
                        ("--n-target", "10"), ("--truncation", "right"), ("--ties", "correct"),
                        ("--lm-loss", "detached"), ("--separator", "")):
        with pytest.raises(SystemExit, match=f"{flag} .* differs from the run's .*: a resumed run keeps its own"):
            train.main(["--out", str(tmp_path / "half"), "--resume", flag, value])
    monkeypatch.chdir(tmp_path)  # from elsewhere, --out and --resume alone are enough
    resumed = train.main(["--out", "half", "--resume", "--max-steps", "4"])
    assert resumed == full
    same(result(str(tmp_path / "full")), result(str(tmp_path / "half")))
    (d / "src.jsonl").write_text("\n".join(json.dumps(r) for r in rows[::-1]))  # the data changed under the run
    with pytest.raises(SystemExit, match=r"the source data of the run changed since it started \(.*src.jsonl\)"):
        train.main(["--out", "half", "--resume", "--max-steps", "6"])


# -----------------------------------------------------------------------------
# one owner, and a kill at any write point


def test_a_second_process_is_refused(tmp_path, base):
    out = str(tmp_path / "run")
    with runfolder.owned(out):  # another process (the lock is per open file: this one counts as another)
        with pytest.raises(SystemExit, match=f"{out} is in use by another train.py process"):
            train.main(["--out", out, "--model", base, "--max-steps", "1", *SMALL])
        assert os.listdir(out) == [".lock"]
    train.main(["--out", out, "--model", base, "--max-steps", "1", *SMALL])  # released: a run goes through


class Killed(BaseException):
    """The process dies here (no except clause of the program catches it)."""


def test_a_kill_at_every_write_point_leaves_a_resumable_folder(tmp_path, base, small, monkeypatch):
    argv = ["--model", base, "--max-steps", "2", "--eval-every", "2", *SMALL, "--task", "custom", "--source",
            str(small / "src.jsonl"), "--target", str(small / "tgt.jsonl"), "--val", str(small / "val.jsonl"),
            "--test", str(small / "test.jsonl")]
    train.main(["--out", str(tmp_path / "straight"), *argv])
    expected = result(str(tmp_path / "straight"))
    real_replace, real_open_log = os.replace, runfolder.open_log
    counter = {"left": None, "points": 0}

    def point():  # after each completed write: a file renamed into place, or a log line flushed
        counter["points"] += 1
        if counter["left"] is not None:
            counter["left"] -= 1
            if counter["left"] == 0:
                raise Killed

    class Log:
        def __init__(self, f):
            self.f = f

        def write(self, s):
            self.f.write(s), self.f.flush(), point()

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(os, "replace", lambda *a: (real_replace(*a), point()))
    monkeypatch.setattr(runfolder, "open_log", lambda *a: Log(real_open_log(*a)))
    train.main(["--out", str(tmp_path / "count"), *argv])
    n = counter["points"]
    assert n >= 14  # config, fresh log, state 0, log lines, adapter (2 files), critic, state, again at the end, summary
    for k in range(1, n + 1):
        out = str(tmp_path / f"kill{k}")
        counter["left"] = k
        with pytest.raises(Killed):
            train.main(["--out", out, *argv])
        counter["left"] = None
        again = ["--out", out, "--resume"] if os.path.exists(os.path.join(out, runfolder.STATE)) else ["--out", out, *argv]
        train.main(again)
        same(result(out), expected)
        assert not [f for f in os.listdir(out) if ".tmp-" in f]


def test_a_kill_while_base_is_built_heals(tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    argv = ["--out", out, "--model", "tiny", "--tiny-vocab", "400", "--max-steps", "1", *SMALL]
    real = gemma.Gemma.save_pretrained

    def killed(self, path):
        real(self, path)
        raise Killed  # after the weights, before base/ is renamed into place

    with monkeypatch.context() as m:
        m.setattr(gemma.Gemma, "save_pretrained", killed)
        with pytest.raises(Killed):
            train.main(argv)
    assert not os.path.exists(os.path.join(out, "base"))
    assert train.main(argv)["steps"] == 1 and os.path.isfile(os.path.join(out, "base", "model.safetensors"))


def test_sigterm_saves_and_resumes(tmp_path, base, small):
    """SIGTERM at whatever step the run is in (the outcome may not depend on it): saved, resumable, the same result."""
    argv = ["--model", base, "--max-steps", "100000", "--eval-every", "100000", *SMALL, "--task", "custom",
            "--source", str(small / "src.jsonl"), "--target", str(small / "tgt.jsonl"), "--val",
            str(small / "val.jsonl"), "--test", str(small / "test.jsonl")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}  # every part of the comparison: one thread
    command = [sys.executable, os.path.join(REPO, "train.py")]
    out, log = str(tmp_path / "run"), str(tmp_path / "run" / "metrics.jsonl")
    p = subprocess.Popen([*command, "--out", out, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(log) and open(log).read().count("\n") >= 3):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and f"continue with `python train.py --out {out} --resume`" in err, err[-2000:]
    stopped = runfolder.read_state(os.path.join(out, runfolder.STATE))["step"]
    assert stopped >= 2 and open(log).read().count("\n") == stopped + 1  # step 0's evaluation, then the steps
    subprocess.run([*command, "--out", out, "--resume", "--max-steps", str(stopped + 1)], env=env, check=True,
                   capture_output=True)
    argv[argv.index("100000")] = str(stopped + 1)
    subprocess.run([*command, "--out", str(tmp_path / "straight"), *argv], env=env, check=True, capture_output=True)
    same(result(out), result(str(tmp_path / "straight")))


# -----------------------------------------------------------------------------
# one sentence for every bad input


def test_bad_input_gets_one_sentence(tmp_path, base):
    run_ = str(tmp_path / "run")
    train.main(["--out", run_, "--model", base, "--max-steps", "1", *SMALL])
    big = str(tmp_path / "big")  # the base model with a tokenizer larger than its vocabulary
    shutil.copytree(base, big)
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(3000)]
    checkpoint.train_tokenizer([" ".join(words[i:i + 9]) for i in range(0, 3000, 3)], os.path.join(big, "tokenizer.model"), 900)
    truncated = str(tmp_path / "truncated")
    shutil.copytree(run_, truncated)
    with open(os.path.join(truncated, runfolder.STATE), "r+b") as f:
        f.truncate(1000)
    no_test = tmp_path / "tables" / "a"
    no_test.mkdir(parents=True)
    (no_test / "summary.json").write_text(json.dumps({"task": "t", "method": "dial", "metric": "acc"}))
    out = ["--out", str(tmp_path / "bad"), *SMALL]  # the bad flag comes after: the last one given counts
    cases = [
        ([*out, "--max-steps", "0"], "--max-steps must be at least 1, got 0"),
        ([*out, "--device", "tpu9"], "--device 'tpu9' is not a device"),
        ([*out, "--device", "cuda:7"], "--device cuda:7: this machine has"),
        ([*out, "--epochs", "nan"], "--epochs must be a positive finite number, got nan"),
        ([*out, "--eval-every", "-1"], "--eval-every must be at least 1"),
        ([*out, "--lora-alpha", "0"], "--lora-alpha must be a positive finite number"),
        ([*out, "--lora-dropout", "1"], r"--lora-dropout must be a number in \[0, 1\)"),
        ([*out, "--max-len", "1"], "--max-len must be at least 2"),
        ([*out, "--seed", "-1"], r"--seed must be in \[0, 2\*\*32\)"),
        ([*out, "--lam", "inf"], "--lam must be a finite number"),
        ([*out, "--tiny-vocab", "5", "--model", "tiny"], r"--tiny-vocab must be in \[260"),
        ([*out, "--tiny-vocab", "270", "--model", "tiny"], "--tiny-vocab 270: SentencePiece cannot train"),
        ([*out, "--model", big], r"tokenizer.model has \d+ pieces but the model's vocab_size is"),
        (["--lr", "0.1"], "--lr needs a --task"),
        ([*out, "--task", "custom", "--source", str(tmp_path), "--target", "t", "--val", "v", "--test", "e"],
         f"{tmp_path} is a folder: expected a JSON list or JSON lines file"),
        ([*out, "--task", "custom", "--eval", "e"], "--eval is gone: give --val .* and --test"),
        ([*out, "--n-source", "0"], "--n-source must be at least 1"),
        ([*out, "--n-target", "1001"], r"--n-target 1001 asks for more target rows than the task has \(1000\)"),
        (["--out", truncated, "--resume"], "state.safetensors is damaged or not a training state"),
        (["--out", str(tmp_path / "nowhere"), "--resume"], "nothing to resume"),
    ]
    for argv, says in cases:
        with pytest.raises(SystemExit, match=says):
            train.main(argv)
    with pytest.raises(SystemExit, match="summary.json lacks its task, method, metric or test result"):
        evaluation.main(["--table", str(tmp_path / "tables")])
    (no_test / "summary.json").write_text("{not json")
    with pytest.raises(SystemExit, match="summary.json is not valid JSON"):
        evaluation.main(["--table", str(tmp_path / "tables")])
