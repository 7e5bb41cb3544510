"""A run's settings (settings.py, tasks.py): --show-config, the settings a run prints at its start, --metric, a task
file that rebuilds a registered task exactly, and the missing model and data said together.
Run: python -m pytest -q tests/test_settings.py"""
import json
import os

import pytest

import data
import dial
import settings
import train

PROMPT = "Rate the sentiment of this text."
ROLES = ("source", "target", "val", "test")
TINY = ["--model", "tiny", "--max-steps", "2", "--eval-rows", "8", "--eval-batch", "8", "--lora-r", "2",
        "--lora-alpha", "2", "--batch-src", "2", "--batch-tgt", "2"]


def rated_rows(n, start, words):
    """Scores rows as `python data.py fetch` writes the sentiment tasks: prompt, text, a mean rating and its 1..6 bin."""
    rows = []
    for i in range(start, start + n):
        rating = round(-4 + 8 * ((i * 7) % 17) / 16, 3)
        rows.append({"prompt": PROMPT, "id": str(i), "text": f"{words[i % len(words)]} snippet number {i}",
                     "rating": rating, "label": min(6, 1 + int((rating + 4) * 6 / 8))})
    return rows


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory):
    """A data dir holding sentiment-movies-tweets' four files, under the names the registry looks for."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "sentiment"
    folder.mkdir()
    words = "great awful fine dull lovely bleak warm grim".split()
    for role, rows in (("source", rated_rows(24, 0, words)), ("target", rated_rows(16, 100, words)),
                       ("val", rated_rows(12, 200, words)), ("test", rated_rows(12, 300, words))):
        (folder / f"sentiment-movies-tweets_{role}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def task_file(tmp_path, sentiment_dir, **extra):
    """A user's task file naming the same four files (relative to the task file, as the README shows)."""
    path = tmp_path / "my_sentiment.json"
    rel = os.path.relpath(sentiment_dir / "sentiment", tmp_path)
    path.write_text(json.dumps({"name": "my-sentiment", "family": "sentiment", "metric": "rated",
                                **{r: f"{rel}/sentiment-movies-tweets_{r}.jsonl" for r in ROLES}, **extra}))
    return str(path)


def test_a_task_file_equals_the_registered_task(tmp_path, sentiment_dir):
    """The README's way to add a task: a sentiment task of one's own gives the built-in task's rows, kinds, metric and
    settings, and trains to the same numbers."""
    mine = task_file(tmp_path, sentiment_dir)
    builtin = data.load_task("sentiment-movies-tweets", str(sentiment_dir))
    own = data.load_task(mine)
    assert own["name"] == "my-sentiment" and builtin["metric"] == "rated" and builtin["max_length"] == 96
    assert {k: v for k, v in own.items() if k not in ("name", "files")} == \
        {k: v for k, v in builtin.items() if k not in ("name", "files")}
    for method in dial.METHODS:  # the settings each method resolves to: the sentiment family's, for both
        common = ["--method", method, "--model", "tiny", "--data-dir", str(sentiment_dir)]
        a, _ = settings.resolve(settings.parse_args(["--task", "sentiment-movies-tweets", *common]))
        b, _ = settings.resolve(settings.parse_args(["--task", mine, *common]))
        assert {k for k in a if a[k] != b[k]} == {"task", "task_file", "out", "files"}, method
        assert (b["task"], b["task_file"], b["max_len"], b["eval_every"], b["metric"]) == \
            ("my-sentiment", mine, 96, 50, "rated")
    runs = [train.main(["--task", t, "--method", "dial", "--data-dir", str(sentiment_dir), *TINY,
                        "--out", str(tmp_path / name)]) for t, name in (("sentiment-movies-tweets", "a"), (mine, "b"))]
    assert runs[0]["test"] == runs[1]["test"] and runs[0]["val"] == runs[1]["val"] and runs[1]["task"] == "my-sentiment"
    assert json.loads((tmp_path / "b" / "config.json").read_text())["task_file"] == mine
    assert train.main(["--out", str(tmp_path / "b"), "--resume", "--max-steps", "3"])["steps"] == 3  # resumable
    import eval as evaluation  # re-evaluated from its folder: the task file and the metric come from config.json
    assert set(evaluation.main([str(tmp_path / "b")])) >= {"acc", "pearson", "spearman"}


def test_task_file_settings_and_refusals(tmp_path, sentiment_dir):
    mine = task_file(tmp_path, sentiment_dir, defaults={"lr": 3e-4, "max_length": 64})
    rows = settings.chosen(settings.parse_args(["--task", mine, "--lr", "1e-3"]), data.task_spec(mine))
    assert rows["lr"] == (1e-3, "flag") and rows["max_len"] == (64, "the task file my_sentiment.json")
    assert rows["epochs"][0] == 3 and "paper" in rows["epochs"][1]
    for extra, says in (({"family": "sports"}, "'family' should be one of"), ({"metric": "f1"}, "'metric' should be"),
                        ({"defaults": {"lr": "high"}}, "'defaults' should be an object of numbers"),
                        ({"name": "sentiment-movies-tweets"}, "not a registered task's"),
                        ({"colour": "red"}, "'colour' is not a key of a task file")):
        with pytest.raises(ValueError, match=says):
            data.load_task(task_file(tmp_path, sentiment_dir, **extra))
    with pytest.raises(SystemExit, match="'val' should name the target validation set"):
        path = tmp_path / "short.json"
        path.write_text(json.dumps({"source": "a", "target": "b", "test": "d"}))
        train.main(["--task", str(path)])


def test_metric_of_a_custom_task(tmp_path, sentiment_dir):
    """--task custom on the sentiment files: the rows' kind gives correlation (against the binned label); --metric
    rated gives the built-in task's metric, saved in config.json; a metric of other rows is refused."""
    files = [f"--{r}={sentiment_dir / 'sentiment' / f'sentiment-movies-tweets_{r}.jsonl'}" for r in ROLES]
    plain = data.load_task("custom", **{r: f.split("=", 1)[1] for r, f in zip(ROLES, files)})
    rated = data.load_task("custom", **{r: f.split("=", 1)[1] for r, f in zip(ROLES, files)}, metric="rated")
    builtin = data.load_task("sentiment-movies-tweets", str(sentiment_dir))
    assert plain["metric"] == "correlation" and rated["metric"] == "rated"
    assert all(rated[r] == builtin[r] for r in ROLES)
    summary = train.main(["--task", "custom", "--metric", "rated", *files, *TINY, "--out", str(tmp_path / "c")])
    assert summary["metric"] == "acc" and {"acc", "pearson", "spearman"} <= set(summary["test"])
    assert json.loads((tmp_path / "c" / "config.json").read_text())["metric"] == "rated"
    with pytest.raises(SystemExit, match="metric 'mcq' reads multiple-choice rows, but its evaluation rows are scores"):
        train.main(["--task", "custom", "--metric", "mcq", *files, *TINY, "--out", str(tmp_path / "d")])
    unrated = tmp_path / "unrated.jsonl"
    unrated.write_text("\n".join(json.dumps({"text": f"t {i}", "label": 1 + i % 6}) for i in range(6)))
    with pytest.raises(ValueError, match=r"unrated.jsonl, row 1: field 'rating' should be a number"):
        data.load_task("custom", **{r: f.split("=", 1)[1] for r, f in zip(ROLES[:3], files)}, test=str(unrated),
                       metric="rated")
    with pytest.raises(SystemExit, match="--metric correlation differs from the run's rated"):  # a resumed run keeps its metric
        train.main(["--task", "custom", "--out", str(tmp_path / "c"), "--resume", "--metric", "correlation"])


def test_show_config_and_the_start_of_a_run(tmp_path, sentiment_dir, capsys):
    argv = ["--task", "sentiment-movies-tweets", "--method", "src-pref", "--data-dir", str(sentiment_dir), "--lr", "3e-4"]
    assert train.main([*argv, "--show-config", "--model", "tiny"]) is None
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for key, value, where in (("lr", "0.0003", "flag"), ("max_len", "96", "the sentiment tasks' settings"),
                              ("batch_src", "8", "the paper's settings for Gemma-2b, appendix A, for src-pref"),
                              ("epochs", "3", "the paper's settings"), ("lam", "0.01", "paper A.1"),
                              ("metric", "rated", "the task's own"), ("model", "tiny", "flag"),
                              ("out", "runs/sentiment-movies-tweets/src-pref/seed0", "runs/TASK/METHOD/seedS")):
        assert lines[key].split()[1] == value and where in lines[key], lines[key]
    assert "source 21 rows" in lines["data:"] and "tiny" in lines["model:"]  # 24 scores rows: 21 pairs
    assert len(lines) == len(vars(settings.parse_args(argv))) - 3 + 1 + 3  # every setting, the header, data, model
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    train.main([*argv, *TINY, "--out", str(tmp_path / "run")])
    start = capsys.readouterr().out.splitlines()[0]
    for part in ("sentiment-movies-tweets src-pref: epochs 3, weight_decay 0.0 (the paper's settings for Gemma-2b, "
                 "appendix A, for src-pref); lr 0.0003, batch_src 2, batch_tgt 2 (flags); ",
                 "max_len 96, eval_every 50 (the sentiment tasks' settings", "metric rated (the task's metric)"):
        assert part in start, start
    train.main(["--out", str(tmp_path / "run"), "--resume", "--show-config"])
    resumed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "the run's config.json" in resumed["lr"] and resumed["max_steps"].split()[1] == "2"


def test_missing_model_and_data_are_said_together(tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "legaladvice-ko", "--data-dir", str(tmp_path / "data"), "--model", str(tmp_path / "m")])
    message = str(e.value)
    assert message.startswith("error: two things are missing. The data: task 'legaladvice-ko' needs") and \
        "The model: the base model" in message and "python gemma.py fetch gemma-3-270m" in message
    assert message.count("pip install huggingface_hub") == 2  # the `hf` command comes with that package
