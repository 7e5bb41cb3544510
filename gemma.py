"""
Gemma (v1) decoder in plain PyTorch: config presets, the forward pass, safetensors checkpoint loading, tokenizer.

Loads the official Hugging Face checkpoint of google/gemma-2b (or gemma-7b) and reproduces transformers'
GemmaForCausalLM to float32 rounding (tests/test_gemma.py). Module names equal the checkpoint keys without the
leading "model.", so loading is an explicit identity mapping with every key and shape checked.

The four places where a from-scratch Gemma usually goes wrong (all are tested against transformers):
- the embedding is multiplied by sqrt(D) *rounded to the activation dtype* (45.25 in bf16 for 2b, not 45.2548);
- RMSNorm scales by (1 + w), not w, computes in float32 and casts back only after the multiply;
- RoPE pairs dim i with dim i + d/2 ("rotate half"), and the checkpoint needs no permutation for that;
- the MLP uses the tanh approximation of GELU, whatever the hub's config.json says ("gelu" there is a legacy name).

Glossary: B batch, T sequence length, D hidden size, H query heads, K key/value heads, d head dim, V vocab size.
"""
import json
import math
import os
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

# -----------------------------------------------------------------------------
# config


@dataclass
class GemmaConfig:
    vocab_size: int = 256000
    hidden_size: int = 2048          # D, the width of the residual stream
    intermediate_size: int = 16384   # width of gate_proj and of up_proj each (the Gemma paper's 32768 counts both)
    num_hidden_layers: int = 18
    num_attention_heads: int = 8     # H
    num_key_value_heads: int = 1     # K: 1 = multi-query (2b), H = full multi-head (7b), in between = grouped
    head_dim: int = 256              # d; H * d need not equal D (7b: 16 * 256 = 4096 != 3072)
    rms_norm_eps: float = 1e-6       # inside the square root
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192  # the context the model was trained on; nothing is precomputed for it
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2

    @classmethod
    def gemma_2b(cls):
        return cls()  # the defaults above are google/gemma-2b's config.json

    @classmethod
    def gemma_7b(cls):
        return cls(hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                   num_attention_heads=16, num_key_value_heads=16)

    @classmethod
    def tiny(cls):
        # random-weight model for the offline demos and the tests: same architecture, 1.5M parameters
        return cls(vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048)

    @classmethod
    def from_json(cls, path):
        """Reads a Hugging Face config.json of a Gemma (v1) model."""
        try:
            with open(path) as f:
                hf = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} does not exist: a checkpoint folder needs the model's config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(hf, dict):
            raise ValueError(f"{path} should hold a JSON object, found {type(hf).__name__}")
        if hf.get("model_type", "gemma") != "gemma":
            raise ValueError(f"{path} describes a '{hf['model_type']}' model; this file implements Gemma v1 "
                             "(model_type 'gemma', e.g. google/gemma-2b or google/gemma-7b)")
        # The hub config says hidden_act "gelu" (exact GELU in transformers' table), but Gemma was trained with the
        # tanh approximation, which is what we always use; see the module docstring.
        values = {}
        for f in fields(cls):
            value = hf.get(f.name)
            if isinstance(value, list) and value:  # some configs list several eos ids; the first is the main one
                value = value[0]
            if value is not None:
                values[f.name] = type(f.default)(value)
            elif f.name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                            "num_attention_heads", "num_key_value_heads", "head_dim"):
                raise ValueError(f"{path} has no '{f.name}', which a Gemma config must give")
        return cls(**values)


# -----------------------------------------------------------------------------
# the model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # stored as w, applied as (1 + w): zeros = identity scale

    def forward(self, x):
        xf = x.float()  # float32 whatever the activation dtype: the mean of squares overflows bf16's precision
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).to(x.dtype)  # cast after the multiply, as the checkpoint expects


def rope_cos_sin(pos, head_dim, theta, dtype):
    """cos and sin of the rotary angles for positions pos (any shape): each pos.shape + (d,)."""
    # inverse frequencies in float32, computed exactly like the reference so that angles agree to the last ulp
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device).float() / head_dim))  # (d/2,)
    angles = pos.float()[..., None] * inv_freq  # (..., d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., d): dim i and dim i + d/2 rotate by the same angle
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    # rotate-half pairing: (a, b) = halves of the head vector, (a, b) -> (a cos - b sin, b cos + a sin)
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        assert self.n_head % self.n_kv_head == 0, "query heads must split evenly over key/value heads"
        D, Hd, Kd = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(D, Hd, bias=False)
        self.k_proj = nn.Linear(D, Kd, bias=False)
        self.v_proj = nn.Linear(D, Kd, bias=False)
        self.o_proj = nn.Linear(Hd, D, bias=False)

    def attend(self, q, k, v, mask):  # (B, H, T, d), (B, K, T, d) x 2 -> (B, H, T, d)
        # enable_gqa: query head h reads kv head h // (H / K), without materialising the repeated keys and values
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              scale=self.head_dim ** -0.5, enable_gqa=self.n_kv_head != self.n_head)

    def forward(self, x, cos, sin, mask, keep=None):
        """x (B, T, D) with mask None or (B, 1, T, T) -> (B, T, D); or a packed stream x (N, D) with mask a dict
        (Gemma.forward's packed branch) -> (N, D). keep: flat token indices, the only outputs wanted (n, D)."""
        shape = x.shape[:-1]  # (B, T) or (N,)
        q = self.q_proj(x).unflatten(-1, (self.n_head, self.head_dim)).transpose(-3, -2)  # (B, H, T, d) or (H, N, d)
        k = self.k_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim)).transpose(-3, -2)  # (B, K, T, d) or (K, N, d)
        v = self.v_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim)).transpose(-3, -2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Packed: gather the stream into rows, ONE attention call for all, scatter back. A soft-capped model (Gemma 2)
        # cannot use SDPA here, which has no hook on the scores: it needs the explicit attention (scores, cap, + bias,
        # softmax) over the same rows and bias; FlexAttention would take the cap as a score_mod instead.
        if isinstance(mask, dict):
            B, T = mask["bias"].shape[0], mask["bias"].shape[-1]
            q, k, v = (t[:, mask["token"]].unflatten(1, (B, T)).transpose(0, 1) for t in (q, k, v))  # (B, H or K, T, d)
            if q.is_cuda:  # the memory-efficient kernel, chosen explicitly: cuDNN would build a plan per new shape, and
                # flash takes no mask. It is given H key/value heads: its support of enable_gqa varies by version.
                k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
                with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask["bias"], scale=self.head_dim ** -0.5)
            else:
                y = self.attend(q, k, v, mask["bias"])  # (B, H, T, d)
            y = y.transpose(1, 2).flatten(0, 1)  # (B * T, H, d): slot by slot
            return self.o_proj(y[mask["slot"] if keep is None else mask["slot"][keep]].flatten(1))  # (N or n, D)
        y = self.attend(q, k, v, mask)  # (B, H, T, d)
        y = y.transpose(-3, -2).reshape(*shape, -1)  # (B, T, H * d)
        return self.o_proj(y if keep is None else y.flatten(0, -2)[keep])


def attention_rule(example_q, part_q, pos_q, example_k, part_k, pos_k):
    """May a query attend a key? Each side's example id, part (0 the prompt, k + 1 response k) and position, as
    tensors that broadcast against the other side's. The paper's figure of a pair (a prompt, then two responses that
    each see the prompt and themselves, not each other), one condition a line; a sliding window is one more,
    `& (pos_q - pos_k < window)`. Written on values, not on a layout, it is also FlexAttention's mask_mod:
    lambda b, h, q, k: attention_rule(example[q], part[q], pos[q], example[k], part[k], pos[k])."""
    same_example = example_q == example_k
    prompt_or_own_part = (part_k == 0) | (part_k == part_q)
    not_after = pos_k <= pos_q
    return same_example & prompt_or_own_part & not_after


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):  # GeGLU: the gate goes through the tanh GELU, the up projection does not
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # despite its name: the pre-MLP norm
        self.mlp = MLP(cfg)

    def forward(self, h, cos, sin, mask, keep=None):
        a = self.self_attn(self.input_layernorm(h), cos, sin, mask, keep)
        h = (h if keep is None else h.flatten(0, -2)[keep]) + a  # from here on, only the tokens kept
        return h + self.mlp(self.post_attention_layernorm(h))


class Gemma(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.checkpointing = False  # activation checkpointing: less memory for long sequences, ~1.3x the compute
        for m in self.modules():  # transformers' init (std 0.02), only used by models trained from scratch
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None, position_ids=None, keep=None):
        """Final-norm hidden states: (B, T, D) for a batch input_ids (B, T), whose attention_mask is
        - None: every token is real (causal attention, positions 0..T-1), or
        - (B, T) with 1 = real token, 0 = pad, padding on either side: positions count real tokens only, so that both
          padding sides give the unpadded result on real tokens (pad positions: finite but meaningless);
        or (N, D) for a packed stream input_ids (N,) of several sequences, with position_ids (N,) and attention_mask
        the layout of its attention in B rows of T slots (packing.attention_rows): a dict of example, part, pos (B, T)
        per slot, token (B * T,) the stream index each slot reads, slot (N,) each token's slot. Who sees whom is
        attention_rule, (B, 1, T, T) with query i along dim 2 and key j along dim 3: a prompt followed by two responses
        that each see the prompt but not each other (packing.pack); every layer makes one attention call over all rows.
        keep: flat indices of the only tokens whose hidden state the caller reads (into B * T or N); the last layer
        then computes its MLP and output projection at those tokens alone, and (len(keep), D) is returned."""
        device = input_ids.device
        h = self.embed_tokens(input_ids)  # (B, T, D) or (N, D)
        h = h * torch.tensor(self.config.hidden_size ** 0.5, dtype=h.dtype)  # sqrt(D) rounded to the act dtype
        if isinstance(attention_mask, dict):  # packed: mask built once here, on the device, for every layer
            assert position_ids is not None, "a packed stream needs its position_ids"
            rows = attention_mask
            slots = (rows["example"], rows["part"], rows["pos"])  # (B, T) each
            allowed = attention_rule(*(t[:, None, :, None] for t in slots), *(t[:, None, None, :] for t in slots))
            # an additive bias in the activation dtype, made once: the attention kernels would convert a bool per call
            bias = torch.zeros(allowed.shape, dtype=h.dtype, device=device).masked_fill_(~allowed, float("-inf"))
            mask = dict(bias=bias, token=rows["token"], slot=rows["slot"])  # its positions: position_ids, below
        elif attention_mask is None:
            B, T = input_ids.shape
            pos, mask = torch.arange(T, device=device).expand(B, T), None  # None: SDPA's causal fast path
        else:
            T = input_ids.shape[1]
            real = attention_mask.bool()  # (B, T)
            pos = (real.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            diag = torch.eye(T, dtype=torch.bool, device=device)  # a token sees itself: a left pad's row is not empty
            mask = (causal & (real[:, None, :] | diag))[:, None]  # (B, 1, T, T): earlier real keys
        if position_ids is not None:
            pos = position_ids
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, h.dtype)  # (B, T, d) or (N, d)
        if h.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d): broadcast over heads
        for i, layer in enumerate(self.layers):
            args = (h, cos, sin, mask, keep if i == len(self.layers) - 1 else None)
            if self.checkpointing and torch.is_grad_enabled():  # keep only layer inputs; recompute the rest backward
                h = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                h = layer(*args)
        return self.norm(h)

    def logits(self, hidden):
        """(B, T, D) -> (B, T, V) through the tied embedding; separate so that a reward model never pays for it."""
        return F.linear(hidden, self.embed_tokens.weight)

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu"):
        """Loads a Hugging Face Gemma checkpoint folder (config.json + one or many *.safetensors shards)."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a folder: expected a Hugging Face checkpoint folder with "
                                    "config.json and *.safetensors (e.g. from `hf download google/gemma-2b`)")
        config = GemmaConfig.from_json(os.path.join(path, "config.json"))
        with torch.device("meta"):  # shapes only: no memory until each tensor is read from disk
            model = cls(config)
        expected = {"model." + k: tuple(v.shape) for k, v in model.state_dict().items()}
        headers = {shard: read_safetensors_header(shard) for shard in _shard_files(path)}  # -> (header, data start)
        where = {}  # checkpoint key -> the shard that holds it
        for shard, (header, _) in headers.items():
            for key in header:
                if key in where:
                    raise ValueError(f"'{key}' is stored twice, in {os.path.basename(where[key])} "
                                     f"and in {os.path.basename(shard)}")
                where[key] = shard
        where.pop("lm_head.weight", None)  # a tied copy of embed_tokens that some exporters write: not needed
        missing = sorted(set(expected) - set(where))
        if missing:
            raise ValueError(f"checkpoint {path} lacks {len(missing)} tensor(s) that Gemma needs, "
                             f"e.g. '{missing[0]}'" + (" (not a Gemma v1 checkpoint?)" if len(missing) > 1 else ""))
        unexpected = sorted(set(where) - set(expected))
        if unexpected:
            raise ValueError(f"checkpoint {path} has {len(unexpected)} tensor(s) Gemma v1 does not use, "
                             f"e.g. '{unexpected[0]}' in {os.path.basename(where[unexpected[0]])}")
        for key, shape in expected.items():
            found = tuple(headers[where[key]][0][key]["shape"])
            if found != shape:
                raise ValueError(f"'{key}' in {os.path.basename(where[key])} has shape {found}, "
                                 f"but config.json implies {shape}")
        # shard by shard, one tensor at a time, straight into the target dtype and device: peak = model + one tensor
        for shard, (header, data_start) in headers.items():
            with open(shard, "rb") as f:
                tensors = {key[len("model."):]: _read_tensor(f, shard, key, header[key], data_start, dtype, device)
                           for key in header if key in expected}
            model.load_state_dict(tensors, strict=False, assign=True)
        assert not any(p.is_meta for p in model.parameters())
        n = sum(p.numel() for p in model.parameters())
        print(f"loaded {path}: {n:,} parameters, {dtype}, {device}")
        return model

    def save_pretrained(self, path):
        """Writes config.json and model.safetensors in the Hugging Face layout (from_pretrained and transformers'
        GemmaForCausalLM both load it): how the tiny models of the offline demo are kept."""
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        config = {"model_type": "gemma", "architectures": ["GemmaForCausalLM"], "hidden_act": "gelu_pytorch_tanh",
                  "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True, **vars(self.config)}
        tensors = {"model." + k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(path, "model.safetensors.tmp"), metadata={"format": "pt"})
        os.replace(os.path.join(path, "model.safetensors.tmp"), os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f, indent=2)


# -----------------------------------------------------------------------------
# safetensors reading: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
# then the raw little-endian data. Read by hand (not mmap) so that each tensor goes straight into its parameter.

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def _shard_files(path):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index ({e!r})") from None
        shards = [os.path.join(path, name) for name in dict.fromkeys(weight_map.values())]
        for shard in shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"{index} lists shard {os.path.basename(shard)}, which is not in {path}")
        return shards
    shards = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors file in {path} (found: {', '.join(sorted(os.listdir(path)))})")
    return shards


def read_safetensors_header(path):
    """Returns ({name: {dtype, shape, data_offsets}}, data start) after checking the file can hold every tensor."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise ValueError(f"{path} is not a readable safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a readable safetensors file (bad header: {e})") from None
    header.pop("__metadata__", None)
    data_start, data_size = 8 + n, size - 8 - n
    for key, entry in header.items():
        if entry.get("dtype") not in DTYPES:
            raise ValueError(f"'{key}' in {name} has dtype {entry.get('dtype')}; expected one of {', '.join(DTYPES)}")
        begin, end = entry["data_offsets"]
        if end - begin != math.prod(entry["shape"]) * DTYPES[entry["dtype"]].itemsize:
            raise ValueError(f"'{key}' in {name}: data_offsets {begin}..{end} do not match shape {entry['shape']}")
        if end > data_size:
            raise ValueError(f"{path} is truncated: '{key}' ends at byte {end} of the data, "
                             f"but the file holds only {data_size} bytes of data (re-download it)")
    return header, data_start


def _read_tensor(f, path, key, entry, data_start, dtype, device):
    file_dtype, shape = DTYPES[entry["dtype"]], entry["shape"]
    direct = file_dtype == dtype and torch.device(device).type == "cpu"
    buf = torch.empty(shape, dtype=file_dtype)  # the parameter itself when no conversion is needed
    f.seek(data_start + entry["data_offsets"][0])
    if f.readinto(buf.view(-1).view(torch.uint8).numpy()) != buf.numel() * buf.itemsize:
        raise ValueError(f"{path} ended while reading '{key}' (truncated file?)")
    return buf if direct else buf.to(device=device, dtype=dtype)


# -----------------------------------------------------------------------------
# tokenizer


class Tokenizer:
    """SentencePiece tokenizer.model of Gemma: <pad>=0, <eos>=1, <bos>=2; BOS added by default, EOS never."""

    def __init__(self, path):
        import sentencepiece as spm  # imported here so that the model code above runs without it
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: expected a SentencePiece tokenizer.model")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as e:  # sentencepiece raises OSError or RuntimeError, depending on the version
            raise ValueError(f"{path} is not a SentencePiece model ({e})") from None
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        self.vocab_size = self.sp.vocab_size()

    def encode(self, text, bos=True):
        return ([self.bos_id] if bos else []) + self.sp.encode(text)

    def decode(self, ids):
        return self.sp.decode([i for i in ids if i not in (self.bos_id, self.pad_id)])

    def batch(self, texts, max_len=None, padding_side="right", truncation_side="right", bos=True):
        """Encodes, truncates each row to max_len tokens and pads: returns input_ids and attention_mask (B, T).
        truncation_side "left" keeps the end of each text (for a reward model, the response)."""
        assert truncation_side in ("left", "right"), f"truncation side must be 'left' or 'right', got {truncation_side!r}"
        rows = [self.sp.encode(t) for t in texts]
        if max_len is not None:  # truncate the text, never the <bos> in front of it
            n = max_len - bos
            rows = [r[:n] if truncation_side == "right" else r[max(len(r) - n, 0):] for r in rows]
        rows = [[self.bos_id] * bos + r for r in rows]
        return pad(rows, self.pad_id if self.pad_id >= 0 else 0, padding_side)


def pad(rows, pad_id=0, side="right"):
    """Lists of ids -> input_ids, attention_mask (B, T) as LongTensors, padded on the given side."""
    assert side in ("left", "right"), f"padding side must be 'left' or 'right', got {side!r}"
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


# -----------------------------------------------------------------------------

if __name__ == "__main__":  # check a download: python gemma.py checkpoints/gemma-2b --prompt "The capital of France is"
    import argparse
    p = argparse.ArgumentParser(description="Greedy continuation of a prompt with a Gemma checkpoint folder.")
    p.add_argument("path", help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.model)")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--tokens", type=int, default=16, help="how many tokens to generate")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = Gemma.from_pretrained(args.path, torch.bfloat16 if device == "cuda" else torch.float32, device)
        tok = Tokenizer(os.path.join(args.path, "tokenizer.model"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    ids = tok.encode(args.prompt)
    with torch.no_grad():
        for _ in range(args.tokens):  # no KV cache: this is a sanity check, not a generator
            hidden = model(torch.tensor([ids], device=device))
            ids.append(int(model.logits(hidden[:, -1]).argmax(-1)))
    print(tok.decode(ids))
