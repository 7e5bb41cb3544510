"""
The two-moons demo of DIAL's mechanism (paper appendix A.7, Fig. 7), on a laptop CPU in under a minute.

Each moon is one preference class: a point of the upper moon is preferred to any point of the lower one. The source
domain is five labelled points per moon, along the outer end of each; the target domain is every point of both moons,
unlabelled. The reward model and every line of its training step are dial.py's, exactly as for Gemma, with a small
MLP as the backbone (backbone(x) = (mlp(x), None)). Src-Pref separates the few labelled points and its boundary cuts
across the moons; DIAL must also carry every target point onto the labelled ones, as the critic would otherwise tell
them apart, and its boundary runs between the moons. Evaluation: pairwise accuracy on fresh target pairs (one point
of each moon; ties count half), over seeds that each draw their own data and initial model.

What is subtle (what it took for DIAL to win, and what makes it lose):
- the alignment never reads a label: any split of the target into two halves, one carried onto each labelled class,
  fools the critic equally well. It prefers a boundary that crosses few target points (a point left between the
  classes is one the critic can spot), i.e. the gap between the moons, and sends each point to the labelled points
  nearest to it in embedding space. Labels at the outer tips make that the right split. Labels at the inner tips
  (--end inner) sit in the other moon's mouth, so the far half of each moon is nearer the other moon's labels than
  its own, and DIAL is no better than Src-Pref (0.62 and 0.62);
- lam is 1, not the paper's 0.01, which does not help in 200 steps (0.83; Gemma trains for tens of thousands); the
  critic's learning rate is 1e-3, not 1e-4, so that it keeps up;
- the learning rate decays linearly to 0: at a constant rate the critic keeps moving the boundary about (0.92 +- 0.02
  instead of 0.96);
- the reward head starts at std D^-1/2, not 0.02 (see build).

Run: python toy_moons.py  (writes runs/toy_moons.png, prints the table; --help lists the knobs; the README's
figure: --out assets/toy_moons.png)
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import dial

METHODS = {"src-pref": "Src-Pref", "dial": "DIAL"}

# -----------------------------------------------------------------------------
# data


def moons(t_upper, t_lower):
    """Arc parameters in [0, pi] -> points of the upper moon (n, 2) and of the lower moon (m, 2), noiseless."""
    upper = torch.stack([t_upper.cos(), t_upper.sin()], 1)
    lower = torch.tensor([1.0, 0.5]) - torch.stack([t_lower.cos(), t_lower.sin()], 1)  # upside down, in the mouth
    return upper, lower


def data(seed, args):
    """The seed's labelled source points, unlabelled target points and fresh target pairs for evaluation."""
    g = torch.Generator().manual_seed(10_000 + seed)
    noisy = lambda pts: pts + args.noise * torch.randn(pts.shape, generator=g)  # noqa: E731
    uniform = lambda n: math.pi * torch.rand(n, generator=g)  # noqa: E731
    # source: evenly spaced along a `cover` fraction of each arc, so that every seed labels the same part of the moons;
    # t = pi is each moon's outer tip, t = 0 its inner tip (which sits in the other moon's mouth)
    lo = (1 - args.cover) * math.pi if args.end == "outer" else 0.0
    t = torch.linspace(lo, lo + args.cover * math.pi, args.shots)
    src = [noisy(p) for p in moons(t, t)]  # upper (k, 2), lower (k, 2)
    tgt = torch.cat([noisy(p) for p in moons(uniform(args.n_target), uniform(args.n_target))])  # (2 * n_target, 2)
    test = [noisy(p) for p in moons(uniform(2000), uniform(2000))]  # pair i = (upper point i, lower point i)
    return src, tgt, test

# -----------------------------------------------------------------------------
# the backbone


class MLP(nn.Module):
    def __init__(self, dim, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                                 nn.Linear(width, dim))

    def forward(self, x):
        emb = self.net(x)  # (N, D)
        # a fixed scale, as Gemma's final RMSNorm gives (else W could also fall by shrinking every embedding);
        # and no next-token loss
        return F.layer_norm(emb, emb.shape[-1:]), None

# -----------------------------------------------------------------------------
# training and evaluation


def build(seed, args):
    torch.manual_seed(seed)  # the same initial model for both methods
    model = dial.RewardModel(MLP(args.dim, args.width), args.dim)
    # Rewards of order 1 from the start. The head's std 0.02 (transformers' init for Gemma) suits a wide embedding with
    # a large norm; here |e| = sqrt(D) is small, a 0.02 head would keep the labels' gradient into the backbone near
    # zero for the first steps, the critic alone would shape the embedding, and in 1 seed out of 10 it carried each
    # moon onto the wrong labelled end.
    nn.init.normal_(model.head.weight, std=args.dim ** -0.5)
    return model


def train(job):
    """One run: (method, seed, args) -> (method, seed, target accuracy, final state dict)."""
    method, seed, args = job
    torch.set_num_threads(args.threads)
    src, tgt, test = data(seed, args)
    model = build(seed, args)
    cfg = dial.DialConfig(lam=args.lam, critic_iters=args.critic_iters, critic_lr=args.critic_lr)
    opt = torch.optim.AdamW([*model.backbone.parameters(), *model.head.parameters()], lr=args.lr, weight_decay=0.0)
    critic_opt = dial.critic_optimizer(model.critic, cfg)
    # linear decay to zero: at a fixed rate the critic keeps pushing the embeddings about and the boundary drifts
    # (the paper halves its learning rates for the same reason in its RLHF runs, appendix A.8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / args.steps)
    g = torch.Generator().manual_seed(seed)  # batches and gradient penalty
    k = args.shots
    for _ in range(args.steps):
        t = tgt[torch.randint(len(tgt), (args.tgt_batch,), generator=g)]  # (b, 2) unlabelled target points
        batch = {"inputs": torch.cat([*src, t]),  # rows: k upper (preferred), k lower, b target
                 "src_chosen": torch.arange(k), "src_rejected": k + torch.randperm(k, generator=g),
                 "tgt": torch.arange(2 * k, 2 * k + len(t))}
        dial.train_step(model, [batch], method, opt, critic_opt, cfg, generator=g)
        sched.step()
    return method, seed, pair_accuracy(model, *test), model.state_dict()


@torch.no_grad()
def rewards(model, x):
    return model.reward(model(x)[0])


def pair_accuracy(model, preferred, other):
    d = rewards(model, preferred) - rewards(model, other)
    return round(float((torch.sign(d) + 1).mean() / 2), 4)  # ties count half


def standard_error(xs):
    return float(np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else float("nan")

# -----------------------------------------------------------------------------
# the figure


def plot(models, src, tgt, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs, ys = torch.linspace(-1.5, 2.5, 200), torch.linspace(-1.0, 1.5, 125)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)  # (125 * 200, 2)
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.8), constrained_layout=True)
    for ax, (name, model) in zip(np.atleast_1d(axes), models.items()):
        # a reward has no threshold of its own: draw the boundary halfway between the two source classes' mean rewards
        cut = float(rewards(model, src[0]).mean() + rewards(model, src[1]).mean()) / 2
        r = (rewards(model, grid) - cut).reshape(len(ys), len(xs))
        lim = float(r.abs().max())
        ax.contourf(xs, ys, r, levels=20, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.7)  # red: high reward
        ax.contour(xs, ys, r, levels=[0.0], colors="k", linewidths=2)
        ax.scatter(*tgt.T, s=2, c="k", alpha=0.6, label="target (unlabelled)")
        ax.scatter(*src[0].T, s=50, c="tab:red", edgecolors="w", label="source, preferred")
        ax.scatter(*src[1].T, s=50, c="tab:blue", edgecolors="w", label="source, rejected")
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[0].legend(loc="lower left", fontsize=8, framealpha=0.9)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

# -----------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description="DIAL against source-only preference learning on two moons (paper Fig. 7)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, default=5,
                   help="seeds 0, 1, ...: each draws its own data, initial model and batches")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per run")
    p.add_argument("--shots", type=int, default=5, help="labelled source points per moon")
    p.add_argument("--cover", type=float, default=0.35,
                   help="the source points cover this fraction of each arc, from the tip given by --end")
    p.add_argument("--end", choices=("outer", "inner"), default="outer",
                   help="which tip of each moon the source covers: 'inner' (in the other moon's mouth) stumps DIAL")
    p.add_argument("--noise", type=float, default=0.1, help="standard deviation of the Gaussian noise on the points")
    p.add_argument("--n-target", type=int, default=500, help="unlabelled target points per moon")
    p.add_argument("--tgt-batch", type=int, default=64, help="target points per step")
    p.add_argument("--dim", type=int, default=8, help="embedding size D")
    p.add_argument("--width", type=int, default=64, help="hidden width of the MLP")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of backbone and head, decayed to 0")
    p.add_argument("--lam", type=float, default=1.0,
                   help="weight of W in the model loss; the paper's 0.01 does not help here in 200 steps")
    p.add_argument("--critic-iters", type=int, default=3, help="critic updates per step")
    p.add_argument("--critic-lr", type=float, default=1e-3, help="critic AdamW learning rate (the paper's: 1e-4)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="runs in parallel processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run: one is fastest for tiny matrices")
    p.add_argument("--out", default="runs/toy_moons.png", help="figure path (seed 0, Src-Pref and DIAL); the README's "
                   "figure is rewritten only when asked: --out assets/toy_moons.png")
    p.add_argument("--json", help="also write {method: [target accuracy per seed]} to this path")
    args = p.parse_args(argv)
    for name in ("seeds", "steps", "shots", "n_target", "tgt_batch", "dim", "width", "workers", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.cover <= 1:
        p.error(f"--cover is a fraction of each arc: expected a value in (0, 1], got {args.cover}")

    t0 = time.time()
    jobs = [(m, seed, args) for seed in range(args.seeds) for m in METHODS]
    acc, shown = {m: [None] * args.seeds for m in METHODS}, {m: build(0, args) for m in METHODS}
    # spawn, not fork: a forked child can hang on OpenMP state its parent left behind (in pytest, say)
    pool = mp.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
    for method, seed, a, state in tqdm((pool.imap_unordered if pool else map)(train, jobs), total=len(jobs),
                                       desc="runs", leave=False):
        acc[method][seed] = a
        if seed == 0:
            shown[method].load_state_dict(state)
    if pool:
        pool.close()
    src, tgt, _ = data(0, args)
    plot({f"{METHODS[m]}: target accuracy {acc[m][0]:.3f} (seed 0)": model for m, model in shown.items()}, src, tgt,
         args.out)

    print(f"target pairwise accuracy, {args.seeds} seeds x {args.steps} steps ({time.time() - t0:.1f} s)")
    for m, a in acc.items():
        print(f"{m:<9} {np.mean(a):.3f} +- {standard_error(a):.3f}   per seed: " + " ".join(f"{x:.3f}" for x in a))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(acc, f)
    return acc


if __name__ == "__main__":
    import cli
    with cli.last_resort("toy_moons"):  # one sentence for bad input, one line naming the traceback's file for a bug
        main()
