"""
Evaluation: the paper's metrics in numpy (numpy arrays in, floats out).

Where we differ from the authors' code: a tie between chosen and rejected rewards counts half, not as correct (their
argmax picks the first of equal scores, so identical truncated pairs, which always tie in bf16, counted as wins).
"""
import contextlib
import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import data
import dial
from gemma import Gemma, Tokenizer
from lora import load_adapter
import packing


def pairwise_accuracy(r_chosen, r_rejected):
    """Fraction of pairs where the chosen response gets the higher reward; ties count half."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=np.float64), np.asarray(r_rejected, dtype=np.float64)
    return float(np.mean((r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected)))


def mcq_accuracy(r_correct, r_wrong):
    """r_correct (N,), r_wrong (N, K): fraction of questions whose correct answer gets the strictly highest reward;
    a tie for the top among m answers counts 1/m (the expected score of breaking ties at random)."""
    r_correct, r_wrong = np.asarray(r_correct, dtype=np.float64), np.asarray(r_wrong, dtype=np.float64)
    above = (r_wrong > r_correct[:, None]).sum(1)
    tied = (r_wrong == r_correct[:, None]).sum(1)
    return float(np.mean((above == 0) / (1 + tied)))


def mcq_rank(r_correct, r_wrong):
    """Mean rank of the correct answer among K + 1 (0 = best; ties take the average of the ranks they span)."""
    r_correct, r_wrong = np.asarray(r_correct, dtype=np.float64), np.asarray(r_wrong, dtype=np.float64)
    return float(np.mean((r_wrong > r_correct[:, None]).sum(1) + 0.5 * (r_wrong == r_correct[:, None]).sum(1)))


def pearson(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
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


def evaluate(model, rows, examples, metric, batch_size=16, device="cpu"):
    """The task's metrics on tokenised evaluation examples: {"acc"} for pairs, {"acc", "rank"} for multiple choice,
    {"pearson", "spearman"} between reward and score for scored texts."""
    r = rewards(model, examples, batch_size, device)
    if metric == "pairwise":
        r = r.reshape(-1, 2)  # chosen, rejected
        return {"acc": pairwise_accuracy(r[:, 0], r[:, 1])}
    if metric == "mcq":
        r = r.reshape(len(examples), -1)  # correct, then the wrong answers
        return {"acc": mcq_accuracy(r[:, 0], r[:, 1:]), "rank": mcq_rank(r[:, 0], r[:, 1:])}
    labels = [row["label"] for row in rows]
    return {"pearson": pearson(r, labels), "spearman": spearman(r, labels)}


def load_reward_model(run_dir, device="cpu"):
    """A trained run's reward model (base model + its best adapter, reward head and critic) and tokenizer."""
    from safetensors.torch import load_file
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise FileNotFoundError(f"{run_dir} is not a run folder of train.py (it has no config.json)")
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    folder = os.path.join(run_dir, "base") if cfg["model"] == "tiny" else cfg["model"]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    gemma = Gemma.from_pretrained(folder, dtype=dtype, device=device)
    model = dial.RewardModel(packing.GemmaBackbone(gemma), gemma.config.hidden_size, cfg["critic_act"])
    model.head.to(device), model.critic.to(device)
    load_adapter(gemma, os.path.join(run_dir, "adapter"), modules_to_save={"score": model.head})
    model.critic.load_state_dict(load_file(os.path.join(run_dir, "adapter", "critic.safetensors")))
    return model, Tokenizer(os.path.join(folder, "tokenizer.model")), cfg


# -----------------------------------------------------------------------------
# the command line: re-evaluate a run, or tabulate many


def table(runs_dir):
    """Markdown table of the test metric, task x method, mean +- standard error over seeds (the paper's layout)."""
    results = {}  # (task, method) -> [test metric per seed]
    for here, _, files in sorted(os.walk(runs_dir)):
        if "summary.json" in files:
            with open(os.path.join(here, "summary.json")) as f:
                s = json.load(f)
            results.setdefault((s["task"], s["method"]), []).append(s["test"][s["metric"]])
    if not results:
        raise FileNotFoundError(f"no summary.json below {runs_dir}: no finished run to tabulate")
    tasks = sorted({t for t, _ in results})
    methods = [m for m in dial.METHODS if any((t, m) in results for t in tasks)]
    lines = ["| task | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for t in tasks:
        cells = []
        for m in methods:
            x = np.array(results.get((t, m), []))
            se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0
            cells.append("" if not len(x) else f"{x.mean():.3f}" + (f" +- {se:.3f}" if len(x) > 1 else "") + f" ({len(x)})")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def command(device):
    """The body of a command line (train.py's and this file's), given this process's device:
    - under torchrun, joins the process group (NCCL between GPUs, gloo between CPU processes), moves to the process's
      own GPU, silences every process but 0, and leaves the group at the end; without torchrun, nothing of that;
    - bad input or a diverged run ends in one sentence, no traceback."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        if device.startswith("cuda"):
            device = f"cuda:{os.environ['LOCAL_RANK']}"  # one process per GPU
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if dist.get_rank() > 0:
            sys.stdout = open(os.devnull, "w")  # one voice: process 0 prints, logs and writes
    try:
        yield device
    except (OSError, ValueError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="Re-evaluate a trained run, or tabulate finished runs.")
    p.add_argument("run", nargs="?", help="a run folder written by train.py")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--table", metavar="RUNS_DIR", help="print task x method, mean +- s.e. over seeds (seeds counted)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    with command(args.device) as args.device:  # under torchrun each process evaluates a share of the batches
        if args.table:
            print(table(args.table))
            return
        if not args.run:
            p.error("give a run folder, or --table RUNS_DIR")
        model, tok, cfg = load_reward_model(args.run, args.device)
        task = data.load_task(cfg["task"], cfg["data_dir"], cfg["source"], cfg["target"], cfg["eval"], cfg["data_seed"])
        rows = task[args.split][:cfg["eval_rows"]]
        examples = packing.tokenize(rows, tok, cfg["max_len"], cfg["separator"])
        metrics = evaluate(model, rows, examples, task["metric"], cfg["eval_batch"], args.device)
        print(json.dumps({"run": args.run, "split": args.split, **metrics}))
        return metrics

if __name__ == "__main__":
    main()
