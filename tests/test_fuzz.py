"""Property-based fuzzing (hypothesis) of the two parsers that read untrusted bytes: the JSON / JSON-lines row reader
(formats.load_any) and the safetensors header reader (checkpoint.read_safetensors_header). The property of each:
refused in one sentence naming the file, or read exactly (the rows an independent parse of the same bytes gives; the
tensors, bit for bit, that the safetensors library itself reads). Bounded: a fixed number of examples, derandomized so
that CI is reproducible (FUZZ_EXAMPLES=5000 FUZZ_RANDOM=1 for a longer, random search), each under a deadline.
Run: python -m pytest -q tests/test_fuzz.py"""
import json
import os
import struct

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import checkpoint
import formats

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 400)), deadline=2000, database=None,
                derandomize=not os.environ.get("FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def one_sentence(e, path):
    message = str(e)
    assert "\n" not in message.strip() and str(path) in message and len(message) < 600, message


# -----------------------------------------------------------------------------
# JSON / JSON lines rows

texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["", " ", "a", "\u2028", "\ud800", "\udc00x", "\ud83d\ude00", "é", "\t\n"])
good_texts = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12).filter(str.strip)
values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10) | st.floats(allow_nan=False) | texts,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=8)
FIELDS = ["prompt", "response_chosen", "response_rejected", "correct", "wrong_a", "wrong_b", "wrong_c", "wrong_d",
          "text", "label", "id"]
rows = st.dictionaries(st.sampled_from(FIELDS), texts | values | st.integers(0, 7), min_size=1, max_size=7)


def deep(n):
    return {"text": "x", "meta": json.loads("[" * n + "]" * n)}


@st.composite
def good_row(draw, kind):
    """A row of this kind whose texts are mostly fine, with extra fields now and then (an id, nested metadata)."""
    labels = st.sampled_from([1, 2, 3, 4, 5, 6, 4.0, 0, 7, 3.5, "4", True, None])
    row = {f: draw(labels if f == "label" else st.one_of(good_texts, good_texts, good_texts, texts))
           for f in formats.FIELDS[kind]}
    row.update(draw(st.dictionaries(st.sampled_from(["id", "meta", "rating", "prompt"]), values, max_size=2)))
    return row


@st.composite
def row_files(draw):
    """Bytes of a rows file: JSON lines or a JSON list of rows of one kind (mostly well formed), perhaps damaged."""
    kind = draw(st.sampled_from(["pairs", "mcq", "scores", "text"]))
    items = draw(st.lists(good_row(kind) | rows | st.sampled_from([deep(70), deep(10)]) | values, min_size=0,
                          max_size=5) | st.lists(good_row(kind), min_size=1, max_size=5))
    ascii_only = draw(st.sampled_from([True, True, True, False]))  # False: raw surrogates make bad UTF-8
    dump = lambda x: json.dumps(x, ensure_ascii=ascii_only)  # noqa: E731
    if draw(st.booleans()):
        text = "\n".join(dump(r) for r in items) + draw(st.sampled_from(["", "\n", "\n\n  \n"]))
    else:
        text = json.dumps(items, ensure_ascii=ascii_only, indent=draw(st.sampled_from([None, 1])))
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):  # byte-level damage: replace, delete or insert
        at = draw(st.integers(0, len(data)))
        junk = draw(st.binary(max_size=4) | st.sampled_from([b"[" * 3000, b'"\\ud800"', b"\xff", b"\n", b"{"]))
        cut = draw(st.integers(0, 3))
        data = data[:at] + junk + data[at + cut:]
    return data, kind


def reference_rows(data):
    """An independent reading of the same bytes: the JSON values the file holds (None if it is not one)."""
    text = data.decode("utf-8-sig")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@FUZZ
@given(made=row_files(), auto=st.booleans())
def test_rows_are_refused_in_one_sentence_or_read_exactly(tmp_path, made, auto):
    data, kind = made
    kind = "auto" if auto and kind != "text" else kind  # a labelled file whose kind the reader judges
    path = tmp_path / "rows.jsonl"  # (one file, rewritten by each example)
    path.write_bytes(data)
    try:
        got, found = formats.load_any(str(path), kind)
    except (ValueError, OSError) as e:
        one_sentence(e, path)
        event("refused")
        return
    event("read")  # (--hypothesis-show-statistics: how often each)
    expected = reference_rows(data)
    if found == "scores":
        expected = [{**r, "label": int(r["label"])} for r in expected]
    assert got == expected
    for row in got:  # read means usable: every text encodes, and the row sequences are strings
        json.dumps(row, ensure_ascii=False).encode("utf-8")
        assert all(isinstance(p, str) and isinstance(r, str) for p, r in formats.row_sequences(row))


# -----------------------------------------------------------------------------
# safetensors headers

DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4}  # I32: valid for the library, not a Gemma weight


@st.composite
def safetensors_files(draw):
    """(bytes, whether the header names a tensor twice, whether every dtype is one checkpoint.py reads)."""
    n = draw(st.integers(0, 4))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "model.norm.weight", "é\n"]), min_size=n, max_size=n,
                          unique=draw(st.sampled_from([True, True, True, False]))))
    entries, at = [], 0
    for name in names:
        dtype = draw(st.sampled_from(["F32", "F16", "BF16", "F64"] * 3 + ["I32"]))
        shape = draw(st.lists(st.integers(0, 3), max_size=2))
        size = DTYPES[dtype] * (shape[0] * (shape[1] if len(shape) > 1 else 1) if shape else 1)
        begin = draw(st.sampled_from([at] * 8 + [max(at - 2, 0), at + 2, 0]))  # mostly tiled, sometimes not
        end = begin + size + draw(st.sampled_from([0] * 8 + [1, -1]))
        entries.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}))
        at = max(at, end)
    header = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in entries)  # raw: a name may come twice
    meta = draw(st.sampled_from(["", "", '"__metadata__": {"format": "pt"}, ', '"__metadata__": {"x": 1}, ',
                                 '"__metadata__": null, ']))
    raw = ("{" + meta + header + "}").encode() + b" " * draw(st.integers(0, 7))
    if draw(st.integers(0, 7)) == 0:  # damage the header itself
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(st.sampled_from([b"", b"[" * 300, b"}", b"\xff", b'"'])) + raw[i + 1:]
    size = at + draw(st.sampled_from([0] * 8 + [3, -1]))
    body = bytes(draw(st.integers(0, 255)) & 0x3F for _ in range(max(size, 0)))  # bytes of finite numbers mostly
    length = len(raw) + draw(st.sampled_from([0] * 8 + [1, -1, 10 ** 9]))
    data = struct.pack("<Q", max(length, 0)) + raw + body
    if draw(st.integers(0, 9)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    twice = len(set(names)) < len(names)
    ours = all(v["dtype"] in checkpoint.DTYPES for _, v in entries)
    return data, twice, ours


def library_read(path):
    """The tensors as the safetensors library reads them, {name: (dtype, shape, bytes)}, or None if it refuses."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            out = {}
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = (str(t.dtype), list(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
            return out
    except Exception:  # the library's own error type, and any other refusal
        return None


TORCH_NAMES = {"F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16", "F64": "torch.float64"}


@FUZZ
@given(made=safetensors_files())
def test_safetensors_headers_are_refused_in_one_sentence_or_read_exactly(tmp_path, made):
    data, twice, ours_dtypes = made
    path = tmp_path / "model.safetensors"  # (one file, rewritten by each example)
    path.write_bytes(data)
    reference = library_read(path)
    try:
        header, start = checkpoint.read_safetensors_header(str(path))
    except ValueError as e:
        one_sentence(e, path.name)
        # refused: the library refuses too, or the file breaks one of our stricter rules (a name twice, a dtype that
        # no Gemma weight has)
        assert reference is None or twice or not ours_dtypes, (str(e), reference)
        event("refused")
        return
    event("read")
    assert reference is not None, "accepted a file that the safetensors library refuses"
    with open(path, "rb") as f:
        got = {}
        for k, entry in header.items():
            begin, end = entry["data_offsets"]
            f.seek(start + begin)
            got[k] = (TORCH_NAMES[entry["dtype"]], entry["shape"], f.read(end - begin))
    assert got == reference


@pytest.mark.parametrize("case, says", [
    ({"a": [0, 4], "b": [0, 4]}, "overlaps the tensor before it"),
    ({"a": [0, 4], "b": [8, 12]}, r"bytes 4\.\.8 of its data belong to no tensor"),
    ({"a": [4, 8]}, r"bytes 0\.\.4 of its data belong to no tensor"),
    ({"a": [0, 4], "tail": 3}, "its tensors end at byte 4 of the data, but the file holds 7 bytes"),
])
def test_overlaps_holes_and_unused_bytes_are_refused(tmp_path, case, says):
    tail = case.pop("tail", 0)
    header = {k: {"dtype": "F32", "shape": [1], "data_offsets": v} for k, v in case.items()}
    raw = json.dumps(header).encode()
    end = max(v[1] for v in case.values()) + tail
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * end)
    with pytest.raises(ValueError, match=says):
        checkpoint.read_safetensors_header(str(tmp_path / "x.safetensors"))
    assert library_read(tmp_path / "x.safetensors") is None  # as the library's own validation does


def test_a_name_twice_deep_json_and_bad_metadata_are_refused(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    for raw, says in ((f'{{"a": {entry}, "a": {entry}}}', "names 'a' twice"),
                      ('{"__metadata__": ' + "[" * 5000 + "]" * 5000 + "}", "nests JSON .* more than 64 levels"),
                      (f'{{"__metadata__": {{"x": 1}}, "a": {entry}}}', "__metadata__ is not an object of strings")):
        path = tmp_path / "x.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw.encode() + b"\0" * 4)
        with pytest.raises(ValueError, match=says):
            checkpoint.read_safetensors_header(str(path))
