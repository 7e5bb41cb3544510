"""
A training state (state.safetensors, runfolder.py) checked whole against the run that resumes it, before any of it is
loaded. A run folder may come from someone else, and torch's load_state_dict trusts what it is given: a reshaped
moment fails at the first step, a negative second moment or a huge step count trains on silently, a malformed random
state is truncated into another one. So every entry is checked here, and the first bad one is named in one sentence:

    step            an integer in [0, the run's total steps]
    model           the trainable weights: this model's names and shapes, a floating-point dtype, finite
    best_weights    the same, or absent together with best
    best            {"step" in [0, step], "val": finite metrics}
    opt, critic_opt AdamW's state_dict: this optimiser's groups and settings (lr: any positive finite value, since
                    --lr may change it on resume); for every parameter or none, exp_avg and exp_avg_sq of the
                    parameter's shape and of the dtype of its saved weight, finite, second moments >= 0; one update
                    count, a whole number no larger than the updates the run can have made
    gp_rng, rng     well-formed states of the gradient penalty's generator, Python's random, numpy's and torch's
"""
import math

import numpy as np
import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _finite_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _tensor(x):
    return isinstance(x, torch.Tensor)


def complaint(path):
    """bad(entry, what): raises the one sentence that names a bad entry of the state in path."""
    def bad(entry, what):
        raise ValueError(f"{path}: its entry '{entry}' {what}; nothing of the state was loaded (resume needs the file "
                         "its own run wrote, unedited)")
    return bad


def check_state(state, path, own, params, gp_rng, opts, total=None):
    """state: read_state's dict. own: the model's trainable tensors {name: tensor}. params: {id(parameter): name}.
    opts: {"opt": (optimizer, most updates per training step), "critic_opt": (...)}. total: the run's steps.
    Raises ValueError naming the first bad entry; returns nothing."""
    bad = complaint(path)
    step = state["step"]
    if step < 0 or (total is not None and step > total):
        bad("step", f"is {step}, outside [0, {total if total is not None else 'the total'}], the steps of this run "
                    "(a --max-steps below the step the run reached is refused too)")
    for key in ("model", "best_weights"):
        saved = state.get(key)
        if key == "best_weights" and saved is None:
            continue
        if not isinstance(saved, dict) or not all(_tensor(v) for v in saved.values()):
            bad(key, "is not a set of named tensors")
        if set(saved) != set(own):
            odd = sorted(set(saved) ^ set(own))[0]
            raise ValueError(f"{path} does not match this model ('{odd}' in one of its {key} but not the other); "
                             "was the run's config changed?")
        for k, v in saved.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{path}: '{k}' has shape {tuple(v.shape)}, the model's is {tuple(own[k].shape)}")
            if v.dtype not in FLOATS:
                bad(f"{key}.{k}", f"has dtype {v.dtype}, not a floating-point type")
            if not torch.isfinite(v).all():
                bad(f"{key}.{k}", "holds NaN or Inf values")
    best = state.get("best")
    if (best is None) != (state.get("best_weights") is None):
        bad("best", "and 'best_weights' disagree: one of them is missing")
    if best is not None and not (isinstance(best, dict) and _int(best.get("step")) and 0 <= best["step"] <= step
                                 and isinstance(best.get("val"), dict) and best["val"]
                                 and all(_finite_number(v) for v in best["val"].values())):
        bad("best", f"is {str(best)[:120]}, not the step (in [0, {step}]) and finite metrics of the best validation")
    for name, (opt, per_step) in opts.items():
        check_optimizer(state.get(name), opt, name, state["model"], params, per_step * step, bad)
    _check_generators(state, gp_rng, bad)


def check_optimizer(saved, opt, name, weights, params, most, bad):
    """saved: the state_dict of AdamW `opt` from the file; weights: the saved weights {name: tensor}; params:
    {id(parameter): name}; most: the updates it can have made; bad: complaint(path)."""
    own = opt.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        bad(name, "is not an optimiser's state (its 'state' and 'param_groups')")
    groups = saved["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(own["param_groups"]):
        bad(f"{name}.param_groups", f"should list {len(own['param_groups'])} group(s) of parameters")
    for i, (group, ours) in enumerate(zip(groups, own["param_groups"])):
        if not isinstance(group, dict) or set(group) != set(ours):
            bad(f"{name}.param_groups.{i}", f"should hold the settings {', '.join(sorted(ours))}")
        for k, v in ours.items():
            if k == "lr":  # --lr may change it on resume (train.py records it), so any usable value
                if not (_finite_number(group[k]) and group[k] > 0):
                    bad(f"{name}.param_groups.{i}.lr", f"is {str(group[k])[:40]}, not a positive finite number")
            elif type(group[k]) is not type(v) or group[k] != v:
                bad(f"{name}.param_groups.{i}.{k}", f"is {str(group[k])[:40]}, but this run's is {v}")
    order = [p for group in opt.param_groups for p in group["params"]]  # the index the state uses -> parameter
    state = saved["state"]
    if not isinstance(state, dict) or not all(_int(k) and 0 <= k < len(order) for k in state):
        bad(f"{name}.state", f"should be keyed by the optimiser's parameter numbers 0..{len(order) - 1}")
    if state and len(state) != len(order):  # updated together: every parameter has moments, or none has yet
        bad(f"{name}.state", f"holds moments for {len(state)} of the optimiser's {len(order)} parameters, not all")
    counts = set()
    for k, entry in state.items():
        p, where = order[k], f"{name}.state.{k}"
        group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
        want = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())
        if not isinstance(entry, dict) or set(entry) != want:
            bad(where, f"should hold {', '.join(sorted(want))}")
        weight = params.get(id(p))
        dtype = weights[weight].dtype if weight in weights else p.dtype  # as saved: the run may resume elsewhere
        for m in sorted(want - {"step"}):
            t = entry[m]
            if not _tensor(t) or t.shape != p.shape or t.dtype != dtype:
                shown = f"shape {tuple(t.shape)} and dtype {t.dtype}" if _tensor(t) else type(t).__name__
                bad(f"{where}.{m}", f"has {shown}; its parameter ('{weight}') has shape {tuple(p.shape)} and {dtype}")
            if not torch.isfinite(t).all():
                bad(f"{where}.{m}", "holds NaN or Inf values")
            if m != "exp_avg" and (t < 0).any():
                bad(f"{where}.{m}", "holds negative values, but a second moment is a mean of squares")
        s = entry["step"]
        if not (_tensor(s) and s.ndim == 0 and s.dtype.is_floating_point):
            bad(f"{where}.step", "should be a float tensor holding one number (AdamW's count of updates)")
        n = s.item()
        if not (math.isfinite(n) and n == int(n) and 0 <= n <= most):
            bad(f"{where}.step", f"is {n:g}; expected a whole number of updates in [0, {most}], the most this run "
                                 "can have made by its step")
        counts.add(n)
    if len(counts) > 1:
        bad(f"{name}.state", f"counts different numbers of updates ({', '.join(f'{c:g}' for c in sorted(counts))}) "
                             "for parameters that are always updated together")


def _check_generators(state, gp_rng, bad):
    """Every random generator's state well formed: Python's, numpy's and torch's refuse some malformed states only,
    and silently truncate others (a 64-bit word, an index past the table)."""
    g, ref = state.get("gp_rng"), gp_rng.get_state()
    if not (_tensor(g) and g.dtype == torch.uint8 and g.shape == ref.shape):
        bad("gp_rng", f"is not the state of a {gp_rng.device.type} generator ({ref.numel()} bytes)")
    rng = state.get("rng")
    if not (isinstance(rng, (list, tuple)) and len(rng) == 4):
        bad("rng", "should hold four states: Python's, numpy's, torch's and CUDA's random generators")
    py, nps, cpu, cuda = rng
    if not (isinstance(py, tuple) and len(py) == 3 and _int(py[0]) and py[0] == 3 and isinstance(py[1], tuple) and len(py[1]) == 625
            and all(_int(w) and 0 <= w < 2 ** 32 for w in py[1][:624]) and _int(py[1][624]) and 0 <= py[1][624] <= 624
            and (py[2] is None or isinstance(py[2], float) and math.isfinite(py[2]))):
        bad("rng.0", "is not a state of Python's random (version 3, 624 32-bit words and a position in [0, 624])")
    if not (isinstance(nps, tuple) and len(nps) == 5 and isinstance(nps[0], str) and nps[0] == "MT19937"
            and isinstance(nps[1], np.ndarray) and nps[1].dtype == np.uint32 and nps[1].shape == (624,)
            and _int(nps[2]) and 0 <= nps[2] <= 624 and _int(nps[3]) and nps[3] in (0, 1)
            and isinstance(nps[4], float) and math.isfinite(nps[4])):
        bad("rng.1", "is not a state of numpy's random (MT19937, 624 uint32 words, a position in [0, 624], a cached "
                     "normal)")
    if not (_tensor(cpu) and cpu.dtype == torch.uint8 and cpu.shape == torch.get_rng_state().shape):
        bad("rng.2", f"is not a state of torch's CPU generator ({torch.get_rng_state().numel()} bytes)")
    if cuda is not None and not (isinstance(cuda, list) and all(_tensor(c) and c.dtype == torch.uint8 and c.ndim == 1
                                                                for c in cuda)):
        bad("rng.3", "is not a list of CUDA generator states")
    if cuda is not None and torch.cuda.is_available() and [c.shape for c in cuda] != \
            [c.shape for c in torch.cuda.get_rng_state_all()]:
        bad("rng.3", f"holds {len(cuda)} CUDA generator state(s), not one per device of this machine "
                     f"({torch.cuda.device_count()})")
    for entry, value, make in (("gp_rng", g, lambda: torch.Generator(gp_rng.device)), ("rng.2", cpu, torch.Generator)):
        try:  # torch also checks the Mersenne Twister's own consistency: on a scratch generator, nothing loaded yet
            make().set_state(value)
        except RuntimeError as e:
            bad(entry, f"is not a valid generator state ({str(e).splitlines()[0][:80]})")
