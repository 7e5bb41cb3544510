"""
The paper's Fig. 3: t-SNE maps of the reward model's embeddings (the last-token hidden state that the reward head
and the critic read) of source and target rows, chosen and rejected responses marked, at step 0 and at every epoch's
end, side by side.

    python train.py --task oddoneout-desserts-fruits --model tiny --method dial --save-embeddings 1000
    python eval.py --tsne runs/oddoneout-desserts-fruits/dial/seed0         # -> RUN_DIR/tsne.png
    python eval.py --tsne RUN_A RUN_B -o assets/tsne.png                    # several runs, one row each

train.py --save-embeddings N writes RUN_DIR/embeddings/step<S>.npz: the embeddings of the chosen and the rejected
response of up to N random source rows and N random target rows (the target's own labels mark them; they are read
for the picture only, never trained on), the same rows every time. For a multiple-choice row "rejected" is its first
wrong item. scikit-learn (t-SNE) is imported by plot() only: training needs nothing new.
"""
import glob
import json
import os
import random

import numpy as np
import torch

import data
import packing
import runfolder

FOLDER = "embeddings"


def sample_rows(task, n, seed, data_seed):
    """Up to n distinct random source rows and n random labelled target rows (the target training rows with their
    labels; the validation rows where the target has none that pair up)."""
    source = list({json.dumps(r, sort_keys=True): r for r in task["source"]}.values())
    try:
        target = data.labelled_target(task, data_seed)
    except ValueError:
        target = task["val"]
    rng = random.Random(f"tsne/{seed}")
    return [rng.sample(rows, min(n, len(rows))) for rows in (source, target)]


@torch.no_grad()
def embeddings(model, examples, batch_size, device):
    """(chosen, rejected) embeddings (n, D) x 2 of tokenised pairs or multiple-choice examples (first wrong item)."""
    was = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size]
        emb = model(packing.to_device(packing.pack(batch), device))[0].cpu()  # (sum of responses, D)
        start = np.cumsum([0] + [len(rs) for _, rs in batch])[:-1]
        chosen.append(emb[start]), rejected.append(emb[start + 1])
    model.train(was)
    return torch.cat(chosen).numpy(), torch.cat(rejected).numpy()


def saver(cfg, task, model, tok, per_epoch):
    """save(step): the embeddings of the same sampled rows under the model as it is now, written to
    RUN_DIR/embeddings/step<S>.npz; a no-op without --save-embeddings."""
    n = cfg.get("save_embeddings") or 0
    if not n:
        return lambda step: None
    rows = sample_rows(task, n, cfg["seed"], cfg["data_seed"])
    examples = [packing.tokenize(r, tok, cfg["max_len"], cfg["separator"]) for r in rows]
    folder = os.path.join(cfg["out"], FOLDER)

    def save(step):
        os.makedirs(folder, exist_ok=True)
        parts = [embeddings(model, ex, cfg["eval_batch"], cfg["device"]) for ex in examples]  # source, target
        emb = np.concatenate([x for c, r in parts for x in (c, r)]).astype(np.float32)
        domain = np.concatenate([np.full(2 * len(c), d, np.int8) for d, (c, _) in enumerate(parts)])
        chosen = np.concatenate([np.r_[np.ones(len(c), bool), np.zeros(len(r), bool)] for c, r in parts])
        path = os.path.join(folder, f"step{step:07d}.npz")

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, emb=emb, domain=domain, chosen=chosen, step=step, epoch=step / per_epoch)
        runfolder.write_atomically(path, write)
    return save


def load(run_dir):
    """The snapshots of a run, in step order: [(step, epoch, emb (M, D), domain (M,), chosen (M,))]."""
    paths = sorted(glob.glob(os.path.join(run_dir, FOLDER, "step*.npz")))
    if not paths:
        raise FileNotFoundError(f"{run_dir}/{FOLDER}/ holds no step*.npz: train the run with --save-embeddings N")
    out = []
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as z:
                s = (int(z["step"]), float(z["epoch"]), z["emb"], z["domain"], z["chosen"])
        except Exception as e:  # truncated, not an npz, or missing a field
            raise ValueError(f"{path} is not an embeddings snapshot of train.py ({str(e).splitlines()[0][:120]})") from None
        if not (s[2].ndim == 2 and len(s[2]) == len(s[3]) == len(s[4]) and np.isfinite(s[2]).all()):
            raise ValueError(f"{path}: emb, domain and chosen must have one finite row per point")
        out.append(s)
    return out


def fit(emb, seed=0):
    """2-D t-SNE coordinates of emb (M, D)."""
    from sklearn.manifold import TSNE  # optional: only the picture needs it
    from threadpoolctl import threadpool_limits  # (installed with scikit-learn)
    perplexity = float(min(30, max(2, (len(emb) - 1) // 3)))
    # one thread: OpenMP's spinning threads took 54 s instead of 0.3 s for 32 points beside another busy process
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)


# (domain, chosen) -> label, marker, colour: a marker per domain and side, so that the four groups stay apart in grey
STYLE = {(0, True): ("s+ source chosen", "o", "#1b7837"), (0, False): ("s- source rejected", "s", "#b2182b"),
         (1, True): ("t+ target chosen", "^", "#2166ac"), (1, False): ("t- target rejected", "v", "#e08214")}
CAPTION = ("What to look for: whether the target (triangles) lies apart from the source (circle, square) or among it, "
           "and whether chosen (+) and rejected (-) separate within each domain. An aligned reward model puts t+ near s+ "
           "and t- near s-; t-SNE keeps neighbourhoods, not distances: compare within a panel, not across panels.")


def plot(run_dirs, out=None, seed=0):
    """One picture: a row per run, its snapshots side by side (step 0, then each epoch's end). out: the PNG
    (default RUN_DIR/tsne.png for one run). Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if out is None:
        if len(run_dirs) != 1:
            raise ValueError("several runs go into one picture: name it with -o FILE.png")
        out = os.path.join(run_dirs[0], "tsne.png")
    runs = [(d, load(d)) for d in run_dirs]
    cols = max(len(s) for _, s in runs)
    fig, axes = plt.subplots(len(runs), cols, figsize=(3.2 * cols, 3.2 * len(runs)), squeeze=False)
    for r, (d, snaps) in enumerate(runs):
        name = d
        if os.path.isfile(os.path.join(d, "config.json")):
            cfg = runfolder.read_json(os.path.join(d, "config.json"))
            name = str(cfg.get("method"))
            if name == "dial":  # two DIAL rows must say how they differ
                name += f" lam {cfg.get('lam')}" + ("" if str(cfg.get("critic_scale", "1")) == "1" else
                                                    f", critic scale {cfg.get('critic_scale')}")
            name += f"\n({cfg.get('task')})"
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(snaps):
                ax.axis("off")
                continue
            step, epoch, emb, domain, chosen = snaps[c]
            xy = fit(emb, seed)
            for (dom, ch), (label, marker, color) in STYLE.items():
                m = (domain == dom) & (chosen == ch)
                ax.scatter(xy[m, 0], xy[m, 1], s=9, marker=marker, c=color, label=label, alpha=0.6, linewidths=0)
            ax.set_title(f"step {step}" + (f" (epoch {epoch:g})" if step else " (start)"), fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    axes[0, 0].legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.01, 0.01, CAPTION, fontsize=8, wrap=True, va="bottom")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
