"""
LoRA (Hu et al., 2021, arXiv 2106.09685) in plain PyTorch, saved and loaded in PEFT's on-disk format.

A frozen Linear W (out, in) gets a trainable low-rank update: y = W x + (alpha / r) * B A x, with A (r, in) drawn like
nn.Linear's default init and B (out, r) zero, so that training starts exactly at the pretrained model. Only A and B
(and whatever head the caller trains beside them) receive gradients; the base stays in its own dtype (bf16 on a GPU)
while A, B and their optimiser state are float32.

The adapter files are PEFT's: adapter_config.json + adapter_model.safetensors with keys such as
base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight. So `peft.PeftModel.from_pretrained` loads what we
train onto transformers' Gemma (with the reward head as `modules_to_save`, onto GemmaForSequenceClassification), and
we load PEFT's adapters (tests/test_lora.py checks both directions).
"""
import contextlib
import json
import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import read_json

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the transformers model, whose decoder is at "model."


class LoRALinear(nn.Module):
    def __init__(self, base_layer, r, alpha, dropout=0.0, use_rslora=False):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)  # PEFT's name for the wrapped Linear
        self.r, self.alpha = r, alpha
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
        out_features, in_features = base_layer.weight.shape
        device = base_layer.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device))  # float32 whatever the base dtype
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device))  # zero: starts as the base model
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # U(-1/sqrt(in), 1/sqrt(in)), as nn.Linear and PEFT
        self.dropout = nn.Dropout(dropout)  # on the LoRA branch's input only, never on the frozen path
        self.disabled = False  # True: the layer is its base layer alone (see disabled_lora)

    def forward(self, x):
        y = self.base_layer(x)
        if self.disabled:
            return y
        u = self.dropout(x).to(self.lora_A.dtype)  # the update in float32, as PEFT computes it
        return y + (F.linear(F.linear(u, self.lora_A), self.lora_B) * self.scaling).to(y.dtype)

    def delta(self):  # the merged update (alpha / r) B A, shape (out, in)
        return self.scaling * self.lora_B @ self.lora_A


def _lora_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _adapter_tensors(layers, modules_to_save):
    """PEFT's key of every tensor an adapter holds -> our parameter (or buffer) that holds it: one map for save and
    load. layers: {name: LoRALinear}; modules_to_save: {transformers' name: our module} or None."""
    own = {}
    for name, m in layers.items():
        own[f"{PREFIX}model.{name}.lora_A.weight"], own[f"{PREFIX}model.{name}.lora_B.weight"] = m.lora_A, m.lora_B
    for hf_name, module in (modules_to_save or {}).items():
        for key, value in module.state_dict(keep_vars=True).items():
            own[f"{PREFIX}{hf_name}.{key}"] = value
    return own


def _replace(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _matches(name, targets):
    if isinstance(targets, str):  # PEFT: a string is a regex over the full module name
        return re.fullmatch(targets, "model." + name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)  # PEFT: a list entry matches a name suffix


def add_lora(model, r=64, alpha=64, dropout=0.0, targets=("q_proj", "v_proj"), use_rslora=False, verbose=True):
    """Wraps every nn.Linear of `model` whose name ends in one of `targets` ("all": every projection of a decoder
    layer) in a LoRALinear, and freezes every base parameter. The default targets are PEFT's for Gemma, which the
    authors' code used. Returns the model."""
    if targets == "all":
        targets = ALL_TARGETS
    if r < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {r}")
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not names:
        raise ValueError(f"no nn.Linear in the model matches LoRA targets {targets}")
    for name in names:  # before anything is allocated: A and B hold r x (in + out) numbers per layer
        m = model.get_submodule(name)
        if r > max(m.in_features, m.out_features):
            raise ValueError(f"LoRA rank {r} (--lora-r, or r in adapter_config.json) is wider than {name}, a "
                             f"{m.in_features} -> {m.out_features} layer, whose update B A has rank "
                             f"{min(m.in_features, m.out_features)} at most; choose r <= "
                             f"{max(m.in_features, m.out_features)}")
    model.requires_grad_(False)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, use_rslora))
    if verbose:
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        print(f"LoRA r={r} alpha={alpha} on {len(names)} layers ({', '.join(sorted({n.split('.')[-1] for n in names}))}):"
              f" {n_lora:,} trainable parameters, {100 * n_lora / n_all:.2f}% of {n_all:,}")
    return model


@contextlib.contextmanager
def disabled_lora(model):
    """Inside the block, every LoRA layer of `model` computes its base layer alone: the model is its frozen base, with
    no second copy of the weights (RLHF's reference policy is the policy with its adapter switched off)."""
    layers = _lora_layers(model).values()
    if not layers:
        raise ValueError("the model has no LoRA layers to disable (call add_lora first)")
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


@torch.no_grad()
def merge_lora(model):
    """Folds every LoRA update into its base weight (W += (alpha / r) B A, in float32) and removes the LoRA layers."""
    for name, m in _lora_layers(model).items():
        W = m.base_layer.weight
        W.copy_((W.float() + m.delta()).to(W.dtype))
        _replace(model, name, m.base_layer)
    return model


# -----------------------------------------------------------------------------
# PEFT's on-disk format


def save_adapter(model, path, modules_to_save=None, base_model_name_or_path="google/gemma-2b"):
    """Writes adapter_config.json and adapter_model.safetensors in PEFT's format. `model` is the decoder that carries
    the LoRA layers (module names = transformers' names without "model."); `modules_to_save` maps transformers' names
    of other trained modules to ours, e.g. {"score": reward_head} for GemmaForSequenceClassification."""
    from safetensors.torch import save_file
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save (call add_lora first)")
    settings = {(m.r, m.alpha, m.dropout.p, m.scaling) for m in layers.values()}
    if len(settings) > 1:
        raise ValueError(f"LoRA layers with different settings (r, alpha, dropout, scaling) {sorted(settings)}: "
                         "the adapter format here holds one setting for all layers")
    (r, alpha, p, scaling), = settings
    rslora = scaling != alpha / r
    tensors = {k: v.detach().contiguous().cpu() for k, v in _adapter_tensors(layers, modules_to_save).items()}
    config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if "score" in (modules_to_save or {}) else "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path, "revision": None, "inference_mode": True,
        "r": r, "lora_alpha": alpha, "lora_dropout": p, "use_rslora": rslora,
        "target_modules": sorted({name.split(".")[-1] for name in layers}),
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True, "use_dora": False,
        "modules_to_save": sorted(modules_to_save) if modules_to_save else None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    os.makedirs(path, exist_ok=True)
    # write to temporary names of this process, then rename: an interrupted save never leaves a half-written file
    tmp = f".tmp-{os.getpid()}"
    save_file(tensors, os.path.join(path, "adapter_model.safetensors" + tmp), metadata={"format": "pt"})
    with open(os.path.join(path, "adapter_config.json" + tmp), "w") as f:
        json.dump(config, f, indent=2)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        os.replace(os.path.join(path, name + tmp), os.path.join(path, name))


def load_adapter(model, path, modules_to_save=None):
    """Loads a PEFT LoRA adapter folder onto `model` (adding the LoRA layers it describes if the model has none) and
    the weights of `modules_to_save` ({transformers' name: our module}) when the adapter carries them."""
    from safetensors.torch import load_file
    config_path = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} does not exist: expected a PEFT adapter folder")
    cfg = read_json(config_path, "a PEFT adapter_config.json")
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type is {cfg.get('peft_type')!r}, only 'LORA' adapters are supported")
    for key, plain in (("use_dora", False), ("fan_in_fan_out", False), ("bias", "none"), ("rank_pattern", {}),
                       ("alpha_pattern", {}), ("layers_to_transform", None), ("lora_bias", False)):
        if cfg.get(key, plain) not in (plain, None):
            raise ValueError(f"{config_path}: {key}={cfg[key]!r} is not supported (only {key}={plain!r})")
    r, alpha, targets = cfg.get("r", 8), cfg.get("lora_alpha", 8), cfg.get("target_modules")
    dropout, rslora = cfg.get("lora_dropout", 0.0), cfg.get("use_rslora", False)
    if isinstance(targets, str):  # PEFT reads a string as a regex: from a file, one could hang us, so not accepted
        raise ValueError(f"{config_path}: target_modules is the string {targets[:60]!r}, which PEFT reads as a regular "
                         "expression; only a list of module names (e.g. [\"q_proj\", \"v_proj\"]) is supported")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"{config_path}: target_modules must be a non-empty list of module names, got {targets!r:.80}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1):
        raise ValueError(f"{config_path}: r must be a positive integer, got {r!r}")
    if not (number(alpha) and alpha > 0):
        raise ValueError(f"{config_path}: lora_alpha must be a positive number, got {alpha!r}")
    if not (number(dropout) and 0 <= dropout < 1):
        raise ValueError(f"{config_path}: lora_dropout must be a number in [0, 1), got {dropout!r}")
    if not isinstance(rslora, bool):
        raise ValueError(f"{config_path}: use_rslora must be true or false, got {rslora!r}")
    layers = _lora_layers(model)
    if not layers:
        add_lora(model, r, alpha, dropout, targets, rslora, verbose=False)
        layers = _lora_layers(model)
    else:
        if {m.r for m in layers.values()} != {r}:
            raise ValueError(f"{path} has LoRA rank {r}, the model's LoRA layers have rank "
                             f"{sorted({m.r for m in layers.values()})}")
        wanted = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear)) and _matches(n, targets)}
        if wanted != set(layers):
            raise ValueError(f"{path} targets {targets}, which does not match the model's LoRA layers "
                             f"({sorted({n.split('.')[-1] for n in layers})})")
    own = _adapter_tensors(layers, modules_to_save)  # checkpoint key -> the tensor it loads into
    weights = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{weights} does not exist: expected a PEFT adapter folder")
    try:
        tensors = load_file(weights)
    except Exception as e:  # safetensors' own error type: a truncated or foreign file
        raise ValueError(f"{weights} is not a readable safetensors file ({str(e).splitlines()[0][:200]})") from None
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        hint = " (a trained module: pass modules_to_save={name: module})" if ".lora_" not in unknown[0] else ""
        raise ValueError(f"{path}: unexpected tensor '{unknown[0]}'{hint}")
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f"{path} lacks '{missing[0]}', which the model expects")
    for key, value in tensors.items():  # every shape checked before anything is overwritten
        if value.shape != own[key].shape:
            raise ValueError(f"{path}: '{key}' has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{path}: '{key}' holds NaN or Inf values")
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value)
    return model
