"""
The offline demo, `python train.py` (or `python demo.py`): a tiny Gemma pre-trained on lists of foods, then Src-Pref
and DIAL reward models trained with train.py's loop on odd-one-out questions about desserts (source, labelled) and
evaluated on questions about fruits (target, unlabelled during training). Nothing is downloaded; a few minutes on a
laptop CPU; the runs are in runs/demo/, and an interrupted demo continues where it stopped when run again.
"""
import os
import random

import numpy as np
import torch
from tqdm import tqdm

import oddoneout
import runfolder
from gemma import Gemma, GemmaConfig, Tokenizer
from train import parse_args, resolve, run, train_tokenizer


def pretrain(folder, steps=400, seed=0, batch=32):
    """The demo's base model: a tiny Gemma pre-trained by next-token prediction on lists of five foods of one
    category (all five categories), its small "world knowledge", as Gemma's pre-training is for the real runs."""
    lists, rng = oddoneout.food_lists(), random.Random(seed)
    texts = [", ".join(rng.sample(lists[rng.choice(oddoneout.CATEGORIES)], 5)) + "\n" for _ in range(steps * batch)]
    os.makedirs(folder, exist_ok=True)
    train_tokenizer(texts[:5000] + [oddoneout.OOO_PROMPT], os.path.join(folder, "tokenizer.model"), 1000)
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


def demo(seeds=(0,), device="cpu"):
    task_name, base = "oddoneout-desserts-fruits", os.path.join("runs", "demo", "base")
    if not os.path.isdir(base):
        runfolder.write_atomically(base, pretrain)  # base/ appears whole or not at all
    results = {}
    for method in ("src-pref", "dial"):
        for seed in seeds:
            args = parse_args(["--task", task_name, "--method", method, "--model", base, "--seed", str(seed),
                               "--out", os.path.join("runs", "demo", method, f"seed{seed}"), "--lora-targets", "all",
                               "--epochs", "2", "--device", device])
            cfg, task = resolve(args)
            if os.path.exists(os.path.join(cfg["out"], "summary.json")):
                results.setdefault(method, []).append(runfolder.read_json(os.path.join(cfg["out"], "summary.json"))
                                                      ["test"]["acc"])
                continue
            interrupted = os.path.exists(os.path.join(cfg["out"], runfolder.STATE))  # the demo resumes by itself
            results.setdefault(method, []).append(run(cfg, task, interrupted)["test"]["acc"])
    print(f"\n{task_name}: target (fruits) test accuracy of the odd-one-out answer, chance 0.2")
    for method, accs in results.items():
        print(f"  {method:10s} {np.mean(accs):.3f}  ({', '.join(f'{a:.3f}' for a in accs)})")
    return results


if __name__ == "__main__":
    demo()
