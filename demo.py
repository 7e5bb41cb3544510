"""
The offline demo, `python train.py` with no --task: a tiny Gemma pre-trained on lists of foods (base_model), then
Src-Pref and DIAL reward models trained by train.py's own run on odd-one-out questions about desserts (source,
labelled) and evaluated on questions about fruits (target, unlabelled during training): RUNS, each as its command
line. Nothing is downloaded; the runs are in runs/demo/, and an interrupted demo continues where it stopped when run
again. This file knows nothing of train.py: train.py asks it for the base model and the runs, and trains them.
"""
import os
import random
import shutil
import sys

import numpy as np
import torch
from tqdm import tqdm

import oddoneout
import runfolder
import statecheck
from checkpoint import train_tokenizer
from gemma import Gemma, GemmaConfig, Tokenizer


SAVE_EVERY = 50  # pre-training steps between saves of its state (and at a stop): a kill loses at most these
WORK = os.path.join("runs", "demo", "pretrain")  # the pre-training in progress: tokenizer.model, state.safetensors
BASE = os.path.join("runs", "demo", "base")  # the pre-trained base model, a Hugging Face-layout folder
TASK = "oddoneout-desserts-fruits"


def pretrain(work, steps=400, seed=0, batch=32, stop=None):
    """The demo's base model: a tiny Gemma pre-trained by next-token prediction on lists of five foods of one
    category (all five categories), its small "world knowledge", as Gemma's pre-training is for the real runs.
    Resumable: its tokenizer and, every SAVE_EVERY steps and when stop() says so (Ctrl-C, SIGTERM), its state
    (weights, AdamW, step) are kept in `work`; a later call continues from them, to the same model bit for bit.
    Returns the model and the path of its tokenizer."""
    lists, rng = oddoneout.food_lists(), random.Random(seed)
    texts = [", ".join(rng.sample(lists[rng.choice(oddoneout.CATEGORIES)], 5)) + "\n" for _ in range(steps * batch)]
    os.makedirs(work, exist_ok=True)
    tok_path, state_path = os.path.join(work, "tokenizer.model"), os.path.join(work, runfolder.STATE)
    if not os.path.isfile(tok_path):  # trained under a temporary name, then renamed: whole or absent
        tmp = os.path.join(work, f"tokenizer.tmp-{os.getpid()}.model")
        train_tokenizer(texts[:5000] + [oddoneout.OOO_PROMPT], tmp, 1000)
        os.replace(tmp, tok_path)
        runfolder.remove(tmp[:-len(".model")] + ".vocab")  # SentencePiece's readable copy: not needed
    tok = Tokenizer(tok_path)
    torch.manual_seed(seed)
    cfg = GemmaConfig.tiny()
    cfg.vocab_size = tok.vocab_size
    model = Gemma(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    start = resume_pretraining(state_path, model, opt, steps) if os.path.exists(state_path) else 0
    save = lambda step: runfolder.save_tensors(state_path, dict(  # noqa: E731
        step=step, model=dict(model.state_dict()), opt=opt.state_dict()))
    loss, i = None, start
    try:
        for i in tqdm(range(start, steps), desc="pre-training the tiny model", initial=start, total=steps):
            if stop is not None and stop("cpu"):
                save(i)
                sys.exit(f"\nthe pre-training of the demo's base model stopped at step {i} of {steps}, saved in "
                         f"{work}: `python train.py` continues it")
            ids, mask = tok.batch(texts[i * batch:(i + 1) * batch])
            logits = model.logits(model(ids, mask))[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits[mask[:, 1:].bool()], ids[:, 1:][mask[:, 1:].bool()])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (i + 1) % SAVE_EVERY == 0:
                save(i + 1)
    except KeyboardInterrupt:  # a second Ctrl-C: at once, without saving
        sys.exit(f"\nthe pre-training stopped at once at step {i}; its last save in {work} stands: `python train.py` "
                 "continues from it")
    if loss is not None:
        print(f"pre-trained the demo's base model: final next-token loss {loss.item():.3f}")
    return model, tok_path


def resume_pretraining(path, model, opt, steps):
    """Loads the pre-training state in path onto model and opt, checked whole first; returns its step."""
    state = runfolder.read_state(path, "the demo's pre-training state")
    bad = statecheck.complaint(path)
    own = model.state_dict()
    if not 0 <= state["step"] <= steps:
        bad("step", f"is {state['step']}, outside [0, {steps}]")
    saved = state["model"]
    if set(saved) != set(own) or not all(isinstance(v, torch.Tensor) and v.shape == own[k].shape and v.dtype == own[k].dtype
                                         and torch.isfinite(v).all() for k, v in saved.items()):
        bad("model", "does not hold finite weights of this tiny Gemma's names, shapes and dtypes")
    statecheck.check_optimizer(state.get("opt"), opt, "opt", saved, {id(p): n for n, p in model.named_parameters()},
                               state["step"], bad)
    model.load_state_dict(saved)
    opt.load_state_dict(state["opt"])
    print(f"continuing the pre-training of the demo's base model at step {state['step']} of {steps} ({path})")
    return state["step"]


def base_model():
    """The demo's base model folder: pre-trained once (resumable: Ctrl-C saves, a new call continues), then kept."""
    if not os.path.isdir(BASE):
        with runfolder.owned(WORK), runfolder.Stop() as stop:  # one process pre-trains; Ctrl-C saves it
            model, tok_path = pretrain(WORK, stop=stop)

            def write(tmp):  # base/ appears whole or not at all
                model.save_pretrained(tmp)
                shutil.copyfile(tok_path, os.path.join(tmp, "tokenizer.model"))
            runfolder.write_atomically(BASE, write)
    runfolder.remove(WORK)  # its work is in base/ now
    return BASE


def runs(base, device="cpu", seeds=(0,)):
    """The demo's runs, as (method, seed, the train.py command line of the run)."""
    return [(method, seed, ["--task", TASK, "--method", method, "--model", base, "--seed", str(seed), "--out",
                            os.path.join("runs", "demo", method, f"seed{seed}"), "--lora-targets", "all", "--epochs",
                            "2", "--device", device])
            for method in ("src-pref", "dial") for seed in seeds]


def report(results):
    """results: {method: [target test accuracy per seed]} -> the demo's last lines."""
    print(f"\n{TASK}: target (fruits) test accuracy of the odd-one-out answer, chance 0.2")
    for method, accs in results.items():
        print(f"  {method:10s} {np.mean(accs):.3f}  ({', '.join(f'{a:.3f}' for a in accs)})")
