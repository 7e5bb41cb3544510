"""gemma.py against transformers' GemmaForCausalLM on random checkpoints. Run: python -m pytest -q tests/test_gemma.py"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import packing
from gemma import Gemma, GemmaConfig, Tokenizer, pad
from hf_reference import CONFIGS, hf_positions, hf_rope, random_hf_gemma

LOGIT_TOL = 1e-4


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    """(shape name, transformers model, folder it was saved to with save_pretrained)."""
    hf = random_hf_gemma(request.param)
    path = str(tmp_path_factory.mktemp(request.param))
    hf.save_pretrained(path, safe_serialization=True)
    return request.param, hf, path


def padded_batch(vocab_size, lengths, side, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [[2] + torch.randint(3, vocab_size, (n - 1,), generator=g).tolist() for n in lengths]
    return rows, *pad(rows, 0, side)


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers(checkpoint, side):
    name, hf, path = checkpoint
    ours = Gemma.from_pretrained(path)
    rows, ids, mask = padded_batch(hf.config.vocab_size, [17, 9, 1, 12], side)
    real = mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)
        hidden = ours(ids, mask)
        logits = ours.logits(hidden)
    assert logits.abs()[real].mean() > 0.3, "activations should be O(1), or the comparison proves little"
    diff = (logits - ref.logits)[real].abs().max().item()
    print(f"{name} {side} padding: max |logit diff| = {diff:.2e}")
    assert diff <= LOGIT_TOL
    assert (hidden - ref.hidden_states[-1])[real].abs().max() <= LOGIT_TOL  # the final-norm embedding DIAL uses
    assert torch.isfinite(hidden).all(), "pad positions must stay finite"
    for i, r in enumerate(rows):  # each padded row equals the same tokens run alone
        with torch.no_grad():
            alone = ours.logits(ours(torch.tensor([r])))[0]
        assert (logits[i][real[i]] - alone).abs().max() <= 1e-5


def test_bf16_embedding_scale_is_rounded_like_the_reference(tmp_path):
    # sqrt(3072) = 55.4256 is 55.5 in bf16; the checkpoint was trained with the rounded value
    hf = random_hf_gemma("mha", hidden_size=3072, intermediate_size=8, num_hidden_layers=1).to(torch.bfloat16)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = Gemma.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    seen = []
    ours.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    ids = torch.arange(2, 40)[None]
    with torch.no_grad():
        ours(ids)
        ref = hf(input_ids=ids, output_hidden_states=True).hidden_states[0]  # the scaled embedding
    assert torch.equal(seen[0], ref)
    assert not torch.equal(seen[0], ours.embed_tokens(ids) * 3072 ** 0.5), "the unrounded scale should differ"


def test_packed_stream_equals_separate_runs(checkpoint):
    # a stream of two blocks: block 1 = a prompt followed by two responses that each see the prompt and themselves,
    # never each other, with each response's positions continuing from the prompt (the packing that lets a pair
    # share its prompt); block 2 = an ordinary sequence. Nothing attends across blocks, and nothing is padded.
    _, hf, path = checkpoint
    ours = Gemma.from_pretrained(path)
    prompt, first, second, other = [2, 7, 8, 9, 10, 11], [20, 21, 22], [30, 31, 32, 33, 34], [2, 40, 41, 42]
    ids = torch.tensor(prompt + first + second + other)
    example, part = [0] * 14 + [1] * 4, [0] * 6 + [1] * 3 + [2] * 5 + [0] * 4  # part: 0 prompt, 1 and 2 responses
    pos = list(range(9)) + list(range(6, 11)) + list(range(4))
    for multiple in (64, 1):  # both examples in one row of 64 slots; each in its own row of 14 slots
        rows = packing.attention_rows(example, part, pos, multiple)
        assert rows["example"].shape == ((1, 64) if multiple == 64 else (2, 14))
        with torch.no_grad():
            packed = ours(ids, rows, torch.tensor(pos))  # (N, D)
            a, b, c = (ours(torch.tensor([x]))[0] for x in (prompt + first, prompt + second, other))
            kept = ours(ids, rows, torch.tensor(pos), keep=torch.tensor([8, 13, 17, 8]))  # the last layer at 4 tokens
        assert packed.shape == (18, ours.config.hidden_size)
        assert (packed[:9] - a).abs().max() <= 1e-5
        assert (packed[9:14] - b[6:]).abs().max() <= 1e-5
        assert (packed[14:] - c).abs().max() <= 1e-5
        assert (kept - packed[[8, 13, 17, 8]]).abs().max() <= 1e-5


def test_keep_in_a_padded_batch(checkpoint):
    _, hf, path = checkpoint
    ours = Gemma.from_pretrained(path)
    _, ids, mask = padded_batch(hf.config.vocab_size, [9, 4, 12], "left")
    keep = torch.tensor([11, 23, 35, 30])  # the last token of each row (flat index into B * T), and one more
    with torch.no_grad():
        assert (ours(ids, mask, keep=keep) - ours(ids, mask).flatten(0, 1)[keep]).abs().max() <= 1e-5


def test_gradients_match_transformers(checkpoint):
    name, hf, path = checkpoint
    ours = Gemma.from_pretrained(path)
    _, ids, mask = padded_batch(hf.config.vocab_size, [11, 6, 14], "right", seed=1)
    probe = torch.randn(*ids.shape, hf.config.vocab_size) * mask[..., None]  # a loss over real positions only
    (ours.logits(ours(ids, mask)) * probe).sum().backward()
    (hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits * probe).sum().backward()
    theirs = dict(hf.named_parameters())
    for key, p in ours.named_parameters():
        ref = theirs["model." + key].grad
        assert (p.grad - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item()), key


def test_config_from_json_matches_transformers(checkpoint):
    _, hf, path = checkpoint
    cfg = GemmaConfig.from_json(os.path.join(path, "config.json"))
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "rms_norm_eps"):
        assert getattr(cfg, field) == getattr(hf.config, field), field
    assert (cfg.rope_theta, cfg.rope_scaling_factor) == hf_rope(hf.config)


def test_sharded_checkpoint_loads_the_same_tensors(checkpoint, tmp_path):
    _, hf, path = checkpoint
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
    single, sharded = Gemma.from_pretrained(path).state_dict(), Gemma.from_pretrained(str(tmp_path)).state_dict()
    assert single.keys() == sharded.keys()
    assert all(torch.equal(single[k], sharded[k]) for k in single)


def test_save_pretrained_loads_in_transformers(tmp_path):
    import transformers
    ours = Gemma(GemmaConfig.tiny())
    ours.save_pretrained(tmp_path)
    theirs = transformers.GemmaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = torch.randint(3, 4096, (2, 20))
    with torch.no_grad():
        assert (ours.logits(ours(ids)) - theirs(input_ids=ids).logits).abs().max() <= LOGIT_TOL
    again = Gemma.from_pretrained(str(tmp_path)).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in ours.state_dict().items())


def test_bf16_checkpoint_loads_exactly(tmp_path):
    hf = random_hf_gemma("gqa").to(torch.bfloat16)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    reference = {k[len("model."):]: v for k, v in hf.state_dict().items() if k.startswith("model.")}
    for dtype in (torch.bfloat16, torch.float32):  # as stored, and upcast (exact) on the way in
        model = Gemma.from_pretrained(str(tmp_path), dtype=dtype)
        for k, v in model.state_dict().items():
            assert v.dtype == dtype and torch.equal(v, reference[k].to(dtype)), k


def test_preset_parameter_counts():
    import transformers
    for preset, expected in ((GemmaConfig.gemma_2b, 2_506_172_416), (GemmaConfig.gemma_7b, 8_537_680_896)):
        with torch.device("meta"):
            model = Gemma(preset())
            # transformers' defaults are gemma-7b's; build the reference from our preset's numbers
            ref = transformers.GemmaModel(transformers.GemmaConfig(**vars(preset())))
        assert sum(p.numel() for p in model.parameters()) == expected
        assert sum(p.numel() for p in ref.parameters()) == expected


# -----------------------------------------------------------------------------
# bad checkpoints: each refused with a message that names the problem


@pytest.fixture
def small_checkpoint(tmp_path):
    random_hf_gemma("gqa", num_hidden_layers=2).save_pretrained(tmp_path / "ok", safe_serialization=True)
    return tmp_path / "ok"


def rewrite(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_refuses_missing_config(small_checkpoint):
    os.remove(small_checkpoint / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder"):
        Gemma.from_pretrained(str(tmp_path / "nowhere"))


def test_refuses_other_architectures(small_checkpoint):
    cfg = json.loads((small_checkpoint / "config.json").read_text())
    (small_checkpoint / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' model"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_missing_key(small_checkpoint):
    rewrite(small_checkpoint / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*'model\.layers\.1\.mlp\.up_proj\.weight'"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_unexpected_key(small_checkpoint):
    rewrite(small_checkpoint / "model.safetensors",
            lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": torch.zeros(24)}))
    with pytest.raises(ValueError, match=r"does not use.*'model\.layers\.0\.self_attn\.q_norm\.weight'"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_misshaped_key(small_checkpoint):
    rewrite(small_checkpoint / "model.safetensors", lambda t: t.update({"model.norm.weight": torch.zeros(65)}))
    with pytest.raises(ValueError, match=r"'model\.norm\.weight'.*shape \(65,\).*implies \(64,\)"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_truncated_shard(small_checkpoint):
    path = small_checkpoint / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors is truncated"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_unreadable_shard(small_checkpoint):
    (small_checkpoint / "model.safetensors").write_bytes(b"<html>404 Not Found</html>" * 10)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_index_naming_a_missing_shard(small_checkpoint, tmp_path):
    hf_dir = tmp_path / "sharded"
    random_hf_gemma("gqa", num_hidden_layers=2).save_pretrained(hf_dir, safe_serialization=True, max_shard_size="50KB")
    shard = json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"]
    os.remove(hf_dir / shard)
    with pytest.raises(FileNotFoundError, match=f"lists shard {shard}, which is not in"):
        Gemma.from_pretrained(str(hf_dir))


def test_refuses_a_key_stored_twice(small_checkpoint):
    save_file({"model.norm.weight": torch.zeros(64)}, small_checkpoint / "extra.safetensors")
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' is stored twice"):
        Gemma.from_pretrained(str(small_checkpoint))


def test_refuses_folder_without_weights(small_checkpoint):
    os.remove(small_checkpoint / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors file in .*config\.json"):
        Gemma.from_pretrained(str(small_checkpoint))


# -----------------------------------------------------------------------------
# loading memory, measured in a fresh process


def test_loading_a_bf16_checkpoint_needs_no_second_copy(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, os.path.join(here, "load_memory.py"), "--layers", "6", "--json"],
                         capture_output=True, text=True, check=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file_bytes"] > 50e6
    assert result["peak_rss_increase_bytes"] <= 1.2 * result["file_bytes"], result


# -----------------------------------------------------------------------------
# tokenizer: the same ids as transformers' Gemma tokenizers on a Gemma-style SentencePiece model

TEXTS = [
    "Hello world! Is it legal to break my lease early?",
    "def f(x):\n\treturn x ** 2  # square\n\n\n    if   x:  pass",
    "법률 상담이 필요합니다. 집주인이 보증금을 돌려주지 않아요.",
    "สวัสดีครับ ผมมีคำถามเกี่ยวกับกฎหมาย",
    "为什么天空是蓝色的？请像我五岁一样解释。",
    "emoji 🙂🚀👍🏽 and ZWJ 👩‍👩‍👧 sequences",
    "numbers 1234567 and 3.14159, tabs\tand  double  spaces   end  ",
    "unseen characters ☃ ∮ ᚠ 𓂀 fall back to bytes",
    "",
    " leading space and trailing newline\n",
]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    import sentencepiece as spm
    corpus = [t for t in TEXTS if t] * 20 + [f"line {i}: the quick brown fox jumps over {i % 7} lazy dogs" for i in range(300)]
    prefix = str(tmp_path_factory.mktemp("tok") / "tokenizer")
    spm.SentencePieceTrainer.train(  # Gemma's settings: byte fallback, split digits, no normalisation, no dummy prefix
        sentence_iterator=iter(corpus), model_prefix=prefix, model_type="bpe", vocab_size=400, hard_vocab_limit=False,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, character_coverage=0.9995,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", minloglevel=2)
    return prefix + ".model"


def hf_tokenizer(sp_model, **kwargs):
    """transformers 5's GemmaTokenizer (the `tokenizers` library's BPE, in Rust) built from a tokenizer.model: an
    independent implementation of the same model. transformers 5 has no sentencepiece-backed GemmaTokenizer any more,
    reads the .model only through from_pretrained, and adds <bos> or omits <mask> (not in our vocabulary) only when
    asked; 4.x's GemmaTokenizer(vocab_file=...) did all three by default."""
    import transformers
    return transformers.GemmaTokenizer.from_pretrained(os.path.dirname(sp_model), add_bos_token=True, mask_token=None,
                                                       **kwargs)


def test_tokenizer_matches_transformers(sp_model):
    ours, ref = Tokenizer(sp_model), hf_tokenizer(sp_model)
    assert (ours.pad_id, ours.eos_id, ours.bos_id) == (0, 1, 2)
    assert ours.vocab_size == len(ref) and ref.bos_token_id == ours.bos_id
    for text in TEXTS:
        assert ours.encode(text) == ref(text)["input_ids"], text
        assert ours.encode(text, bos=False) == ref(text, add_special_tokens=False)["input_ids"]
    for text in TEXTS:
        assert ours.decode(ours.encode(text)) == text


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("truncation_side", ["right", "left"])
def test_tokenizer_batch_matches_transformers(sp_model, padding_side, truncation_side):
    ours = Tokenizer(sp_model)
    ref = hf_tokenizer(sp_model, padding_side=padding_side, truncation_side=truncation_side)
    ids, mask = ours.batch(TEXTS, max_len=12, padding_side=padding_side, truncation_side=truncation_side)
    expected = ref(TEXTS, max_length=12, truncation=True, padding=True, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])


@pytest.mark.parametrize("kind", ["user_defined_symbols", "control_symbols"])
def test_tokenizer_chat_markers_and_stop_ids(tmp_path, capsys, kind):
    # user-defined markers (Google's tokenizer.model) are single pieces in text and <end_of_turn> stops generation;
    # control ones (an older conversion of a GGUF) are never matched in text, which the tokenizer says when loaded
    import sentencepiece as spm
    marks = ["<start_of_turn>", "<end_of_turn>"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS[:2] * 20), model_prefix=str(tmp_path / "m"), model_type="bpe", vocab_size=300,
        hard_vocab_limit=False, byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", minloglevel=2, **{kind: marks})
    tok = Tokenizer(str(tmp_path / "m.model"))
    turn = [tok.sp.piece_to_id(p) for p in marks]
    assert tok.stop_ids == (1, turn[1])
    chat = "<start_of_turn>user\nHi<end_of_turn>\n"
    warned = "control pieces" in capsys.readouterr().err
    assert (set(turn) <= set(tok.encode(chat))) == (kind == "user_defined_symbols") == (not warned)
    assert tok.decode(tok.encode(chat)) == chat


def test_tokenizer_refuses_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model does not exist"):
        Tokenizer(str(tmp_path / "tokenizer.model"))
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model is not a SentencePiece model"):
        Tokenizer(str(tmp_path / "bad.model"))


# -----------------------------------------------------------------------------
# hostile or broken files: one sentence each, never a traceback from deep inside, never the file's bytes echoed


@pytest.fixture
def sharded_checkpoint(tmp_path):
    random_hf_gemma("gqa", num_hidden_layers=2).save_pretrained(tmp_path / "sh", safe_serialization=True,
                                                                max_shard_size="50KB")
    return tmp_path / "sh"


def point_index_at(folder, name):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = name
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ""])
def test_refuses_index_shard_names_outside_the_folder(sharded_checkpoint, name):
    point_index_at(sharded_checkpoint, name)
    with pytest.raises(ValueError, match="names a shard that is not a plain file name inside") as e:
        Gemma.from_pretrained(str(sharded_checkpoint))
    assert "root:" not in str(e.value)


def test_refuses_index_shard_that_is_a_fifo(sharded_checkpoint):
    os.mkfifo(sharded_checkpoint / "pipe.safetensors")  # opening it for reading would block forever
    point_index_at(sharded_checkpoint, "pipe.safetensors")
    with pytest.raises(ValueError, match="lists shard pipe.safetensors, which is not a regular file"):
        Gemma.from_pretrained(str(sharded_checkpoint))


def test_refuses_a_fifo_among_the_shards(small_checkpoint):
    os.mkfifo(small_checkpoint / "pipe.safetensors")
    with pytest.raises(ValueError, match="pipe.safetensors is not a regular file"):
        Gemma.from_pretrained(str(small_checkpoint))


@pytest.mark.parametrize("key, value, message", [
    ("hidden_size", "abc", r"'hidden_size' is \"abc\" in JSON; expected an integer"),
    ("hidden_size", [64], r"'hidden_size' is .*; expected an integer"),
    ("hidden_size", True, r"'hidden_size' is true in JSON; expected an integer"),
    ("hidden_size", 64.5, r"'hidden_size' is 64.5 in JSON; expected an integer"),
    ("num_hidden_layers", 0, r"'num_hidden_layers' is 0; expected a positive number"),
    ("rms_norm_eps", {"a": 1}, r"'rms_norm_eps' is .*; expected a number"),
    ("rope_theta", "1e4", r"'rope_theta' is \"1e4\" in JSON; expected a number"),
    ("num_key_value_heads", 3, r"num_key_value_heads 3 does not divide num_attention_heads 4"),
])
def test_refuses_config_fields_of_the_wrong_type(small_checkpoint, key, value, message):
    cfg = json.loads((small_checkpoint / "config.json").read_text())
    (small_checkpoint / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=message):
        GemmaConfig.from_json(small_checkpoint / "config.json")


def write_raw_safetensors(path, header, data=b"\0" * 64):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


@pytest.mark.parametrize("entry, message", [
    (["F32", [2], [0, 8]], "not a JSON object"),
    ({"dtype": "F32", "shape": "ab", "data_offsets": [0, 8]}, "shape \"ab\"; expected a list of non-negative integers"),
    ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, "expected a list of non-negative integers"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, "8"]}, "expected two non-negative integers"),
    ({"dtype": "F32", "shape": [2], "data_offsets": 8}, "expected two non-negative integers"),
    ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, "expected one of"),
])
def test_refuses_safetensors_header_entries_of_the_wrong_type(small_checkpoint, entry, message):
    write_raw_safetensors(small_checkpoint / "model.safetensors", {"model.norm.weight": entry})
    with pytest.raises(ValueError, match=r"'model\.norm\.weight' in model\.safetensors.*" + message):
        Gemma.from_pretrained(str(small_checkpoint))
    write_raw_safetensors(small_checkpoint / "model.safetensors", [1, 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Gemma.from_pretrained(str(small_checkpoint))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_refuses_non_finite_weights(small_checkpoint, bad, dtype):
    def poison(t):
        t["model.layers.1.mlp.up_proj.weight"] = t["model.layers.1.mlp.up_proj.weight"].to(dtype)
        t["model.layers.1.mlp.up_proj.weight"][3, 5] = bad
    rewrite(small_checkpoint / "model.safetensors", poison)
    with pytest.raises(ValueError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' in model\.safetensors holds NaN"):
        Gemma.from_pretrained(str(small_checkpoint))
