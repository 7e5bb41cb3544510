"""
Train a reward model with DIAL or a baseline on one task of the paper, and evaluate it.

    python train.py                                          # offline demo, CPU (demo.py)
    python train.py --task legaladvice-ko --method dial      # the paper's run: Gemma-2b, LoRA 64, a GPU
    python train.py --task sentiment-movies-tweets --model checkpoints/gemma-3-270m --show-config   # settings only
    python train.py --task my_task.json --method dial --model checkpoints/gemma-3-270m   # a task of your own
    python train.py --out RUN --resume                       # continue an interrupted run (Ctrl-C, SIGTERM, a kill)

This file is the command line (main: the demo, a prompted baseline, or a training run) and the training run itself.
The flags, the defaults they resolve to and where each comes from are settings.py. One run = one folder (default
runs/<task>/<method>/seed<S>), owned by one process; runfolder.py describes its files (config.json, metrics.jsonl,
adapter/, state.safetensors, summary.json, base/ for --model tiny) and how each is written whole or not at all.
--resume rebuilds the run from its own config.json. Training is finite or stops: a non-finite loss or weight ends the
run without saving that step.

The run, in the order a reader meets it in _run: the folder (start_folder), the model, data and optimisers (build),
the state to continue from (resume_state), the loop (train_loop: each step takes B_src source and B_tgt target
examples, the smaller domain cycling, packs them into one backbone input, packing.py, and calls dial.train_step;
evaluation on validation at step 0, before any update, as the authors did, every --eval-every steps and at every
epoch's end), then the best validation checkpoint evaluated on test and the summary written (finish).
"""
import contextlib
import json
import math
import os
import random
import sys
import types

import numpy as np
import torch
from tqdm import tqdm

import cli
import data
import dial
import packing
import runfolder
import settings
import tsne
from eval import evaluate
from lora import add_lora
from processes import barrier, command, gather_rows, mean_over_processes, parallel, world

# -----------------------------------------------------------------------------
# the command line: the only place that decides what a train.py command does


def main(argv=None):
    args = settings.parse_args(argv)
    cli.RUN = args.out if args.out and os.path.isdir(args.out) else None  # where a crash's traceback goes (error.log)
    with command(args.device) as args.device:  # under torchrun: one process per device; else nothing changes
        if args.task is None and not args.resume:
            if args.given - {"device"}:  # the demo's settings are fixed: a flag would be silently ignored
                raise ValueError(f"--{sorted(args.given - {'device'})[0].replace('_', '-')} needs a --task (without "
                                 "--task, train.py runs the offline demo, whose settings are fixed)")
            settings.check(vars(args))
            return run_demo(args.device)
        if args.show_config:
            return settings.show_config(args)
        with runfolder.Stop() as stop:  # a signal while the data loads: the run stops at its first step boundary
            cfg, task = settings.resumed(args) if args.resume else settings.resolve(args)
            if not args.resume:
                print(settings.summary(cfg, args))
            if cfg["method"] in dial.PROMPTED:  # trains nothing: generation and parsing, in its own file
                import prompted
                return prompted.run(cfg, task, args.resume)
            return run(cfg, task, args.resume, stop)


def run_demo(device):
    """The offline demo (demo.py): its pre-trained tiny base model, then its runs, each trained by run(); a run that
    finished is read back, one that was interrupted continues."""
    import demo
    results = {}
    for method, seed, argv in demo.runs(demo.base_model(), device):
        cfg, task = settings.resolve(settings.parse_args(argv))
        done = os.path.join(cfg["out"], "summary.json")
        summary = runfolder.read_json(done) if os.path.exists(done) else \
            run(cfg, task, os.path.exists(os.path.join(cfg["out"], runfolder.STATE)))
        results.setdefault(method, []).append(summary["test"]["acc"])
    demo.report(results)
    return results


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


# -----------------------------------------------------------------------------
# the model


def build_model(cfg, folder):
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
# the run, in its steps


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
    check_sizes(cfg, task)  # before anything is written or allocated
    start_folder(cfg, resume)
    r = build(cfg, task, resume)
    resume_state(r, resume)
    train_loop(r, resume, stop)
    return finish(r)


def start_folder(cfg, resume):
    """The run folder, before anything is built: a fresh run starts a fresh folder (a folder that holds a run is
    refused), a resumed one needs its state; then every generator is seeded."""
    if world()[0] == 0 and resume:  # (process 0 holds the folder's lock: nobody else writes in it)
        path = os.path.join(cfg["out"], runfolder.STATE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"nothing to resume: {path} does not exist (the run stopped before it "
                                    "saved a state); start it again without --resume")
        runfolder.clear_stale(cfg["out"])
    elif world()[0] == 0:
        runfolder.start_fresh(cfg["out"])  # refuses a folder holding a run; clears an attempt that never saved a state
    barrier()
    random.seed(cfg["seed"]), np.random.seed(cfg["seed"]), torch.manual_seed(cfg["seed"])


def build(cfg, task, resume):
    """Everything the loop needs, as one namespace r: the base model with LoRA, reward head and critic (r.core; r.model
    is it wrapped for torchrun), the tokenised data, the batch sizes and number of steps, both optimisers and the
    gradient penalty's generator. A fresh run writes config.json (with the base model's fingerprint) first."""
    rank, n_proc, _ = world()
    out, method = cfg["out"], cfg["method"]
    tgt_rows = data.labelled_target(task, cfg["data_seed"]) if method in dial.ORACLES else task["target"]
    if rank == 0:
        folder = runfolder.model_folder(cfg, task)  # with --model tiny, process 0 makes the base model ...
        base = runfolder.fingerprint_folder(folder)
        if resume and cfg.get("base") not in (None, base):
            raise ValueError(f"the base model in {folder} changed since the run started (its files differ); resuming "
                             "would continue on another model")
        if not resume:
            runfolder.write_json(os.path.join(out, "config.json"), {**cfg, "base": base, "processes": n_proc})
    barrier()
    core, tok = build_model(cfg, runfolder.model_folder(cfg, task))  # ... and the others then read it
    tokenise = lambda rows: packing.tokenize(  # noqa: E731
        rows, tok, cfg["max_len"], cfg["separator"], cfg["truncation"])
    r = types.SimpleNamespace(cfg=cfg, task=task, rank=rank, n_proc=n_proc, out=out, method=method,
                              device=cfg["device"], core=core, tok=tok,
                              model=parallel(core, cfg["device"]) if n_proc > 1 else core,
                              src=tokenise(task["source"]), tgt=tokenise(tgt_rows),
                              state_path=os.path.join(out, runfolder.STATE))
    if "critic_scale_value" not in cfg:  # fixed once, at step 0 of a fresh run; a resumed run reads it back
        cfg["critic_scale_value"] = (measure_scale(core, r.src, cfg) if cfg["critic_scale"] == "source"
                                     else float(cfg["critic_scale"]))
        if rank == 0:
            runfolder.write_json(os.path.join(out, "config.json"), {
                **runfolder.read_json(os.path.join(out, "config.json")), "critic_scale_value": cfg["critic_scale_value"]})
    core.critic.scale = cfg["critic_scale_value"]
    r.evals = {s: (rows, tokenise(rows)) for s in ("val", "test") for rows in [task[s][:cfg["eval_rows"]]]}
    r.B_s, r.B_t, r.A = cfg["batch_src"], cfg["batch_tgt"], cfg["accum"]  # per process: the global batch is n_proc times
    r.uses_tgt = method in dial.TARGET_METHODS
    r.per_epoch = max(math.ceil(len(r.src) / (r.B_s * n_proc)) if method != "tgt-pref" else 0,  # its epochs: the target's
                      math.ceil(len(r.tgt) / (r.B_t * n_proc)) if r.uses_tgt else 0)
    r.total = cfg["max_steps"] if cfg["max_steps"] is not None else math.ceil(cfg["epochs"] * r.per_epoch)
    trainable = [p for p in core.backbone.parameters() if p.requires_grad] + list(core.head.parameters())
    r.opt = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    r.hp = dial.DialConfig(lam=cfg["lam"], lam_gp=cfg["lam_gp"], critic_iters=cfg["critic_iters"],
                           critic_lr=cfg["critic_lr"], critic_weight_decay=cfg["critic_wd"], lm_weight=cfg["lm_weight"],
                           lm_detach=cfg["lm_loss"] == "detached")
    r.critic_opt = dial.critic_optimizer(core.critic, r.hp)
    r.gp_rng = torch.Generator(r.device).manual_seed(cfg["seed"])  # the penalty's draws: the same in every process
    r.main = "pearson" if task["metric"] == "correlation" else "acc"
    return r


def resume_state(r, resume):
    """r.step, r.best (the best validation record) and r.best_weights: from the saved state (weights, optimisers and
    every generator restored), or a fresh start; a deliberate --lr change applied and logged; the log opened."""
    cfg = r.cfg
    r.step, r.best, r.best_weights = 0, None, None
    if resume:
        r.step, r.best, r.best_weights = runfolder.load_state(r.state_path, r.core, r.opt, r.critic_opt, r.gp_rng,
                                                              r.total, cfg["critic_iters"] * r.A)
        print(f"resuming {r.out} at step {r.step} of {r.total}")
    if cfg.get("lr_override"):  # deliberate: the advice after a divergence; logged in config.json
        was = r.opt.param_groups[0]["lr"]
        for group in r.opt.param_groups:
            group["lr"] = cfg["lr_override"]
        print(f"--lr {cfg['lr_override']:g} instead of {was:g} from step {r.step} on")
        if r.rank == 0:
            saved = runfolder.read_json(os.path.join(r.out, "config.json"))
            saved["lr"], saved["lr_changes"] = cfg["lr_override"], saved.get("lr_changes", []) + [
                {"step": r.step, "lr": cfg["lr_override"], "was": was}]
            runfolder.write_json(os.path.join(r.out, "config.json"), saved)
    r.log = runfolder.open_log(os.path.join(r.out, "metrics.jsonl"), r.step if resume else None) if r.rank == 0 else None
    if not resume and r.task["dropped"]:  # the log says which rows the run never saw (so does config.json)
        write(r, {"step": 0, "split": "data", "dropped": r.task["dropped"]})
    if r.best is not None and r.main not in r.best["val"]:
        raise ValueError(f"{r.state_path}: its best validation record has no '{r.main}', the metric of task "
                         f"'{cfg['task']}' (was the state edited?)")
    r.saved_step = r.step


def write(r, record):
    if r.log:
        r.log.write(json.dumps(record) + "\n"), r.log.flush()


def validate(r):
    """Metrics on validation, logged; a new best is kept (its weights, and on disk its adapter). Every process
    evaluates a share of the batches; all get the same metrics."""
    cfg = r.cfg
    metrics = evaluate(r.core, *r.evals["val"], r.task["metric"], cfg["eval_batch"], r.device, cfg["ties"])
    write(r, {"step": r.step, "split": "val", **metrics})
    if math.isfinite(metrics[r.main]) and (r.best is None or metrics[r.main] > r.best["val"][r.main]):
        r.best = {"step": r.step, "val": metrics}
        r.best_weights = {k: v.detach().clone() for k, v in runfolder.trainable_state(r.core).items()}
        if r.rank == 0:
            runfolder.save_best(r.core, os.path.join(r.out, "adapter"))
    return metrics


def checkpoint(r):
    if r.rank == 0:
        runfolder.save_state(r.state_path, r.core, r.opt, r.critic_opt, r.gp_rng, r.step, r.best, r.best_weights)
    r.saved_step = r.step


def diverged(r, what):
    return (f"{what} at step {r.step + 1}; nothing of that step was saved, and the last saved state (step "
            f"{r.saved_step}) is finite: continue from it with a lower learning rate, e.g. "
            f"`{runfolder.resume_command(r.out)} --lr {r.cfg['lr'] / 10:g}`")


def train_step(r):
    """One optimisation step on this process's share of the global batch (the same examples as one process with
    n_proc times the batch), in --accum micro-batches; the logs averaged over processes, checked finite."""
    cfg, rank, n = r.cfg, r.rank, r.n_proc
    s_idx = packing.paired_indices(len(r.src), r.B_s * n, r.step, cfg["seed"], "source")[rank * r.B_s:][:r.B_s]
    t_idx = packing.paired_indices(len(r.tgt), r.B_t * n, r.step, cfg["seed"], "target")[rank * r.B_t:][:r.B_t] \
        if r.uses_tgt else []
    micro = [packing.to_device(packing.step_batch([r.src[i] for i in s_idx[k * r.B_s // r.A:(k + 1) * r.B_s // r.A]],
                                                  [r.tgt[i] for i in t_idx[k * r.B_t // r.A:(k + 1) * r.B_t // r.A]],
                                                  r.method), r.device) for k in range(r.A)]
    try:
        logs = dial.train_step(r.model, micro, r.method, r.opt, r.critic_opt, r.hp, r.gp_rng,
                               gather_rows if n > 1 else None)
    except RuntimeError as e:  # AdamW's lr / (1 - beta1^t) overflows float32 for a huge --lr
        if "overflow" not in str(e):
            raise
        raise FloatingPointError(diverged(r, f"the update overflowed ({str(e).splitlines()[0]})")) from None
    logs = mean_over_processes(logs, r.device)  # the global batch's numbers, the same in every process
    if not all(math.isfinite(v) for v in logs.values()):
        raise FloatingPointError(diverged(r, f"the loss became {logs['loss']} ({logs})"))
    try:  # a finite loss computed before the update says nothing about the weights after it
        runfolder.check_finite(runfolder.trainable_state(r.core), "the weights after the update")
    except FloatingPointError as e:
        raise FloatingPointError(diverged(r, str(e))) from None
    return logs


def train_loop(r, resume, stop):
    """Step 0 evaluated and saved (a fresh run), then steps until the run's total or a signal: each logged, an
    evaluation and a saved state at every --eval-every and epoch's end; a signal saves and says how to continue."""
    cfg = r.cfg
    embed = tsne.saver(cfg, r.task, r.core, r.tok, r.per_epoch) if r.rank == 0 else (lambda step: None)  # Fig. 3
    if not resume:
        validate(r)  # step 0, before any update, as the authors did: the base model's number, logged
        checkpoint(r)  # step 0: from now on the run can always be resumed
        embed(0)
    bar = tqdm(total=r.total, initial=r.step, desc=f"{cfg['task']} {r.method}", dynamic_ncols=True, disable=r.rank > 0)
    try:
        while r.step < r.total and not stop(r.device):
            logs = train_step(r)
            r.step += 1
            write(r, {"step": r.step, "split": "train", **logs})
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "w", "acc")})
            if r.step % r.per_epoch == 0:
                embed(r.step)
            if r.step % r.per_epoch == 0 or (cfg["eval_every"] and r.step % cfg["eval_every"] == 0) \
                    or r.step == r.total:
                bar.set_postfix(val=f"{validate(r)[r.main]:.3f}")
                checkpoint(r)
        if r.step < r.total:  # a signal asked to stop
            checkpoint(r)
            sys.exit(f"\nstopped at step {r.step} of {r.total}: continue with `{runfolder.resume_command(r.out)}`")
    finally:
        bar.close()
        if r.log:
            r.log.close()


def finish(r):
    """The best checkpoint on validation, evaluated once on test; its adapter and the summary written."""
    cfg, best = r.cfg, r.best
    if best is None:
        raise FloatingPointError(f"no evaluation on validation gave a finite {r.main}: there is no checkpoint to test")
    if best["step"] != r.step:
        r.core.load_state_dict(r.best_weights, strict=False)
    test = evaluate(r.core, *r.evals["test"], r.task["metric"], cfg["eval_batch"], r.device, cfg["ties"])
    summary = {"task": cfg["task"], "method": r.method, "seed": cfg["seed"], "steps": r.step, "best_step": best["step"],
               "metric": r.main, "val": best["val"], "test": test,
               "rows": {"source": len(r.task["source"]), "target": len(r.task["target"])}}  # used (--n-source, --n-target)
    if r.rank == 0:
        runfolder.save_best(r.core, os.path.join(r.out, "adapter"))  # the best, whatever a kill interrupted before
        runfolder.write_json(os.path.join(r.out, "summary.json"), summary)
    print(f"{cfg['task']} {r.method} seed {cfg['seed']}: val {r.main} {best['val'][r.main]:.4f} (step {best['step']}), "
          f"test {r.main} {test[r.main]:.4f}")
    return summary


if __name__ == "__main__":
    main()
