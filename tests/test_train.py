"""train.py and eval.py end to end on tiny models, offline. Run: python -m pytest -q tests/test_train.py"""
import json

import pytest
import torch

import dial
import eval as evaluation
import figures
import runfolder
import settings
import train

FAST = ["--max-steps", "3", "--eval-rows", "24", "--eval-batch", "8", "--lora-r", "8", "--lora-alpha", "8"]


def run(tmp_path, name, *argv):
    return train.main(["--out", str(tmp_path / name), *FAST, *argv])


@pytest.fixture(scope="module")
def custom_files(tmp_path_factory):
    """An essays-like custom task: source pairs, unlabelled target texts, scored validation and test texts."""
    d = tmp_path_factory.mktemp("custom")
    words = "good fine clear strong weak poor vague thin".split()
    src = [{"prompt": f"argument {i}", "response_chosen": f"{words[i % 4]} point {i}",
            "response_rejected": f"{words[4 + i % 4]} point {i}"} for i in range(24)]
    tgt = [{"text": f"essay {i}: " + " ".join(words[j % 8] for j in range(i, i + 12)), "label": 1 + i % 3}
           for i in range(20)]  # labels for the oracles only
    scored = [{"text": f"essay {i}: " + " ".join(words[j % 8] for j in range(i, i + 12)), "label": 1 + i % 6}
              for i in range(30)]
    for name, rows in (("src.jsonl", src), ("tgt.jsonl", tgt)):
        (d / name).write_text("\n".join(json.dumps(r) for r in rows))
    (d / "val.json").write_text(json.dumps(scored[:15]))
    (d / "test.json").write_text(json.dumps(scored[15:]))
    return [f"--source={d / 'src.jsonl'}", f"--target={d / 'tgt.jsonl'}", f"--val={d / 'val.json'}",
            f"--test={d / 'test.json'}"]


@pytest.mark.parametrize("method", dial.METHODS)
def test_every_method_trains_on_odd_one_out(tmp_path, method):
    summary = run(tmp_path, method, "--task", "oddoneout-desserts-fruits", "--method", method, "--batch-src", "4",
                  "--batch-tgt", "4")
    out = tmp_path / method
    assert summary["steps"] == 3 and 0 <= summary["test"]["acc"] <= 1 and 0 <= summary["test"]["rank"] <= 4
    assert json.loads((out / "summary.json").read_text()) == summary
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if r["split"] == "train"]
    assert (logs[0]["step"], logs[0]["split"]) == (0, "val") and "acc" in logs[0]  # evaluated before any update
    assert len(train_logs) == 3 and all({"loss", "bt", "acc"} <= set(r) for r in train_logs)
    assert ("w" in train_logs[0]) == (method == "dial") and ("lm" in train_logs[0]) == (method in dial.LM_METHODS)
    for f in ("config.json", "state.safetensors", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
              "adapter/critic.safetensors", "base/model.safetensors", "base/tokenizer.model"):
        assert (out / f).exists(), f


@pytest.mark.parametrize("method", ["dial", "tgt-pref"])
def test_scored_texts_custom_task(tmp_path, custom_files, method):
    summary = run(tmp_path, method, "--task", "custom", "--method", method, "--model", "tiny", *custom_files)
    assert summary["metric"] == "pearson" and -1 <= summary["test"]["spearman"] <= 1


def test_resume_continues_exactly(tmp_path):
    common = ["--task", "oddoneout-fruits-sauces", "--eval-every", "2", "--eval-rows", "16", "--lora-r", "4",
              "--lora-alpha", "4", "--seed", "3", "--critic-scale", "source"]  # measured once, read back on resume
    full = train.main(["--out", str(tmp_path / "full"), "--max-steps", "6", *common])
    train.main(["--out", str(tmp_path / "half"), "--max-steps", "3", *common])
    with open(tmp_path / "half" / "metrics.jsonl", "a") as f:  # killed after logging step 4, before its checkpoint
        f.write(json.dumps({"step": 4, "split": "train", "loss": 0.5}) + "\n")
    resumed = train.main(["--out", str(tmp_path / "half"), "--max-steps", "6", "--resume", *common])
    a, b = (runfolder.read_state(str(tmp_path / r / "state.safetensors")) for r in ("full", "half"))
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # LoRA, head and critic
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    assert all(torch.equal(a["opt"]["state"][k]["exp_avg"], b["opt"]["state"][k]["exp_avg"]) for k in a["opt"]["state"])
    assert full["test"] == resumed["test"] and full["val"] == resumed["val"]
    logs = [[json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("full", "half")]
    half = [r for r in logs[1] if (r["step"], r["split"]) != (3, "val")]  # it also evaluated where it stopped
    assert logs[0] == half


def test_dial_with_lambda_zero_is_src_pref_with_its_batch(tmp_path):
    # the same 4 source pairs per step: with lam 0 the critic trains beside the model but never moves it
    common = ["--task", "oddoneout-desserts-fruits", "--batch-src", "4", "--batch-tgt", "4", "--eval-every", "1"]
    run(tmp_path, "dial", *common, "--method", "dial", "--lam", "0")
    run(tmp_path, "src", *common, "--method", "src-pref")
    logs = {r: [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("dial", "src")}
    assert [(x["step"], x["split"]) for x in logs["dial"]] == [(x["step"], x["split"]) for x in logs["src"]]
    for a, b in zip(logs["dial"], logs["src"]):
        for k in ("bt", "acc", "rank", "emb_src"):
            if k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], a["split"], k)
    states = [runfolder.read_state(str(tmp_path / r / "state.safetensors"))["model"] for r in ("dial", "src")]
    for k, v in states[1].items():
        if not k.startswith("critic."):  # LoRA and the head; the critic trained in the DIAL run only
            assert torch.allclose(states[0][k], v, atol=1e-5), k
    assert logs["dial"][1]["pull_w"] == 0 and logs["dial"][1]["critic_grad"] > 0  # the critic trained all the same


def test_critic_scale_source_is_measured_at_step_0_and_logged(tmp_path):
    out = tmp_path / "scaled"
    run(tmp_path, "scaled", "--task", "oddoneout-desserts-fruits", "--method", "dial", "--critic-scale", "source")
    cfg = json.loads((out / "config.json").read_text())
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in logs if r["split"] == "train"][0]
    assert cfg["critic_scale"] == "source" and cfg["critic_scale_value"] == pytest.approx(first["emb_src"], rel=0.3)
    assert all(k in first for k in ("w", "gp", "critic_grad", "emb_src", "emb_tgt", "pull_bt", "pull_w"))
    default = json.loads((tmp_path / "paper" / "config.json").read_text()) if run(
        tmp_path, "paper", "--task", "oddoneout-desserts-fruits", "--max-steps", "1") else None
    assert default["critic_scale"] == "1" and default["critic_scale_value"] == 1.0
    for bad in ("0", "-2", "nan", "inf", "sauce"):
        with pytest.raises(SystemExit, match="--critic-scale must be"):
            run(tmp_path, "bad" + bad, "--task", "oddoneout-desserts-fruits", "--critic-scale", bad)


def test_curves_draw_the_game(tmp_path, capsys):
    common = ["--task", "oddoneout-desserts-fruits", "--batch-src", "4", "--batch-tgt", "4"]
    run(tmp_path, "dial", *common, "--method", "dial", "--critic-scale", "source")
    run(tmp_path, "src", *common, "--method", "src-pref")
    png = tmp_path / "curves.png"
    drawn, labels = figures.curves([str(tmp_path / "dial"), str(tmp_path / "src")], str(png))
    assert png.stat().st_size > 10000 and sorted(labels.values()) == ["dial, critic_scale source", "src-pref"]
    dial_run, src_run = labels[str(tmp_path / "dial")], labels[str(tmp_path / "src")]
    for panel in ("critic_grad", "w", "gp", "share"):
        assert drawn[panel][dial_run] == 3 and drawn[panel].get(src_run, 0) == 0, panel
    assert drawn["emb"][dial_run] == 6 and drawn["emb"][src_run] == 3  # source and target; source only
    assert drawn["val"][dial_run] == 2 and drawn["bt"][src_run] == 3  # validation at steps 0 and 3; BT every step
    evaluation.main(["--curves", str(tmp_path / "dial"), "-o", str(tmp_path / "one.png")])
    assert "wrote" in capsys.readouterr().out and (tmp_path / "one.png").exists()
    with pytest.raises(SystemExit, match="not a train.py run folder|does not exist"):
        evaluation.main(["--curves", str(tmp_path)])


def test_killed_save_leaves_the_previous_state(tmp_path, monkeypatch):
    common = ["--task", "oddoneout-snacks-fruits"]
    run(tmp_path, "run", *common, "--max-steps", "2")
    from safetensors import torch as st

    def killed(tensors, path, metadata=None):  # the process dies half-way through writing the checkpoint
        with open(path, "wb") as f:
            f.write(b"\x10\x00\x00\x00 half a checkpoint")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(st, "save_file", killed)
        with pytest.raises(SystemExit, match="stopped at once; the last saved state stands"):
            run(tmp_path, "run", *common, "--max-steps", "4", "--resume")
    assert runfolder.read_state(str(tmp_path / "run" / "state.safetensors"))["step"] == 2
    assert run(tmp_path, "run", *common, "--max-steps", "4", "--resume")["steps"] == 4


def test_bad_input_gets_one_sentence(tmp_path, custom_files):
    with pytest.raises(SystemExit, match="unknown task 'oddoneout-desert-fruits'; did you mean"):
        train.main(["--task", "oddoneout-desert-fruits"])
    with pytest.raises(SystemExit, match="the base model .*checkpoints/nowhere is not there: `python gemma.py fetch gemma-3-270m` gets Gemma 3 270M"):
        train.main(["--task", "oddoneout-fruits-sauces", "--model", "checkpoints/nowhere", "--out", str(tmp_path)])
    for flag, value, says in (("--lr", "-1", "--lr must be a positive finite number, got -1.0"), ("--batch-src", "0", "at least 1"),
                              ("--lam", "-0.5", "--lam must be a finite number, not negative"), ("--accum", "3", "must divide")):
        with pytest.raises(SystemExit, match=says):
            train.main(["--task", "oddoneout-fruits-sauces", flag, value, "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="nothing to resume"):
        run(tmp_path, "none", "--task", "oddoneout-fruits-sauces", "--resume")
    (tmp_path / "unlabelled.jsonl").write_text('{"text": "an essay"}\n{"text": "another essay"}\n')
    files = [f for f in custom_files if not f.startswith("--target")] + [f"--target={tmp_path / 'unlabelled.jsonl'}"]
    with pytest.raises(SystemExit, match=r"unlabelled.jsonl, row 1: field 'label' is missing; the oracle methods"):
        run(tmp_path, "oracle", "--task", "custom", "--method", "tgt-pref", "--model", "tiny", *files)
    run(tmp_path, "once", "--task", "oddoneout-fruits-sauces", "--max-steps", "1")
    with pytest.raises(SystemExit, match="already holds a run: continue it with `python train.py --out"):
        run(tmp_path, "once", "--task", "oddoneout-fruits-sauces")


def test_non_finite_loss_stops_the_run(tmp_path, monkeypatch):
    real = dial.train_step
    monkeypatch.setattr(dial, "train_step", lambda *a, **k: {**real(*a, **k), "loss": float("nan")})
    with pytest.raises(SystemExit, match=r"the loss became nan .* at step 1; nothing of that step was saved"):
        run(tmp_path, "nan", "--task", "oddoneout-fruits-sauces")


def test_eval_reevaluates_and_tabulates(tmp_path, capsys):
    for seed in ("0", "1"):
        for method in ("src-pref", "dial"):
            run(tmp_path, f"runs/t/{method}/seed{seed}", "--task", "oddoneout-vegetables-snacks", "--method", method,
                "--seed", seed, "--max-steps", "1")
    summary = json.loads((tmp_path / "runs/t/dial/seed1/summary.json").read_text())
    again = evaluation.main([str(tmp_path / "runs/t/dial/seed1")])
    assert again == pytest.approx(summary["test"])  # the best checkpoint, reloaded from the PEFT adapter
    capsys.readouterr()
    evaluation.main(["--table", str(tmp_path / "runs")])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| task | metric | src-pref | dial | paper src-pref (Gemma-2b) | paper dial (Gemma-2b) |"
    assert table[2].startswith("| oddoneout-vegetables-snacks | acc | ") and table[3].startswith(
        "| oddoneout-vegetables-snacks | rank | ")  # every metric of the task, the main one first
    assert table[2].count("(2)") == 2 and table[2].endswith("| 0.247 +- 0.092 (3) | 0.471 +- 0.040 (3) |")
    assert table[3].count("(2)") == 2 and table[3].endswith("|  |  |")  # the paper's numbers are accuracies
    for folder in ("dial-scaled", "src-pref-b4", "sweep-a"):  # variants of a method get their own column
        (tmp_path / "runs/t" / folder / "seed0").mkdir(parents=True)
        source = "src-pref" if folder.startswith("src-pref") else "dial"
        (tmp_path / "runs/t" / folder / "seed0/summary.json").write_text(
            (tmp_path / f"runs/t/{source}/seed0/summary.json").read_text())
    evaluation.main(["--table", str(tmp_path / "runs")])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| task | metric | src-pref | src-pref-b4 | dial | dial-scaled | paper")
    # seeds per column; sweep-a, not named after its method, counts as a run of dial
    assert [c[-3:] for c in table[2].split(" | ")[2:6]] == ["(2)", "(1)", "(3)", "(1)"]
    with pytest.raises(SystemExit, match="no summary.json below"):
        evaluation.main(["--table", str(tmp_path / "nothing")])


def test_tgt_pref_runs_epochs_of_the_target_on_the_papers_essay_schedule(tmp_path, custom_files):
    """An epoch of tgt-pref is an epoch of the target (20 rows), whatever the source's size (24 rows); on the essays
    it has the paper's own schedule (A.5: 2 epochs, batch 8), every other method DIAL's (10 epochs, 4 + 4)."""
    summary = train.main(["--out", str(tmp_path / "t"), "--task", "custom", "--method", "tgt-pref", "--model", "tiny",
                          "--epochs", "1", "--batch-src", "4", "--batch-tgt", "5", "--eval-rows", "8", "--lora-r", "2",
                          "--lora-alpha", "2", *custom_files])
    # its 20 target texts are 14 labelled pairs (scores 1, 2, 3: 7 + 7 pairs of neighbours): 3 steps of 5, not the
    # 6 steps of 4 that the 24 source pairs would take
    assert summary["steps"] == 3 and summary["rows"] == {"source": 24, "target": 20}
    essays = tmp_path / "data" / "short_to_long_essays"
    essays.mkdir(parents=True)
    for name, labels in (("short_train", (1, 2, 3)), ("long_train", (2, 4)), ("long_val", (1, 6, 2, 5))):
        (essays / f"{name}.json").write_text(json.dumps([{"text": f"{name} {i}", "label": x} for i, x in enumerate(labels)]))
    schedule = {}
    for method in ("tgt-pref", "src-tgt-pref", "dial", "src-pref"):
        cfg, task = settings.resolve(settings.parse_args(["--task", "essays-short2long", "--method", method, "--data-dir",
                                                    str(tmp_path / "data"), "--model", "tiny"]))
        schedule[method] = (cfg["epochs"], cfg["batch_src"], cfg["batch_tgt"])
    assert schedule == {"tgt-pref": (2, 4, 8), "src-tgt-pref": (10, 4, 4), "dial": (10, 4, 4), "src-pref": (10, 32, 4)}
    assert "half" in cfg["files"]["test"] and task["test"] != task["val"]  # no long_test: val split, never shared


def test_n_source_and_n_target_fix_the_rows_used(tmp_path):
    for method, n_tgt in (("dial", "30"), ("src-tgt-pref", "12")):
        summary = run(tmp_path, method, "--task", "oddoneout-desserts-fruits", "--method", method, "--n-source", "20",
                      "--n-target", n_tgt, "--max-steps", "1")
        assert summary["rows"] == {"source": 20, "target": int(n_tgt)}  # labelled target rows for the oracle
        config = json.loads((tmp_path / method / "config.json").read_text())
        assert (config["n_source"], config["n_target"]) == (20, int(n_tgt))
