"""
The figures drawn from run folders (matplotlib is imported only here, when a figure is drawn): paper Fig. 4 from
runs of train.py --n-source / --n-target (sweep), the training logs of runs over steps (curves), paper Fig. 6 from
rlhf.py's runs (rlhf); and what eval.py's tables share with them: the finished runs below a folder (summaries),
mean and standard error over seeds (mean_se). Fig. 3 (the t-SNE of saved embeddings) is tsne.py's; Fig. 7 is
toy_moons.py's.

    python eval.py --sweep runs/fig4 -o runs/fig4.png
    python eval.py --curves runs/real270m/sentiment-en-zh/dial/seed0 runs/real270m/sentiment-en-zh/src-pref/seed0
    python rlhf.py --plot runs/rlhf -o runs/rlhf.png
"""
import glob
import json
import os

import numpy as np

import runfolder
from checkpoint import loads


def mean_se(x):
    x = np.asarray(x, dtype=np.float64)
    return x.mean(), (x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0.0)


def summaries(runs_dir):
    """Every finished run below runs_dir: its summary.json, checked for the fields the tables and plots read."""
    out = []
    for here, _, files in sorted(os.walk(runs_dir)):
        if "summary.json" in files:
            path = os.path.join(here, "summary.json")
            s = runfolder.read_json(path, "the summary of a train.py run")
            test = s.get("test") if isinstance(s, dict) else None
            if not (isinstance(test, dict) and isinstance(s.get("task"), str) and isinstance(s.get("method"), str)
                    and isinstance(test.get(s.get("metric")), (int, float))):
                raise ValueError(f"{path} lacks its task, method, metric or test result (expected the summary.json "
                                 "that train.py writes at the end of a run)")
            out.append((path, s))
    if not out:
        raise FileNotFoundError(f"no summary.json below {runs_dir}: no finished run to tabulate")
    return out


def sweep(runs_dir, png):
    """Paper Fig. 4 from runs of train.py --n-source / --n-target (their summaries say how many rows each used):
    (a) DIAL's test metric against the share of target rows in its data, n_tgt / (n_src + n_tgt), one line per
    total; (b) the test metric against the number of target rows, DIAL (unlabelled) vs Src-Tgt-Pref* (labelled), one
    line per method and number of source rows. Mean +- standard error over seeds. Returns the points plotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = {}  # (method, n_src, n_tgt) -> [test metric per seed]
    task_metric = set()
    for path, s in summaries(runs_dir):
        n = s.get("rows")
        if not (isinstance(n, dict) and all(isinstance(n.get(k), int) for k in ("source", "target"))):
            raise ValueError(f"{path} does not say how many source and target rows the run used (field 'rows'): "
                             "it was written by an older train.py; rerun it")
        if s["method"] in ("dial", "src-tgt-pref"):
            groups.setdefault((s["method"], n["source"], n["target"]), []).append(s["test"][s["metric"]])
            task_metric.add((s["task"], s["metric"]))
    if not groups:
        raise FileNotFoundError(f"no dial or src-tgt-pref run below {runs_dir}: nothing to plot")
    points = {"mix": {}, "scale": {}}
    for (method, n_s, n_t), x in sorted(groups.items()):
        if method == "dial":
            points["mix"].setdefault(n_s + n_t, []).append((n_t / (n_s + n_t), *mean_se(x), len(x)))
        points["scale"].setdefault((method, n_s), []).append((n_t, *mean_se(x), len(x)))
    points = {panel: {k: sorted(v) for k, v in lines.items()} for panel, lines in points.items()}  # along x
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for total, pts in sorted(points["mix"].items()):
        if len(pts) > 1:
            f, m, e, _ = zip(*pts)
            axes[0].errorbar(f, m, yerr=e, marker="o", capsize=3, label=f"DIAL, {total} rows in all")
    for (method, n_s), pts in sorted(points["scale"].items()):
        if len(pts) > 1:  # (open squares, dashed: the oracle stays visible where it lies on DIAL's line)
            n, m, e, _ = zip(*pts)
            label = ("DIAL (unlabelled target)" if method == "dial" else "Src-Tgt-Pref* (labelled target)")
            style = dict(marker="o", ls="-") if method == "dial" else dict(marker="s", ls="--", mfc="none", ms=9)
            axes[1].errorbar(n, m, yerr=e, capsize=3, label=f"{label}, {n_s} source", **style)
    metric = " / ".join(sorted({m for _, m in task_metric}))
    axes[0].set(xlabel="target share of the data, n_tgt / (n_src + n_tgt)", ylabel=f"target test {metric}",
                title="(a) source / target mix")
    axes[1].set(xlabel="target rows", ylabel=f"target test {metric}", title="(b) amount of target data",
                xscale="log")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(", ".join(sorted({t for t, _ in task_metric})) + " (mean +- s.e. over seeds)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return points


CURVES = (("val", "validation main metric"), ("bt", "Bradley-Terry loss (source)"), ("w", "W, critic's estimate"),
          ("gp", "gradient penalty"), ("critic_grad", "critic's |grad f| at the data"),
          ("emb", "mean embedding norm (solid source, dashed target)"),
          ("share", "lam * W share of the gradient at the embeddings"), ("acc", "training accuracy (source)"))
LABEL_KEYS = ("method", "lam", "lam_gp", "critic_scale", "critic_lr", "lr", "batch_src", "seed")
CRITIC_KEYS = ("lam", "lam_gp", "critic_scale", "critic_lr")


def curves(run_dirs, png):
    """The logged metrics of runs over training, one panel per quantity of CURVES, one line per run, labelled by the
    settings in which the runs differ. x: source examples seen (step x batch), so that runs of different batch sizes
    line up epoch for epoch; training logs are averaged over a window of about 1/50 of the run.
    Returns {panel: {label: points drawn}} and {run: label}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = []
    for run in run_dirs:
        cfg = runfolder.read_json(os.path.join(run, "config.json"), "the config of a train.py run")
        path = os.path.join(run, "metrics.jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: {run} is not a train.py run folder")
        with open(path, encoding="utf-8") as f:
            logs = [loads(line, f"{path}, line {n}") for n, line in enumerate(f, 1) if line.strip()]
        odd = next((n for n, r in enumerate(logs, 1) if not isinstance(r, dict)), None)
        if odd or not all(isinstance(cfg.get(k, 1), int) and cfg.get(k, 1) >= 1 for k in ("batch_src", "processes")):
            raise ValueError(f"{run} is not a train.py run folder as train.py writes it (record {odd} of its "
                             "metrics.jsonl is not an object)" if odd else f"{run}/config.json: 'batch_src' and "
                             "'processes' should be positive integers")
        runs.append((run, cfg, logs))
    differ = [k for k in LABEL_KEYS if len({json.dumps(c.get(k)) for _, c, _ in runs}) > 1] or ["method"]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7))
    labels, drawn = {}, {key: {} for key, _ in CURVES}
    for i, (run, cfg, logs) in enumerate(runs):
        per_step = cfg["batch_src"] * cfg.get("processes", 1)
        # the critic's settings say nothing of a method without a critic
        keys = [k for k in differ if cfg.get("method") == "dial" or k not in CRITIC_KEYS]
        label = labels[run] = ", ".join(f"{k} {cfg.get(k)}" if k != "method" else str(cfg[k]) for k in keys)
        color = f"C{i % 10}"
        train = [r for r in logs if r.get("split") == "train"]
        val = [r for r in logs if r.get("split") == "val"]
        main = "pearson" if val and "pearson" in val[0] and "acc" not in val[0] else "acc"
        window = max(1, len(train) // 50)

        def line(ax, key, style="-", rows=train, smooth=True):
            pts = [(r["step"] * per_step, r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            panel = CURVES[list(axes.flat).index(ax)][0]
            drawn[panel][label] = drawn[panel].get(label, 0) + len(pts)
            if pts:
                x, y = np.array(pts, dtype=np.float64).T
                if smooth and window > 1:
                    y = np.convolve(y, np.ones(window) / window, mode="valid")
                    x = x[window - 1:]
                ax.plot(x, y, style, color=color, label=label if ax is axes[0, 0] else None, lw=1.2)

        for ax, (key, title) in zip(axes.flat, CURVES):
            ax.set_title(title, fontsize=9)
            if key == "val":
                line(ax, main, "-o", val, smooth=False)
                ax.set_title(f"validation {main}", fontsize=9)
            elif key == "emb":
                line(ax, "emb_src"), line(ax, "emb_tgt", "--")
            elif key == "share":
                share = [{"step": r["step"], "share": r["pull_w"] / (r["pull_w"] + r["pull_bt"])} for r in train
                         if "pull_w" in r and r["pull_w"] + r["pull_bt"] > 0]
                line(ax, "share", rows=share)
            else:
                line(ax, key)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.set_xlabel("source examples seen", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 2].set_yscale("symlog"), axes[0, 3].set_yscale("symlog"), axes[1, 0].set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    tasks = sorted({c.get("task") for _, c, _ in runs})
    fig.suptitle(f"{', '.join(map(str, tasks))}: training logs averaged over {max(1, len(runs[0][2]) // 50)} steps",
                 fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return drawn, labels


def rlhf(folders, path):
    """Paper Fig. 6: true reward per generation, Src-Pref vs DIAL, mean +- s.e. over seeds. Reads summary.json from every run folder given or found below the given folders; writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    files = sorted({f for d in folders for f in ([os.path.join(d, "summary.json")] if os.path.isfile(
        os.path.join(d, "summary.json")) else glob.glob(os.path.join(d, "**", "summary.json"), recursive=True))})
    if not files:
        raise FileNotFoundError(f"no summary.json in or below {', '.join(folders)}: run rlhf.py first")
    runs = {}
    for f in files:
        with open(f) as fh:
            s = json.load(fh)
        runs.setdefault(s.get("arm", s["method"]), []).append(s)

    def band(ax, x, ys, label):
        ys = np.array(ys)
        m = ys.mean(0)
        se = ys.std(0, ddof=1) / np.sqrt(len(ys)) if len(ys) > 1 else np.zeros_like(m)
        ax.plot(x, m, marker="o", label=f"{label} ({len(ys)} seed{'s' * (len(ys) > 1)})")
        ax.fill_between(x, m - se, m + se, alpha=0.25)

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for method, ss in sorted(runs.items(), key=lambda kv: ["src-pref", "dial-lam0", "dial"].index(kv[0])
                             if kv[0] in ("src-pref", "dial-lam0", "dial") else 3):
        name = {"src-pref": "PPO, Src-Pref reward", "dial": "PPO, DIAL reward",
                "dial-lam0": "PPO, DIAL's reward training, lam 0"}.get(method, method)
        n = min(len(s["train_true_reward"]) for s in ss)
        if n:  # (a run of --generations 0 has only its evaluation)
            band(a, np.arange(1, n + 1), [s["train_true_reward"][:n] for s in ss], name)
        common = sorted(set.intersection(*[{g for g, _ in s["eval_true_reward"]} for s in ss]))
        band(b, common, [[dict(map(tuple, s["eval_true_reward"]))[g] for g in common] for s in ss], name)
    a.set(title="(a) training: sampled responses", xlabel="generation (PPO epoch)", ylabel="true reward")
    b.set(title="(b) held-out prompts, greedy", xlabel="generation (PPO epoch)", ylabel="true reward")
    for ax in (a, b):
        ax.grid(alpha=0.3), ax.legend(), ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
