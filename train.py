"""
Train a reward model with DIAL or a baseline on one task of the paper, and evaluate it.

    python train.py                                          # offline demo, CPU, a few minutes (see demo())
    python train.py --task legaladvice-ko --method dial      # the paper's run: Gemma-2b, LoRA 64, a GPU
    python train.py --task oddoneout-desserts-fruits --method src-pref --model tiny --max-steps 50

One run = one folder (default runs/<task>/<method>/seed<S>): config.json (every setting, resolved), metrics.jsonl
(training logs and evaluations), adapter/ (the best checkpoint on validation, a PEFT adapter with the reward head as
`score`, and critic.safetensors beside it), state.pt (everything --resume needs), summary.json (best validation and
its test metrics). With --model tiny the random base model and its tokenizer are saved in base/.

The loop is the paper's: each step takes B_src source and B_tgt target examples (the smaller domain cycles), packs
them into one backbone input (packing.py), and calls dial.train_step; evaluation on validation every --eval-every steps
and at every epoch's end; the best validation checkpoint is evaluated on test at the end.
"""
import argparse
import json
import math
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import data
import dial
from eval import command, evaluate
from gemma import Gemma, GemmaConfig, Tokenizer
from lora import add_lora, load_adapter, save_adapter
import packing

# -----------------------------------------------------------------------------
# the command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog="tasks: " + ", ".join(data.TASKS))
    a = p.add_argument
    a("--task", help="one of the tasks listed below (no --task: the offline demo)")
    a("--method", default="dial", choices=dial.METHODS)
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
    a("--eval", help="custom task: labelled evaluation file (used as validation and test)")
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
    g.add_argument("--critic-act", default="gelu", choices=("gelu", "none"),
                   help="'none' reproduces the authors' released critic, which had no activation")
    g.add_argument("--lm-weight", type=float, default=1.0, help="weight of the SFT / NTP loss of the baselines")
    g = p.add_argument_group("evaluation and system")
    g.add_argument("--eval-every", type=int, help="steps between evaluations on validation (and every epoch end)")
    g.add_argument("--eval-batch", type=int, default=16, help="examples per evaluation batch")
    g.add_argument("--eval-rows", type=int, help="evaluate on the first N rows of val and test only")
    g.add_argument("--separator", default=packing.SEPARATOR, help="between prompt and response")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing (less GPU memory)")
    g.add_argument("--tiny-vocab", type=int, default=1000, help="vocabulary of the tokenizer trained for --model tiny")
    args = p.parse_args(argv)
    if args.resume and not args.out and not args.task:
        p.error("--resume needs the run's --task (or --out)")
    return args


def resolve(args):
    """Fills every default (the paper's value for this task) and returns (config dict, task)."""
    task = data.load_task(args.task, args.data_dir, args.source, args.target, args.eval, seed=args.data_seed)
    src_only = args.method == "src-pref"  # the paper's source-only baseline has its own batch size and schedule
    d = {k: task[k + "_src_only" if src_only and k + "_src_only" in task else k] for k in data.DEFAULTS}
    cfg = {k: v for k, v in vars(args).items() if k != "resume"}
    for key, default in (("epochs", d["epochs"]), ("lr", d["lr"]), ("weight_decay", d["weight_decay"]),
                         ("batch_src", d["batch_src_only"] if src_only else d["batch_src"]),
                         ("batch_tgt", d["batch_tgt"]), ("max_len", d["max_length"]), ("eval_every", d["eval_every"])):
        if cfg[key] is None:
            cfg[key] = default
    if cfg["model"] is None:
        cfg["model"] = "tiny" if task["family"] == "odd-one-out" else "checkpoints/gemma-2b"
    cfg["out"] = cfg["out"] or os.path.join("runs", args.task, args.method, f"seed{args.seed}")
    cfg["files"] = task["files"]
    for key in ("batch_src", "batch_tgt", "accum", "lora_r", "critic_iters", "eval_batch"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}")
    for key in ("lr", "critic_lr", "epochs", "max_len"):
        if cfg[key] <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {cfg[key]}")
    for key in ("lam", "lam_gp", "weight_decay", "critic_wd", "lm_weight"):
        if cfg[key] < 0:
            raise ValueError(f"--{key.replace('_', '-')} must not be negative, got {cfg[key]}")
    if cfg["batch_src"] % cfg["accum"] or cfg["batch_tgt"] % cfg["accum"]:
        raise ValueError(f"--accum {cfg['accum']} must divide the batch sizes ({cfg['batch_src']}, {cfg['batch_tgt']})")
    return cfg, task


# -----------------------------------------------------------------------------
# model


def train_tokenizer(texts, path, vocab_size):
    """A Gemma-style SentencePiece model (BPE, byte fallback, <pad>=0 <eos>=1 <bos>=2 <unk>=3) trained on texts."""
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=path[:-len(".model")], model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, pad_id=0,
        eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", num_threads=1,
        minloglevel=2)


def make_tiny(folder, texts, vocab_size, seed):
    """Writes a random tiny Gemma and a tokenizer trained on `texts` to folder, in the Hugging Face layout."""
    os.makedirs(folder, exist_ok=True)
    train_tokenizer(texts, os.path.join(folder, "tokenizer.model"), vocab_size)
    torch.manual_seed(seed)
    cfg = GemmaConfig.tiny()
    cfg.vocab_size = Tokenizer(os.path.join(folder, "tokenizer.model")).vocab_size
    Gemma(cfg).save_pretrained(folder)


def model_folder(cfg, task):
    """The base model's folder: the given checkpoint, or (--model tiny) a random tiny model saved in the run."""
    if cfg["model"] == "tiny":
        folder = os.path.join(cfg["out"], "base")
        if not os.path.exists(os.path.join(folder, "model.safetensors")):
            texts = [t for rows in (task["source"], task["target"]) for row in rows[:20000]
                     for p, r in data.row_sequences(row) for t in (p, r) if t]
            make_tiny(folder, texts, cfg["tiny_vocab"], cfg["seed"])
        return folder
    if not os.path.isdir(cfg["model"]):
        raise FileNotFoundError(
            f"{cfg['model']} not found: download Gemma-2b with `hf download google/gemma-2b --local-dir "
            f"{cfg['model']}` (accept its licence on the hub and log in first), or use --model tiny")
    return cfg["model"]


def build(cfg, folder):
    """Gemma (bf16 on a GPU, float32 on a CPU) + LoRA + reward head + critic, and the tokenizer."""
    dtype = torch.bfloat16 if cfg["device"].startswith("cuda") else torch.float32
    gemma = Gemma.from_pretrained(folder, dtype=dtype, device=cfg["device"])
    gemma.checkpointing = cfg["grad_checkpoint"]
    targets = "all" if cfg["lora_targets"] == "all" else tuple(cfg["lora_targets"].split(","))
    torch.manual_seed(cfg["seed"])  # LoRA's A, the head and the critic: seeded
    add_lora(gemma, cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"], targets)
    model = dial.RewardModel(packing.GemmaBackbone(gemma), gemma.config.hidden_size, cfg["critic_act"])
    model.head.to(cfg["device"]), model.critic.to(cfg["device"])
    return model, Tokenizer(os.path.join(folder, "tokenizer.model"))


# -----------------------------------------------------------------------------
# saving: every file written whole or not at all


def write_atomically(path, write):
    """write(temporary path), then one rename: a kill during the write leaves the previous file intact."""
    write(path + ".tmp")
    os.replace(path + ".tmp", path)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_atomically(path, write)


def save_best(model, folder):
    from safetensors.torch import save_file
    save_adapter(model.backbone.gemma, folder, modules_to_save={"score": model.head})
    critic = {k: v.contiguous().cpu() for k, v in model.critic.state_dict().items()}
    write_atomically(os.path.join(folder, "critic.safetensors"), lambda tmp: save_file(critic, tmp))


def trainable_state(model):
    return {k: v for k, v in model.state_dict().items() if "lora_" in k or k.startswith(("head.", "critic."))}


def save_state(path, model, opt, critic_opt, gp_rng, step, best):
    state = dict(model=trainable_state(model), opt=opt.state_dict(), critic_opt=critic_opt.state_dict(), step=step,
                 best=best, rng=(random.getstate(), np.random.get_state(), torch.get_rng_state(),
                                 torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
                 gp_rng=gp_rng.get_state())
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_state(path, model, opt, critic_opt, gp_rng):
    state = torch.load(path, weights_only=False)
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise ValueError(f"{path} does not match this model (no '{sorted(missing)[0]}'); was the run's config changed?")
    model.load_state_dict(state["model"], strict=False)
    opt.load_state_dict(state["opt"])
    critic_opt.load_state_dict(state["critic_opt"])
    gp_rng.set_state(state["gp_rng"])
    py, np_state, cpu, cuda = state["rng"]
    random.setstate(py), np.random.set_state(np_state), torch.set_rng_state(cpu)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return state["step"], state["best"]


# -----------------------------------------------------------------------------
# several processes: the same command under torchrun


def world():
    """(rank, number of processes, local rank): torchrun sets these variables; one process otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def barrier():
    if dist.is_initialized():
        dist.barrier()


def parallel(core, device):
    """The reward model as each process's training step sees it: backbone and head wrapped in DistributedDataParallel,
    which averages their gradients over processes. The critic is not wrapped: every process trains its copy on the
    embeddings of the whole global batch (gather_rows), from the same seed, so the copies stay identical without
    exchanging gradients, and W and the gradient penalty are those of the global batch, as with one process."""
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    model = dial.RewardModel(DDP(core.backbone, device_ids=ids), core.head.in_features)
    model.head, model.critic = DDP(core.head, device_ids=ids), core.critic  # the new head and critic: discarded
    return model


def gather_rows(x):
    """(n, D) in every process -> (world * n, D), in process order (detached rows: no gradient flows back)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_processes(logs, device):
    if not dist.is_initialized():
        return logs
    t = torch.tensor([logs[k] for k in sorted(logs)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: v / dist.get_world_size() for k, v in zip(sorted(logs), t.tolist())}


# -----------------------------------------------------------------------------
# the run


def run(cfg, task, resume=False):
    """Trains, evaluates and writes the run folder (process 0 alone writes); returns the summary."""
    rank, n_proc, _ = world()
    out, device, method = cfg["out"], cfg["device"], cfg["method"]
    if resume and not os.path.exists(os.path.join(out, "state.pt")):
        raise FileNotFoundError(f"nothing to resume: {out}/state.pt does not exist")
    if not resume and os.path.exists(os.path.join(out, "state.pt")):
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume:  # the run's own settings, not today's defaults
        with open(os.path.join(out, "config.json")) as f:
            saved = json.load(f)
        cfg = {**saved, "device": device, "max_steps": saved["max_steps"] if cfg["max_steps"] is None else cfg["max_steps"]}
    elif rank == 0:
        os.makedirs(out, exist_ok=True)
        write_json(os.path.join(out, "config.json"), {**cfg, "processes": n_proc})
    random.seed(cfg["seed"]), np.random.seed(cfg["seed"]), torch.manual_seed(cfg["seed"])

    tgt_rows = data.labelled_target(task, cfg["data_seed"]) if method in dial.ORACLES else task["target"]
    if rank == 0:
        folder = model_folder(cfg, task)  # with --model tiny, process 0 makes the base model ...
    barrier()
    folder = model_folder(cfg, task)  # ... and the others then read it
    core, tok = build(cfg, folder)
    model = parallel(core, device) if n_proc > 1 else core
    tokenise = lambda rows: packing.tokenize(rows, tok, cfg["max_len"], cfg["separator"])  # noqa: E731
    src, tgt = tokenise(task["source"]), tokenise(tgt_rows)
    evals = {s: (rows, tokenise(rows)) for s in ("val", "test") for rows in [task[s][:cfg["eval_rows"]]]}
    B_s, B_t, A = cfg["batch_src"], cfg["batch_tgt"], cfg["accum"]  # per process: the global batch is n_proc times
    uses_tgt = method in dial.TARGET_METHODS
    per_epoch = max(math.ceil(len(src) / (B_s * n_proc)), math.ceil(len(tgt) / (B_t * n_proc)) if uses_tgt else 0)
    total = cfg["max_steps"] if cfg["max_steps"] is not None else math.ceil(cfg["epochs"] * per_epoch)

    trainable = [p for p in core.backbone.parameters() if p.requires_grad] + list(core.head.parameters())
    opt = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    hp = dial.DialConfig(lam=cfg["lam"], lam_gp=cfg["lam_gp"], critic_iters=cfg["critic_iters"],
                         critic_lr=cfg["critic_lr"], critic_weight_decay=cfg["critic_wd"], lm_weight=cfg["lm_weight"])
    critic_opt = dial.critic_optimizer(core.critic, hp)
    gp_rng = torch.Generator(device).manual_seed(cfg["seed"])  # the penalty's draws: the same in every process
    step, best = 0, None
    if resume:
        step, best = load_state(os.path.join(out, "state.pt"), core, opt, critic_opt, gp_rng)
        print(f"resuming {out} at step {step} of {total}")
    if resume and rank == 0:  # a kill between checkpoints logged steps that will now run again: drop them
        with open(os.path.join(out, "metrics.jsonl")) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]

        def write(tmp):
            with open(tmp, "w") as f:
                f.writelines(kept)
        write_atomically(os.path.join(out, "metrics.jsonl"), write)
    log = open(os.path.join(out, "metrics.jsonl"), "a") if rank == 0 else None
    main = "pearson" if task["metric"] == "correlation" else "acc"

    def write(record):
        if log:
            log.write(json.dumps(record) + "\n"), log.flush()

    def validate():  # every process evaluates a share of the batches; all get the same metrics
        nonlocal best
        metrics = evaluate(core, *evals["val"], task["metric"], cfg["eval_batch"], device)
        write({"step": step, "split": "val", **metrics})
        if best is None or metrics[main] > best["val"][main]:
            best = {"step": step, "val": metrics}
            if rank == 0:
                save_best(core, os.path.join(out, "adapter"))
        return metrics

    def checkpoint():
        if rank == 0:
            save_state(os.path.join(out, "state.pt"), core, opt, critic_opt, gp_rng, step, best)

    bar = tqdm(total=total, initial=step, desc=f"{cfg['task']} {method}", dynamic_ncols=True, disable=rank > 0)
    try:
        while step < total:
            # this process's share of the global batch: the same examples as one process with n_proc times the batch
            s_idx = packing.paired_indices(len(src), B_s * n_proc, step, cfg["seed"], "source")[rank * B_s:][:B_s]
            t_idx = packing.paired_indices(len(tgt), B_t * n_proc, step, cfg["seed"], "target")[rank * B_t:][:B_t] \
                if uses_tgt else []
            micro = [packing.to_device(packing.step_batch([src[i] for i in s_idx[k * B_s // A:(k + 1) * B_s // A]],
                                                       [tgt[i] for i in t_idx[k * B_t // A:(k + 1) * B_t // A]],
                                                       method), device) for k in range(A)]
            logs = dial.train_step(model, micro, method, opt, critic_opt, hp, gp_rng,
                                   gather_rows if n_proc > 1 else None)
            logs = mean_over_processes(logs, device)  # the global batch's numbers, the same in every process
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(f"the loss became {logs['loss']} at step {step + 1} ({logs}); lower --lr "
                                         f"or --lam, and resume from the last saved state with --resume")
            step += 1
            write({"step": step, "split": "train", **logs})
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "w", "acc")})
            if step % per_epoch == 0 or (cfg["eval_every"] and step % cfg["eval_every"] == 0) or step == total:
                bar.set_postfix(val=f"{validate()[main]:.3f}")
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        sys.exit(f"\ninterrupted at step {step}: continue with `python train.py --task {cfg['task']} "
                 f"--out {out} --resume`")
    finally:
        bar.close()
        if log:
            log.close()

    # the best checkpoint on validation, evaluated on test
    barrier()  # process 0 has written the adapter
    if best["step"] != step:
        load_adapter(core.backbone.gemma, os.path.join(out, "adapter"), modules_to_save={"score": core.head})
    test = evaluate(core, *evals["test"], task["metric"], cfg["eval_batch"], device)
    summary = {"task": cfg["task"], "method": method, "seed": cfg["seed"], "steps": step, "best_step": best["step"],
               "metric": main, "val": best["val"], "test": test}
    if rank == 0:
        write_json(os.path.join(out, "summary.json"), summary)
    print(f"{cfg['task']} {method} seed {cfg['seed']}: val {main} {best['val'][main]:.4f} (step {best['step']}), "
          f"test {main} {test[main]:.4f}")
    return summary


# -----------------------------------------------------------------------------
# the offline demo: python train.py


def pretrain(folder, steps=400, seed=0, batch=32):
    """The demo's base model: a tiny Gemma pre-trained by next-token prediction on lists of five foods of one
    category (all five categories), its small "world knowledge", as Gemma's pre-training is for the real runs."""
    lists, rng = data.food_lists(), random.Random(seed)
    texts = [", ".join(rng.sample(lists[rng.choice(data.CATEGORIES)], 5)) + "\n" for _ in range(steps * batch)]
    os.makedirs(folder, exist_ok=True)
    train_tokenizer(texts[:5000] + [data.OOO_PROMPT], os.path.join(folder, "tokenizer.model"), 1000)
    tok = Tokenizer(os.path.join(folder, "tokenizer.model"))
    torch.manual_seed(seed)
    cfg = GemmaConfig.tiny()
    cfg.vocab_size = tok.vocab_size
    model = Gemma(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for i in tqdm(range(steps), desc="pre-training the tiny model"):
        ids, mask = tok.batch(texts[i * batch:(i + 1) * batch])
        logits = model.logits(model(ids, mask))[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[mask[:, 1:].bool()], ids[:, 1:][mask[:, 1:].bool()])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(folder)
    print(f"pre-trained {folder}: final next-token loss {loss.item():.3f}")


def demo(seeds=(0,)):
    task_name, base = "oddoneout-desserts-fruits", os.path.join("runs", "demo", "base")
    if not os.path.exists(os.path.join(base, "model.safetensors")):
        pretrain(base)
    results = {}
    for method in ("src-pref", "dial"):
        for seed in seeds:
            args = parse_args(["--task", task_name, "--method", method, "--model", base, "--seed", str(seed),
                               "--out", os.path.join("runs", "demo", method, f"seed{seed}"), "--lora-targets", "all",
                               "--epochs", "2"])
            cfg, task = resolve(args)
            if os.path.exists(os.path.join(cfg["out"], "summary.json")):
                with open(os.path.join(cfg["out"], "summary.json")) as f:
                    results.setdefault(method, []).append(json.load(f)["test"]["acc"])
                continue
            results.setdefault(method, []).append(run(cfg, task)["test"]["acc"])
    print(f"\n{task_name}: target (fruits) test accuracy of the odd-one-out answer, chance 0.2")
    for method, accs in results.items():
        print(f"  {method:10s} {np.mean(accs):.3f}  ({', '.join(f'{a:.3f}' for a in accs)})")
    return results


def main(argv=None):
    args = parse_args(argv)
    with command(args.device) as args.device:  # under torchrun: one process per device; else nothing changes
        if args.task is None:
            return demo()
        cfg, task = resolve(args)
        return run(cfg, task, args.resume)


if __name__ == "__main__":
    main()
