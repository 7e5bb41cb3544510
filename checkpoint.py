"""
The files of a Gemma checkpoint, for gemma.py: safetensors read by hand, one tensor at a time, every header field
checked; files checked as regular files and JSON read with a depth limit (for every file the project reads); Gemma's
SentencePiece tokenizer, the padding helper, and training a small Gemma-style tokenizer (for the tiny models).
config.json is hfconfig.py. gemma.py re-exports Tokenizer and pad, so callers keep importing them from there.

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


def train_tokenizer(texts, path, vocab_size):
    """A Gemma-style SentencePiece model (BPE, byte fallback, <pad>=0 <eos>=1 <bos>=2 <unk>=3) trained on texts and
    written to path (ending in .model), for the tiny random models of the demo, the tests and --model tiny."""
    import sentencepiece as spm
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=path[:-len(".model")], model_type="bpe", vocab_size=vocab_size,
            hard_vocab_limit=False, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            add_dummy_prefix=False, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, pad_id=0,
            eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", num_threads=1,
            minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars. 300 vs 311."
        raise ValueError(f"--tiny-vocab {vocab_size}: SentencePiece cannot train a tokenizer of that size on the "
                         f"task's text ({str(e).split('] ')[-1].splitlines()[0][:160]})") from None
