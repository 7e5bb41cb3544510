"""
The Hugging Face files of a Gemma checkpoint, for gemma.py: config.json read (every field type-checked) and written
for each generation; safetensors read by hand, one tensor at a time, every header field checked; Gemma's SentencePiece
tokenizer and the padding helper. gemma.py re-exports Tokenizer, pad and read_safetensors_header, so callers keep
importing them from there.

safetensors layout: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}}, then
the raw little-endian data. Read by hand (not mmap) so that each tensor goes straight into its parameter.
"""
import json
import math
import os
import stat
import sys

import numpy as np
import torch

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def _regular_file(path):
    """True for an existing regular file (following no FIFO, device or folder); a FIFO would block a reader."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_file(path, expected):
    """One sentence unless path is a regular file: missing, or a folder, FIFO or device (a FIFO blocks a reader,
    /dev/zero never ends), each said as it is rather than as "does not exist"."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path} does not exist (expected {expected})")
    if not _regular_file(path):
        try:
            mode = os.stat(path).st_mode
            what = next((name for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                                                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                                                  (stat.S_ISSOCK, "a socket")) if test(mode)), "a special file")
        except OSError:
            what = "a link to nothing"
        raise ValueError(f"{path} is {what}, not a regular file; expected {expected}")


# -----------------------------------------------------------------------------
# JSON with a depth limit: Python's parser recurses, so deeply nested JSON would raise RecursionError (here, or in
# any later recursive walk of what was read); no file this project reads nests anywhere near MAX_DEPTH

MAX_DEPTH = 64


def nested_deeper(obj, limit=MAX_DEPTH):
    """True if obj (parsed JSON) nests more than `limit` arrays or objects deep; iterative, so itself never recurses."""
    stack = [(obj, 1)] if isinstance(obj, (dict, list)) else []
    while stack:
        x, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((v, depth + 1) for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list)))
    return False


def loads(text, where, expected=None, **kw):
    """json.loads(text), refusing in one sentence (ValueError naming `where`, and what was expected) what is not JSON
    or nests more than MAX_DEPTH levels deep."""
    wanted = f"; expected {expected}" if expected else ""
    try:
        obj = json.loads(text, **kw)
    except RecursionError:
        obj = None  # (said below, outside the except clause, whose traceback would be chained)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where} is not valid JSON ({e}){wanted}") from None
    else:
        if not nested_deeper(obj):
            return obj
    raise ValueError(f"{where} nests JSON arrays or objects more than {MAX_DEPTH} levels deep{wanted}")


def shard_files(path):
    """The *.safetensors shards of a checkpoint folder: those the index names, or every one in the folder."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.lexists(index):
        weight_map = read_json(index, "a safetensors index (a JSON object with a 'weight_map')").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index} is not a valid safetensors index (its 'weight_map' should map names to shard "
                             "file names)")
        names = list(dict.fromkeys(weight_map.values()))
        for name in names:  # plain file names inside the folder: never a path that leaves it, nor a subfolder
            if not isinstance(name, str) or not name or name != os.path.basename(name) or name in (".", "..") \
                    or "\\" in name or "\0" in name:
                raise ValueError(f"{index} names a shard that is not a plain file name inside {path} "
                                 "(shards must sit next to the index)")
        shards = [os.path.join(path, name) for name in names]
        for shard in shards:
            if not os.path.lexists(shard):
                raise FileNotFoundError(f"{index} lists shard {os.path.basename(shard)}, which is not in {path}")
            if not _regular_file(shard):
                raise ValueError(f"{index} lists shard {os.path.basename(shard)}, which is not a regular file")
        return shards
    shards = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors file in {path} (found: {', '.join(sorted(os.listdir(path)))})")
    for shard in shards:
        if not _regular_file(shard):
            raise ValueError(f"{shard} is not a regular file")
    return shards


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


MAX_HEADER = 100_000_000  # bytes: the safetensors library's own limit on a header


def _shown(key):
    """A tensor name as messages show it: one line, at most 80 characters (a name comes from the file)."""
    return key if key.isprintable() and len(key) <= 80 else json.dumps(key)[1:-1][:80] + "..."


def read_safetensors_header(path):
    """Returns ({name: {dtype, shape, data_offsets}}, data start) after checking every entry, as the safetensors
    library does: the tensors tile the data exactly (sorted by offset, each starts where the previous ended, the last
    ends at the end of the file: no overlap, no hole, nothing after), each name once, metadata strings only."""
    name = os.path.basename(path)
    check_file(path, "a safetensors file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > size - 8:
            raise ValueError(f"{path} is not a readable safetensors file (header length {n}, file size {size})")
        if n > MAX_HEADER:
            raise ValueError(f"{path} is not a readable safetensors file (a header of {n} bytes, more than the "
                             f"{MAX_HEADER} the format allows)")
        raw = f.read(n)

    def unique(pairs):  # JSON keeps the last of two equal names silently; a tensor named twice is refused
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ValueError(f"{path} is not a readable safetensors file (its header names '{_shown(k)}' twice)")
            seen[k] = v
        return seen
    header = loads(raw, f"{path} is not a readable safetensors file: its header", object_pairs_hook=unique) \
        if raw.lstrip()[:1] == b"{" else None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a readable safetensors file (its header is not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ValueError(f"{path} is not a readable safetensors file (its __metadata__ is not an object of strings)")
    data_start, data_size = 8 + n, size - 8 - n
    for key, entry in header.items():
        if not isinstance(entry, dict):
            raise ValueError(f"'{_shown(key)}' in {name} has a header entry that is not a JSON object")
        if not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
            raise ValueError(f"'{_shown(key)}' in {name} has dtype {json.dumps(entry.get('dtype'))[:20]}; "
                             f"expected one of {', '.join(DTYPES)}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise ValueError(f"'{_shown(key)}' in {name} has shape {json.dumps(shape)[:40]}; "
                             "expected a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets):
            raise ValueError(f"'{_shown(key)}' in {name} has data_offsets {json.dumps(offsets)[:40]}; "
                             "expected two non-negative integers")
        begin, end = offsets
        if end - begin != math.prod(shape) * DTYPES[entry["dtype"]].itemsize:
            raise ValueError(f"'{_shown(key)}' in {name}: data_offsets {begin}..{end} do not match shape "
                             f"{json.dumps(shape)[:40]}")
        if end > data_size:
            raise ValueError(f"{path} is truncated: '{_shown(key)}' ends at byte {end} of the data, "
                             f"but the file holds only {data_size} bytes of data (re-download it)")
    at = 0  # the tensors in the order of their data: each begins where the one before ended
    for key, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        begin, end = entry["data_offsets"]
        if begin > at:
            raise ValueError(f"{path} is not a valid safetensors file: bytes {at}..{begin} of its data belong to no "
                             f"tensor (a hole before '{_shown(key)}'); the format's tensors tile the data exactly")
        if begin < at:
            raise ValueError(f"{path} is not a valid safetensors file: '{_shown(key)}' (bytes {begin}..{end} of the "
                             f"data) overlaps the tensor before it, which ends at byte {at}; the format's tensors "
                             "tile the data exactly")
        at = end
    if at != data_size:
        raise ValueError(f"{path} is not a valid safetensors file: its tensors end at byte {at} of the data, but the "
                         f"file holds {data_size} bytes after the header (the format leaves no bytes unused)")
    return header, data_start


# NaN and Inf are the floats whose exponent bits are all ones: (unsigned view, exponent mask)
EXPONENT = {torch.bfloat16: (np.uint16, 0x7F80), torch.float16: (np.uint16, 0x7C00),
            torch.float32: (np.uint32, 0x7F800000), torch.float64: (np.uint64, 0x7FF0000000000000)}


def _finite(buf):
    """No NaN or Inf in buf, checked on its bits with numpy a chunk at a time: no copy of the tensor, and no thread
    pool or kernel that torch would start for its first isfinite (tens of MB of memory while loading)."""
    kind, mask = EXPONENT[buf.dtype]
    bits = buf.view(-1).view(torch.uint8).numpy().view(kind)
    return not any(((bits[i:i + (1 << 20)] & kind(mask)) == mask).any() for i in range(0, len(bits), 1 << 20))


def read_tensor(f, path, key, entry, data_start, dtype, device):
    """One tensor of an open shard, straight into dtype on device; refuses NaN or Inf (a corrupt or diverged file)."""
    file_dtype, shape = DTYPES[entry["dtype"]], entry["shape"]
    direct = file_dtype == dtype and torch.device(device).type == "cpu"
    buf = torch.empty(shape, dtype=file_dtype)  # the parameter itself when no conversion is needed
    f.seek(data_start + entry["data_offsets"][0])
    if f.readinto(buf.view(-1).view(torch.uint8).numpy()) != buf.numel() * buf.itemsize:
        raise ValueError(f"{path} ended while reading '{key}' (truncated file?)")
    if not _finite(buf):
        raise ValueError(f"'{key}' in {os.path.basename(path)} holds NaN or Inf values: the checkpoint is corrupt")
    return buf if direct else buf.to(device=device, dtype=dtype)


# -----------------------------------------------------------------------------
# config.json: Hugging Face's names are GemmaConfig's field names. Two generations of the format are read: transformers
# 4.x writes rope_theta, rope_local_base_freq and rope_scaling; transformers 5 writes rope_parameters instead (one dict,
# or in Gemma 3 one per layer type). What each key means and whether gemma.py implements it is the table below.

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


def read_json(path, expected="a JSON object"):
    """The JSON object in path, or one sentence saying what is wrong with the file."""
    check_file(path, expected)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); expected {expected}") from None
    obj = loads(text, path, expected)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds {type(obj).__name__}, expected {expected}")
    return obj


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
            raise ValueError(f"{path}: '{where}{key}' is not a key of transformers' Gemma configs (checkpoint."
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


# -----------------------------------------------------------------------------
# tokenizer


class Tokenizer:
    """SentencePiece tokenizer.model of Gemma: <pad>=0, <eos>=1, <bos>=2; BOS added by default, EOS never. The chat
    markers <start_of_turn> and <end_of_turn> are matched in text as single pieces (they are user-defined pieces);
    stop_ids: the ids that end a response, <eos> and, where the vocabulary has it, <end_of_turn>."""

    def __init__(self, path):
        import sentencepiece as spm  # imported here so that the model code runs without it
        check_file(path, "a SentencePiece tokenizer.model")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=path)
        except Exception as e:  # sentencepiece raises OSError or RuntimeError, depending on the version
            raise ValueError(f"{path} is not a SentencePiece model ({e})") from None
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        self.vocab_size = self.sp.vocab_size()
        turns = {p: self.sp.piece_to_id(p) for p in ("<start_of_turn>", "<end_of_turn>")}
        turns = {p: i for p, i in turns.items() if self.sp.id_to_piece(i) == p}  # unknown pieces map to <unk>
        self.stop_ids = (self.eos_id,) + ((turns["<end_of_turn>"],) if "<end_of_turn>" in turns else ())
        if any(self.sp.is_control(i) for i in turns.values()):  # SentencePiece never matches a control piece in text
            print(f"warning: {path} types the chat markers {' and '.join(turns)} as control pieces, so text that "
                  "holds them is split into characters; convert the model again (convert.py makes them user-defined)",
                  file=sys.stderr)

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
