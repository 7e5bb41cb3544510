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
import packing
import runfolder
from lora import load_adapter


def pairwise_accuracy(r_chosen, r_rejected):
    """Fraction of pairs where the chosen response gets the higher reward; ties count half; a pair with a non-finite
    reward counts as a failure (0), never as a win or a tie."""
    r_chosen, r_rejected = np.asarray(r_chosen, dtype=np.float64), np.asarray(r_rejected, dtype=np.float64)
    ok = np.isfinite(r_chosen) & np.isfinite(r_rejected)
    return float(np.mean(ok * ((r_chosen > r_rejected) + 0.5 * (r_chosen == r_rejected))))


def mcq_accuracy(r_correct, r_wrong):
    """r_correct (N,), r_wrong (N, K): fraction of questions whose correct answer gets the strictly highest reward;
    a tie for the top among m answers counts 1/m (the expected score of breaking ties at random); a question with a
    non-finite reward among its answers counts 0 (NaN compares false with everything, so it would look like a win)."""
    r_correct, r_wrong = np.asarray(r_correct, dtype=np.float64), np.asarray(r_wrong, dtype=np.float64)
    ok = np.isfinite(r_correct) & np.isfinite(r_wrong).all(1)
    above = (r_wrong > r_correct[:, None]).sum(1)
    tied = (r_wrong == r_correct[:, None]).sum(1)
    return float(np.mean(ok * (above == 0) / (1 + tied)))


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


def evaluate(model, rows, examples, metric, batch_size=16, device="cpu"):
    """The task's metrics on tokenised evaluation examples: {"acc"} for pairs, {"acc", "rank"} for multiple choice,
    {"pearson", "spearman"} between reward and score for scored texts; for rated texts ("rated": scores rows with a
    mean human rating) {"acc"} on the pairs data.score_pairs makes of their scores, and "pearson", "spearman" between
    reward and rating. A non-finite reward is a failure in every metric (see the metrics above), and the number of
    such rewards is reported as "non_finite"."""
    r = rewards(model, examples, batch_size, device)
    bad = {"non_finite": int((~np.isfinite(r)).sum())} if not np.isfinite(r).all() else {}
    if metric == "pairwise":
        r = r.reshape(-1, 2)  # chosen, rejected
        return {"acc": pairwise_accuracy(r[:, 0], r[:, 1]), **bad}
    if metric == "mcq":
        r = r.reshape(len(examples), -1)  # correct, then the wrong answers
        return {"acc": mcq_accuracy(r[:, 0], r[:, 1:]), "rank": mcq_rank(r[:, 0], r[:, 1:]), **bad}
    if metric == "rated":
        chosen, rejected = np.array(data.score_pairs([row["label"] for row in rows])).T
        ratings = [row["rating"] for row in rows]
        return {"acc": pairwise_accuracy(r[chosen], r[rejected]), "pearson": pearson(r, ratings),
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
                       ("source", (str, type(None))), ("target", (str, type(None))), ("eval", (str, type(None)))):
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
    """Markdown table of the test metric, task x method, mean +- standard error over seeds (the paper's layout)."""
    results = {}  # (task, method) -> [test metric per seed]
    for here, _, files in sorted(os.walk(runs_dir)):
        if "summary.json" in files:
            path = os.path.join(here, "summary.json")
            s = runfolder.read_json(path, "the summary of a train.py run")
            try:
                key, value = (s["task"], s["method"]), s["test"][s["metric"]]
                if not isinstance(value, (int, float)) or not isinstance(key[0], str) or not isinstance(key[1], str):
                    raise TypeError
            except (KeyError, TypeError):
                raise ValueError(f"{path} lacks its task, method, metric or test result (expected the summary.json "
                                 "that train.py writes at the end of a run)") from None
            results.setdefault(key, []).append(value)
    if not results:
        raise FileNotFoundError(f"no summary.json below {runs_dir}: no finished run to tabulate")
    tasks = sorted({t for t, _ in results})
    methods = [m for m in dial.METHODS + dial.PROMPTED if any((t, m) in results for t in tasks)]
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
    p.add_argument("--tsne", nargs="+", metavar="RUN_DIR", help="Fig. 3: t-SNE of the embeddings a run saved with "
                   "train.py --save-embeddings (tsne.py)")
    p.add_argument("-o", "--output", help="--tsne: the PNG (default RUN_DIR/tsne.png; required for several runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    with command(args.device) as args.device:  # under torchrun each process evaluates a share of the batches
        runfolder.check_device(args.device)
        if args.table:
            print(table(args.table))
            return
        if args.tsne:
            import tsne
            print(tsne.plot(args.tsne, args.output))
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
