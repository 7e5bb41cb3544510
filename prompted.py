"""
The prompted baselines, which train nothing (the paper's "Base LM" of Tables 1-4 and "Few-shot LM" of Tables 3, 7):
the base language model is asked, with chain of thought, which response is better (pairs), which item does not
belong (odd-one-out), or what score 1..6 a text deserves (scored texts), and its answer is read by a strict parser.

    python train.py --task oddoneout-desserts-fruits --method base-lm --model checkpoints/gemma-3-270m --eval-rows 40
    python train.py --task cvalues-fewshot-a --method few-shot-lm --shots 3     # the source examples in context

few-shot-lm puts --shots labelled source rows (the same ones, seeded, before every question) in front of the
question as worked examples ending in their answer; it never reads a target label. The answer format is one line,
"Answer: X": the first line of the completion that begins with "Answer:" is the answer, and it must be exactly one of
the offered answers (A or B; one of the items as written, ignoring case; 1 to 6), with nothing else on that line but
an optional final period. Anything else (no such line, "A or B", two items, 3.5, a word outside the options) is a
parse failure, counted as a wrong answer in every metric (never a win, a tie or a dropped row) and reported as
"parse_failures" (a rate) beside the metrics. For the correlations of scored texts, a failure scores the middle of
the scale (3.5: no information); in their pairwise accuracy it is a loss.

Responses A and B are shown in a seeded random order, and the items of a question in a seeded random order, so that
a model that always answers "A" (or the first item) scores chance, not the label's usual position.
The run folder is a trained run's (config.json, metrics.jsonl, summary.json) plus generations.jsonl: every prompt's
completion, parsed answer and whether it was right, so that the failures can be read.
"""
import json
import os
import random
import re
import time

import numpy as np
import torch

import data
import dial
import runfolder
from checkpoint import pad
from eval import mcq_accuracy, mcq_rank, pairwise_accuracy, pearson, spearman

METHODS = dial.PROMPTED  # ("base-lm", "few-shot-lm")
SCORES = ("1", "2", "3", "4", "5", "6")
MIDDLE = 3.5  # the score a parse failure gets in a correlation

ASK = {
    "pairs": "Which response to the post is better? Think step by step, then give your final answer on its own line "
             "as 'Answer: A' or 'Answer: B'.\n\n",
    "mcq": "Which item does not belong with the others? Think step by step, then give your final answer on its own "
           "line as 'Answer: ' followed by the item exactly as written.\n\n",
    "scores": "Rate the text on a scale from 1 (worst) to 6 (best). Think step by step, then give your final answer "
              "on its own line as 'Answer: ' followed by one number from 1 to 6.\n\n",
}
THINK = "Let's think step by step."

# -----------------------------------------------------------------------------
# prompts: a row (and, for few-shot, labelled source rows) -> text; the order of options is the caller's draw


def _cut(text, cut):
    return cut(text) if cut else text


def pair_body(row, flip, cut=None):
    """A pair as the question shows it; flip: B is the chosen response. -> (text, the right answer)."""
    a, b = row["response_chosen"], row["response_rejected"]
    if flip:
        a, b = b, a
    text = f"Post:\n{_cut(row['prompt'], cut)}\n\nResponse A:\n{_cut(a, cut)}\n\nResponse B:\n{_cut(b, cut)}\n\n"
    return text, "B" if flip else "A"


def mcq_options(row):
    return [row["correct"]] + [row[f"wrong_{c}"] for c in "abcd"]


def mcq_body(row, order):
    """A question with its five options in the given order (a permutation of 0..4; 0 is the correct item)."""
    options = mcq_options(row)  # (the row's own prompt is not shown: the generator's asks for no reasoning)
    return f"Items: {', '.join(options[i] for i in order)}\n\n", row["correct"]


def score_body(row, cut=None):
    prompt = row.get("prompt") or ""
    return (f"Prompt:\n{_cut(prompt, cut)}\n\n" if prompt else "") + f"Text:\n{_cut(row['text'], cut)}\n\n", \
        str(row["label"]) if "label" in row else None


def body(kind, row, rng, cut=None):
    """(question text, right answer) of a row, drawing the order of its options from rng."""
    if kind == "pairs":
        return pair_body(row, rng.random() < 0.5, cut)
    if kind == "mcq":
        order = list(range(5))
        rng.shuffle(order)
        return mcq_body(row, order)
    return score_body(row, cut)


def choose_shots(source, n, seed):
    """n distinct labelled source rows (a repeated source, as CValues' 10 examples x 1000, counts each once), seeded."""
    distinct = list({json.dumps(r, sort_keys=True): r for r in source}.values())
    return random.Random(f"shots/{seed}").sample(distinct, min(n, len(distinct)))


def shots_text(kind, shots, seed, cut=None):
    """The worked examples: each question followed directly by its (true, source) answer."""
    rng = random.Random(f"shot-order/{seed}")
    parts = []
    for row in shots:
        text, answer = body(kind, row, rng, cut)
        parts.append(f"{text}Answer: {answer}\n\n")
    return "".join(parts)


def build_prompt(kind, row, rng, context="", cut=None):
    """The whole prompt for one question: instruction, worked examples (few-shot; "" for base-lm), the question,
    the start of the chain of thought. -> (prompt, right answer)."""
    text, answer = body(kind, row, rng, cut)
    return ASK[kind] + context + text + THINK, answer


# -----------------------------------------------------------------------------
# strict parsing

ANSWER_LINE = re.compile(r"^[ \t]*Answer:(.*)$", re.M)


def parse(completion, kind, options=None):
    """The answer of a completion, or None: the first line beginning with 'Answer:' must hold exactly one of the
    offered answers (pairs: A, B; mcq: one of `options`, ignoring case, returned as written there; scores: 1..6),
    alone but for spaces and one final period."""
    m = ANSWER_LINE.search(completion)
    if not m:
        return None
    value = m.group(1).strip()
    if value.endswith("."):
        value = value[:-1].rstrip()
    if kind == "pairs":
        return value if value in ("A", "B") else None
    if kind == "scores":
        return value if value in SCORES else None
    by_name = {o.lower(): o for o in options}
    return by_name.get(value.lower())


# -----------------------------------------------------------------------------
# generation and the metrics


def generate(gemma, tok, prompts, max_new_tokens, batch_size, device, max_prompt):
    """Greedy completions of prompts, in order: batches of left-padded prompts (sorted by length, so a batch pads
    little), each prompt cut to its last max_prompt tokens; the completion ends at <eos> (or <end_of_turn>:
    tok.stop_ids)."""
    out = [None] * len(prompts)
    ids = [tok.encode(p) for p in prompts]
    ids = [x if len(x) <= max_prompt else x[:1] + x[len(x) - max_prompt + 1:] for x in ids]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        input_ids, mask = pad([ids[j] for j in chunk], tok.pad_id if tok.pad_id >= 0 else 0, side="left")
        new = gemma.generate(input_ids.to(device), mask.to(device), max_new_tokens=max_new_tokens,
                             eos_id=tok.stop_ids)[:, input_ids.shape[1]:].tolist()
        for j, toks in zip(chunk, new):
            out[j] = tok.decode(toks[:next((k for k, i in enumerate(toks) if i in tok.stop_ids), len(toks))])
    return out


def metrics(kind, metric, rows, answers, parsed):
    """The task's metrics from parsed answers (None = failure), with the failure rate."""
    fail = float(np.mean([p is None for p in parsed])) if parsed else 0.0
    if kind == "pairs":  # reward 1 for the response picked, 0 for the other; a failure: NaN, a loss
        r = np.array([[np.nan, np.nan] if p is None else [float(p == a), float(p != a)] for p, a in zip(parsed, answers)])
        return {"acc": pairwise_accuracy(r[:, 0], r[:, 1]), "parse_failures": fail}
    if kind == "mcq":  # reward 1 for the item picked; columns: correct, then the four others
        r = np.array([np.full(5, np.nan) if p is None else
                      [float(p.lower() == o.lower()) for o in mcq_options(row)] for row, p in zip(rows, parsed)])
        return {"acc": mcq_accuracy(r[:, 0], r[:, 1:]), "rank": mcq_rank(r[:, 0], r[:, 1:]), "parse_failures": fail}
    scores = np.array([np.nan if p is None else float(p) for p in parsed])
    filled = np.where(np.isnan(scores), MIDDLE, scores)
    if metric == "rated":
        chosen, rejected = np.array(data.score_pairs([row["label"] for row in rows])).reshape(-1, 2).T
        ratings = [row["rating"] for row in rows]
        return {"acc": pairwise_accuracy(scores[chosen], scores[rejected]), "pearson": pearson(filled, ratings),
                "spearman": spearman(filled, ratings), "parse_failures": fail}
    labels = [row["label"] for row in rows]
    return {"pearson": pearson(filled, labels), "spearman": spearman(filled, labels), "parse_failures": fail}


def eval_kind(task):
    kind = task["eval_kind"]
    if kind not in ("pairs", "mcq", "scores"):
        raise ValueError(f"task '{task['name']}': its evaluation rows are {kind!r} rows; the prompted baselines ask "
                         "about pairs, odd-one-out questions or scored texts")
    return kind


def context_for(cfg, task, kind, cut):
    """base-lm: nothing; few-shot-lm: the worked source examples (the source's labels only)."""
    if cfg["method"] == "base-lm":
        return ""
    if task["kind"] != kind:
        raise ValueError(f"--method few-shot-lm: task '{task['name']}' has {task['kind']} source rows but asks about "
                         f"{kind} rows, so its source examples cannot be shown as answered questions; use base-lm")
    return shots_text(kind, choose_shots(task["source"], cfg["shots"], cfg["seed"]), cfg["seed"], cut)


# -----------------------------------------------------------------------------
# the run


def run(cfg, task, resume=False):
    """Asks the base model about the first --eval-rows rows of val and test and writes the run folder as a trained
    run does (config.json, metrics.jsonl, summary.json) plus generations.jsonl; returns the summary."""
    out = cfg["out"]
    if resume:
        raise ValueError(f"--resume: a prompted baseline ({cfg['method']}) trains nothing and has no state to continue; "
                         f"run it again with another --out, or delete {out}")
    with runfolder.owned(out):
        runfolder.start_fresh(out)
        for name in ("generations.jsonl",):
            runfolder.remove(os.path.join(out, name))
        random.seed(cfg["seed"]), np.random.seed(cfg["seed"]), torch.manual_seed(cfg["seed"])
        kind = eval_kind(task)
        folder = runfolder.model_folder(cfg, task)
        runfolder.write_json(os.path.join(out, "config.json"),
                             {**cfg, "base": runfolder.fingerprint_folder(folder), "processes": 1})
        dtype = torch.bfloat16 if cfg["device"].startswith("cuda") else torch.float32
        gemma, tok = runfolder.load_base(folder, dtype, cfg["device"])
        gemma.eval()
        field = max(cfg["max_len"] // 4, 8)  # each text of a question keeps its first `field` tokens

        def cut(text):
            ids = tok.encode(text, bos=False)
            return text if len(ids) <= field else tok.decode(ids[:field]) + " ..."

        context = context_for(cfg, task, kind, cut)
        main = "pearson" if task["metric"] == "correlation" else "acc"
        results, records, log = {}, [], []
        for split in ("val", "test"):
            rows = task[split][:cfg["eval_rows"]]
            prompts, answers = [], []
            for i, row in enumerate(rows):
                p, a = build_prompt(kind, row, random.Random(f"{split}/{cfg['seed']}/{i}"), context, cut)
                prompts.append(p), answers.append(a)
            t0 = time.time()
            completions = generate(gemma, tok, prompts, cfg["gen_tokens"], cfg["eval_batch"], cfg["device"],
                                   cfg["max_len"] * 8)
            seconds = time.time() - t0
            parsed = [parse(c, kind, mcq_options(row) if kind == "mcq" else None) for c, row in zip(completions, rows)]
            results[split] = {**metrics(kind, task["metric"], rows, answers, parsed), "n": len(rows),
                              "seconds": round(seconds, 1)}
            log.append({"step": 0, "split": split, **results[split]})
            records += [{"split": split, "row": i, "prompt": p, "completion": c, "parsed": q, "answer": a,
                         "right": q is not None and a is not None and q.lower() == a.lower()}
                        for i, (p, c, q, a) in enumerate(zip(prompts, completions, parsed, answers))]
            print(f"{cfg['task']} {cfg['method']} {split}: " + ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results[split].items()))

        def lines(rs):
            def write(tmp):
                with open(tmp, "w") as f:
                    f.write("".join(json.dumps(r) + "\n" for r in rs))
            return write
        runfolder.write_atomically(os.path.join(out, "generations.jsonl"), lines(records))
        runfolder.write_atomically(os.path.join(out, "metrics.jsonl"), lines(log))
        summary = {"task": cfg["task"], "method": cfg["method"], "seed": cfg["seed"], "steps": 0, "best_step": 0,
                   "metric": main, "val": results["val"], "test": results["test"]}
        runfolder.write_json(os.path.join(out, "summary.json"), summary)
    return summary
