"""
Gemma decoder in plain PyTorch, v1, 2 and 3 from one config: presets, the forward pass (a padded batch, a packed
stream, or cached generation steps), generation, Hugging Face checkpoint loading and saving.

Loads the Hugging Face checkpoints of google/gemma-2b / 7b (v1), gemma-2-2b and gemma-3-270m (text part of any Gemma
3) and reproduces transformers' GemmaForCausalLM / Gemma2ForCausalLM / Gemma3ForCausalLM to float32 rounding
(tests/test_gemma.py, tests/test_gemma23.py). Module names equal the checkpoint keys without the leading "model.", so
loading is an explicit identity mapping with every key and shape checked. Files and the tokenizer: checkpoint.py;
config.json: hfconfig.py.

The four places where a from-scratch Gemma usually goes wrong (all are tested against transformers):
- the embedding is multiplied by sqrt(D) *rounded to the activation dtype* (45.25 in bf16 for 2b, not 45.2548);
- RMSNorm scales by (1 + w), not w, computes in float32 and casts back only after the multiply (Gemma 3's per-head
  q_norm / k_norm too: the same class in transformers);
- RoPE pairs dim i with dim i + d/2 ("rotate half"), and the checkpoint needs no permutation for that;
- the MLP uses the tanh approximation of GELU, whatever the hub's config.json says ("gelu" there is a legacy name).
And in Gemma 2/3: v1's post_attention_layernorm is the pre-MLP norm, theirs normalises the attention output (then
pre_feedforward_layernorm comes before the MLP); sliding layers see keys 0 <= pos_q - pos_k < W only.

Glossary: B batch, T sequence length, D hidden size, H query heads, K key/value heads, d head dim, V vocab size,
W sliding window, S keys (= T, or cached + new tokens while generating).
"""
import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from torch.nn.attention import SDPBackend, sdpa_kernel

from checkpoint import read_safetensors_header, read_tensor, shard_files
from checkpoint import Tokenizer, pad  # noqa: F401 (re-exported: gemma.Tokenizer, gemma.pad)
from hfconfig import FULL, SLIDING, hf_config, read_config

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
    rope_theta: float = 10000.0      # RoPE base (of the full-attention layers in Gemma 3)
    max_position_embeddings: int = 8192  # the context the model was trained on; nothing is precomputed for it
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    # Gemma 2 and 3; the defaults are Gemma v1
    sandwich_norms: bool = False     # 2, 3: a norm after attention and after the MLP too, 4 per layer
    qk_norm: bool = False            # 3: RMSNorm of each query and key head before RoPE
    query_pre_attn_scalar: float = None  # attention scale 1/sqrt(this); None: head_dim
    sliding_window: int = None       # W, for the layers that layer_types marks sliding
    layer_types: tuple = None        # per layer SLIDING or FULL; None: all full
    rope_local_base_freq: float = None   # 3: RoPE base of the sliding layers; None: rope_theta
    rope_scaling_factor: float = 1.0     # "linear" RoPE scaling (positions / factor) of the full layers (Gemma 3 4b+)
    rope_local_scaling_factor: float = 1.0  # the same for the sliding layers (Gemma 2: as the full ones)
    attn_logit_softcapping: float = None   # 2: scores -> c tanh(scores / c) before the mask
    final_logit_softcapping: float = None  # 2: logits -> c tanh(logits / c)

    @property
    def model_type(self):
        return "gemma3_text" if self.qk_norm else "gemma2" if self.sandwich_norms else "gemma"

    def is_sliding(self, i):
        return self.layer_types is not None and self.layer_types[i] == SLIDING

    @classmethod
    def gemma_2b(cls):
        return cls()  # the defaults above are google/gemma-2b's config.json

    @classmethod
    def gemma_7b(cls):
        return cls(hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                   num_attention_heads=16, num_key_value_heads=16)

    @classmethod
    def gemma2_2b(cls):  # google/gemma-2-2b: sliding on even layers, soft-capped
        return cls(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                   num_key_value_heads=4, sandwich_norms=True, query_pre_attn_scalar=256, sliding_window=4096,
                   layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(26)),
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0)

    @classmethod
    def gemma3_270m(cls):  # google/gemma-3-270m: every sixth layer full, the others slide with their own RoPE base
        return cls(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, rope_theta=1e6, max_position_embeddings=32768,
                   sandwich_norms=True, qk_norm=True, query_pre_attn_scalar=256, sliding_window=512,
                   layer_types=tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(18)),
                   rope_local_base_freq=10000.0)

    @classmethod
    def tiny(cls):
        # random-weight model for the offline demos and the tests: same architecture, 1.5M parameters
        return cls(vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048)

    @classmethod
    def from_json(cls, path):
        """Reads a Hugging Face config.json: model_type gemma, gemma2, gemma3_text, or gemma3 (its text_config), as
        transformers 4.x (rope_theta, rope_scaling) or 5 (rope_parameters) writes it; any key whose numerics gemma.py
        does not implement is refused, naming the key (hfconfig.CONFIG_KEYS)."""
        return cls(**read_config(path))

    def to_hf(self):
        """The config.json that transformers reads as this generation (GemmaConfig, Gemma2Config, Gemma3TextConfig)."""
        return hf_config(self)


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


def rope_cos_sin(pos, head_dim, theta, dtype, factor=1.0):
    """cos and sin of the rotary angles for positions pos (any shape): each pos.shape + (d,)."""
    # inverse frequencies in float32, computed exactly like the reference so that angles agree to the last ulp
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device).float() / head_dim)) / factor
    angles = pos.float()[..., None] * inv_freq  # (..., d/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., d): dim i and dim i + d/2 rotate by the same angle
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    # rotate-half pairing: (a, b) = halves of the head vector, (a, b) -> (a cos - b sin, b cos + a sin)
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


def in_window(pos_q, pos_k, window):
    """The sliding-window rule on position ids: key allowed iff 0 <= pos_q - pos_k < window (transformers'
    sliding_window_overlay). pos_q (..., Tq), pos_k (..., Tk) -> (..., Tq, Tk). On positions, not stream indices:
    a window counts tokens of its own sequence, and a response that continues its prompt's positions reaches into
    the prompt exactly as the same response in its own sequence would."""
    d = pos_q[..., :, None] - pos_k[..., None, :]
    return (d >= 0) & (d < window)


def softcapped_attention(q, k, v, mask, scale, cap):
    """Gemma 2's attention, explicit because SDPA cannot cap: scores -> cap tanh(scores / cap) -> mask -> softmax.
    q (B, H, T, d), k, v (B, K, S, d), mask (B, 1, T, S) boolean or additive, or None (causal) -> (B, H, T, d)."""
    rep = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)  # query head h reads kv head h // rep
    s = (q @ k.transpose(-1, -2)) * scale  # (B, H, T, S)
    s = cap * torch.tanh(s / cap)
    if mask is None:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(s.shape[-1] - s.shape[-2])
    s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask  # boolean, or additive bias
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v  # softmax in float32, as the reference does


class Attention(nn.Module):
    def __init__(self, cfg, sliding=False):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        assert self.n_head % self.n_kv_head == 0, "query heads must split evenly over key/value heads"
        self.sliding = sliding  # which mask and which RoPE base the decoder hands this layer
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.softcap = cfg.attn_logit_softcapping
        D, Hd, Kd = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = nn.Linear(D, Hd, bias=False)
        self.k_proj = nn.Linear(D, Kd, bias=False)
        self.v_proj = nn.Linear(D, Kd, bias=False)
        self.o_proj = nn.Linear(Hd, D, bias=False)
        if cfg.qk_norm:  # Gemma 3: over each head's d features, (1 + w) like every Gemma norm
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def attend(self, q, k, v, mask):  # (B, H, T, d), (B, K, S, d) x 2 -> (B, H, T, d)
        if self.softcap is not None:
            return softcapped_attention(q, k, v, mask, self.scale, self.softcap)
        # enable_gqa: query head h reads kv head h // (H / K), without materialising the repeated keys and values
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              scale=self.scale, enable_gqa=self.n_kv_head != self.n_head)

    def forward(self, x, cos, sin, mask, keep=None, cache=None):
        """x (B, T, D) with mask None or (B, 1, T, S) -> (B, T, D); or a packed stream x (N, D) with mask a dict
        (Gemma.forward's packed branch) -> (N, D). keep: flat token indices, the only outputs wanted (n, D).
        cache: None, or a dict that holds this layer's keys and values of the earlier steps (S - T of them) and
        receives the new ones."""
        shape = x.shape[:-1]  # (B, T) or (N,)
        q = self.q_proj(x).unflatten(-1, (self.n_head, self.head_dim)).transpose(-3, -2)  # (B, H, T, d) or (H, N, d)
        k = self.k_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim)).transpose(-3, -2)  # (B, K, T, d) or (K, N, d)
        v = self.v_proj(x).unflatten(-1, (self.n_kv_head, self.head_dim)).transpose(-3, -2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), dim=-2), torch.cat((cache["v"], v), dim=-2)  # (B, K, S, d)
            cache["k"], cache["v"] = k, v
        # Packed: gather the stream into rows, ONE attention call for all, scatter back. A soft-capped model (Gemma 2)
        # cannot use SDPA, which has no hook on the scores: attend() takes the explicit attention over the same rows
        # and bias; FlexAttention would take the cap as a score_mod instead.
        if isinstance(mask, dict):
            B, T = mask["bias"].shape[0], mask["bias"].shape[-1]
            q, k, v = (t[:, mask["token"]].unflatten(1, (B, T)).transpose(0, 1) for t in (q, k, v))  # (B, H or K, T, d)
            if q.is_cuda and self.softcap is None:  # the memory-efficient kernel, chosen explicitly: cuDNN would
                # build a plan per new shape, and flash takes no mask. It is given H key/value heads: its support of
                # enable_gqa varies by version.
                k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
                with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask["bias"], scale=self.scale)
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


def as_bias(allowed, dtype):
    """A boolean mask as an additive bias (0 or -inf) in the activation dtype, made once a step: the attention kernels
    would otherwise convert a boolean mask on every call."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):  # GeGLU: the gate goes through the tanh GELU, the up projection does not
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, i=0):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, cfg.is_sliding(i))
        # v1: despite its name, the pre-MLP norm; Gemma 2/3: the norm of the attention output (the names are the keys)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.sandwich_norms:
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, h, cos, sin, mask, keep=None, cache=None):
        a = self.self_attn(self.input_layernorm(h), cos, sin, mask, keep, cache)
        h = h if keep is None else h.flatten(0, -2)[keep]  # from here on, only the tokens kept
        if not hasattr(self, "pre_feedforward_layernorm"):  # v1
            h = h + a
            return h + self.mlp(self.post_attention_layernorm(h))
        h = h + self.post_attention_layernorm(a)  # Gemma 2/3: a norm before and after attention and the MLP
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.checkpointing = False  # activation checkpointing: less memory for long sequences, ~1.3x the compute
        for m in self.modules():  # transformers' init (std 0.02), only used by models trained from scratch
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None, position_ids=None, keep=None, cache=None):
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
        then computes its MLP and output projection at those tokens alone, and (len(keep), D) is returned.
        cache: while generating, a list of one dict per layer (start with [{} for _ in model.layers]) holding the keys
        and values of the S - T tokens before input_ids; attention_mask (B, S) then covers those tokens and these."""
        cfg, device = self.config, input_ids.device
        h = self.embed_tokens(input_ids)  # (B, T, D) or (N, D)
        h = h * torch.tensor(cfg.hidden_size ** 0.5, dtype=h.dtype)  # sqrt(D) rounded to the act dtype
        slides = cfg.sliding_window is not None and any(layer.self_attn.sliding for layer in self.layers)
        if isinstance(attention_mask, dict):  # packed: masks built once here, on the device, for every layer
            assert position_ids is not None, "a packed stream needs its position_ids"
            rows, pos = attention_mask, position_ids
            slots = (rows["example"], rows["part"], rows["pos"])  # (B, T) each
            allowed = attention_rule(*(t[:, None, :, None] for t in slots), *(t[:, None, None, :] for t in slots))
            masks = {False: dict(bias=as_bias(allowed, h.dtype), token=rows["token"], slot=rows["slot"])}
            if slides:  # sliding layers: the same rule and the window on the slots' positions
                window = in_window(rows["pos"], rows["pos"], cfg.sliding_window)[:, None]  # (B, 1, T, T)
                masks[True] = dict(masks[False], bias=as_bias(allowed & window, h.dtype))
        else:
            B, T = input_ids.shape
            S = T + (cache[0]["k"].shape[-2] if cache and "k" in cache[0] else 0)
            if attention_mask is None and S == T:  # None: SDPA's causal fast path wherever no window can bite
                pos = torch.arange(T, device=device).expand(B, T)
                masks = {False: None, True: None if T <= (cfg.sliding_window or T) else
                         (torch.ones(T, T, dtype=torch.bool, device=device).tril() &
                          in_window(pos[0], pos[0], cfg.sliding_window))}
            else:
                if attention_mask is None:
                    attention_mask = torch.ones(B, S, dtype=torch.long, device=device)
                assert attention_mask.shape == (B, S), f"attention_mask should be {(B, S)}, is {attention_mask.shape}"
                real = attention_mask.bool()  # (B, S)
                pos_k = (real.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
                pos = pos_k[:, S - T:]  # (B, T)
                causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)  # query i is token S - T + i
                diag = torch.arange(S, device=device) == torch.arange(S - T, S, device=device)[:, None]  # (T, S)
                # (B, 1, T, S): earlier real keys, and itself, so that a left pad's row is not empty
                masks = {False: (causal & (real[:, None, :] | diag))[:, None]}
                if slides:
                    masks[True] = masks[False] & in_window(pos, pos_k, cfg.sliding_window)[:, None]
        if position_ids is not None:
            pos = position_ids
        local = cfg.rope_local_base_freq or cfg.rope_theta
        # cos and sin of the full and of the sliding layers, each (B, T, d) or (N, d)
        ropes = {False: rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, h.dtype, cfg.rope_scaling_factor),
                 True: rope_cos_sin(pos, cfg.head_dim, local, h.dtype, cfg.rope_local_scaling_factor)}
        if h.dim() == 3:
            ropes = {k: (cos[:, None], sin[:, None]) for k, (cos, sin) in ropes.items()}  # (B, 1, T, d): over heads
        for i, layer in enumerate(self.layers):
            sliding = layer.self_attn.sliding
            args = (h, *ropes[sliding], masks[sliding], keep if i == len(self.layers) - 1 else None,
                    None if cache is None else cache[i])
            if self.checkpointing and torch.is_grad_enabled():  # keep only layer inputs; recompute the rest backward
                h = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                h = layer(*args)
        return self.norm(h)

    def logits(self, hidden):
        """(B, T, D) -> (B, T, V) through the tied embedding; separate so that a reward model never pays for it.
        Gemma 2 caps them: cap tanh(logits / cap)."""
        z = F.linear(hidden, self.embed_tokens.weight)
        cap = self.config.final_logit_softcapping
        return z if cap is None else cap * torch.tanh(z / cap)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens=32, temperature=0.0, top_p=1.0, eos_id=None,
                 generator=None):
        """Continues each row of input_ids (B, T), left-padded where attention_mask (B, T) has zeros at the start:
        greedy at temperature 0, else sampling from softmax(logits / temperature) cut to the smallest set of tokens
        whose probability reaches top_p. A row ends at its first stop id: eos_id is one id, or several (a chat model
        ends a turn with <end_of_turn> as well as <eos>: Tokenizer.stop_ids), or None (never). A finished row emits
        pad_token_id; generation stops after max_new_tokens or once every row has ended. Returns (B, T + n) ids,
        n <= max_new_tokens. Keys and values of earlier tokens are cached, so each step runs the new token only."""
        B, T = input_ids.shape
        stops = None if eos_id is None else torch.as_tensor(eos_id, device=input_ids.device).flatten()
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        if (mask[:, 1:] < mask[:, :-1]).any():
            raise ValueError("generate needs left padding: some row of attention_mask has a pad after a real token")
        cache, out, done = [{} for _ in self.layers], [input_ids], torch.zeros(B, dtype=torch.bool,
                                                                              device=input_ids.device)
        step = input_ids
        for _ in range(max_new_tokens):
            last = torch.arange(B, device=step.device) * step.shape[1] + step.shape[1] - 1
            z = self.logits(self(step, mask, keep=last, cache=cache)).float()  # (B, V), the last token of each row
            if temperature == 0:
                nxt = z.argmax(-1)
            else:
                probs = torch.softmax(z / temperature, dim=-1)
                p, order = probs.sort(dim=-1, descending=True)
                if top_p < 1:  # keep a token while the mass before it is below top_p
                    p[(p.cumsum(-1) - p) >= top_p] = 0
                nxt = order.gather(-1, torch.multinomial(p, 1, generator=generator))[:, 0]
            nxt = nxt.masked_fill(done, self.config.pad_token_id)
            if stops is not None:
                done = done | torch.isin(nxt, stops)
            out.append(nxt[:, None])
            step, mask = nxt[:, None], torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
            if done.all():
                break
        return torch.cat(out, dim=1)

    @classmethod
    def from_pretrained(cls, path, dtype=torch.float32, device="cpu"):
        """Loads a Hugging Face Gemma checkpoint folder (config.json + one or many *.safetensors shards). Keys are
        `model.<ours>` (GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM); a multimodal Gemma 3's text part is
        read from `language_model.model.<ours>` or `model.language_model.<ours>`, and its vision tower is skipped."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a folder: expected a Hugging Face checkpoint folder with "
                                    "config.json and *.safetensors (e.g. from `hf download google/gemma-2b`)")
        config = GemmaConfig.from_json(os.path.join(path, "config.json"))
        with torch.device("meta"):  # shapes only: no memory until each tensor is read from disk
            model = cls(config)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        headers = {shard: read_safetensors_header(shard) for shard in shard_files(path)}  # -> (header, data start)
        where = {}  # checkpoint key -> the shard that holds it
        for shard, (header, _) in headers.items():
            for key in header:
                if key in where:
                    raise ValueError(f"'{key}' is stored twice, in {os.path.basename(where[key])} "
                                     f"and in {os.path.basename(shard)}")
                where[key] = shard
        where.pop("lm_head.weight", None)  # a tied copy of embed_tokens that some exporters write: not needed
        prefix = next((p for p in ("language_model.model.", "model.language_model.")
                       if any(k.startswith(p) for k in where)), "model.")
        if prefix != "model.":  # a multimodal Gemma 3: the vision tower and projector are not ours
            where = {k: s for k, s in where.items() if k.startswith(prefix)}
        expected = {prefix + k: shape for k, shape in ours.items()}
        missing = sorted(set(expected) - set(where))
        name = {"gemma": "Gemma v1", "gemma2": "Gemma 2", "gemma3_text": "Gemma 3"}[config.model_type]
        if missing:
            raise ValueError(f"checkpoint {path} lacks {len(missing)} tensor(s) that {name} needs, "
                             f"e.g. '{missing[0]}'" + (f" (not a {name} checkpoint?)" if len(missing) > 1 else ""))
        unexpected = sorted(set(where) - set(expected))
        if unexpected:
            raise ValueError(f"checkpoint {path} has {len(unexpected)} tensor(s) {name} does not use, "
                             f"e.g. '{unexpected[0]}' in {os.path.basename(where[unexpected[0]])}")
        for key, shape in expected.items():
            found = tuple(headers[where[key]][0][key]["shape"])
            if found != shape:
                raise ValueError(f"'{key}' in {os.path.basename(where[key])} has shape {found}, "
                                 f"but config.json implies {shape}")
        # shard by shard, one tensor at a time, straight into the target dtype and device: peak = model + one tensor
        for shard, (header, data_start) in headers.items():
            with open(shard, "rb") as f:
                tensors = {key[len(prefix):]: read_tensor(f, shard, key, header[key], data_start, dtype, device)
                           for key in header if key in expected}
            model.load_state_dict(tensors, strict=False, assign=True)
        assert not any(p.is_meta for p in model.parameters())
        n = sum(p.numel() for p in model.parameters())
        print(f"loaded {path}: {name}, {n:,} parameters, {dtype}, {device}")
        return model

    def save_pretrained(self, path):
        """Writes config.json and model.safetensors in the Hugging Face layout (from_pretrained and transformers'
        Gemma/Gemma2/Gemma3ForCausalLM load it): how the tiny models of the offline demo are kept."""
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        tensors = {"model." + k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(path, "model.safetensors.tmp"), metadata={"format": "pt"})
        os.replace(os.path.join(path, "model.safetensors.tmp"), os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(self.config.to_hf(), f, indent=2)


# -----------------------------------------------------------------------------

if __name__ == "__main__":  # check a download: python gemma.py checkpoints/gemma-2b --prompt "The capital of France is"
    import sys
    import cli
    with cli.last_resort("gemma"):  # bad input in one sentence; a bug in one line naming its traceback's file
        if sys.argv[1:2] in (["convert"], ["fetch"]):  # python gemma.py convert FILE.gguf OUT_DIR | fetch gemma-3-270m
            import convert
            sys.exit(convert.main(sys.argv[1:]))
        import argparse
        p = argparse.ArgumentParser(description="Greedy continuation of a prompt with a Gemma checkpoint folder. Also: "
                                    "`python gemma.py convert FILE.gguf OUT_DIR`, `python gemma.py fetch gemma-3-270m`.")
        p.add_argument("path", help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.model)")
        p.add_argument("--prompt", default="The capital of France is")
        p.add_argument("--tokens", type=int, default=16, help="how many tokens to generate at most")
        args = p.parse_args()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = Gemma.from_pretrained(args.path, torch.bfloat16 if device == "cuda" else torch.float32, device)
        tok = Tokenizer(os.path.join(args.path, "tokenizer.model"))
        prompt = tok.encode(args.prompt)
        if not 0 <= args.tokens <= model.config.max_position_embeddings - len(prompt):
            raise ValueError(f"--tokens must be in [0, {model.config.max_position_embeddings - len(prompt)}] (the "
                             f"model's {model.config.max_position_embeddings} positions less the prompt's), got "
                             f"{args.tokens}")
        ids = model.generate(torch.tensor([prompt], device=device), max_new_tokens=args.tokens, eos_id=tok.stop_ids)
        print(tok.decode(ids[0].tolist()))
