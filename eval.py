"""
Evaluation: the paper's metrics in numpy (numpy arrays in, floats out).

Where we differ from the authors' code: a tie between chosen and rejected rewards counts half, not as correct (their
argmax picks the first of equal scores, so identical truncated pairs, which always tie in bf16, counted as wins);
ties="correct" (train.py --ties correct) reproduces theirs.
"""
import json
import os

import numpy as np
import torch
import torch.distributed as dist

import cli
import data
import dial
import figures
import formats
import packing
import runfolder
from figures import mean_se, summaries
from lora import load_adapter
from processes import command


TIES = ("half", "correct")
# Paper Table 8 (Gemma-2b, 3 seeds, mean and standard error): odd-one-out test accuracy of Src-Pref and DIAL, by
# (source, target) category; table() prints them beside our odd-one-out rows.
TABLE8 = {  # (source, target): ((Src-Pref mean, s.e.), (DIAL mean, s.e.))
    ("desserts", "fruits"): ((0.363, 0.09), (0.686, 0.035)),
    ("desserts", "sauces"): ((0.4, 0.107), (0.743, 0.028)),
    ("desserts", "vegetables"): ((0.234, 0.057), (0.489, 0.037)),
    ("desserts", "snacks"): ((0.477, 0.045), (0.728, 0.013)),
    ("fruits", "desserts"): ((0.261, 0.06), (0.561, 0.047)),
    ("fruits", "sauces"): ((0.254, 0.101), (0.404, 0.019)),
    ("fruits", "vegetables"): ((0.649, 0.016), (0.714, 0.002)),
    ("fruits", "snacks"): ((0.091, 0.017), (0.455, 0.038)),
    ("sauces", "desserts"): ((0.398, 0.035), (0.61, 0.018)),
    ("sauces", "fruits"): ((0.251, 0.008), (0.442, 0.037)),
    ("sauces", "vegetables"): ((0.285, 0.056), (0.454, 0.037)),
    ("sauces", "snacks"): ((0.405, 0.071), (0.643, 0.005)),
    ("vegetables", "desserts"): ((0.174, 0.029), (0.389, 0.019)),
    ("vegetables", "fruits"): ((0.708, 0.012), (0.756, 0.01)),
    ("vegetables", "sauces"): ((0.202, 0.041), (0.538, 0.061)),
    ("vegetables", "snacks"): ((0.247, 0.092), (0.471, 0.04)),
    ("snacks", "desserts"): ((0.304, 0.018), (0.629, 0.033)),
    ("snacks", "fruits"): ((0.183, 0.012), (0.397, 0.027)),
    ("snacks", "sauces"): ((0.248, 0.029), (0.683, 0.068)),
    ("snacks", "vegetables"): ((0.229, 0.016), (0.396, 0.064)),
}


def pairwise_accuracy(r_chosen, r_rejected, ties="half"):
    """Fraction of pairs where the chosen response gets the higher reward; ties count half (ties="correct": as a
    win, the released code's rule); a pair with a non-finite reward counts as a failure (0), never as a win or a tie."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=np.float64), np.asarray(r_rejected, dtype=np.float64)
    ok = np.isfinite(r_chosen) & np.isfinite(r_rejected)
    tie = {"half": 0.5, "correct": 1.0}[ties]
    return float(np.mean(ok * ((r_chosen > r_rejected) + tie * (r_chosen == r_rejected))))


def mcq_accuracy(r_correct, r_wrong, ties="half"):
    """r_correct (N,), r_wrong (N, K): fraction of questions whose correct answer gets the strictly highest reward;
    a tie for the top among m answers counts 1/m (the expected score of breaking ties at random; ties="correct":
    1, as the released code's argmax, which picks the correct answer, listed first); a question with a non-finite
    reward among its answers counts 0 (NaN compares false with everything, so it would look like a win)."""
    r_correct, r_wrong = np.asarray(r_correct, dtype=np.float64), np.asarray(r_wrong, dtype=np.float64)
    ok = np.isfinite(r_correct) & np.isfinite(r_wrong).all(1)
    above = (r_wrong > r_correct[:, None]).sum(1)
    tied = (r_wrong == r_correct[:, None]).sum(1)
    return float(np.mean(ok * (above == 0) / (1 + {"half": tied, "correct": 0 * tied}[ties])))


def mcq_rank(r_correct, r_wrong):
    """Mean rank of the correct answer among K + 1 (0 = best; ties take the average of the ranks they span); a
    question with a non-finite reward ranks its correct answer last (K)."""
    r_correct, r_wrong = np.asarray(r_correct, dtype=np.float64), np.asarray(r_wrong, dtype=np.float64)
    ok = np.isfinite(r_correct) & np.isfinite(r_wrong).all(1)
    rank = (r_wrong > r_correct[:, None]).sum(1) + 0.5 * (r_wrong == r_correct[:, None]).sum(1)
    return float(np.mean(np.where(ok, rank, r_wrong.shape[1])))


def pearson(x, y):
    """NaN when any value is not finite: a correlation with a broken reward is undefined, and NaN is never a best."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def ranks(x):
    """1-based ranks, ties sharing the average of the ranks they span (as scipy.stats.rankdata's default)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # each run of equal values [start, end) gets rank (start + end + 1) / 2
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    r = np.empty(len(x))
    r[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return r


def spearman(x, y):
    if not (np.isfinite(np.asarray(x, dtype=np.float64)).all() and np.isfinite(np.asarray(y, dtype=np.float64)).all()):
        return float("nan")  # ranks would put NaN last and give a number
    return pearson(ranks(x), ranks(y))


# -----------------------------------------------------------------------------
# evaluating a reward model


@torch.no_grad()
def rewards(model, examples, batch_size=16, device="cpu"):
    """The reward of every response of every tokenised example, in order: (sum of responses,) numpy float64.
    Under torchrun each process computes every n-th batch and all receive every reward: the batches are the same as
    in one process, so are the numbers."""
    rank, n_proc = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    was_training = model.training
    model.eval()
    out = {}  # batch number -> rewards
    for b, i in enumerate(range(0, len(examples), batch_size)):
        if b % n_proc == rank:
            inputs = packing.to_device(packing.pack(examples[i:i + batch_size]), device)
            out[b] = model.reward(model(inputs)[0]).double().cpu()
    model.train(was_training)
    if n_proc > 1:
        shares = [None] * n_proc
        dist.all_gather_object(shares, out)
        out = {b: r for share in shares for b, r in share.items()}
    return torch.cat([out[b] for b in sorted(out)]).numpy()


def evaluate(model, rows, examples, metric, batch_size=16, device="cpu", ties="half"):
    """The task's metrics on tokenised evaluation examples: {"acc"} for pairs, {"acc", "rank"} for multiple choice,
    {"pearson", "spearman"} between reward and score for scored texts; for rated texts ("rated": scores rows with a
    mean human rating) {"acc"} on the pairs formats.score_pairs makes of their scores, and "pearson", "spearman" between
    reward and rating. A non-finite reward is a failure in every metric (see the metrics above), and the number of
    such rewards is reported as "non_finite". ties: how accuracies count a tie ("half", or "correct" as the released
    code did)."""
    r = rewards(model, examples, batch_size, device)
    bad = {"non_finite": int((~np.isfinite(r)).sum())} if not np.isfinite(r).all() else {}
    if metric == "pairwise":
        r = r.reshape(-1, 2)  # chosen, rejected
        return {"acc": pairwise_accuracy(r[:, 0], r[:, 1], ties), **bad}
    if metric == "mcq":
        r = r.reshape(len(examples), -1)  # correct, then the wrong answers
        return {"acc": mcq_accuracy(r[:, 0], r[:, 1:], ties), "rank": mcq_rank(r[:, 0], r[:, 1:]), **bad}
    if metric == "rated":
        chosen, rejected = np.array(formats.score_pairs([row["label"] for row in rows])).T
        ratings = [row["rating"] for row in rows]
        return {"acc": pairwise_accuracy(r[chosen], r[rejected], ties), "pearson": pearson(r, ratings),
                "spearman": spearman(r, ratings), **bad}
    labels = [row["label"] for row in rows]
    return {"pearson": pearson(r, labels), "spearman": spearman(r, labels), **bad}


def load_reward_model(run_dir, device="cpu"):
    """A trained run's reward model (base model + its best adapter, reward head and critic) and tokenizer."""
    from safetensors.torch import load_file
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run folder of train.py (it has no config.json)")
    cfg = runfolder.read_json(path, "the config of a train.py run")
    for key, types in (("model", str), ("critic_act", str), ("task", str), ("data_dir", str), ("data_seed", int),
                       ("max_len", int), ("separator", str), ("eval_batch", int), ("eval_rows", (int, type(None))),
                       ("source", (str, type(None))), ("target", (str, type(None))), ("val", (str, type(None))),
                       ("test", (str, type(None))), ("truncation", str), ("ties", str)):
        if not isinstance(cfg.get(key), types) or isinstance(cfg.get(key), bool):
            raise ValueError(f"{path}: field '{key}' is {cfg.get(key)!r:.60}, not what train.py writes there")
    folder = os.path.join(run_dir, "base") if cfg["model"] == "tiny" else cfg["model"]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    gemma, tok = runfolder.load_base(folder, dtype, device)
    model = dial.RewardModel(packing.GemmaBackbone(gemma), gemma.config.hidden_size, cfg["critic_act"])
    model.head.to(device), model.critic.to(device)
    load_adapter(gemma, os.path.join(run_dir, "adapter"), modules_to_save={"score": model.head})
    critic_path = os.path.join(run_dir, "adapter", "critic.safetensors")
    try:
        critic = load_file(critic_path)
        model.critic.load_state_dict(critic)
    except Exception as e:  # missing, truncated, or of another shape
        raise ValueError(f"{critic_path} cannot be loaded as this run's critic ({str(e).splitlines()[0][:200]})") from None
    runfolder.check_finite(critic, critic_path)
    return model, tok, cfg


# -----------------------------------------------------------------------------
# the command line: re-evaluate a run, or tabulate many


def table(runs_dir):
    """Markdown table of every test metric of each task (the main one first: Pearson and Spearman for the essays;
    acc, Pearson and Spearman for the rated sentiment tasks), task x method, mean +- standard error over seeds (the
    paper's layout), the number of seeds in brackets; beside odd-one-out tasks, the paper's Table 8 (Gemma-2b).
    A column is a method, or a variant of one: runs in TASK/VARIANT/seedS whose folder VARIANT is the method's name
    and a suffix (dial-scaled, src-pref-b4: other settings of the same method) get a column of their own."""
    results, metrics = {}, {}  # (task, column) -> [test metrics per seed]; task -> its metrics, main first
    known = dial.METHODS + dial.PROMPTED
    for path, s in summaries(runs_dir):
        folder = os.path.basename(os.path.dirname(os.path.dirname(path)))
        column = folder if folder.startswith(s["method"] + "-") and folder not in known else s["method"]
        results.setdefault((s["task"], column), []).append(s["test"])
        names = metrics.setdefault(s["task"], [s["metric"]])
        names += [k for k in s["test"] if k not in names and k != "non_finite"]
    tasks = sorted(metrics)
    columns = {c for _, c in results}
    methods = [c for m in known for c in [m] + sorted(c for c in columns if c.startswith(m + "-") and c not in known)
               if c in columns]
    cats = {t: (data.TASKS.get(t, {}).get("source_category"), data.TASKS.get(t, {}).get("target_category"))
            for t in tasks}  # the registry's odd-one-out categories; (None, None) for every other task
    paper = {t: TABLE8[c] for t, c in cats.items() if c in TABLE8}  # only where the table has such a task
    extra = ["paper src-pref (Gemma-2b)", "paper dial (Gemma-2b)"] if paper else []
    lines = ["| task | metric | " + " | ".join(methods + extra) + " |",
             "| --- | --- |" + " --- |" * (len(methods) + len(extra))]
    for t in tasks:
        for name in metrics[t]:
            cells = []
            for m in methods:
                x = [r[name] for r in results.get((t, m), []) if isinstance(r.get(name), (int, float))]
                mean, se = mean_se(x) if x else (0, 0)
                cells.append("" if not x else f"{mean:.3f}" + (f" +- {se:.3f}" if len(x) > 1 else "") + f" ({len(x)})")
            if extra:  # beside the main metric (accuracy) only
                here = t in paper and name == "acc"
                cells += [f"{m:.3f} +- {se:.3f} (3)" for m, se in paper[t]] if here else ["", ""]
            lines.append(f"| {t} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="Re-evaluate a trained run, or tabulate finished runs.")
    p.add_argument("run", nargs="?", help="a run folder written by train.py")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--table", metavar="RUNS_DIR", help="print task x method, every metric, mean +- s.e. over seeds")
    p.add_argument("--sweep", metavar="RUNS_DIR", help="plot paper Fig. 4 from runs of train.py --n-source/--n-target")
    p.add_argument("--tsne", nargs="+", metavar="RUN_DIR", help="Fig. 3: t-SNE of the embeddings a run saved with "
                   "train.py --save-embeddings (tsne.py)")
    p.add_argument("--curves", nargs="+", metavar="RUN_DIR", help="the training logs of runs over steps: validation, "
                   "BT, W, GP, the critic's gradient norm, embedding norms, W's share of the gradient")
    p.add_argument("-o", "--output", help="the PNG of --sweep (default runs/fig4.png), --curves (runs/curves.png) or "
                   "--tsne (default RUN_DIR/tsne.png; required for several runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    cli.RUN = args.run if args.run and os.path.isdir(args.run) else None  # a crash's traceback: RUN/error.log
    with command(args.device, "eval") as args.device:  # under torchrun each process evaluates a share of the batches
        runfolder.check_device(args.device)
        if args.table:
            print(table(args.table))
            return
        if args.sweep:
            output = args.output or os.path.join("runs", "fig4.png")
            for panel, lines in figures.sweep(args.sweep, output).items():
                for key, pts in lines.items():
                    print(panel, key, [(round(float(x), 3), round(float(m), 4), n) for x, m, _, n in pts])
            print(f"wrote {output}")
        if args.curves:
            output = args.output or os.path.join("runs", "curves.png")
            for run, label in figures.curves(args.curves, output)[1].items():
                print(f"{label}: {run}")
            print(f"wrote {output}")
            return
        if args.tsne:
            import tsne
            print(tsne.plot(args.tsne, args.output))
            return
        if not args.run:
            p.error("give a run folder, or --table RUNS_DIR, --sweep RUNS_DIR or --tsne RUN_DIR")
        model, tok, cfg = load_reward_model(args.run, args.device)
        task = data.load_task(cfg.get("task_file") or cfg["task"], cfg["data_dir"], cfg["source"], cfg["target"],
                              cfg["val"], cfg["test"], cfg["data_seed"], metric=cfg.get("metric"))
        rows = task[args.split][:cfg["eval_rows"]]
        examples = packing.tokenize(rows, tok, cfg["max_len"], cfg["separator"], cfg["truncation"])
        metrics = evaluate(model, rows, examples, task["metric"], cfg["eval_batch"], args.device, cfg["ties"])
        print(json.dumps({"run": args.run, "split": args.split, **metrics}))
        return metrics

if __name__ == "__main__":
    main()
