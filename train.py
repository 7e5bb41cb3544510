"""
Train a reward model with DIAL or a baseline on one task of the paper, and evaluate it.

    python train.py                                          # offline demo, CPU, a few minutes (demo.py)
    python train.py --task legaladvice-ko --method dial      # the paper's run: Gemma-2b, LoRA 64, a GPU
    python train.py --task oddoneout-desserts-fruits --method src-pref --model tiny --max-steps 50
    python train.py --out RUN --resume                       # continue an interrupted run (Ctrl-C, SIGTERM, a kill)

One run = one folder (default runs/<task>/<method>/seed<S>), owned by one process; runfolder.py describes its files
(config.json, metrics.jsonl, adapter/, state.safetensors, summary.json, base/ for --model tiny) and how each is
written whole or not at all. --resume rebuilds the run from its own config.json: a flag given with it must agree
with the run, except --max-steps, --device and --lr (a deliberate change, recorded in config.json), and data that
changed since the run started is refused. Training is finite or stops: a non-finite loss or weight ends the run
without saving that step.

The loop is the paper's: each step takes B_src source and B_tgt target examples (the smaller domain cycles), packs
them into one backbone input (packing.py), and calls dial.train_step; evaluation on validation at step 0 (before any
update, as the authors did), every --eval-every steps and at every epoch's end; the best validation checkpoint is
evaluated on test at the end.
"""
import argparse
import contextlib
import json
import math
import os
import random
import sys

import numpy as np
import torch
from tqdm import tqdm

import cli
import data
import dial
import formats
import packing
import runfolder
import tsne
from eval import command, evaluate
from gemma import Gemma, GemmaConfig, Tokenizer
from lora import add_lora
from processes import barrier, gather_rows, mean_over_processes, parallel, world

# -----------------------------------------------------------------------------
# the command line


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="tasks: " + ", ".join(data.TASKS))
    a = p.add_argument
    a("--task", help="one of the tasks listed below (no --task: the offline demo)")
    a("--method", default="dial", choices=dial.METHODS + dial.PROMPTED,
      help="base-lm, few-shot-lm: the prompted baselines, which train nothing (prompted.py)")
    a("--model", help="Hugging Face checkpoint folder, or 'tiny' (a small random Gemma, tokenizer trained on the\n"
                      "task's text); default: checkpoints/gemma-2b for the paper's tasks, tiny for generated ones")
    a("--seed", type=int, default=0, help="training seed (initialisation, data order, critic)")
    a("--out", help="run folder (default runs/<task>/<method>/seed<S>)")
    a("--resume", action="store_true", help="continue the interrupted run in --out exactly where it stopped")
    a("--max-steps", type=int, help="stop after this many optimiser steps (default: the task's epochs)")
    a("--data-dir", default="data", help="folder with the downloaded datasets (see data.py)")
    a("--data-seed", type=int, default=0, help="seed of generated data (odd-one-out, score-to-pair sampling)")
    a("--source", help="custom task: labelled source file (JSON or JSON lines)")
    a("--target", help="custom task: unlabelled target file")
    a("--val", help="custom task: labelled validation file (it chooses the checkpoint)")
    a("--test", help="custom task: labelled test file (it reports the chosen checkpoint; never the --val file)")
    a("--n-source", type=int, help="use only N labelled source rows (a seeded, nested subset; paper Fig. 4)")
    a("--n-target", type=int, help="use only N target training rows: unlabelled for DIAL, labelled for the oracles")
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
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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


def check_sizes(cfg, task):
    """The batch sizes against the data, before anything is allocated: a step holds no row twice (a batch of a
    million on 40 rows would pack a million sequences at every step)."""
    n, method = world()[1], cfg["method"]
    tgt = len(data.labelled_target(task, cfg["data_seed"])) if method in dial.ORACLES else len(task["target"])
    uses_src = method in dial.METHODS and method != "tgt-pref"  # (the prompted baselines have no batches)
    for key, role, rows, used in (("batch_src", "source", len(task["source"]), uses_src),
                                  ("batch_tgt", "target", tgt, method in dial.TARGET_METHODS)):
        if used and cfg[key] * n > rows:
            each = f" x {n} processes" if n > 1 else ""
            raise ValueError(f"--{key.replace('_', '-')} {cfg[key]}{each} is more than the task's {rows} {role} rows, "
                             "so a step would hold a row twice; lower it")


def _positive(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and FINITE(v) and v > 0


def _number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def resolve(args):
    """Fills every default (the paper's value for this task) and returns (config dict, task)."""
    check(vars(args))  # the flags given, before the defaults (which are good) fill the rest
    task = load(args)
    src_only = args.method == "src-pref"  # the paper's source-only baseline has its own batch size and schedule
    d = {k: task[k + "_src_only" if src_only and k + "_src_only" in task else k] for k in data.DEFAULTS}
    d.update(task["tgt_only"] if args.method == "tgt-pref" else {})  # so may the target-only oracle (essays, A.5)
    cfg = {k: v for k, v in vars(args).items() if k != "resume"}
    for key, default in (("epochs", d["epochs"]), ("lr", d["lr"]), ("weight_decay", d["weight_decay"]),
                         ("batch_src", d["batch_src_only"] if src_only else d["batch_src"]),
                         ("batch_tgt", d["batch_tgt"]), ("max_len", d["max_length"]), ("eval_every", d["eval_every"])):
        if cfg[key] is None:
            cfg[key] = default
    if cfg["model"] is None:
        cfg["model"] = "tiny" if task["family"] == "odd-one-out" else "checkpoints/gemma-2b"
    cfg["out"] = cfg["out"] or os.path.join("runs", args.task, args.method, f"seed{args.seed}")
    for key in PATHS:  # absolute: --resume and eval.py find the files from any working directory
        if cfg[key] is not None and cfg[key] != "tiny":
            cfg[key] = os.path.abspath(cfg[key])
    cfg["files"] = task["files"]
    cfg["data"] = {role: runfolder.fingerprint_rows(task[role]) for role in ("source", "target", "val", "test")}
    cfg["dropped"] = task["dropped"]  # rows that hold no preference, test rows validation scores: counted
    if data.dropped_note(task):
        print(data.dropped_note(task))
    del cfg["given"]
    check(cfg)
    return cfg, task


CHANGE_ON_RESUME = ("out", "resume", "max_steps", "device", "lr")  # --lr: a deliberate override, logged
PATHS = ("source", "target", "val", "test", "data_dir", "model")


def load(c):  # the task of a run's settings: the flags, or a saved config as a namespace
    return data.load_task(c.task, c.data_dir, c.source, c.target, c.val, c.test, c.data_seed, c.n_source, c.n_target)


def resumed(args):
    """(config, task) of the run in --out, rebuilt from its own config.json; a flag given today that differs from it
    is refused (except CHANGE_ON_RESUME), and so is data that changed since the run started."""
    out = args.out or os.path.join("runs", args.task, args.method, f"seed{args.seed}")
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    saved = runfolder.read_json(path, "the config of a train.py run")
    if isinstance(saved, dict):
        saved.setdefault("critic_scale", "1")  # a run from before the flag: the paper's critic
    types = {a.dest: a.type or (bool if a.const is True else str) for a in parser()._actions if a.dest != "help"}
    for key, t in types.items():
        if key in ("resume", "out"):
            continue
        if key not in saved:
            raise ValueError(f"{path} lacks the field '{key}': it is not the config of a run of this train.py")
        v = saved[key]
        if not (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) if t is float else isinstance(v, t))):
            raise ValueError(f"{path}: field '{key}' is {v!r:.60}, not what train.py writes there")
    for key in sorted(args.given - set(CHANGE_ON_RESUME)):
        new, old = getattr(args, key), saved[key]
        same = new == old or (key in PATHS and None not in (new, old) and "tiny" not in (new, old)
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
    task = load(argparse.Namespace(**cfg))
    for role, fp in (saved.get("data") or {}).items():
        if runfolder.fingerprint_rows(task[role]) != fp:
            raise ValueError(f"the {role} data of the run changed since it started ({task['files'][role]}): resuming "
                             "would train on other data than it began with; restore the file, or start a new run")
    return cfg, task


# -----------------------------------------------------------------------------
# model


def train_tokenizer(texts, path, vocab_size):
    """A Gemma-style SentencePiece model (BPE, byte fallback, <pad>=0 <eos>=1 <bos>=2 <unk>=3) trained on texts."""
    import sentencepiece as spm
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=path[:-len(".model")], model_type="bpe", vocab_size=vocab_size,
            hard_vocab_limit=False, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, pad_id=0,
            eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", num_threads=1,
            minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars. 300 vs 311."
        raise ValueError(f"--tiny-vocab {vocab_size}: SentencePiece cannot train a tokenizer of that size on the "
                         f"task's text ({str(e).split('] ')[-1].splitlines()[0][:160]})") from None


def make_tiny(folder, texts, vocab_size, seed):
    """Writes a random tiny Gemma and a tokenizer trained on `texts` to folder, in the Hugging Face layout."""
    os.makedirs(folder, exist_ok=True)
    train_tokenizer(texts, os.path.join(folder, "tokenizer.model"), vocab_size)
    torch.manual_seed(seed)
    cfg = GemmaConfig.tiny()
    cfg.vocab_size = Tokenizer(os.path.join(folder, "tokenizer.model")).vocab_size
    Gemma(cfg).save_pretrained(folder)


def model_folder(cfg, task):
    """The base model's folder: the given checkpoint, or (--model tiny) a random tiny model saved in the run, built
    under a temporary name and renamed, so that base/ exists only whole."""
    if cfg["model"] == "tiny":
        folder = os.path.join(cfg["out"], "base")
        if not os.path.isdir(folder):
            texts = [t for rows in (task["source"], task["target"]) for row in rows[:20000]
                     for p, r in formats.row_sequences(row) for t in (p, r) if t]
            runfolder.write_atomically(folder, lambda tmp: make_tiny(tmp, texts, cfg["tiny_vocab"], cfg["seed"]))
        return folder
    if not os.path.isdir(cfg["model"]):
        raise FileNotFoundError(
            f"{cfg['model']} not found: download Gemma-2b with `hf download google/gemma-2b --local-dir "
            f"{cfg['model']}` (accept its licence on the hub and log in first), or use --model tiny")
    return cfg["model"]


def build(cfg, folder):
    """Gemma (bf16 on a GPU, float32 on a CPU) + LoRA + reward head + critic, and the tokenizer."""
    dtype = torch.bfloat16 if cfg["device"].startswith("cuda") else torch.float32
    gemma, tok = runfolder.load_base(folder, dtype, cfg["device"])
    gemma.checkpointing = cfg["grad_checkpoint"]
    targets = "all" if cfg["lora_targets"] == "all" else tuple(t.strip() for t in cfg["lora_targets"].split(","))
    torch.manual_seed(cfg["seed"])  # LoRA's A, the head and the critic: seeded
    add_lora(gemma, cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"], targets)
    model = dial.RewardModel(packing.GemmaBackbone(gemma), gemma.config.hidden_size, cfg["critic_act"])
    model.head.to(cfg["device"]), model.critic.to(cfg["device"])
    return model, tok


SCALE_ROWS = 64  # source examples whose mean embedding norm fixes --critic-scale source


def measure_scale(model, src, cfg):
    """The mean norm of the embeddings of up to SCALE_ROWS seeded source examples (every response) under the model
    as it is at step 0, for --critic-scale source: every process measures the same rows, so gets the same number."""
    pick = random.Random(f"critic-scale/{cfg['seed']}").sample(range(len(src)), min(SCALE_ROWS, len(src)))
    total, count = 0.0, 0
    with torch.no_grad():
        was = model.training
        model.eval()
        for i in range(0, len(pick), cfg["eval_batch"]):
            emb = model(packing.to_device(packing.pack([src[j] for j in pick[i:i + cfg["eval_batch"]]]),
                                          cfg["device"]))[0]
            total, count = total + emb.norm(dim=1).double().sum().item(), count + emb.shape[0]
        model.train(was)
    if not (count and math.isfinite(total / count) and total > 0):
        raise FloatingPointError(f"--critic-scale source: the mean source embedding norm at step 0 is {total / max(count, 1)}, "
                                 "not a positive finite number")
    return total / count


# -----------------------------------------------------------------------------
# the run


def run(cfg, task, resume=False, stop=None):
    """Trains, evaluates and writes the run folder (process 0 alone writes, holding the folder's lock); returns the
    summary. stop: a runfolder.Stop already listening for signals (main's, from before the data is read), or None."""
    owner = runfolder.owned(cfg["out"]) if world()[0] == 0 else contextlib.nullcontext()
    cli.RUN = cfg["out"]  # an unexpected error's traceback goes to RUN/error.log (cli.py)
    with owner, (contextlib.nullcontext(stop) if stop else runfolder.Stop()) as stop:
        try:
            return _run(cfg, task, resume, stop)
        except KeyboardInterrupt:
            sys.exit(f"\nstopped at once; the last saved state stands: continue with `{runfolder.resume_command(cfg['out'])}`")


def _run(cfg, task, resume, stop):
    rank, n_proc, _ = world()
    out, device, method = cfg["out"], cfg["device"], cfg["method"]
    check_sizes(cfg, task)  # before anything is written or allocated
    state_path, log_path = os.path.join(out, runfolder.STATE), os.path.join(out, "metrics.jsonl")
    if rank == 0 and resume:  # (process 0 holds the folder's lock: nobody else writes in it)
        if not os.path.isfile(state_path):
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist (the run stopped before it "
                                    "saved a state); start it again without --resume")
        runfolder.clear_stale(out)
    elif rank == 0:
        runfolder.start_fresh(out)  # refuses a folder holding a run; clears an attempt that never saved a state
    barrier()
    random.seed(cfg["seed"]), np.random.seed(cfg["seed"]), torch.manual_seed(cfg["seed"])

    tgt_rows = data.labelled_target(task, cfg["data_seed"]) if method in dial.ORACLES else task["target"]
    if rank == 0:
        folder = model_folder(cfg, task)  # with --model tiny, process 0 makes the base model ...
        base = runfolder.fingerprint_folder(folder)
        if resume and cfg.get("base") not in (None, base):
            raise ValueError(f"the base model in {folder} changed since the run started (its files differ); resuming "
                             "would continue on another model")
        if not resume:
            runfolder.write_json(os.path.join(out, "config.json"), {**cfg, "base": base, "processes": n_proc})
    barrier()
    folder = model_folder(cfg, task)  # ... and the others then read it
    core, tok = build(cfg, folder)
    model = parallel(core, device) if n_proc > 1 else core
    tokenise = lambda rows: packing.tokenize(  # noqa: E731
        rows, tok, cfg["max_len"], cfg["separator"], cfg["truncation"])
    src, tgt = tokenise(task["source"]), tokenise(tgt_rows)
    if "critic_scale_value" not in cfg:  # fixed once, at step 0 of a fresh run; a resumed run reads it back
        cfg["critic_scale_value"] = (measure_scale(core, src, cfg) if cfg["critic_scale"] == "source"
                                     else float(cfg["critic_scale"]))
        if rank == 0:
            runfolder.write_json(os.path.join(out, "config.json"), {
                **runfolder.read_json(os.path.join(out, "config.json")), "critic_scale_value": cfg["critic_scale_value"]})
    core.critic.scale = cfg["critic_scale_value"]
    evals = {s: (rows, tokenise(rows)) for s in ("val", "test") for rows in [task[s][:cfg["eval_rows"]]]}
    B_s, B_t, A = cfg["batch_src"], cfg["batch_tgt"], cfg["accum"]  # per process: the global batch is n_proc times
    uses_tgt = method in dial.TARGET_METHODS
    per_epoch = max(math.ceil(len(src) / (B_s * n_proc)) if method != "tgt-pref" else 0,  # its epochs: the target's
                    math.ceil(len(tgt) / (B_t * n_proc)) if uses_tgt else 0)
    total = cfg["max_steps"] if cfg["max_steps"] is not None else math.ceil(cfg["epochs"] * per_epoch)

    trainable = [p for p in core.backbone.parameters() if p.requires_grad] + list(core.head.parameters())
    opt = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    hp = dial.DialConfig(lam=cfg["lam"], lam_gp=cfg["lam_gp"], critic_iters=cfg["critic_iters"],
                         critic_lr=cfg["critic_lr"], critic_weight_decay=cfg["critic_wd"], lm_weight=cfg["lm_weight"],
                         lm_detach=cfg["lm_loss"] == "detached")
    critic_opt = dial.critic_optimizer(core.critic, hp)
    gp_rng = torch.Generator(device).manual_seed(cfg["seed"])  # the penalty's draws: the same in every process
    step, best, best_weights = 0, None, None
    if resume:
        step, best, best_weights = runfolder.load_state(state_path, core, opt, critic_opt, gp_rng, total,
                                                        cfg["critic_iters"] * A)
        print(f"resuming {out} at step {step} of {total}")
    if cfg.get("lr_override"):  # deliberate: the advice after a divergence; logged in config.json
        was = opt.param_groups[0]["lr"]
        for group in opt.param_groups:
            group["lr"] = cfg["lr_override"]
        print(f"--lr {cfg['lr_override']:g} instead of {was:g} from step {step} on")
        if rank == 0:
            saved = runfolder.read_json(os.path.join(out, "config.json"))
            saved["lr"], saved["lr_changes"] = cfg["lr_override"], saved.get("lr_changes", []) + [
                {"step": step, "lr": cfg["lr_override"], "was": was}]
            runfolder.write_json(os.path.join(out, "config.json"), saved)
    log = runfolder.open_log(log_path, step if resume else None) if rank == 0 else None
    if log and not resume and task["dropped"]:  # the log says which rows the run never saw (so does config.json)
        log.write(json.dumps({"step": 0, "split": "data", "dropped": task["dropped"]}) + "\n"), log.flush()
    main = "pearson" if task["metric"] == "correlation" else "acc"
    if best is not None and main not in best["val"]:
        raise ValueError(f"{state_path}: its best validation record has no '{main}', the metric of task "
                         f"'{cfg['task']}' (was the state edited?)")
    saved_step = step

    def write(record):
        if log:
            log.write(json.dumps(record) + "\n"), log.flush()

    def validate():  # every process evaluates a share of the batches; all get the same metrics
        nonlocal best, best_weights
        metrics = evaluate(core, *evals["val"], task["metric"], cfg["eval_batch"], device, cfg["ties"])
        write({"step": step, "split": "val", **metrics})
        if math.isfinite(metrics[main]) and (best is None or metrics[main] > best["val"][main]):
            best = {"step": step, "val": metrics}
            best_weights = {k: v.detach().clone() for k, v in runfolder.trainable_state(core).items()}
            if rank == 0:
                runfolder.save_best(core, os.path.join(out, "adapter"))
        return metrics

    def checkpoint():
        nonlocal saved_step
        if rank == 0:
            runfolder.save_state(state_path, core, opt, critic_opt, gp_rng, step, best, best_weights)
        saved_step = step

    def diverged(what):
        return (f"{what} at step {step + 1}; nothing of that step was saved, and the last saved state (step "
                f"{saved_step}) is finite: continue from it with a lower learning rate, e.g. "
                f"`{runfolder.resume_command(out)} --lr {cfg['lr'] / 10:g}`")

    embed = tsne.saver(cfg, task, core, tok, per_epoch) if rank == 0 else (lambda step: None)  # Fig. 3
    if not resume:
        validate()  # step 0, before any update, as the authors did: the base model's number, logged
        checkpoint()  # step 0: from now on the run can always be resumed
        embed(0)
    bar = tqdm(total=total, initial=step, desc=f"{cfg['task']} {method}", dynamic_ncols=True, disable=rank > 0)
    try:
        while step < total and not stop(device):
            # this process's share of the global batch: the same examples as one process with n_proc times the batch
            s_idx = packing.paired_indices(len(src), B_s * n_proc, step, cfg["seed"], "source")[rank * B_s:][:B_s]
            t_idx = packing.paired_indices(len(tgt), B_t * n_proc, step, cfg["seed"], "target")[rank * B_t:][:B_t] \
                if uses_tgt else []
            micro = [packing.to_device(packing.step_batch([src[i] for i in s_idx[k * B_s // A:(k + 1) * B_s // A]],
                                                          [tgt[i] for i in t_idx[k * B_t // A:(k + 1) * B_t // A]],
                                                          method), device) for k in range(A)]
            try:
                logs = dial.train_step(model, micro, method, opt, critic_opt, hp, gp_rng,
                                       gather_rows if n_proc > 1 else None)
            except RuntimeError as e:  # AdamW's lr / (1 - beta1^t) overflows float32 for a huge --lr
                if "overflow" not in str(e):
                    raise
                raise FloatingPointError(diverged(f"the update overflowed ({str(e).splitlines()[0]})")) from None
            logs = mean_over_processes(logs, device)  # the global batch's numbers, the same in every process
            if not all(math.isfinite(v) for v in logs.values()):
                raise FloatingPointError(diverged(f"the loss became {logs['loss']} ({logs})"))
            try:  # a finite loss computed before the update says nothing about the weights after it
                runfolder.check_finite(runfolder.trainable_state(core), "the weights after the update")
            except FloatingPointError as e:
                raise FloatingPointError(diverged(str(e))) from None
            step += 1
            write({"step": step, "split": "train", **logs})
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "w", "acc")})
            if step % per_epoch == 0:
                embed(step)
            if step % per_epoch == 0 or (cfg["eval_every"] and step % cfg["eval_every"] == 0) or step == total:
                bar.set_postfix(val=f"{validate()[main]:.3f}")
                checkpoint()
        if step < total:  # a signal asked to stop
            checkpoint()
            sys.exit(f"\nstopped at step {step} of {total}: continue with `{runfolder.resume_command(out)}`")
    finally:
        bar.close()
        if log:
            log.close()

    # the best checkpoint on validation, evaluated on test
    if best is None:
        raise FloatingPointError(f"no evaluation on validation gave a finite {main}: there is no checkpoint to test")
    if best["step"] != step:
        core.load_state_dict(best_weights, strict=False)
    test = evaluate(core, *evals["test"], task["metric"], cfg["eval_batch"], device, cfg["ties"])
    summary = {"task": cfg["task"], "method": method, "seed": cfg["seed"], "steps": step, "best_step": best["step"],
               "metric": main, "val": best["val"], "test": test,
               "rows": {"source": len(task["source"]), "target": len(task["target"])}}  # used (--n-source, --n-target)
    if rank == 0:
        runfolder.save_best(core, os.path.join(out, "adapter"))  # the best, whatever a kill interrupted before
        runfolder.write_json(os.path.join(out, "summary.json"), summary)
    print(f"{cfg['task']} {method} seed {cfg['seed']}: val {main} {best['val'][main]:.4f} (step {best['step']}), "
          f"test {main} {test[main]:.4f}")
    return summary


def main(argv=None):
    args = parse_args(argv)
    cli.RUN = args.out if args.out and os.path.isdir(args.out) else None  # where a crash's traceback goes (error.log)
    with command(args.device) as args.device:  # under torchrun: one process per device; else nothing changes
        if args.task is None and not args.resume:
            if args.given - {"device"}:  # the demo's settings are fixed: a flag would be silently ignored
                raise ValueError(f"--{sorted(args.given - {'device'})[0].replace('_', '-')} needs a --task (without "
                                 "--task, train.py runs the offline demo, whose settings are fixed)")
            check(vars(args))
            from demo import demo  # the offline demo: its own file, which imports this one
            return demo(device=args.device)
        with runfolder.Stop() as stop:  # a signal while the data loads: the run stops at its first step boundary
            cfg, task = resumed(args) if args.resume else resolve(args)
            if cfg["method"] in dial.PROMPTED:  # trains nothing: generation and parsing, in its own file
                import prompted
                return prompted.run(cfg, task, args.resume)
            return run(cfg, task, args.resume, stop)


if __name__ == "__main__":
    main()
