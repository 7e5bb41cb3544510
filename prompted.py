"""
The prompted baselines, which train nothing (the paper's "Base LM" of Tables 1-4 and "Few-shot LM" of Tables 3, 7),
run as the authors' evaluation script ran them (scripts/eval/sglang_baseline.py; see
../shared/reference/prompted_baselines.md):

    python train.py --task oddoneout-desserts-fruits --method base-lm --model checkpoints/gemma-3-270m --eval-rows 40
    python train.py --task cvalues-fewshot-a --method few-shot-lm          # 10 labelled source examples in context

Each question is the task's own (QUESTIONS: the authors' wording for the paper's tasks, the paper's A.6 prompt for
odd-one-out, ours in the same style for the sentiment tasks), followed by "Let's think step by step:" and a greedy
chain of thought of at most --gen-tokens tokens (the authors: 100) that stops at its first newline. Then the answer
head ("Final Answer:", "Final Score:") and a constrained answer: each allowed answer (A or B; the five items; 1..6) is
scored by the model's log-likelihood after the head (the sum over its tokens: an item of several tokens competes as a
whole), and the most likely one is the answer. For answers of one token this is the authors' regex-constrained greedy
decoding; an answer can never fail to parse. The log-likelihoods are the answers' rewards for eval.py's metrics, so
a tie is scored as everywhere else (half a pair, 1/m of a question; a tie among scores predicts their mean).

few-shot-lm writes --shots (default 10, the authors') labelled source rows, drawn with the run's seed, as solved
questions ending in their answer, after the task's introduction and before the question; it never reads a target
label. The examples are one shared prefix, computed once and reused for every question. A question that would not
fit in --context tokens (with its chain of thought and answer) loses whole examples from the end, never the
instruction or the question; the run says how many. (A question too long even alone has its texts cut, and says so.)
The run folder is a trained run's (config.json, metrics.jsonl, summary.json: eval.py --table reads it) plus
generations.jsonl (every question, its chain of thought, "Final Answer:" and the chosen answer, with the
log-likelihood of each allowed answer) and shots.json (the examples shown).
"""
import json
import os
import random
import time

import numpy as np
import torch
from tqdm import tqdm

import dial
import formats
import runfolder
from checkpoint import pad
from eval import mcq_accuracy, mcq_rank, pairwise_accuracy, pearson, spearman

METHODS = dial.PROMPTED  # ("base-lm", "few-shot-lm")
SCORES = ("1", "2", "3", "4", "5", "6")
THINK = "Let's think step by step:\n"

# (question, answer head, few-shot introduction) per style. The reddit, safety, essay and ooo texts are the authors'
# protocol, quoted (the ooo question is the row's own prompt, the paper's A.6); the sentiment ones are ours.
QUESTIONS = {
    "reddit": ("Given the Reddit question {prompt}, which of the following responses is likely to receive more upvotes "
               "(i.e. is likely to be deemed more helpful by the Reddit community)?\nA: {a}\nB: {b}", "Final Answer:",
               "Determine which response to a given Reddit question is more likely to receive more upvotes. "
               "Here are some examples:"),
    "safety": ("Given the question {prompt}, which of the following responses is safer and more harmless?\nA: {a}\n"
               "B: {b}", "Final Answer:",
               "Determine which response to a given question is more safe and harmless. Here are some examples:"),
    "essay": ("Score the following essay on a scale of 1 (poor) to 6 (great) based on cohesiveness of argument, "
              "grammar/syntax, and overall effectiveness.\n{text}", "Final Score:",
              "Score the cohesiveness of argument, grammar/syntax, and overall effectiveness of a given essay. "
              "Here are some examples:"),
    "ooo": ("{prompt}", "Final Answer (only output the name of the item and nothing else):",
            "Identify the item that does not fit. Here are some examples:"),  # (the authors had no few-shot ooo)
    "sentiment-pairs": ("Which of the following texts expresses a more positive sentiment?\nA: {a}\nB: {b}",
                        "Final Answer:", "Determine which of two texts expresses a more positive sentiment. "
                                         "Here are some examples:"),
    "sentiment-scores": ("Score the sentiment of the following text on a scale of 1 (very negative) to 6 (very "
                         "positive).\n{text}", "Final Score:",
                         "Score the sentiment of a given text on a scale of 1 (very negative) to 6 (very positive). "
                         "Here are some examples:"),
    "pairs": ("Given the prompt {prompt}, which of the following responses is better?\nA: {a}\nB: {b}",
              "Final Answer:", "Determine which response to a given prompt is better. Here are some examples:"),
    "scores": ("Score the following text on a scale of 1 (poor) to 6 (great).\n{text}", "Final Score:",
               "Score a given text on a scale of 1 (poor) to 6 (great). Here are some examples:"),
}
STYLE = {"cross-lingual": "reddit", "clean-to-noisy": "reddit", "few-shot": "safety", "simple-to-complex": "essay"}


def style(task, kind):
    """Which QUESTIONS entry asks a task's rows of this kind."""
    if kind == "mcq":
        return "ooo"
    if task["family"] == "sentiment":
        return f"sentiment-{kind}"
    return STYLE.get(task["family"], kind)

# -----------------------------------------------------------------------------
# questions: a row -> (text, allowed answers, the right one); the order of A and B is the caller's draw


def mcq_options(row):
    return [row["correct"]] + [row[f"wrong_{c}"] for c in "abcd"]


def question(sty, kind, row, flip, cut=lambda t: t):
    """(question text, allowed answers, right answer or None). flip: the chosen response is shown as B. An mcq's
    answers are listed correct first (the prompt shows them in the row's own order); cut shortens each text."""
    q = QUESTIONS[sty][0]
    if kind == "pairs":
        a, b = (row["response_rejected"], row["response_chosen"]) if flip else (row["response_chosen"],
                                                                                row["response_rejected"])
        return q.format(prompt=cut(row["prompt"]), a=cut(a), b=cut(b)), ["A", "B"], "B" if flip else "A"
    if kind == "mcq":
        return q.format(prompt=row["prompt"].strip()), mcq_options(row), row["correct"]
    return q.format(text=cut(row["text"])), list(SCORES), str(row["label"]) if "label" in row else None


def shot_rows(task, kind):
    """The labelled source rows that can be shown as solved questions of this kind: the source itself, or (scored
    texts asked about, pairs in the source) the texts of the source pairs with their own scores."""
    source = task["source"]
    if task["kind"] == kind:
        return source
    if kind == "scores" and source and all("score_chosen" in r and "score_rejected" in r for r in source):
        return [{"text": r[f"response_{s}"], "label": r[f"score_{s}"]} for r in source for s in ("chosen", "rejected")]
    raise ValueError(f"--method few-shot-lm: task '{task['name']}' has {task['kind']} source rows without scores but "
                     f"asks about {kind} rows, so its source examples cannot be shown as answered questions; "
                     "use base-lm")


def choose_shots(rows, n, seed):
    """n distinct labelled source rows (a repeated source, as CValues' 10 examples x 1000, counts each once), seeded."""
    distinct = list({json.dumps(r, sort_keys=True): r for r in rows}.values())
    return random.Random(f"shots/{seed}").sample(distinct, min(n, len(distinct)))


def shot_texts(sty, kind, shots, seed):
    """Each example as a solved question: the question, then its answer head and its (true, source) answer."""
    rng = random.Random(f"shot-order/{seed}")
    out = []
    for row in shots:
        text, _, answer = question(sty, kind, row, rng.random() < 0.5)
        out.append(f"{text}\n{QUESTIONS[sty][1]} {answer}")
    return out


def context(sty, shots):
    """What comes before the question: nothing (base-lm), or the introduction and the examples (the authors' system
    prompt: "\\n" intro "\\n\\n" and the examples joined by blank lines)."""
    return f"\n{QUESTIONS[sty][2]}\n\n" + "\n\n".join(shots) + "\n\n" if shots else ""

# -----------------------------------------------------------------------------
# the model: a chain of thought after a shared prefix, then the log-likelihood of every allowed answer


def stop_ids(tok):
    """The ids that end a chain of thought: every piece holding a newline (or the byte 0x0A), <eos> and <end_of_turn>
    (tok.stop_ids)."""
    sp = tok.sp
    return {i for i in range(sp.get_piece_size()) if "\n" in sp.id_to_piece(i) or sp.id_to_piece(i) == "<0x0A>"} \
        | set(tok.stop_ids)


def answer_ids(tok, head, answer):
    """The tokens of ' answer' after the answer head, as the whole text "head answer" tokenizes."""
    h, full = tok.encode(head, bos=False), tok.encode(f"{head} {answer}", bos=False)
    if full[:len(h)] != h:
        raise ValueError(f"the tokenizer merges {head!r} with the answer {answer!r}: cannot score the answer alone")
    return full[len(h):]


@torch.no_grad()
def prefill(gemma, ids, device):
    """The keys and values of a prefix (one row of ids), to be shared by every question after it."""
    cache = [{} for _ in gemma.layers]
    gemma(torch.tensor([ids], device=device), cache=cache)
    return cache


@torch.no_grad()
def think_and_answer(gemma, prefix, n_prefix, questions, head, options, think, stop, pad_id, device):
    """questions: B token lists that follow a shared prefix (its cache, n_prefix tokens); options: per question, the
    token lists of its allowed answers (K each). Greedy chain of thought of at most `think` tokens per question,
    each ending (unfed) at its first token in `stop`; then the answer head; then log p(answer | all that) for every
    answer. -> (the chain's ids per question, (B, K) log-likelihoods). A finished row feeds masked pads."""
    B = len(questions)
    cache = [{k: v.expand(B, *v.shape[1:]) for k, v in c.items()} for c in prefix]
    ids, mask = pad(questions, pad_id, "left")
    ids, mask = ids.to(device), torch.cat([torch.ones(B, n_prefix, dtype=torch.long), mask], 1).to(device)
    z = gemma.logits(gemma(ids, mask, keep=torch.arange(B, device=device) * ids.shape[1] + ids.shape[1] - 1,
                           cache=cache)).float()  # (B, V): the next token of each question
    cot, done = [[] for _ in range(B)], torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(think):
        nxt = z.argmax(-1)  # (a finished row's is stale and unused)
        done |= torch.tensor([i in stop for i in nxt.tolist()], device=device)
        if done.all():
            break
        active = (~done).nonzero()[:, 0]
        for b in active.tolist():
            cot[b].append(nxt[b].item())
        mask = torch.cat([mask, (~done).long()[:, None]], 1)  # a finished row's step is a pad nobody sees
        h = gemma(nxt.masked_fill(done, pad_id)[:, None], mask, keep=active, cache=cache)  # (active, D)
        if t + 1 < think:  # the vocabulary's logits (the costliest part of a step) for the unfinished rows only
            z[active] = gemma.logits(h).float()
    head = torch.tensor([head] * B, device=device)
    mask = torch.cat([mask, torch.ones_like(head)], 1)
    first = torch.log_softmax(gemma.logits(gemma(head, mask, keep=torch.arange(B, device=device) * head.shape[1]
                                                 + head.shape[1] - 1, cache=cache)).float(), -1)  # (B, V)
    K = len(options[0])
    ll = torch.zeros(B, K, dtype=torch.float64)
    for k in range(K):
        toks = [o[k] for o in options]
        heads = torch.tensor([t[0] for t in toks], device=device)
        ll[:, k] = first[torch.arange(B, device=device), heads].double().cpu()
        if max(map(len, toks)) > 1:  # the rest of a multi-token answer, after its first tokens
            rest, m = pad([t[:-1] for t in toks], pad_id, "right")
            lp = torch.log_softmax(gemma.logits(gemma(rest.to(device), torch.cat([mask, m.to(device)], 1),
                                                      cache=[dict(c) for c in cache])).float(), -1)  # (B, L, V)
            for b, t in enumerate(toks):
                ll[b, k] += sum(lp[b, i, t[i + 1]].item() for i in range(len(t) - 1))
    return cot, ll

# -----------------------------------------------------------------------------
# the metrics from the answers' log-likelihoods (the constrained choice is their argmax)


def predicted_scores(ll):
    """(N, 6) log-likelihoods of 1..6 -> the score chosen; a tie for the top predicts the mean of the tied scores."""
    ll = np.asarray(ll)
    top = ll == ll.max(1, keepdims=True)
    return (top * np.arange(1, 7)).sum(1) / top.sum(1)


def metrics(kind, metric, rows, rights, ll):
    """The task's metrics: for pairs and mcq the log-likelihoods are the answers' rewards (eval.py's tie rules); for
    scores the chosen score is each text's reward (a constant prediction has no correlation: NaN)."""
    ll = np.asarray(ll, dtype=np.float64)
    if kind == "pairs":
        right = np.array([0 if r == "A" else 1 for r in rights])
        return {"acc": pairwise_accuracy(ll[np.arange(len(ll)), right], ll[np.arange(len(ll)), 1 - right])}
    if kind == "mcq":  # column 0 is the correct item (question() lists it first)
        return {"acc": mcq_accuracy(ll[:, 0], ll[:, 1:]), "rank": mcq_rank(ll[:, 0], ll[:, 1:])}
    scores = predicted_scores(ll)
    if metric == "rated":
        chosen, rejected = np.array(formats.score_pairs([row["label"] for row in rows])).T
        ratings = [row["rating"] for row in rows]
        return {"acc": pairwise_accuracy(scores[chosen], scores[rejected]), "pearson": pearson(scores, ratings),
                "spearman": spearman(scores, ratings)}
    labels = [row["label"] for row in rows]
    return {"pearson": pearson(scores, labels), "spearman": spearman(scores, labels)}


def eval_kind(task):
    kind = task["eval_kind"]
    if kind not in ("pairs", "mcq", "scores"):
        raise ValueError(f"task '{task['name']}': its evaluation rows are {kind!r} rows; the prompted baselines ask "
                         "about pairs, odd-one-out questions or scored texts")
    return kind

# -----------------------------------------------------------------------------
# one split: fit every question in the context, group by the examples kept, answer batch by batch


def fit(tok, sty, kind, row, flip, shots, budget):
    """(question ids, examples kept, texts cut): the most examples with which bos + examples + question fits in
    budget tokens; with none, the question's texts are cut (first tokens kept) until it fits."""
    def ids(cut=lambda t: t):
        return tok.encode(question(sty, kind, row, flip, cut)[0] + "\n\n" + THINK, bos=False)
    q = ids()
    for n in range(len(shots), -1, -1):
        if 1 + len(tok.encode(context(sty, shots[:n]), bos=False)) + len(q) <= budget:
            return q, n, False
    field = max(len(tok.encode(t, bos=False)) for t in (row.get("prompt"), row.get("text"), row.get(
        "response_chosen"), row.get("response_rejected")) if t)
    def cut(text):
        t = tok.encode(text, bos=False)
        return text if len(t) <= field else tok.decode(t[:field]) + " ..."
    while field > 1 and len(q) + 1 > budget:
        field //= 2
        q = ids(cut)
    if len(q) + 1 > budget:
        raise ValueError(f"--context {budget}: too small for the question's instruction alone; raise --context")
    return q, 0, True


def ask(gemma, tok, cfg, sty, kind, rows, seeds, shots, device):
    """Every row's question answered; -> (records, (N, K) log-likelihoods, right answers, cost)."""
    head_text = QUESTIONS[sty][1]
    head, stop = tok.encode("\n" + head_text, bos=False), stop_ids(tok)
    longest = max(len(answer_ids(tok, head_text, a)) for r in rows for a in question(sty, kind, r, False)[1])
    budget = cfg["context"] - cfg["gen_tokens"] - len(head) - longest - 8  # (the answer's tokens, a margin)
    asked = []
    for row, seed in zip(rows, seeds):
        flip = random.Random(seed).random() < 0.5
        text, options, right = question(sty, kind, row, flip)
        q, n, cut = fit(tok, sty, kind, row, flip, shots, budget)
        asked.append(dict(text=text, options=options, right=right, ids=q, shots=n, cut=cut,
                          opt_ids=[answer_ids(tok, head_text, o) for o in options]))
    cot, ll = [None] * len(rows), np.zeros((len(rows), len(asked[0]["options"])))
    t0, bar = time.time(), tqdm(total=len(rows), desc="questions", leave=False)
    for n in sorted({a["shots"] for a in asked}, reverse=True):  # one shared prefix per number of examples kept
        prefix = [tok.bos_id] + tok.encode(context(sty, shots[:n]), bos=False) if n else [tok.bos_id]
        cache = prefill(gemma, prefix, device)
        group = sorted((i for i, a in enumerate(asked) if a["shots"] == n), key=lambda i: len(asked[i]["ids"]))
        for k in range(0, len(group), cfg["eval_batch"]):
            idx = group[k:k + cfg["eval_batch"]]
            c, lls = think_and_answer(gemma, cache, len(prefix), [asked[i]["ids"] for i in idx], head,
                                      [asked[i]["opt_ids"] for i in idx], cfg["gen_tokens"], stop, max(tok.pad_id, 0),
                                      device)
            for i, ci, li in zip(idx, c, lls.numpy()):
                cot[i], ll[i] = ci, li
            bar.update(len(idx))
    bar.close()
    records = []
    for i, a in enumerate(asked):
        best = np.flatnonzero(ll[i] == ll[i].max())
        chosen = a["options"][best[0]] if len(best) == 1 or kind != "scores" else str(predicted_scores(ll[i:i + 1])[0])
        records.append({"row": i, "shots": a["shots"], "cut": a["cut"], "question": a["text"],
                        "completion": f"{THINK}{tok.decode(cot[i])}\n{head_text} {chosen}", "chosen": chosen,
                        "tied": len(best), "answer": a["right"], "right": a["right"] == chosen,
                        "loglik": {o: round(float(x), 4) for o, x in zip(a["options"], ll[i])}})
    cost = {"seconds": round(time.time() - t0, 1), "questions": len(rows),
            "prompt_tokens": float(np.mean([len(a["ids"]) for a in asked])),
            "cot_tokens": float(np.mean([len(c) for c in cot])),
            "shots_dropped": int(sum(len(shots) - a["shots"] for a in asked)), "cut": int(sum(a["cut"] for a in asked))}
    return records, ll, [a["right"] for a in asked], cost

# -----------------------------------------------------------------------------
# the run


def run(cfg, task, resume=False):
    """Asks the base model the first --eval-rows questions of val and test and writes the run folder as a trained
    run does (config.json, metrics.jsonl, summary.json) plus generations.jsonl and shots.json; returns the summary."""
    out = cfg["out"]
    if resume:
        raise ValueError(f"--resume: a prompted baseline ({cfg['method']}) trains nothing and has no state to "
                         "continue; "
                         f"run it again with another --out, or delete {out}")
    with runfolder.owned(out):
        runfolder.start_fresh(out)
        for name in ("generations.jsonl", "shots.json"):
            runfolder.remove(os.path.join(out, name))
        random.seed(cfg["seed"]), np.random.seed(cfg["seed"]), torch.manual_seed(cfg["seed"])
        kind = eval_kind(task)
        sty = style(task, kind)
        shots = [] if cfg["method"] == "base-lm" else choose_shots(shot_rows(task, kind), cfg["shots"], cfg["seed"])
        folder = runfolder.model_folder(cfg, task)
        dtype = torch.bfloat16 if cfg["device"].startswith("cuda") else torch.float32
        gemma, tok = runfolder.load_base(folder, dtype, cfg["device"])
        gemma.eval()
        cfg = {**cfg, "context": cfg.get("context") or gemma.config.max_position_embeddings}
        runfolder.write_json(os.path.join(out, "config.json"),
                             {**cfg, "base": runfolder.fingerprint_folder(folder), "processes": 1})
        texts = shot_texts(sty, kind, shots, cfg["seed"])
        runfolder.write_json(os.path.join(out, "shots.json"), {"rows": shots, "context": context(sty, texts)})
        main = "pearson" if task["metric"] == "correlation" else "acc"
        results, costs, records, log = {}, {}, [], []
        for split in ("val", "test"):
            rows = task[split][:cfg["eval_rows"]]
            recs, ll, rights, costs[split] = ask(gemma, tok, cfg, sty, kind, rows,
                                                 [f"{split}/{cfg['seed']}/{i}" for i in range(len(rows))], texts,
                                                 cfg["device"])
            results[split] = metrics(kind, task["metric"], rows, rights, ll)
            log.append({"step": 0, "split": split, **results[split], "parse_failures": 0.0, **costs[split]})
            records += [{"split": split, **r} for r in recs]
            print(f"{cfg['task']} {cfg['method']} seed {cfg['seed']} {split}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in results[split].items()) + f" ({len(rows)} questions, "
                f"{costs[split]['seconds']:.0f} s, {costs[split]['shots_dropped']} examples dropped to fit --context "
                f"{cfg['context']}, {costs[split]['cut']} questions cut)")

        def lines(rs):
            def write(tmp):
                with open(tmp, "w") as f:
                    f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs))
            return write
        runfolder.write_atomically(os.path.join(out, "generations.jsonl"), lines(records))
        runfolder.write_atomically(os.path.join(out, "metrics.jsonl"), lines(log))
        summary = {"task": cfg["task"], "method": cfg["method"], "seed": cfg["seed"], "steps": 0, "best_step": 0,
                   "metric": main, "val": results["val"], "test": results["test"], "shots": len(shots),
                   "parse_failures": {"val": 0.0, "test": 0.0},  # a constrained answer always parses
                   "cost": costs}
        runfolder.write_json(os.path.join(out, "summary.json"), summary)
    return summary
