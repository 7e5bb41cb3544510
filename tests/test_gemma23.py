"""gemma.py's Gemma 2 and Gemma 3 against transformers' Gemma2ForCausalLM / Gemma3ForCausalLM on random checkpoints,
and generation (all three generations) against transformers' generate. Run: python -m pytest -q -s tests/test_gemma23.py
(-s prints the measured differences)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import packing
from gemma import Gemma, GemmaConfig, pad
from hf_reference import hf_positions, random_hf_gemma

LOGIT_TOL = 1e-4
WINDOW = 5  # shorter than the test sequences, so that the window bites
ARCH = {  # small caps, a query scalar != head_dim, RoPE bases != the defaults and linear scaling: all bite
    "gemma2": dict(generation="gemma2", num_hidden_layers=4, sliding_window=WINDOW, query_pre_attn_scalar=20,
                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
    "gemma3": dict(generation="gemma3", num_hidden_layers=4, sliding_window=WINDOW, query_pre_attn_scalar=20,
                   rope_theta=2000.0, rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 2.0},
                   layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]),
}


@pytest.fixture(scope="module", params=list(ARCH))
def checkpoint(request, tmp_path_factory):
    """(architecture name, transformers model, folder it was saved to with save_pretrained)."""
    hf = random_hf_gemma("gqa", **ARCH[request.param])
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
    assert ours.config.model_type == hf.config.model_type
    rows, ids, mask = padded_batch(hf.config.vocab_size, [17, 9, 1, 12], side)  # longer than the window
    real = mask.bool()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)
        hidden = ours(ids, mask)
        logits = ours.logits(hidden)
    assert logits.abs()[real].mean() > 0.3, "activations should be O(1), or the comparison proves little"
    diff = (logits - ref.logits)[real].abs().max().item()
    print(f"{name} {side} padding: max |logit diff| = {diff:.2e}")
    assert diff <= LOGIT_TOL
    assert (hidden - ref.hidden_states[-1])[real].abs().max() <= LOGIT_TOL
    assert torch.isfinite(hidden).all(), "pad positions must stay finite"
    for i, r in enumerate(rows):  # each padded row equals the same tokens run alone (no mask: the fast path)
        with torch.no_grad():
            alone = ours.logits(ours(torch.tensor([r])))[0]
        assert (logits[i][real[i]] - alone).abs().max() <= 1e-5


def test_the_window_and_caps_change_the_result(checkpoint):
    # the test above proves little unless each Gemma 2/3 feature changes the logits at the lengths used
    name, _, path = checkpoint
    ours = Gemma.from_pretrained(path)
    ids = torch.randint(3, 512, (1, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = ours.logits(ours(ids))
        for field, value in (("sliding_window", 10**6), ("attn_logit_softcapping", None),
                             ("final_logit_softcapping", None), ("rope_local_base_freq", None)):
            if getattr(ours.config, field) is None:
                continue
            old = getattr(ours.config, field)
            setattr(ours.config, field, value)
            for layer in ours.layers:
                layer.self_attn.softcap = ours.config.attn_logit_softcapping
            changed = (ours.logits(ours(ids)) - base).abs().max().item()
            setattr(ours.config, field, old)
            for layer in ours.layers:
                layer.self_attn.softcap = ours.config.attn_logit_softcapping
            assert changed > 1e-3, (name, field)


def test_packed_stream_equals_separate_runs(checkpoint):
    # block 1: a prompt longer than the window, then two responses that each see the prompt, never each other, with
    # positions continuing from the prompt; block 2: an ordinary sequence. A window counts positions in a sequence.
    _, hf, path = checkpoint
    ours = Gemma.from_pretrained(path)
    prompt, first, second, other = [2, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36], \
        [2, 40, 41, 42, 43, 44, 45]
    n = len(prompt) + len(first) + len(second)
    ids = torch.tensor(prompt + first + second + other)
    example = [0] * n + [1] * len(other)
    part = [0] * len(prompt) + [1] * len(first) + [2] * len(second) + [0] * len(other)  # 0 prompt, k + 1 response k
    pos = list(range(len(prompt) + len(first))) + list(range(len(prompt), len(prompt) + len(second))) \
        + list(range(len(other)))
    k = len(prompt) + len(first)
    with torch.no_grad():
        a, b, c = (ours(torch.tensor([x]))[0] for x in (prompt + first, prompt + second, other))
        ref = hf(input_ids=torch.tensor([prompt + second]), output_hidden_states=True).hidden_states[-1][0]
    for multiple in (64, 1):  # both examples in one row of slots; each in its own row
        with torch.no_grad():
            packed = ours(ids, packing.attention_rows(example, part, pos, multiple), torch.tensor(pos))  # (N, D)
        assert (packed[:k] - a).abs().max() <= 1e-5
        assert (packed[k:n] - b[len(prompt):]).abs().max() <= 1e-5
        assert (packed[n:] - c).abs().max() <= 1e-5
        assert (packed[k:n] - ref[len(prompt):]).abs().max() <= LOGIT_TOL  # the second response as transformers has it


def test_save_pretrained_loads_in_transformers(checkpoint, tmp_path):
    import transformers
    name, hf, path = checkpoint
    ours = Gemma.from_pretrained(path)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == hf.config.model_type
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                               attn_implementation="eager").eval()
    assert type(theirs) is type(hf)
    ids = torch.randint(3, 512, (2, 20))
    with torch.no_grad():
        assert (ours.logits(ours(ids)) - theirs(input_ids=ids).logits).abs().max() <= LOGIT_TOL
    assert GemmaConfig.from_json(tmp_path / "config.json") == ours.config


def test_presets_have_the_official_parameter_counts():
    import transformers
    official = {"gemma_2b": (2_506_172_416, "GemmaModel"), "gemma_7b": (8_537_680_896, "GemmaModel"),
                "gemma2_2b": (2_614_341_888, "Gemma2Model"), "gemma3_270m": (268_098_176, "Gemma3TextModel")}
    config_class = {"GemmaModel": "GemmaConfig", "Gemma2Model": "Gemma2Config", "Gemma3TextModel": "Gemma3TextConfig"}
    for preset, (expected, hf_class) in official.items():
        cfg = getattr(GemmaConfig, preset)()
        with torch.device("meta"):
            model = Gemma(cfg)
            ref = getattr(transformers, hf_class)(getattr(transformers, config_class[hf_class])(**cfg.to_hf()))
        assert sum(p.numel() for p in model.parameters()) == expected, preset
        assert sum(p.numel() for p in ref.parameters()) == expected, preset
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in ref.state_dict().items()}, preset  # the same names, the same shapes


def test_gemma3_q_and_k_norms_scale_by_one_plus_w():
    import transformers
    norm = transformers.models.gemma3.modeling_gemma3.Gemma3RMSNorm(8)
    with torch.no_grad():
        norm.weight.fill_(0.5)
    x = torch.randn(3, 8)
    assert torch.allclose(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * 1.5, atol=1e-6)


# -----------------------------------------------------------------------------
# a multimodal Gemma 3's folder: config.json with text_config, weights under language_model.model. (older
# transformers) or model.language_model. (newer), and a vision tower that is not ours


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])
def test_loads_the_text_part_of_a_multimodal_gemma3(checkpoint, tmp_path, prefix):
    name, hf, path = checkpoint
    if name != "gemma3":
        pytest.skip("Gemma 3 only")
    tensors = {prefix + k[len("model."):]: v for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    tensors["vision_tower.vision_model.post_layernorm.weight"] = torch.ones(8)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    text = json.loads(open(os.path.join(path, "config.json")).read())
    text = {k: v for k, v in text.items() if k not in ("pad_token_id", "bos_token_id")}  # defaults: left out
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text,
                                                      "vision_config": {"hidden_size": 8}}))
    ours, ref = Gemma.from_pretrained(str(tmp_path)), Gemma.from_pretrained(path)
    assert ours.config == ref.config
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.state_dict().items())


# -----------------------------------------------------------------------------
# generation


@pytest.fixture(scope="module", params=["gemma", "gemma2", "gemma3"])
def generator_pair(request, tmp_path_factory):
    kwargs = ARCH.get(request.param, dict(generation="gemma"))
    hf = random_hf_gemma("gqa", **kwargs)
    path = str(tmp_path_factory.mktemp("gen" + request.param))
    hf.save_pretrained(path, safe_serialization=True)
    return request.param, hf, Gemma.from_pretrained(path)


def test_greedy_generation_equals_transformers(generator_pair):
    name, hf, ours = generator_pair
    _, ids, mask = padded_batch(hf.config.vocab_size, [7, 3, 5], "left", seed=2)
    with torch.no_grad():
        ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)
    got = ours.generate(ids, mask, max_new_tokens=10)
    print(f"{name}: greedy tokens equal to transformers' generate: {torch.equal(got, ref)} ({got.shape})")
    assert got.shape == (3, 7 + 10) and torch.equal(got, ref)


def test_cached_logits_equal_uncached(generator_pair):
    # prompt, then chunks of 1 and 3 tokens through the cache: the logits equal one pass over the whole left-padded rows
    name, _, ours = generator_pair
    _, ids, mask = padded_batch(512, [12, 6, 9], "left", seed=3)
    with torch.no_grad():
        full = ours.logits(ours(ids, mask))
        cache, parts = [{} for _ in ours.layers], []
        for a, b in ((0, 8), (8, 9), (9, 12)):
            parts.append(ours.logits(ours(ids[:, a:b], mask[:, :b], cache=cache)))
    diff = (torch.cat(parts, dim=1) - full)[mask.bool()].abs().max().item()
    print(f"{name}: cached vs uncached max |logit diff| = {diff:.2e}")
    assert diff <= 1e-5


def test_eos_stops_and_finished_rows_emit_pad(generator_pair):
    # one stop id, or two (<eos> and <end_of_turn>): each row ends at the first of them it emits, whichever it is
    _, _, ours = generator_pair
    _, ids, mask = padded_batch(512, [7, 3, 5], "left", seed=2)
    free = ours.generate(ids, mask, max_new_tokens=6)
    eos, turn = int(free[0, 7 + 1]), int(free[1, 7 + 3])  # row 0's second new token, row 1's fourth
    outs = []
    for stops in ([eos], [eos, turn], [turn, eos]):
        got = ours.generate(ids, mask, max_new_tokens=6, eos_id=stops[0] if len(stops) == 1 else tuple(stops))
        outs.append(got)
        for row, new in zip(free[:, 7:], got[:, 7:]):
            hits = torch.isin(row, torch.tensor(stops)).nonzero()
            stop = int(hits[0]) + 1 if len(hits) else len(row)
            assert torch.equal(new[:stop], row[:stop]) and (new[stop:] == 0).all(), stops
        finished = torch.isin(got[:, 7:], torch.tensor(stops)).any(-1)
        assert got.shape[1] == 7 + 6 or (finished.all() and got.shape[1] < 7 + 6)  # stops early once all rows ended
    assert not torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])  # the second id ends rows; order is moot


def test_sampling_follows_top_p(generator_pair):
    from transformers.generation.logits_process import TopPLogitsWarper
    _, _, ours = generator_pair
    ids = torch.tensor([[2, 50, 60, 70]])
    with torch.no_grad():
        z = ours.logits(ours(ids))[:, -1] / 1.5
    allowed = torch.isfinite(TopPLogitsWarper(0.6)(ids, z.clone()))[0]
    seen = {int(ours.generate(ids, max_new_tokens=1, temperature=1.5, top_p=0.6,
                              generator=torch.Generator().manual_seed(s))[0, -1]) for s in range(60)}
    assert seen <= set(allowed.nonzero()[:, 0].tolist()) and len(seen) >= min(2, int(allowed.sum()))
    wide = {int(ours.generate(ids, max_new_tokens=1, temperature=5.0, generator=torch.Generator().manual_seed(s))
                [0, -1]) for s in range(20)}
    assert len(wide) > 5  # temperature 5 over 512 tokens: many different ones
    greedy = ours.generate(ids, max_new_tokens=3)
    assert torch.equal(ours.generate(ids, max_new_tokens=3, temperature=1.0, top_p=1e-6,
                                     generator=torch.Generator().manual_seed(0)), greedy)
    a, b = (ours.generate(ids, max_new_tokens=5, temperature=1.0, generator=torch.Generator().manual_seed(7))
            for _ in range(2))
    assert torch.equal(a, b)


def test_generation_refuses_right_padding(generator_pair):
    _, _, ours = generator_pair
    _, ids, mask = padded_batch(512, [4, 2], "right")
    with pytest.raises(ValueError, match="left padding"):
        ours.generate(ids, mask)


@pytest.mark.parametrize("name", list(ARCH))
def test_data_pack_layout_equals_separate_sequences(name):
    # packing.pack's prompt-shared stream on a sliding model, prompts and responses longer than the window: each
    # response token's hidden state equals the same token in <bos> prompt response run alone (which test_logits ties to HF)
    cfg = GemmaConfig.from_json(os.path.join(save_random(name), "config.json"))
    torch.manual_seed(0)
    model = Gemma(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5) if p.ndim == 1 else p.normal_(0, p.shape[1] ** -0.5)
    examples = [([2] + list(range(10, 22)), [[50, 51, 52], list(range(60, 69))]), ([2, 11], [list(range(70, 80))]),
                ([2] + list(range(100, 107)), [[80, 81], [82], list(range(83, 90))])]
    inputs = packing.pack(examples, lm=[((0, 1), True), ((0,), True), ((2,), False)])
    with torch.no_grad():
        stream = model(inputs["ids"], inputs["attention"], inputs["pos"])  # (N, D)
        at = 0
        for p, rs in examples:
            start = at
            at += len(p)
            for r in rs:
                alone = model(torch.tensor([p + r]))[0]
                assert (stream[start:start + len(p)] - alone[:len(p)]).abs().max() <= 1e-5
                assert (stream[at:at + len(r)] - alone[len(p):]).abs().max() <= 1e-5
                at += len(r)
        kept = model(inputs["ids"], inputs["attention"], inputs["pos"], keep=inputs["lm_index"])
        assert (kept - stream[inputs["lm_index"]]).abs().max() <= 1e-5


def save_random(name, _cache={}):
    """A folder with the config.json of a random transformers model of this architecture (built once)."""
    if name not in _cache:
        import tempfile
        _cache[name] = tempfile.mkdtemp()
        random_hf_gemma("gqa", **ARCH[name]).config.save_pretrained(_cache[name])
    return _cache[name]
