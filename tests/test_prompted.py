"""The prompted baselines (prompted.py): the strict parser, prompt construction (few-shot shows source examples and
never a target label), failures counted as wrong answers, and end to end through train.py on a tiny random model."""
import json
import os
import random

import pytest

import data
import eval as ev
import prompted
import train

ITEMS = ["Seville orange", "lychee", "clementine", "radicchio", "key lime"]


@pytest.mark.parametrize("text,want", [
    ("The first is longer.\nAnswer: A", "A"), ("Answer: B.", "B"), ("  Answer:   A  \nmore text", "A"),
    ("reasoning\nAnswer: B\n\nPost:\nAnswer: A", "B"),  # the first answer line decides; later text is ignored
    ("Answer: A or B", None), ("Answer: a", None), ("Answer: (A)", None), ("Answer: AB", None), ("Answer:", None),
    ("The answer is A.", None), ("I think A\nB", None), ("", None), ("Answer: C\nAnswer: A", None),
    ("Answer: **A**", None), ("Answer: A..", None)])
def test_parse_pairs(text, want):
    assert prompted.parse(text, "pairs") == want


@pytest.mark.parametrize("text,want", [
    ("Answer: radicchio", "radicchio"), ("Answer: Radicchio.", "radicchio"), ("Answer: seville orange", "Seville orange"),
    ("Answer: radicchio, lychee", None), ("Answer: radic", None), ("Answer: radicchio is the odd one", None),
    ("Answer: 4", None), ("radicchio", None), ("Answer: the radicchio", None)])
def test_parse_mcq(text, want):
    assert prompted.parse(text, "mcq", ITEMS) == want


@pytest.mark.parametrize("text,want", [
    ("Answer: 4", "4"), ("Answer: 1.", "1"), ("Answer: 6", "6"), ("Answer: 4.5", None), ("Answer: 7", None),
    ("Answer: 0", None), ("Answer: 4/6", None), ("Answer: four", None), ("Answer: 3 or 4", None)])
def test_parse_scores(text, want):
    assert prompted.parse(text, "scores") == want


def test_failures_are_wrong_answers():
    rows = [{"prompt": "p", "response_chosen": "x", "response_rejected": "y"}] * 4
    m = prompted.metrics("pairs", "pairwise", rows, ["A", "B", "A", "B"], ["A", "A", None, "B"])
    assert m == {"acc": 0.5, "parse_failures": 0.25}  # right, wrong, failure (a loss, not a tie), right
    mcq = [{"prompt": "", "correct": "radicchio", "wrong_a": "lychee", "wrong_b": "clementine",
            "wrong_c": "key lime", "wrong_d": "Seville orange"}] * 3
    m = prompted.metrics("mcq", "mcq", mcq, ["radicchio"] * 3, ["radicchio", "lychee", None])
    assert m["acc"] == pytest.approx(1 / 3) and m["parse_failures"] == pytest.approx(1 / 3)
    assert m["rank"] == pytest.approx((0 + 2.5 + 4) / 3)  # a failure ranks the correct item last
    texts = [{"text": "t", "label": s} for s in (1, 2, 5, 6)]
    m = prompted.metrics("scores", "correlation", texts, None, ["1", "3", None, "6"])
    assert m["pearson"] == pytest.approx(ev.pearson([1, 3, 3.5, 6], [1, 2, 5, 6]))  # a failure: the middle, 3.5
    assert m["parse_failures"] == 0.25


def test_pair_prompt_never_holds_the_label():
    """The prompt of (chosen x, rejected y) shown flipped is the prompt of (chosen y, rejected x) shown unflipped:
    what the model reads does not depend on which response is the chosen one, only the expected answer does."""
    row = {"prompt": "Is it legal?", "response_chosen": "Ask a lawyer.", "response_rejected": "Yes."}
    swapped = {**row, "response_chosen": row["response_rejected"], "response_rejected": row["response_chosen"]}
    assert prompted.pair_body(row, True)[0] == prompted.pair_body(swapped, False)[0]
    assert prompted.pair_body(row, True)[1] == "B" and prompted.pair_body(swapped, False)[1] == "A"
    flips = [prompted.body("pairs", row, random.Random(f"val/0/{i}"))[1] for i in range(400)]
    assert 0.4 < flips.count("A") / 400 < 0.6  # the chosen response is A about half the time


def test_mcq_prompt_shows_the_items_in_a_random_order():
    row = data.oddoneout_rows("desserts", "val", n=1)[0]
    firsts = set()
    for i in range(50):
        text, answer = prompted.body("mcq", row, random.Random(i))
        shown = text.split("Items: ")[1].strip().split(", ")
        assert sorted(shown) == sorted(prompted.mcq_options(row)) and answer == row["correct"]
        firsts.add(shown[0])
    assert len(firsts) == 5  # the correct item (first of mcq_options) is not always first


def test_few_shot_shows_source_examples_and_their_answers_only():
    task = data.load_task("oddoneout-desserts-fruits")
    cfg = {"method": "few-shot-lm", "shots": 3, "seed": 0}
    context = prompted.context_for(cfg, task, "mcq", None)
    shots = prompted.choose_shots(task["source"], 3, 0)
    assert len(shots) == 3 and all(s in task["source"] for s in shots)
    assert context.count("Answer: ") == 3
    for s in shots:
        assert f"Answer: {s['correct']}\n" in context  # the source's own labels
    target = task["test"][0]
    p, answer = prompted.build_prompt("mcq", target, random.Random(0), context)
    assert p.startswith(prompted.ASK["mcq"] + context) and p.endswith(prompted.THINK)
    assert f"Answer: {answer}" not in p  # the target's answer appears nowhere
    base, _ = prompted.build_prompt("mcq", target, random.Random(0), prompted.context_for({**cfg, "method": "base-lm"},
                                                                                      task, "mcq", None))
    assert base == p.replace(context, "")
    # a source repeated many times (CValues: 10 examples x 1000) gives distinct shots, the same for every seed's call
    repeated = [{"prompt": f"q{i % 2}", "response_chosen": "a", "response_rejected": "b"} for i in range(100)]
    assert len(prompted.choose_shots(repeated, 5, 1)) == 2
    assert prompted.choose_shots(task["source"], 3, 7) == prompted.choose_shots(task["source"], 3, 7)


def summary_of(tmp_path, method, *flags):
    out = tmp_path / method
    train.main(["--task", "oddoneout-desserts-fruits", "--model", "tiny", "--method", method, "--eval-rows", "5",
                "--gen-tokens", "6", "--out", str(out), *flags])
    return out, json.loads((out / "summary.json").read_text())


def test_random_model_end_to_end(tmp_path):
    """A random tiny model cannot follow the format: its failures are counted as wrong answers, and the run folder
    is one that eval.py --table reads beside trained runs."""
    for method in ("base-lm", "few-shot-lm"):
        out, s = summary_of(tmp_path, method)
        assert s["method"] == method and s["metric"] == "acc" and s["steps"] == 0
        for split in ("val", "test"):
            m = s[split]
            assert m["n"] == 5 and 0 <= m["parse_failures"] <= 1
            assert m["acc"] <= 1 - m["parse_failures"] + 1e-9  # a failure is never a win
        gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
        assert len(gens) == 10 and all(g["right"] == (g["parsed"] == g["answer"]) for g in gens)
        assert sum(g["parsed"] is None for g in gens if g["split"] == "test") == round(5 * s["test"]["parse_failures"])
        assert {json.loads(x)["split"] for x in (out / "metrics.jsonl").read_text().splitlines()} == {"val", "test"}
        assert json.loads((out / "config.json").read_text())["method"] == method
    table = ev.table(str(tmp_path))
    assert "base-lm" in table and "few-shot-lm" in table and "oddoneout-desserts-fruits" in table


def test_answers_are_scored_end_to_end(tmp_path, monkeypatch):
    """A model that answers right on even rows, wrongly on rows 1 mod 4 and off-format on rows 3 mod 4 scores
    exactly that: acc 0.5, parse failures 0.25 (the generation is replaced; parsing and scoring are real)."""
    truth = {frozenset(prompted.mcq_options(r)): r for r in data.oddoneout_rows("fruits", "val")}
    truth.update({frozenset(prompted.mcq_options(r)): r for r in data.oddoneout_rows("fruits", "test")})

    def fake(gemma, tok, prompts, *args):
        out = []
        for i, p in enumerate(prompts):
            row = truth[frozenset(p.split("Items: ")[-1].split("\n")[0].split(", "))]
            out.append(["Because.\nAnswer: " + row["correct"], "Answer: " + row["wrong_a"] + ".",
                        "Answer: " + row["correct"].upper(), "the odd one is " + row["correct"]][i % 4])
        return out
    monkeypatch.setattr(prompted, "generate", fake)
    _, s = summary_of(tmp_path, "base-lm", "--eval-rows", "8")
    for split in ("val", "test"):
        assert s[split]["acc"] == 0.5 and s[split]["parse_failures"] == 0.25 and s[split]["n"] == 8


def test_refusals(tmp_path):
    out, _ = summary_of(tmp_path, "base-lm")
    with pytest.raises(SystemExit, match="already holds a run"):
        summary_of(tmp_path, "base-lm")
    with pytest.raises(SystemExit, match="trains nothing"):
        train.main(["--out", str(out), "--resume"])
    with pytest.raises(SystemExit, match="--gen-tokens must be at least 1"):
        summary_of(tmp_path, "few-shot-lm", "--gen-tokens", "0")
    assert os.path.isfile(out / "summary.json")
