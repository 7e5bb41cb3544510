"""The prompted baselines (prompted.py): the authors' questions, the chain of thought and constrained answer against
greedy generation and an uncached forward pass, few-shot examples from the source only, whole examples dropped to fit
the context, eval.py's tie rules, and end to end through train.py on a tiny random model."""
import json
import os

import numpy as np
import pytest
import torch

import data
import eval as ev
import prompted
import train
from gemma import Gemma, GemmaConfig

PAIR = {"prompt": "Is it legal?", "response_chosen": "Ask a lawyer.", "response_rejected": "Yes."}


def test_questions_are_the_authors():
    text, options, right = prompted.question("reddit", "pairs", PAIR, flip=False)
    assert text == ("Given the Reddit question Is it legal?, which of the following responses is likely to receive "
                    "more upvotes (i.e. is likely to be deemed more helpful by the Reddit community)?\nA: Ask a "
                    "lawyer.\nB: Yes.") and options == ["A", "B"] and right == "A"
    text, _, right = prompted.question("safety", "pairs", PAIR, flip=True)
    assert text.endswith("safer and more harmless?\nA: Yes.\nB: Ask a lawyer.") and right == "B"
    row = data.oddoneout_rows("fruits", "val", n=1)[0]
    text, options, right = prompted.question("ooo", "mcq", row, flip=False)  # the paper's A.6 prompt, the row's own
    assert text.startswith("Identify the item that does not fit. Only output the name of the item as written and "
                           "nothing else.\n\n") and text == row["prompt"].strip()
    assert options == prompted.mcq_options(row) and right == row["correct"] == options[0]
    text, options, right = prompted.question("essay", "scores", {"text": "An essay.", "label": 4}, False)
    assert text.startswith("Score the following essay on a scale of 1 (poor) to 6 (great)") and right == "4"
    assert options == list("123456")
    task = {"family": "cross-lingual"}
    assert prompted.style(task, "pairs") == "reddit" and prompted.style({"family": "few-shot"}, "pairs") == "safety"
    assert prompted.style({"family": "sentiment"}, "scores") == "sentiment-scores"


def test_pair_prompt_never_holds_the_label():
    """(chosen x, rejected y) shown flipped reads as (chosen y, rejected x) unflipped: only the right answer differs."""
    swapped = {**PAIR, "response_chosen": PAIR["response_rejected"], "response_rejected": PAIR["response_chosen"]}
    a, b = prompted.question("reddit", "pairs", PAIR, True), prompted.question("reddit", "pairs", swapped, False)
    assert a[0] == b[0] and a[2] == "B" and b[2] == "A"


def test_few_shot_shows_source_examples_and_their_answers_only():
    task = data.load_task("oddoneout-desserts-fruits")
    shots = prompted.choose_shots(prompted.shot_rows(task, "mcq"), 10, seed=0)
    assert len(shots) == 10 and all(s in task["source"] for s in shots)
    assert prompted.choose_shots(task["source"], 10, 0) != prompted.choose_shots(task["source"], 10, 1)  # seeded
    texts = prompted.shot_texts("ooo", "mcq", shots, 0)
    ctx = prompted.context("ooo", texts)
    assert ctx.startswith("\nIdentify the item that does not fit. Here are some examples:\n\n") and ctx.endswith("\n\n")
    for s, t in zip(shots, texts):
        assert t.endswith(f"\nFinal Answer (only output the name of the item and nothing else): {s['correct']}")
    target = {r["prompt"] for r in task["val"] + task["test"]}
    assert not any(r["prompt"] in target for r in shots)  # no target question, so no target label
    # scored texts asked about, pairs in the source (the sentiment tasks): the source's texts with their own scores
    t = {"name": "t", "kind": "pairs", "source": [{"prompt": "p", "response_chosen": "good", "response_rejected": "bad",
                                                   "score_chosen": 5, "score_rejected": 2}]}
    assert prompted.shot_rows(t, "scores") == [{"text": "good", "label": 5}, {"text": "bad", "label": 2}]
    with pytest.raises(ValueError, match="few-shot-lm: task 't' has pairs source rows without scores"):
        prompted.shot_rows({**t, "source": [PAIR]}, "scores")
    # a source repeated many times (CValues: 10 examples x 1000) gives distinct shots
    repeated = [{"prompt": f"q{i % 2}", "response_chosen": "a", "response_rejected": "b"} for i in range(100)]
    assert len(prompted.choose_shots(repeated, 5, 1)) == 2


class CharTok:
    """One token per character: lengths are easy to reason about."""
    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text, bos=True):
        return [self.bos_id] * bos + [3 + ord(c) % 200 for c in text]

    def decode(self, ids):
        return "".join(chr(i - 3) for i in ids)


def test_too_long_drops_whole_examples_never_the_instruction():
    tok, shots = CharTok(), [f"example {i} " + "x" * 50 for i in range(10)]
    q = tok.encode(prompted.question("reddit", "pairs", PAIR, False)[0] + "\n\n" + prompted.THINK, bos=False)
    for keep in (10, 7, 0):
        budget = 1 + len(prompted.context("reddit", shots[:keep])) + len(q)
        ids, n, cut = prompted.fit(tok, "reddit", "pairs", PAIR, False, shots, budget)
        assert (ids, n, cut) == (q, keep, False)  # the question whole, the first `keep` examples
        assert prompted.fit(tok, "reddit", "pairs", PAIR, False, shots, budget - 1)[1] == max(keep - 1, 0) or keep == 0
    long = {**PAIR, "response_chosen": "y" * 400}
    ids, n, cut = prompted.fit(tok, "reddit", "pairs", long, False, shots, 300)
    text = tok.decode(ids)
    assert n == 0 and cut and len(ids) <= 299 and text.startswith("Given the Reddit question Is it legal?, which")
    assert "more helpful by the Reddit community)?\nA: " in text and text.endswith(prompted.THINK)
    with pytest.raises(ValueError, match="--context 20: too small"):
        prompted.fit(tok, "reddit", "pairs", PAIR, False, shots, 20)


def test_chain_of_thought_and_answers_match_generate_and_a_plain_forward():
    """think_and_answer (a shared prefix's cache expanded over a batch, left-padded questions, rows that stop at
    different steps, answers of one and of several tokens) against Gemma.generate on each question alone (greedy, the
    chain cut at its first stop token) and against log-softmax of one uncached forward over the whole text."""
    torch.manual_seed(0)
    cfg = GemmaConfig.tiny()
    cfg.vocab_size = 64
    model = Gemma(cfg).eval()
    g = torch.Generator().manual_seed(1)
    prefix = [2] + torch.randint(3, 64, (7,), generator=g).tolist()
    questions = [torch.randint(3, 64, (n,), generator=g).tolist() for n in (4, 9, 1)]
    head = [10, 11]
    options = [[[5], [6, 7, 8]], [[5], [9]], [[12, 13], [6]]]  # K = 2 answers per question, of 1 to 3 tokens
    think = 12
    # a stop set that ends some chains early and lets one run its full length
    free = [model.generate(torch.tensor([prefix + q]), max_new_tokens=think)[0, len(prefix) + len(q):].tolist()
            for q in questions]
    stop = {free[0][3], free[1][0]} - set(free[2])
    cache = prompted.prefill(model, prefix, "cpu")
    cot, ll = prompted.think_and_answer(model, cache, len(prefix), questions, head, options, think, stop, 0, "cpu")
    lengths = []
    for q, c, f, opts, row in zip(questions, cot, free, options, ll):
        want = next((f[:i] for i, t in enumerate(f) if t in stop), f)
        assert c == want
        lengths.append(len(c))
        for o, got in zip(opts, row):
            seq = prefix + q + c + head + o
            with torch.no_grad():
                lp = torch.log_softmax(model.logits(model(torch.tensor([seq])))[0].double(), -1)
            start = len(seq) - len(o)
            assert got.item() == pytest.approx(sum(lp[start - 1 + i, t].item() for i, t in enumerate(o)), abs=1e-4)
    assert len(set(lengths)) > 1 and think in lengths  # rows did stop at different steps, one ran to the limit


def test_ties_follow_eval_rules():
    pairs = [PAIR] * 3
    ll = [[-1.0, -2.0], [-1.0, -1.0], [-3.0, -1.0]]  # right, tie, wrong (all with the chosen as A)
    assert prompted.metrics("pairs", "pairwise", pairs, ["A"] * 3, ll) == {"acc": 0.5}
    assert prompted.metrics("pairs", "pairwise", pairs, ["B"] * 3, ll) == {"acc": 0.5}  # (right: B, 1-right: A)
    m = prompted.metrics("mcq", "mcq", [{}] * 2, None, [[0, -1, -1, -1, -1], [0, 0, -1, -1, -1]])
    assert m["acc"] == 0.75 and m["rank"] == 0.25
    assert list(prompted.predicted_scores([[0, -1, -1, -1, -1, -1], [-1, 0, -1, 0, -1, -1]])) == [1.0, 3.0]
    rows = [{"text": "t", "label": s} for s in (1, 2, 5, 6)]
    ll = np.eye(6)[[0, 2, 3, 5]]  # predicts 1, 3, 4, 6
    m = prompted.metrics("scores", "correlation", rows, None, ll)
    assert m["pearson"] == pytest.approx(ev.pearson([1, 3, 4, 6], [1, 2, 5, 6]))


def summary_of(tmp_path, method, *flags):
    out = tmp_path / method
    train.main(["--task", "oddoneout-desserts-fruits", "--model", "tiny", "--method", method, "--eval-rows", "5",
                "--gen-tokens", "6", "--out", str(out), *flags])
    return out, json.loads((out / "summary.json").read_text())


def test_random_model_end_to_end(tmp_path):
    """A random tiny model still answers every question (a constrained choice): no parse failure; every generation
    shows the chain of thought, the answer head and the chosen answer; eval.py --table reads the runs."""
    head = "Final Answer (only output the name of the item and nothing else): "
    for method in ("base-lm", "few-shot-lm"):
        out, s = summary_of(tmp_path, method)
        assert s["method"] == method and s["metric"] == "acc" and s["steps"] == 0
        assert s["parse_failures"] == {"val": 0.0, "test": 0.0} and s["shots"] == (10 if method == "few-shot-lm" else 0)
        gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
        assert len(gens) == 10
        for g in gens:
            assert g["completion"].startswith(prompted.THINK) and g["completion"].endswith(f"\n{head}{g['chosen']}")
            assert g["chosen"] in g["loglik"] and g["right"] == (g["chosen"] == g["answer"])
        for split in ("val", "test"):
            rows = [g for g in gens if g["split"] == split]
            assert s[split]["acc"] == pytest.approx(ev.mcq_accuracy(
                [g["loglik"][g["answer"]] for g in rows],
                [[v for k, v in g["loglik"].items() if k != g["answer"]] for g in rows]))
        shots = json.loads((out / "shots.json").read_text())
        source = data.load_task("oddoneout-desserts-fruits")["source"]
        assert len(shots["rows"]) == s["shots"] and all(r in source for r in shots["rows"])  # never a target row
        assert {json.loads(x)["split"] for x in (out / "metrics.jsonl").read_text().splitlines()} == {"val", "test"}
    table = ev.table(str(tmp_path))
    assert "base-lm" in table and "few-shot-lm" in table and "oddoneout-desserts-fruits" in table


def test_refusals(tmp_path):
    out, _ = summary_of(tmp_path, "base-lm")
    with pytest.raises(SystemExit, match="already holds a run"):
        summary_of(tmp_path, "base-lm")
    with pytest.raises(SystemExit, match="trains nothing"):
        train.main(["--out", str(out), "--resume"])
    with pytest.raises(SystemExit, match="--gen-tokens must be at least 1"):
        summary_of(tmp_path, "few-shot-lm", "--gen-tokens", "0")
    assert os.path.isfile(out / "summary.json")
