"""
config.json of a Gemma checkpoint, for gemma.py's GemmaConfig: read (every key in one table, CONFIG_KEYS: read into a
field, ignored because it changes no number gemma.py computes, or refused by name; every field type-checked) and
written for each generation. Hugging Face's names are GemmaConfig's field names. Two generations of the format are
read: transformers 4.x writes rope_theta, rope_local_base_freq and rope_scaling; transformers 5 writes rope_parameters
instead (one dict, or in Gemma 3 one per layer type).

The files themselves (a regular file, JSON with a depth limit) are read by checkpoint.py's helpers.
"""
import json
import os

from checkpoint import check_file, loads


SLIDING, FULL = "sliding_attention", "full_attention"  # Hugging Face's layer_types values
READ, IGNORE, REFUSE = "read", "ignore", "refuse"
_GENERATION = ("max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
               "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
               "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
               "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
               "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
               "begin_suppress_tokens")
_BOOKKEEPING = ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype", "use_bfloat16",
                "attn_implementation", "_attn_implementation", "_attn_implementation_autoset", "experts_implementation",
                "_commit_hash", "output_attentions", "output_hidden_states", "return_dict", "torchscript",
                "tf_legacy_loss", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
                "task_specific_params", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
                "is_decoder", "tie_encoder_decoder", "cross_attention_hidden_size")
# Every key that transformers' GemmaConfig, Gemma2Config, Gemma3TextConfig and Gemma3Config carry (4.57 and 5.24, their
# own keys and those of the base class), and what read_config does with it: READ, into a GemmaConfig field (a key left
# out means transformers' default for that generation); IGNORE, as it changes no number gemma.py computes; a tuple of
# values, accepted while it holds one of them (or null) and refused otherwise; REFUSE, refused unless null. A key not in
# the table is refused too: it may come from a newer library and change the numerics in a way nobody checked.
CONFIG_KEYS = {
    "model_type": (READ, "gemma, gemma2, gemma3_text, or gemma3 (multimodal: its text_config is read)"),
    **dict.fromkeys(("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim"), (READ, "the shapes")),
    "rms_norm_eps": (READ, "inside RMSNorm's square root"),
    "max_position_embeddings": (READ, "the trained context length; nothing is precomputed for it"),
    "query_pre_attn_scalar": (READ, "Gemma 2/3: attention scale 1/sqrt(this); Gemma v1's class uses head_dim"),
    "sliding_window": (READ, "Gemma 2/3: the window W of the sliding layers"),
    "layer_types": (READ, "Gemma 2/3: which layers slide"),
    "sliding_window_pattern": (READ, "older Gemma 3 configs without layer_types: every n-th layer is full"),
    "_sliding_window_pattern": (IGNORE, "transformers' note of that pattern beside layer_types, which decides"),
    "sliding_window_size": (IGNORE, "a legacy copy of sliding_window in early Gemma 2 configs; transformers reads "
                                    "sliding_window"),
    **dict.fromkeys(("attn_logit_softcapping", "final_logit_softcapping"),
                    (READ, "Gemma 2/3: tanh caps (left out: 50 and 30 in Gemma 2, none in Gemma 3)")),
    "hidden_act": (READ, "Gemma v1's activation: the tanh GELU, or 'gelu', the legacy name in Google's configs that "
                         "transformers 5 maps to it (4.x ran the exact GELU); Gemma 2/3 ignore it"),
    "hidden_activation": (READ, "Gemma 2/3's activation: the tanh GELU only; Gemma v1 ignores it"),
    "rope_parameters": (READ, "transformers 5: rope_type 'default' or 'linear', rope_theta, factor; Gemma 3: one per "
                              "layer type"),
    "rope_theta": (READ, "transformers 4: the RoPE base (in Gemma 3, of the full layers)"),
    "rope_local_base_freq": (READ, "transformers 4, Gemma 3: the RoPE base of the sliding layers"),
    "rope_scaling": (READ, "transformers 4: 'linear' scaling (in Gemma 3, of the full layers); other types refused"),
    "partial_rotary_factor": ((1,), "RoPE on a part of each head only: no Gemma does that"),
    **dict.fromkeys(("pad_token_id", "eos_token_id", "bos_token_id"), (READ, "token ids (of a list of eos ids, the "
                                                                            "first); no numerics")),
    "tie_word_embeddings": ((True,), "the output matrix is the embedding; an untied lm_head.weight would be dropped"),
    "attention_bias": ((False,), "biases on the q, k, v and o projections: no Gemma has them"),
    "attention_dropout": ((0,), "dropout on the attention weights while training: gemma.py has none"),
    "use_bidirectional_attention": ((False,), "attention both ways (EmbeddingGemma), not a causal decoder"),
    "add_cross_attention": ((False,), "cross-attention layers: a decoder-only Gemma has none"),
    "is_encoder_decoder": ((False,), "an encoder-decoder model"),
    "pruned_heads": (({},), "attention heads removed after training"),
    "quantization_config": (REFUSE, "quantized weights (bitsandbytes, GPTQ, ...): gemma.py reads float tensors"),
    "per_layer_config": (REFUSE, "transformers 5's per-layer overrides of these keys"),
    "auto_map": (REFUSE, "a model defined by custom code, which may differ from Gemma in anything"),
    "initializer_range": (IGNORE, "the init of a model trained from scratch"),
    "use_cache": (IGNORE, "generation always caches keys and values"),
    "cache_implementation": (IGNORE, "which cache class transformers' generate uses: the same numbers"),
    "chunk_size_feed_forward": (IGNORE, "the MLP run in chunks: the same numbers"),
    "text_config": (READ, "a multimodal Gemma 3: its language model, the part gemma.py loads"),
    **dict.fromkeys(("vision_config", "boi_token_index", "eoi_token_index", "image_token_index",
                     "mm_tokens_per_image"), (IGNORE, "a multimodal Gemma 3's vision side, which gemma.py skips")),
    **dict.fromkeys(_GENERATION, (IGNORE, "transformers 4's generation defaults; Gemma.generate takes arguments")),
    **dict.fromkeys(_BOOKKEEPING, (IGNORE, "bookkeeping, outputs or task heads of transformers: no numerics")),
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim")
TOKEN_IDS = ("pad_token_id", "eos_token_id", "bos_token_id")
DEFAULTS = {  # what transformers (4.57 and 5.24 alike) assumes for an optional key that config.json leaves out
    "gemma": dict(rms_norm_eps=1e-6, max_position_embeddings=8192),
    "gemma2": dict(rms_norm_eps=1e-6, max_position_embeddings=8192, query_pre_attn_scalar=256, sliding_window=4096,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3_text": dict(rms_norm_eps=1e-6, max_position_embeddings=131072, query_pre_attn_scalar=256,
                        sliding_window=4096, attn_logit_softcapping=None, final_logit_softcapping=None),
}
NOT_NULL = ("rms_norm_eps", "max_position_embeddings", "query_pre_attn_scalar")
ROPE_BASES = {"gemma": (1e4, 1e4), "gemma2": (1e4, 1e4), "gemma3_text": (1e6, 1e4)}  # defaults: (full, sliding)
ROPE_KEYS = {"default": ("rope_type", "type", "rope_theta", "partial_rotary_factor")}  # the keys each type reads
ROPE_KEYS["linear"] = ROPE_KEYS["default"] + ("factor",)  # positions / factor
GEMMA3_SHAPES = dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=256)  # Gemma3TextConfig's defaults
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")  # the same function: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))


def read_config(path):
    """config.json (model_type gemma, gemma2, gemma3_text, or gemma3's text_config), as transformers 4.x or 5 writes
    it -> GemmaConfig's fields. Every key is checked against CONFIG_KEYS; what cannot be read exactly is refused."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path} does not exist: a checkpoint folder needs the model's config.json")
    check_file(path, "the model's config.json")  # a FIFO would block, /dev/zero never end
    with open(path, "rb") as f:
        hf = loads(f.read(), path)
    if not isinstance(hf, dict):
        raise ValueError(f"{path} should hold a JSON object, found {type(hf).__name__}")
    kind = hf.get("model_type", "gemma")
    if kind not in ("gemma3", *DEFAULTS):
        raise ValueError(f"{path} describes a {str(kind)[:40]!r} model; gemma.py implements Gemma v1, 2 and 3 "
                         "(model_type 'gemma', 'gemma2', 'gemma3_text' or 'gemma3')")
    _check_keys(hf, path)
    if kind == "gemma3":  # the multimodal config: its text part, where keys equal to the defaults are left out
        text = hf.get("text_config") or {}
        if not isinstance(text, dict):
            raise ValueError(f"{path}: 'text_config' should be a JSON object, found {type(text).__name__}")
        _check_keys(text, path, "text_config.")
        hf, kind = {**GEMMA3_SHAPES, **text}, "gemma3_text"
    values = {k: _typed(hf, k, path, required=True) for k in REQUIRED}
    for k, default in DEFAULTS[kind].items():  # left out: transformers' default; null: none (a cap, a window)
        values[k] = _typed(hf, k, path, required=k in NOT_NULL) if k in hf else default
    values.update({k: v for k in TOKEN_IDS if (v := _typed(hf, k, path)) is not None})
    _check_activation(hf, kind, path)
    if values["num_attention_heads"] % values["num_key_value_heads"]:
        raise ValueError(f"{path}: num_key_value_heads {values['num_key_value_heads']} does not divide "
                         f"num_attention_heads {values['num_attention_heads']}")
    (values["rope_theta"], values["rope_scaling_factor"]), local = _rope(hf, kind, path)
    if kind == "gemma":
        return values
    values.update(sandwich_norms=True, qk_norm=kind == "gemma3_text", rope_local_scaling_factor=local[1])
    if kind == "gemma3_text":
        values["rope_local_base_freq"] = local[0]
    L, types = values["num_hidden_layers"], hf.get("layer_types")
    if types is None:  # older configs: Gemma 2 alternates from a sliding layer 0, Gemma 3 repeats a pattern
        every = 2 if kind == "gemma2" else _typed(hf, "sliding_window_pattern", path) or 6
        types = [FULL if (i + 1) % every == 0 else SLIDING for i in range(L)]
    if not isinstance(types, list) or len(types) != L or not set(types) <= {SLIDING, FULL}:
        raise ValueError(f"{path}: 'layer_types' should list {L} entries, each '{SLIDING}' or '{FULL}'")
    values["layer_types"] = tuple(types)
    if SLIDING in types and values["sliding_window"] is None:
        raise ValueError(f"{path} has sliding layers but 'sliding_window' is null")
    return values


def _check_keys(hf, path, where=""):
    """Each key of a config object against CONFIG_KEYS: an unknown key, or a value gemma.py does not implement, is
    refused in one sentence that names the key."""
    for key, value in hf.items():
        if key not in CONFIG_KEYS:
            raise ValueError(f"{path}: '{where}{key}' is not a key of transformers' Gemma configs (hfconfig."
                             "CONFIG_KEYS lists them all, as of transformers 5.24, with what gemma.py does with each), "
                             "so gemma.py cannot tell whether it changes the numerics")
        rule, why = CONFIG_KEYS[key]
        if value is not None and (rule == REFUSE or isinstance(rule, tuple) and value not in rule):
            accepted = "" if rule == REFUSE else f"; gemma.py implements only {' or '.join(map(json.dumps, rule))}"
            raise ValueError(f"{path}: '{where}{key}' is {json.dumps(value)[:60]}{accepted} ({why})")


def _check_activation(hf, kind, path):
    """Gemma was trained with the tanh GELU, which gemma.py always uses; the key that names it differs by generation."""
    key = "hidden_act" if kind == "gemma" else "hidden_activation"
    accepted = TANH_GELU + (("gelu",) if kind == "gemma" else ())
    if hf.get(key) is not None and hf[key] not in accepted:
        raise ValueError(f"{path}: '{key}' is {json.dumps(hf[key])[:40]}; gemma.py implements only the tanh GELU "
                         f"that Gemma was trained with ({', '.join(map(repr, accepted))})")


def _rope(hf, kind, path):
    """((base, linear factor) of the full-attention layers, the same of the sliding layers) from transformers 5's
    rope_parameters or transformers 4's rope_theta, rope_local_base_freq and rope_scaling. A config may give both, as
    hf_config writes it; then they must agree."""
    gemma3 = kind == "gemma3_text"
    full_base, local_base = ROPE_BASES[kind]
    full = _rope_entry(hf.get("rope_scaling"), "rope_scaling", path, _typed(hf, "rope_theta", path) or full_base)
    # transformers 4: rope_scaling scales every layer, but Gemma 3's sliding layers keep a default RoPE of their own
    local = (_typed(hf, "rope_local_base_freq", path) or local_base, 1.0) if gemma3 else full
    params = hf.get("rope_parameters")
    if params is None:
        return full, local
    if not isinstance(params, dict):
        raise ValueError(f"{path}: 'rope_parameters' should be a JSON object, found {json.dumps(params)[:40]}")
    if gemma3 and not set(params) <= {FULL, SLIDING}:
        raise ValueError(f"{path}: 'rope_parameters' of a Gemma 3 config should hold one entry per layer type "
                         f"('{FULL}', '{SLIDING}'), found {', '.join(map(repr, params))[:80]}")
    if not gemma3 and set(params) & {FULL, SLIDING}:
        raise ValueError(f"{path}: 'rope_parameters' of a Gemma v1 or 2 config should be one RoPE for all layers, "
                         "not one per layer type")
    new_full = _rope_entry(params.get(FULL) if gemma3 else params, "rope_parameters" + f".{FULL}" * gemma3, path,
                           full[0])
    new_local = _rope_entry(params.get(SLIDING), f"rope_parameters.{SLIDING}", path, local[0]) if gemma3 else new_full
    given = [("rope_theta", full[0], new_full[0]), ("rope_scaling", full[1], new_full[1])] + \
        [("rope_local_base_freq", local[0], new_local[0])] * gemma3
    for key, old, new in given:
        if hf.get(key) is not None and old != new:
            raise ValueError(f"{path} gives '{key}' and 'rope_parameters', which disagree ({old} and {new}); "
                             "gemma.py will not guess which one the checkpoint was trained with")
    return new_full, new_local


def _rope_entry(entry, name, path, base):
    """(base, linear factor) of one RoPE object; None is transformers' default RoPE with this base."""
    if entry is None:
        return base, 1.0
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: '{name}' should be a JSON object, found {json.dumps(entry)[:40]}")
    kind = entry.get("rope_type", entry.get("type", "default"))
    if not isinstance(kind, str) or kind not in ROPE_KEYS:
        raise ValueError(f"{path}: '{name}' has rope_type {json.dumps(kind)[:40]}; gemma.py implements the RoPE "
                         "types 'default' and 'linear' only")
    for key in entry:
        if key not in ROPE_KEYS[kind]:
            raise ValueError(f"{path}: '{name}.{key}' is not a key gemma.py implements for RoPE type '{kind}' "
                             f"(it reads {', '.join(ROPE_KEYS[kind])})")
    if entry.get("partial_rotary_factor", 1) not in (1, None):
        raise ValueError(f"{path}: '{name}.partial_rotary_factor' is {json.dumps(entry['partial_rotary_factor'])[:20]}"
                         "; gemma.py implements only 1 (RoPE on whole heads)")
    factor = _typed(entry, "factor", path, required=True, where=name + ".") if kind == "linear" else 1.0
    return _typed(entry, "rope_theta", path, where=name + ".") or base, factor


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _typed(hf, key, path, required=False, where=""):
    """hf[key] as the type the field needs (None if absent), or one sentence naming the key and what was expected."""
    value = hf.get(key)
    if key.endswith("token_id") and isinstance(value, list) and value:  # several eos ids: the first is the main one
        value = value[0]
    if value is None:
        if required:
            raise ValueError(f"{path} gives no '{where}{key}' (absent or null), which a Gemma config must give")
        return None
    want = int if key in REQUIRED or key in ("max_position_embeddings", "sliding_window", "sliding_window_pattern") \
        or key.endswith("token_id") else float
    if not _is_number(value) or (want is int and not isinstance(value, int)):
        kind = "an integer" if want is int else "a number"
        raise ValueError(f"{path}: '{where}{key}' is {json.dumps(value)[:40]} in JSON; expected {kind}")
    if not (value > 0 or key.endswith("token_id") and value >= 0):
        raise ValueError(f"{path}: '{where}{key}' is {value}; expected a positive number")
    return want(value)


def _rope_object(base, factor):
    return {"rope_type": "default", "rope_theta": base} if factor == 1.0 else \
        {"rope_type": "linear", "factor": factor, "rope_theta": base}


def hf_config(cfg):
    """GemmaConfig -> a config.json that transformers 4.x and 5 both read as the same generation and numbers: the RoPE
    is written in both formats, which agree (a linear factor on Gemma 3's sliding layers exists in the 5.x one only)."""
    arch = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
    kind = cfg.model_type
    keys = REQUIRED + tuple(DEFAULTS[kind]) + TOKEN_IDS
    hf = {k: getattr(cfg, k) for k in keys}
    if isinstance(hf.get("query_pre_attn_scalar"), float) and hf["query_pre_attn_scalar"].is_integer():
        hf["query_pre_attn_scalar"] = int(hf["query_pre_attn_scalar"])  # transformers 5 checks that it is an int
    hf["rope_theta"] = cfg.rope_theta
    if cfg.rope_scaling_factor != 1.0:
        hf["rope_scaling"] = {"rope_type": "linear", "factor": cfg.rope_scaling_factor}
    hf["rope_parameters"] = _rope_object(cfg.rope_theta, cfg.rope_scaling_factor)
    if kind == "gemma2" and ((cfg.rope_local_base_freq or cfg.rope_theta) != cfg.rope_theta
                             or cfg.rope_local_scaling_factor != cfg.rope_scaling_factor):
        raise ValueError("a Gemma 2 config has one RoPE for all layers: rope_local_base_freq and "
                         "rope_local_scaling_factor must equal rope_theta and rope_scaling_factor")
    if kind == "gemma3_text":
        hf["rope_local_base_freq"] = cfg.rope_local_base_freq or cfg.rope_theta
        hf["rope_parameters"] = {FULL: hf["rope_parameters"],
                                 SLIDING: _rope_object(hf["rope_local_base_freq"], cfg.rope_local_scaling_factor)}
    if kind != "gemma":
        hf["layer_types"] = list(cfg.layer_types or [FULL] * cfg.num_hidden_layers)
    return {"model_type": kind, "architectures": [arch[kind]], "tie_word_embeddings": True,
            "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", **hf}
