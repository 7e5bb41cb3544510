"""Hostile input of every class of issue 23, each refused in one sentence (or handled correctly): crafted training
states (refused whole, nothing loaded), test files that are the validation rows in disguise, pairs without a
preference, sizes that would allocate without end, deep JSON, special files, lone surrogates, an unexpected error
(one line naming its traceback's file), and the offline demo's pre-training interrupted and continued bit for bit.
The safetensors tiling rules and the fuzzing of both parsers are in test_fuzz.py.
Run: python -m pytest -q tests/test_hostile.py"""
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

import data
import demo
import formats
import oddoneout
import packing
import runfolder
import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--lora-r", "2", "--lora-alpha", "2", "--batch-src", "2", "--batch-tgt", "2", "--eval-rows", "8",
         "--eval-batch", "8", "--method", "dial"]


def jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small custom odd-one-out task whose source holds 2 questions without a preference (correct = a wrong one)."""
    d = tmp_path_factory.mktemp("files")
    src = oddoneout.oddoneout_rows("desserts", "train", n=40)
    src[3] = {**src[3], "wrong_b": src[3]["correct"]}
    src[7] = {**src[7], "correct": "  " + src[7]["wrong_d"] + " "}  # the same text, spaced
    return {"source": jsonl(d / "src.jsonl", src),
            "target": jsonl(d / "tgt.jsonl", oddoneout.oddoneout_rows("fruits", "train", n=40)),
            "val": jsonl(d / "val.jsonl", oddoneout.oddoneout_rows("fruits", "val", n=8)),
            "test": jsonl(d / "test.jsonl", oddoneout.oddoneout_rows("fruits", "test", n=8))}


def custom(files, **given):
    return ["--task", "custom", *[a for role in data.ROLES for a in (f"--{role}", given.get(role, files[role]))]]


@pytest.fixture(scope="module")
def base(tmp_path_factory, files):
    folder = str(tmp_path_factory.mktemp("base"))
    texts = [t for role in ("source", "target") for row in formats.load_rows(files[role], "text")
             for p, r in formats.row_sequences(row) for t in (p, r) if t]
    runfolder.make_tiny(folder, texts, 400, seed=0)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, base, files):
    out = str(tmp_path_factory.mktemp("runs") / "run")
    train.main(["--out", out, "--model", base, "--max-steps", "2", *SMALL, *custom(files)])
    return out


# -----------------------------------------------------------------------------
# a state is checked whole before anything is loaded


def entry(path):
    """A mutation of a state at a dotted path: set(state, value) and get(state)."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def get(s):
        for k in keys:
            s = s[k]
        return s

    def put(s, value, keys=keys):  # tuples are rebuilt on the way back up
        if len(keys) == 1:
            if isinstance(s, tuple):
                return tuple(value if i == keys[0] else x for i, x in enumerate(s))
            s[keys[0]] = value
            return s
        new = put(s[keys[0]], value, keys[1:])
        return put(s, new, keys[:1]) if isinstance(s, tuple) else (s.__setitem__(keys[0], new) or s)
    return get, put


def flat(t):
    return t.reshape(-1)


def negative(t):
    t = t.clone()
    t.view(-1)[0] = -1.0
    return t


def nan(t):
    t = t.clone()
    t.view(-1)[-1] = float("nan")
    return t


CRAFTED = [  # (entry, new value from the old one, what the sentence says)
    ("opt.state.0.exp_avg", flat, r"'opt\.state\.0\.exp_avg' has shape \(\d+,\) .* its parameter .* has shape"),
    ("opt.state.0.exp_avg_sq", negative, r"'opt\.state\.0\.exp_avg_sq' holds negative values"),
    ("opt.state.1.exp_avg", nan, r"'opt\.state\.1\.exp_avg' holds NaN or Inf"),
    ("opt.state.0.exp_avg", lambda t: t.double(), r"'opt\.state\.0\.exp_avg' has .* dtype torch\.float64"),
    ("opt.state.0.step", lambda t: torch.tensor(1e9), r"'opt\.state\.0\.step' is 1e\+09; expected a whole number"),
    ("opt.state.0.step", lambda t: t + 0.5, r"'opt\.state\.0\.step' is 2\.5; expected a whole number"),
    ("opt.param_groups.0.betas", lambda v: (0.5, 0.5), r"'opt\.param_groups\.0\.betas' is \(0\.5, 0\.5\)"),
    ("opt.param_groups.0.lr", lambda v: float("nan"), r"'opt\.param_groups\.0\.lr' is nan"),
    ("critic_opt.state.2.exp_avg_sq", negative, r"'critic_opt\.state\.2\.exp_avg_sq' holds negative"),
    ("critic_opt.state.0.step", lambda t: t * 100, r"'critic_opt\.state\.0\.step' is \d+; expected .* \[0, 6\]"),
    ("step", lambda v: -3, r"'step' is -3, outside \[0, 2\]"),
    ("step", lambda v: 10 ** 9, r"'step' is 1000000000, outside \[0, 2\]"),
    ("best.step", lambda v: 5, r"'best' is .* not the step \(in \[0, 2\]\)"),
    ("best_weights", lambda v: None, "'best' and 'best_weights' disagree"),
    ("rng.0.1.0", lambda v: 2 ** 33, r"'rng\.0' is not a state of Python's random"),
    ("rng.0.1.624", lambda v: 700, r"'rng\.0' is not a state of Python's random"),
    ("rng.1.2", lambda v: 10 ** 4, r"'rng\.1' is not a state of numpy's random"),
    ("rng.1.3", lambda v: 5, r"'rng\.1' is not a state of numpy's random"),
    ("rng.2", lambda t: torch.full_like(t, 7), r"'rng\.2' is not a valid generator state"),
    ("gp_rng", lambda t: t[:100], r"'gp_rng' is not the state of a cpu generator"),
]


def test_crafted_states_are_refused_whole(run, tmp_path, monkeypatch):
    captured = {}
    real = runfolder.load_state

    def capture(path, *args):  # the resumed run's own model, optimisers and generator, to load crafted states into
        captured["args"] = args
        return real(path, *args)
    monkeypatch.setattr(runfolder, "load_state", capture)
    copy = str(tmp_path / "copy")
    shutil.copytree(run, copy)
    train.main(["--out", copy, "--resume"])  # the run is whole: resumes, tests, ends
    model, *rest = captured["args"]
    good = runfolder.read_state(os.path.join(run, runfolder.STATE))
    for path, change, says in CRAFTED:
        state = runfolder.read_state(os.path.join(run, runfolder.STATE))
        get, put = entry(path)
        state = put(state, change(get(state)))
        crafted = str(tmp_path / "crafted.safetensors")
        runfolder.save_tensors(crafted, state)
        before = {k: v.clone() for k, v in runfolder.trainable_state(model).items()}
        moments = {k: v["exp_avg"].clone() for k, v in rest[0].state.items()}
        generators = (torch.get_rng_state(), random.getstate(), rest[2].get_state())
        with pytest.raises(ValueError, match=says) as e:
            real(crafted, model, *rest)
        assert "\n" not in str(e.value) and "nothing of the state was loaded" in str(e.value), str(e.value)
        after = runfolder.trainable_state(model)  # nothing was loaded: not the weights, moments or generators
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert all(torch.equal(moments[k], v["exp_avg"]) for k, v in rest[0].state.items())
        assert torch.equal(generators[0], torch.get_rng_state()) and generators[1] == random.getstate()
        assert torch.equal(generators[2], rest[2].get_state())
    assert real(os.path.join(run, runfolder.STATE), model, *rest)[0] == good["step"]  # the true state loads
    for path, change, says in (CRAFTED[0], CRAFTED[11]):  # and through the command line: one sentence, exit 1
        state = runfolder.read_state(os.path.join(run, runfolder.STATE))
        get, put = entry(path)
        runfolder.save_tensors(os.path.join(copy, runfolder.STATE), put(state, change(get(state))))
        with pytest.raises(SystemExit, match="error: .*" + says):
            train.main(["--out", copy, "--resume"])


# -----------------------------------------------------------------------------
# test against validation: what is scored, normalised; rows without a preference


def test_test_rows_in_disguise_are_validation_rows(tmp_path, files):
    val = formats.load_rows(files["val"], "mcq")
    disguises = {
        "id": [{**r, "id": i} for i, r in enumerate(val)],
        "spaces": [{k: f"  {v}\n" if k != "prompt" else v.replace(" ", "  ") for k, v in r.items()} for r in val],
        "swapped": [{**r, "correct": r["wrong_a"], "wrong_a": r["correct"]} for r in val],
        "composed": [{**r, "correct": "e\u0301" + r["correct"]} for r in val],  # e + accent, not é
    }
    val_nfc = [{**r, "correct": "\u00e9" + r["correct"]} for r in val]
    for name, rows in disguises.items():
        v = jsonl(tmp_path / "v.jsonl", val_nfc if name == "composed" else val)
        t = jsonl(tmp_path / f"{name}.jsonl", rows)
        with pytest.raises(ValueError, match="every row of the test file .* is also in the validation file"):
            data.load_task("custom", source=files["source"], target=files["target"], val=v, test=t)
    mixed = jsonl(tmp_path / "mixed.jsonl", disguises["id"][:3] + formats.load_rows(files["test"], "mcq"))
    task = data.load_task("custom", source=files["source"], target=files["target"], val=files["val"], test=mixed)
    assert task["test"] == formats.load_rows(files["test"], "mcq")
    assert task["dropped"] == {"source": 2, "test_in_val": 3}
    assert "dropped 2 source row(s) whose responses (or answers) are one text; 3 test row(s)" in data.dropped_note(task)
    same = jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "response_chosen": "a b", "response_rejected": " a  b"}])
    with pytest.raises(ValueError, match="same.jsonl: every row's responses .* are one text"):
        data.load_task("custom", source=same, target=files["target"], val=files["val"], test=files["test"])


def test_dropped_rows_are_counted_in_config_and_log(run):
    assert runfolder.read_json(os.path.join(run, "config.json"))["dropped"] == {"source": 2}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        assert json.loads(f.readline()) == {"step": 0, "split": "data", "dropped": {"source": 2}}


# -----------------------------------------------------------------------------
# one sentence for every failure of a command line


def test_every_failure_is_one_sentence(tmp_path, base, files, monkeypatch):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"prompt": "a", "correct": "b", "wrong_a": "c", "wrong_b": "d", "wrong_c": "e", "wrong_d": '
                    + "[" * 100000 + "]" * 100000 + "}\n")
    os.mkfifo(tmp_path / "fifo.jsonl")
    surrogate = tmp_path / "surrogate.jsonl"
    rows = oddoneout.oddoneout_rows("desserts", "train", n=2)
    surrogate.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "prompt": "a \ud800 b"}))
    out = ["--out", str(tmp_path / "bad"), "--model", base, *SMALL, *custom(files)]
    cases = [
        ([*out, "--lora-r", "2147483648"], r"LoRA rank 2147483648 .* is wider than .*; choose r <= \d+"),
        ([*out, "--batch-src", "1000000"], r"--batch-src 1000000 is more than the task's 38 source rows"),
        ([*out, "--batch-tgt", "41"], r"--batch-tgt 41 is more than the task's 40 target rows"),
        ([*out, "--source", str(deep)], "deep.jsonl, line 1 nests JSON arrays or objects more than 64 levels deep"),
        ([*out, "--source", str(tmp_path / "fifo.jsonl")], r"fifo.jsonl is a FIFO \(named pipe\), not a regular file"),
        ([*out, "--target", "/dev/zero"], "/dev/zero is a character device, not a regular file"),
        ([*out, "--val", str(surrogate)], r'surrogate.jsonl, row 2 \(line 2\): field "prompt" holds a lone surrogate'),
    ]
    for argv, says in cases:
        with pytest.raises(SystemExit, match="^error: .*" + says) as e:
            train.main(argv)
        assert "\n" not in str(e.value.code)
    resumable = str(tmp_path / "resumable")  # a config.json nested too deep: one sentence on resume and in eval.py
    train.main(["--out", resumable, "--model", base, "--max-steps", "1", *SMALL, *custom(files)])
    config = os.path.join(resumable, "config.json")
    good = open(config).read()
    with open(config, "w") as f:
        f.write(good[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}")
    for main, argv in ((train.main, ["--out", resumable, "--resume"]), (__import__("eval").main, [resumable])):
        with pytest.raises(SystemExit, match=r"config.json nests JSON arrays or objects more than 64 levels deep"):
            main(argv)
    with open(config, "w") as f:
        f.write(good)

    def bug(*a, **k):  # an error nobody expected
        raise KeyError("boom")
    monkeypatch.setattr(packing, "tokenize", bug)
    with pytest.raises(SystemExit) as e:
        train.main(["--out", str(tmp_path / "crash"), "--model", base, *SMALL, *custom(files)])
    message = str(e.value.code)
    assert message.startswith("error: unexpected KeyError ('boom'): a bug; the traceback is in ") and "\n" not in message
    log = message.split("the traceback is in ")[1].split(", for a bug report")[0]
    assert log == os.path.join(str(tmp_path / "crash"), "error.log")
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "KeyError: 'boom'" in text and "train" in text


def test_command_lines_end_in_one_line_without_traceback(tmp_path, base):
    """As a user sees it: a real process, its exit status and its stderr."""
    os.mkfifo(tmp_path / "fifo.jsonl")
    overlapping = tmp_path / "model"
    shutil.copytree(base, overlapping)
    st = overlapping / "model.safetensors"
    blob = st.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    first, second = [k for k in header if k.endswith("input_layernorm.weight")][:2]
    header[second]["data_offsets"] = header[first]["data_offsets"]  # two tensors of one size sharing their bytes
    raw = json.dumps(header).encode()
    st.write_bytes(len(raw).to_bytes(8, "little") + raw + blob[8 + n:])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    for argv, says in (
            (["train.py", "--task", "custom", "--source", str(tmp_path / "fifo.jsonl"), "--target", "t", "--val", "v",
              "--test", "e", "--out", str(tmp_path / "r")], "fifo.jsonl is a FIFO (named pipe), not a regular file"),
            (["gemma.py", str(overlapping)], "is not a valid safetensors file")):
        p = subprocess.run([sys.executable, os.path.join(REPO, argv[0]), *argv[1:]], env=env, capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
        assert p.returncode == 1 and says in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0, p.stderr[-2000:]


# -----------------------------------------------------------------------------
# the demo's pre-training: stopped, saved, continued to the same model


def test_demo_pretraining_resumes_bit_for_bit(tmp_path):
    straight, _ = demo.pretrain(str(tmp_path / "straight"), steps=4, batch=2)
    calls = []

    def stop(device):  # Ctrl-C during step 2: the step ends, the state is saved, the process exits
        calls.append(device)
        return len(calls) == 3
    with pytest.raises(SystemExit, match=r"stopped at step 2 of 4, saved in .*: `python train.py` continues it"):
        demo.pretrain(str(tmp_path / "stopped"), steps=4, batch=2, stop=stop)
    resumed, _ = demo.pretrain(str(tmp_path / "stopped"), steps=4, batch=2)
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = runfolder.read_state(str(tmp_path / "stopped" / runfolder.STATE), "x")
    state["step"] = 99
    runfolder.save_tensors(str(tmp_path / "stopped" / runfolder.STATE), state)
    with pytest.raises(ValueError, match=r"its entry 'step' is 99, outside \[0, 4\]"):
        demo.pretrain(str(tmp_path / "stopped"), steps=4, batch=2)
