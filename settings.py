"""
A run's settings, for train.py: the command-line flags and their checks; what every flag left out resolves to (the
paper's value for the task's family, tasks.py; train.py's own defaults) and where each value comes from, which
--show-config prints and a run prints at its start; and a resumed run's settings, rebuilt from its own config.json.

    python train.py --task sentiment-movies-tweets --method dial --show-config     # every setting and its source

The task's data and the base model are both looked for before anything is built: what is missing is said at once,
in one message (the download commands included).
"""
import argparse
import json
import math
import os
import sys

import torch

import data
import dial
import packing
import runfolder
import tasks
from processes import world

def parser():
    """train.py's flags, grouped as --help shows them. Long because it is the list of every flag, one per line."""
    p = argparse.ArgumentParser(
        prog="python train.py", formatter_class=argparse.RawTextHelpFormatter,
        description="Train a reward model with DIAL or a baseline on one task of the paper, and evaluate it.\n"
                    "No --task: the offline demo. --show-config: every setting a run would use, and where it comes\n"
                    "from, without training.",
        epilog="tasks: " + ", ".join(tasks.TASKS) + ";\nor a task file of your own, FILE.json (tasks.py, README)")
    a = p.add_argument
    a("--task", help="one of the tasks listed below, or a task file FILE.json (no --task: the offline demo)")
    a("--method", default="dial", choices=dial.METHODS + dial.PROMPTED,
      help="base-lm, few-shot-lm: the prompted baselines, which train nothing (prompted.py)")
    a("--model", help="Hugging Face checkpoint folder, or 'tiny' (a small random Gemma, tokenizer trained on the\n"
                      "task's text; a test of the plumbing, it learns nothing); default: checkpoints/gemma-2b (the\n"
                      "paper's), tiny for generated tasks; on a CPU: checkpoints/gemma-3-270m (python gemma.py fetch)")
    a("--seed", type=int, default=0, help="training seed (initialisation, data order, critic)")
    a("--out", help="run folder (default runs/<task>/<method>/seed<S>)")
    a("--resume", action="store_true", help="continue the interrupted run in --out exactly where it stopped")
    a("--show-config", action="store_true", help="print every setting of the run and where it comes from (the\n"
                                                "task's default, a flag), whether its data and model are there; train nothing")
    a("--max-steps", type=int, help="stop after this many optimiser steps (default: the task's epochs)")
    a("--data-dir", default="data", help="folder with the downloaded datasets (see data.py)")
    a("--data-seed", type=int, default=0, help="seed of generated data (odd-one-out, score-to-pair sampling)")
    a("--source", help="custom task: labelled source file (JSON or JSON lines)")
    a("--target", help="custom task: unlabelled target file")
    a("--val", help="custom task: labelled validation file (it chooses the checkpoint)")
    a("--test", help="custom task: labelled test file (it reports the chosen checkpoint; never the --val file)")
    a("--n-source", type=int, help="use only N labelled source rows (a seeded, nested subset; paper Fig. 4)")
    a("--n-target", type=int, help="use only N target training rows: unlabelled for DIAL, labelled for the oracles")
    a("--metric", choices=tuple(tasks.METRIC_ROWS),
      help="the evaluation metric (default: the task's own; custom: the evaluation rows' kind): pairwise (pairs),\n"
           "mcq (questions), correlation (scores: Pearson, Spearman), rated (scores rows with a mean human\n"
           "'rating': pairwise accuracy on their score pairs, Pearson and Spearman against the rating)")
    g = p.add_argument_group("optimisation (default: the paper's value for the task)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--batch-src", type=int, help="source examples per step")
    g.add_argument("--batch-tgt", type=int, help="target examples per step")
    g.add_argument("--accum", type=int, default=1, help="micro-batches per step (gradient accumulation)")
    g.add_argument("--max-len", type=int, help="tokens of prompt + response (the prompt is cut first)")
    g = p.add_argument_group("LoRA and DIAL (paper appendix A.1)")
    g.add_argument("--lora-r", type=int, default=64)
    g.add_argument("--lora-alpha", type=float, default=64)
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--lora-targets", default="q_proj,v_proj", help="comma-separated names, or 'all'")
    g.add_argument("--lam", type=float, default=0.01, help="weight of the Wasserstein term in the model loss")
    g.add_argument("--lam-gp", type=float, default=1.0, help="weight of the gradient penalty in the critic loss")
    g.add_argument("--critic-iters", type=int, default=3)
    g.add_argument("--critic-lr", type=float, default=1e-4)
    g.add_argument("--critic-wd", type=float, default=1e-3)
    g.add_argument("--critic-scale", default="1", metavar="S",
                   help="the critic reads embeddings / S and trains on W / S (dial.Critic says why): '1' is the paper;\n"
                        "'source': S = the mean source embedding norm at step 0 (measured, saved in config.json),\n"
                        "which keeps the critic near 1-Lipschitz whatever the backbone's scale; or a number")
    g.add_argument("--critic-act", default="gelu", choices=("gelu", "none"),
                   help="'none' reproduces the authors' released critic, which had no activation")
    g.add_argument("--lm-weight", type=float, default=1.0, help="weight of the SFT / NTP loss of the baselines")
    g.add_argument("--lm-loss", default="trained", choices=("trained", "detached"),
                   help="'detached' reproduces the released code: the SFT / NTP loss logged, with no gradient")
    g = p.add_argument_group("evaluation and system")
    g.add_argument("--eval-every", type=int, help="steps between evaluations on validation (and every epoch end)")
    g.add_argument("--eval-batch", type=int, default=16, help="examples per evaluation batch")
    g.add_argument("--eval-rows", type=int, help="evaluate on the first N rows of val and test only")
    g.add_argument("--separator", default=packing.SEPARATOR, help="between prompt and response ('': the released one)")
    g.add_argument("--truncation", default="prompt", choices=packing.TRUNCATIONS,
                   help="'prompt': the prompt is cut first, from the left; 'right' reproduces the released code:\n"
                        "<bos> prompt response cut on the right as one sequence (a long prompt cuts every response)")
    g.add_argument("--ties", default="half", choices=("half", "correct"),
                   help="a tie between chosen and rejected rewards counts half; 'correct' reproduces the released\n"
                        "code, which counted it as a win")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda when there is one")
    g.add_argument("--save-embeddings", type=int, default=0, metavar="N",
                   help="Fig. 3: save the embeddings of N random source and N target rows at step 0 and every\n"
                        "epoch's end into RUN/embeddings/ (tsne.py; plot: python eval.py --tsne RUN)")
    g.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing (less GPU memory)")
    g.add_argument("--tiny-vocab", type=int, default=1000, help="vocabulary of the tokenizer trained for --model tiny")
    g = p.add_argument_group("prompted baselines (--method base-lm, few-shot-lm: prompted.py)")
    g.add_argument("--gen-tokens", type=int, default=100, help="chain of thought: at most N tokens, up to a newline")
    g.add_argument("--shots", type=int, default=10, help="few-shot-lm: labelled source examples before each question")
    g.add_argument("--context", type=int, help="tokens per question, examples dropped to fit (default: the model's)")
    return p


def parse_args(argv=None):
    """The flags, and in args.given the names of those given on the command line (resume compares only these)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--eval" or a.startswith("--eval=") for a in argv):  # the old single file: refused, not guessed
        sys.exit("error: --eval is gone: give --val (it chooses the checkpoint) and --test (it reports it), two files "
                 "of different rows, so that the test metric is not measured on the data that chose the model")
    args = parser().parse_args(argv)
    q = parser()
    for a in q._actions:
        a.default = argparse.SUPPRESS  # a flag not given leaves no attribute
    args.given = set(vars(q.parse_args(argv)))
    if args.resume and not args.out and not args.task:
        parser().error("--resume needs the run folder: --out RUN")
    return args


# the checks of every numeric flag: (flags, test, what the flag must be)
FINITE = lambda v: math.isfinite(v) and abs(v) < 3e38  # noqa: E731  (and finite in float32, where it is used)
CHECKS = ((("batch_src", "batch_tgt", "accum", "lora_r", "critic_iters", "eval_batch", "max_steps", "eval_every",
            "eval_rows", "n_source", "n_target", "gen_tokens", "shots", "context"), lambda v: v >= 1, "at least 1"),
          (("lr", "critic_lr", "epochs", "lora_alpha"), lambda v: FINITE(v) and v > 0, "a positive finite number"),
          (("lam", "lam_gp", "weight_decay", "critic_wd", "lm_weight"), lambda v: FINITE(v) and v >= 0,
           "a finite number, not negative"),
          (("save_embeddings",), lambda v: v >= 0, "at least 0 (0: none saved)"),
          (("lora_dropout",), lambda v: FINITE(v) and 0 <= v < 1, "a number in [0, 1)"),
          (("max_len",), lambda v: v >= 2, "at least 2 (<bos> and one response token)"),
          (("seed", "data_seed"), lambda v: 0 <= v < 2 ** 32, "in [0, 2**32)"),
          (("tiny_vocab",), lambda v: 260 <= v <= 2 ** 20, "in [260, 2**20] (256 bytes and 4 special pieces at least)"))


def check(cfg):
    scale = cfg.get("critic_scale")
    if scale is not None and scale != "source" and not (_number(scale) and FINITE(float(scale)) and float(scale) > 0):
        raise ValueError(f"--critic-scale must be 'source' or a positive finite number (1: the paper), got {scale!r}")
    for keys, ok, what in CHECKS:
        for key in keys:
            if cfg.get(key) is not None and not ok(cfg[key]):
                raise ValueError(f"--{key.replace('_', '-')} must be {what}, got {cfg[key]}")
    if None not in (cfg["batch_src"], cfg["batch_tgt"]) and (cfg["batch_src"] % cfg["accum"] or cfg["batch_tgt"] % cfg["accum"]):
        raise ValueError(f"--accum {cfg['accum']} must divide the batch sizes ({cfg['batch_src']}, {cfg['batch_tgt']})")
    runfolder.check_device(cfg["device"])


def _positive(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and FINITE(v) and v > 0


def _number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


PAPER_A1 = ("lora_r", "lora_alpha", "lam", "lam_gp", "critic_iters", "critic_lr", "critic_wd", "critic_act",
            "critic_scale")  # train.py's defaults that are the paper's own (appendix A.1)
NOT_SETTINGS = ("resume", "given", "show_config")  # flags that say what to do, not how the run trains


def chosen(args, spec):
    """{setting: (value, where it comes from)} of a fresh run, every flag left out filled in: the settings the task
    decides (tasks.task_defaults: the paper's value for the task's family, for this method), the model and run folder
    the task implies, train.py's own defaults. The data is not read (the metric of a custom task is its rows')."""
    decided = tasks.task_defaults(spec, args.method)
    out = {}
    for key, value in vars(args).items():
        if key in NOT_SETTINGS:
            continue
        if key in args.given:
            out[key] = (value, "flag")
        elif key in decided:
            out[key] = decided[key]
        elif key == "model":
            out[key] = ("tiny", "generated tasks: a random tiny Gemma") if "source_category" in spec else \
                ("checkpoints/gemma-2b", "the paper's model")
        elif key == "out":
            out[key] = (os.path.join("runs", spec["name"], args.method, f"seed{args.seed}"), "runs/TASK/METHOD/seedS")
        elif key == "metric":
            out[key] = (spec["metric"], "the task's own") if spec["metric"] else (None, "the evaluation rows' kind")
        else:
            out[key] = (value, "paper A.1" if key in PAPER_A1 else "train.py's default")
    out["task"] = (spec["name"], out["task"][1])
    out["task_file"] = (spec.get("task_file"), "--task FILE.json" if spec.get("task_file") else "a registered task")
    for key in PATHS:  # absolute: --resume and eval.py find the files from any working directory
        value, where = out[key]
        if value is not None and value != "tiny":
            out[key] = (os.path.abspath(value), where)
    return out


def resolve(args):
    """(config dict, task) of a fresh run: every flag left out filled in (chosen), the task's rows loaded and
    fingerprinted. Missing data and a missing base model are said together, in one message."""
    check(vars(args))  # the flags given, before the defaults (which are good) fill the rest
    cfg = {k: v for k, (v, _) in chosen(args, tasks.task_spec(args.task)).items()}
    task = load_with_model(cfg)
    cfg["metric"] = task["metric"]  # resolved, in config.json: a resumed run and eval.py use the same
    cfg["files"] = task["files"]
    cfg["data"] = {role: runfolder.fingerprint_rows(task[role]) for role in ("source", "target", "val", "test")}
    cfg["dropped"] = task["dropped"]  # rows that hold no preference, test rows validation scores: counted
    if data.dropped_note(task):
        print(data.dropped_note(task))
    check(cfg)
    return cfg, task


def load(c):
    """The task of a run's settings (a config dict: resolved, or a saved config.json)."""
    return data.load_task(c.get("task_file") or c["task"], c["data_dir"], c["source"], c["target"], c["val"], c["test"],
                          c["data_seed"], c["n_source"], c["n_target"], c.get("metric"))


def load_with_model(cfg):
    """load(cfg), with the base model looked for too: what is missing of the two is said in one message."""
    task, missing = None, []
    try:
        task = load(cfg)
    except FileNotFoundError as e:
        missing.append(str(e))
    model = runfolder.model_missing(cfg["model"])
    if model:
        missing.append(model)
    if len(missing) == 2:
        raise FileNotFoundError(f"two things are missing. The data: {missing[0]} The model: {missing[1]}")
    if missing:
        raise FileNotFoundError(missing[0])
    return task


def show_config(args):
    """--show-config: every setting of the run these flags describe (or, with --resume, of the run in --out), with
    where it comes from, then its data and model, or what is missing of them. Trains nothing."""
    if args.resume:
        cfg, _ = resumed(args)
        rows = {k: (v, "flag" if k in args.given else "the run's config.json") for k, v in cfg.items()
                if k not in ("files", "data", "dropped")}
    else:
        check(vars(args))
        rows = chosen(args, tasks.task_spec(args.task))
    cfg = {k: v for k, (v, _) in rows.items()}
    try:
        task = load(cfg)
        rows["metric"] = (task["metric"], rows["metric"][1])
        found = "; ".join(f"{role} {len(task[role])} rows ({task['files'][role]})" for role in data.ROLES)
    except (FileNotFoundError, ValueError) as e:
        found = f"not ready: {e}"
    lines = [f"{'setting':<16} {'value':<30} where it comes from"]
    for key, (value, where) in rows.items():
        shown = json.dumps(value) if isinstance(value, str) and not value.strip() else str(value)
        lines.append(f"{key:<16} {shown:<30} {where}")
    model = runfolder.model_missing(cfg["model"]) or (f"{cfg['model']}" if cfg["model"] != "tiny" else
                                                      "tiny: a random tiny Gemma, built in the run folder")
    print("\n".join(lines + [f"data: {found}", f"model: {model}"]))


def summary(cfg, args):
    """The line a fresh run prints at its start: the settings the task decides and the metric, grouped by where they
    come from (a flag, the task's family, the paper's general settings)."""
    decided = tasks.task_defaults(tasks.task_spec(args.task), args.method)
    decided["metric"] = (cfg["metric"], "the task's metric" if tasks.task_spec(args.task)["metric"] else
                         "the metric of the evaluation rows' kind")
    groups = {}
    for key, (_, where) in decided.items():
        groups.setdefault("flags" if key in args.given else where, []).append(f"{key} {cfg[key]}")
    return f"{cfg['task']} {cfg['method']}: " + "; ".join(f"{', '.join(items)} ({where})"
                                                           for where, items in groups.items()) + \
        " (every setting and its source: --show-config)"


CHANGE_ON_RESUME = ("out", "resume", "show_config", "max_steps", "device", "lr")  # --lr: a deliberate override, logged
PATHS = ("source", "target", "val", "test", "data_dir", "model")


def resumed(args):
    """(config, task) of the run in --out, rebuilt from its own config.json; a flag given today that differs from it
    is refused (except CHANGE_ON_RESUME), and so is data that changed since the run started."""
    out = args.out or os.path.join("runs", tasks.task_spec(args.task)["name"], args.method, f"seed{args.seed}")
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    saved = runfolder.read_json(path, "the config of a train.py run")
    if isinstance(saved, dict):
        saved.setdefault("critic_scale", "1")  # a run from before the flag: the paper's critic
        saved.setdefault("metric", None)  # a run from before the flag: the task's own metric
        saved.setdefault("context", None)  # (a prompted baselines' flag; a trained run never reads it)
    types = {a.dest: a.type or (bool if a.const is True else str) for a in parser()._actions if a.dest != "help"}
    for key, t in types.items():
        if key in NOT_SETTINGS or key == "out":
            continue
        if key not in saved:
            raise ValueError(f"{path} lacks the field '{key}': it is not the config of a run of this train.py")
        v = saved[key]
        if not (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) if t is float else isinstance(v, t))):
            raise ValueError(f"{path}: field '{key}' is {v!r:.60}, not what train.py writes there")
    for key in sorted(args.given - set(CHANGE_ON_RESUME)):
        new, old = getattr(args, key), saved[key]
        if key == "task" and saved.get("task_file"):  # the run of a task file: the same file
            old = saved["task_file"]
        same = new == old or ((key in PATHS or key == "task") and None not in (new, old) and "tiny" not in (new, old)
                              and os.path.realpath(new) == os.path.realpath(old))
        if not same:
            new, old = (json.dumps(v) if isinstance(v, str) and not v.strip() else v for v in (new, old))  # '', \n\n
            raise ValueError(f"--{key.replace('_', '-')} {new} differs from the run's {old} ({path}): a resumed run "
                             "keeps its own settings, so leave the flag out, or start a new run with another --out")
    for key, ok, what in (("critic_scale_value", lambda v: _positive(v), "a positive finite number"),
                          ("processes", lambda v: isinstance(v, int) and v >= 1, "a number of processes"),
                          ("data", lambda v: isinstance(v, dict) and all(k in data.ROLES and isinstance(f, str)
                                                                         for k, f in v.items()), "data fingerprints")):
        if key in saved and not ok(saved[key]):  # what the run itself measured or wrote, read back: checked too
            raise ValueError(f"{path}: field '{key}' is {str(saved[key])[:60]}, not {what} as train.py writes there")
    if saved.get("processes", 1) != world()[1]:
        raise ValueError(f"{path}: the run used {saved.get('processes')} process(es), this is {world()[1]}; resume it "
                         "with as many (the batch of each process, hence the data order, depends on it)")
    cfg = {**saved, "out": out, "device": args.device}  # the folder being resumed, wherever it was first written
    cfg["max_steps"] = args.max_steps if "max_steps" in args.given else saved["max_steps"]
    cfg["lr_override"] = args.lr if "lr" in args.given and args.lr != saved["lr"] else None
    check(cfg)
    task = load(cfg)
    for role, fp in (saved.get("data") or {}).items():
        if runfolder.fingerprint_rows(task[role]) != fp:
            raise ValueError(f"the {role} data of the run changed since it started ({task['files'][role]}): resuming "
                             "would train on other data than it began with; restore the file, or start a new run")
    return cfg, task
