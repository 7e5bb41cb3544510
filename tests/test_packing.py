"""Tokenisation, prompt-shared packing and paired batching (packing.py) against a straightforward per-sequence
computation. Run: python -m pytest -q tests/test_packing.py"""
import pytest
import torch
import torch.nn.functional as F

import dial
import formats
import packing
from gemma import Gemma, GemmaConfig
from lora import add_lora

# a prompt longer than its responses, responses of different lengths, a 5-answer question, a text with no prompt
EXAMPLES = [
    ([2] + list(range(10, 40)), [[50, 51, 52], [60, 61, 62, 63, 64, 65, 66]]),
    ([2, 11, 12], [[70] * 20, [71]]),
    ([2] + list(range(100, 112)), [[80, 81], [82], [83, 84, 85], [86], [87, 88]]),
    ([2], [list(range(200, 215))]),
    ([2, 13, 14, 15, 16], [[90, 91, 92, 93], [94, 95]]),
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    gemma = Gemma(GemmaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16))
    with torch.no_grad():  # O(1) activations, so that a wrong mask or position shows
        for p in gemma.parameters():
            p.normal_(0, 0.5) if p.ndim == 1 else p.normal_(0, p.shape[1] ** -0.5)
    add_lora(gemma, r=4, alpha=4, targets="all", verbose=False)
    with torch.no_grad():
        for name, p in gemma.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return dial.RewardModel(packing.GemmaBackbone(gemma), 64)


def separate(model, examples):
    """Every response as its own unpadded sequence <bos> prompt response: embeddings (N, D) and the per-token logits."""
    gemma = model.backbone.gemma
    embs, logits = [], []
    for p, rs in examples:
        for r in rs:
            hidden = gemma(torch.tensor([p + r]))[0]
            embs.append(hidden[-1])
            logits.append(gemma.logits(hidden))
    return torch.stack(embs), logits


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_packed_embeddings_and_rewards_equal_separate_sequences(model):
    inputs = packing.pack(EXAMPLES)
    assert inputs["ids"].shape == (sum(len(p) + sum(len(r) for r in rs) for p, rs in EXAMPLES),)  # no padding
    with torch.no_grad():
        emb, lm = model(inputs)
        ref, _ = separate(model, EXAMPLES)
    assert lm is None and emb.shape == (sum(len(rs) for _, rs in EXAMPLES), 64)
    assert rel(emb, ref) <= 1e-5
    assert rel(model.reward(emb), model.reward(ref)) <= 1e-5


@pytest.mark.parametrize("with_prompt", [False, True])
def test_next_token_loss_equals_separate_sequences(model, with_prompt):
    flags = [((0,), with_prompt), None, ((0, 2, 4), with_prompt), ((0,), with_prompt), None]
    with torch.no_grad():
        _, lm = model(packing.pack(EXAMPLES, lm=flags))
        _, logits = separate(model, EXAMPLES)
    losses, n = [], 0
    for (p, rs), flag in zip(EXAMPLES, flags):
        for k, r in enumerate(rs):
            if flag and k in flag[0]:
                ids = torch.tensor(p + r)
                start = 0 if with_prompt else len(p) - 1  # logits at position i predict token i + 1
                losses.append(F.cross_entropy(logits[n + k][start:-1], ids[start + 1:], reduction="none"))
        n += len(rs)
    assert rel(lm, torch.cat(losses).mean()) <= 1e-5


def test_dial_loss_gradients_equal_separate_sequences(model):
    # the model's loss of a DIAL step (source BT + lam * W through a fixed critic): same value, same LoRA and head
    # gradients whether the sequences are packed (prompt computed once) or each run on its own
    src, tgt = EXAMPLES[:2] + EXAMPLES[4:], EXAMPLES[2:4]
    batch = packing.step_batch(src, tgt, "dial")

    def loss_and_grads(emb):
        r = model.reward(emb)
        src_rows = torch.cat([batch["src_chosen"], batch["src_rejected"]])
        loss = dial.bt_loss(r[batch["src_chosen"]], r[batch["src_rejected"]]) + \
            0.5 * dial.wasserstein(model.critic, emb[src_rows], emb[batch["tgt"]])
        params = [p for p in model.parameters() if p.requires_grad and p is not None]
        model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params if p.grad is not None and not p.grad.eq(0).all()]

    packed_loss, packed = loss_and_grads(model(batch["inputs"])[0])
    separate_loss, ref = loss_and_grads(separate(model, src + tgt)[0])
    assert len(packed) == len(ref) > 10  # every LoRA A and B and the head, and the critic's (not trained by it)
    assert rel(packed_loss, separate_loss) <= 1e-5
    assert max(rel(a, b) for a, b in zip(packed, ref)) <= 1e-5


def test_gradient_checkpointing_gives_the_same_gradients(model):
    gemma = model.backbone.gemma
    grads = []
    for flag in (False, True):
        gemma.checkpointing = flag
        model.zero_grad()
        model.reward(model(packing.pack(EXAMPLES))[0]).square().sum().backward()
        grads.append([p.grad.clone() for p in gemma.parameters() if p.requires_grad])
    gemma.checkpointing = False
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(*grads))


# -----------------------------------------------------------------------------
# tokenisation and batching


class CharTokenizer:  # one id per character: lengths are easy to reason about
    bos_id, pad_id = 2, 0

    def encode(self, text, bos=True):
        return [self.bos_id] * bos + [ord(c) for c in text]


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response():
    rows = [{"prompt": "abcdefghij", "response_chosen": "XYZ", "response_rejected": "Q"}]
    (p, rs), = packing.tokenize(rows, CharTokenizer(), max_len=8, separator="|")
    assert p == [2] + [ord(c) for c in "hij|"] and rs == [[ord(c) for c in "XYZ"], [ord("Q")]]
    assert all(len(p) + len(r) <= 8 for r in rs)
    (p, rs), = packing.tokenize(rows, CharTokenizer(), max_len=3, separator="|")  # a response alone too long
    assert p == [2] and rs == [[ord("X"), ord("Y")], [ord("Q")]]
    # a prompt already ending in whitespace gets no separator (the odd-one-out prompt ends in a newline)
    (p, _), = packing.tokenize([{**rows[0], "prompt": "ab\n"}], CharTokenizer(), max_len=99, separator="|")
    assert p == [2, ord("a"), ord("b"), ord("\n")]
    (p, rs), = packing.tokenize([{"text": "essay"}], CharTokenizer(), max_len=99)
    assert p == [2] and rs == [[ord(c) for c in "essay"]]


def test_right_truncation_is_the_whole_sequence_cut_on_the_right():
    """--truncation right (the released code's): each <bos> prompt separator response_k, as one list, cut to max_len."""
    tok = CharTokenizer()
    rows = [{"prompt": "abcdefghij", "response_chosen": "XYZ", "response_rejected": "Q"},
            {"prompt": "ab", "response_chosen": "long response", "response_rejected": "R"}, {"text": "an essay"}]
    for max_len in (3, 8, 11, 12, 14, 99):
        for row, (p, rs) in zip(rows, packing.tokenize(rows, tok, max_len=max_len, separator="|", truncation="right")):
            for (prompt, response), r in zip(formats.row_sequences(row), rs):
                whole = (tok.encode(prompt + "|") if prompt else [tok.bos_id]) + tok.encode(response, bos=False)
                assert p + r == whole[:max_len], (max_len, row)  # the sequence the model reads, end included
    (p, rs), = packing.tokenize(rows[:1], tok, max_len=8, separator="|", truncation="right")
    assert rs[0] == rs[1] == [ord("g")]  # the prompt fills it: chosen and rejected are the same sequence, a tie
    with pytest.raises(ValueError, match="unknown truncation 'left'"):
        packing.tokenize(rows, tok, truncation="left")


def test_step_batch_roles():
    pairs, questions = EXAMPLES[:2], [EXAMPLES[2]] * 2
    batch = packing.step_batch(questions, pairs, "src-tgt-pref")
    assert batch["src_chosen"].tolist() == [0, 5] and batch["src_rejected"].tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]
    assert batch["tgt"].tolist() == [10, 11, 12, 13]
    assert batch["tgt_chosen"].tolist() == [10, 12] and batch["tgt_rejected"].tolist() == [11, 13]
    dial_batch = packing.step_batch(pairs, questions, "dial")
    assert "tgt_chosen" not in dial_batch and dial_batch["tgt"].tolist() == list(range(4, 14))  # labels never given
    only_source = packing.step_batch(pairs, questions, "src-pref")
    assert "tgt" not in only_source and len(only_source["inputs"]["last"]) == 4  # target not even computed
    sft = packing.step_batch(pairs, questions, "src-pref-sft")["inputs"]
    assert len(sft["lm_target"]) == 3 + 20  # the chosen responses' tokens only
    assert len(sft["ids"]) == sum(len(p) + sum(len(r) for r in rs) for p, rs in pairs)  # each prompt once


def test_paired_indices_cycle_the_smaller_domain():
    n_src, n_tgt, b = 10, 3, 4
    src = [i for s in range(5) for i in packing.paired_indices(n_src, b, s, seed=1, domain="source")]
    assert sorted(src[:n_src]) == list(range(n_src))  # one pass reads every example once
    assert sorted(src[n_src:2 * n_src]) == list(range(n_src)) and src[:n_src] != src[n_src:2 * n_src]  # reshuffled
    tgt = [i for s in range(5) for i in packing.paired_indices(n_tgt, b, s, seed=1, domain="target")]
    assert all(sorted(tgt[k:k + n_tgt]) == list(range(n_tgt)) for k in range(0, 18, n_tgt))  # cycles
    assert packing.paired_indices(n_src, b, 3, 1, "source") == packing.paired_indices(n_src, b, 3, 1, "source")
    assert packing.paired_indices(n_src, b, 0, 2, "source") != packing.paired_indices(n_src, b, 0, 1, "source")


@pytest.mark.parametrize("n_pairs", [1, 4, 16])
def test_one_attention_call_per_layer(model, n_pairs, monkeypatch):
    # however many pairs a step holds, each layer calls the attention kernel once (forward; its backward is the
    # kernel's own), and the step still equals one sequence at a time
    g = torch.Generator().manual_seed(n_pairs)
    ids = lambda n: torch.randint(3, 256, (n,), generator=g).tolist()  # noqa: E731
    length = lambda: int(torch.randint(1, 40, (), generator=g))  # noqa: E731
    pairs = [([2] + ids(length()), [ids(length()), ids(length())]) for _ in range(n_pairs)]
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(a[0].shape) or sdpa(*a, **k))
    batch = packing.step_batch(pairs[:(n_pairs + 1) // 2], pairs[(n_pairs + 1) // 2:], "dial")
    emb, _ = model(batch["inputs"])
    model.reward(emb).sum().backward()
    assert len(calls) == model.backbone.gemma.config.num_hidden_layers
    monkeypatch.undo()
    with torch.no_grad():
        assert rel(emb, separate(model, pairs)[0]) <= 1e-5


def test_to_device_moves_a_batch_in_one_buffer_per_dtype():
    batch = packing.step_batch(EXAMPLES[:2], EXAMPLES[2:], "src-tgt-pref")
    batch["weights"] = torch.rand(3, 2)
    moved = packing.to_device(batch, "cpu")  # the same path as to a GPU, less the pinning

    def leaves(x, path=""):
        if isinstance(x, dict):
            return [leaf for k, v in x.items() for leaf in leaves(v, f"{path}/{k}")]
        return [(path, x)]

    for (path, a), (_, b) in zip(leaves(batch), leaves(moved)):
        assert torch.equal(a, b) and a.dtype == b.dtype, path
    bases = {b.untyped_storage().data_ptr() for _, b in leaves(moved)}
    assert len(bases) == 2  # one int64 buffer, one float32 buffer
    on_meta = packing.to_device(batch, "meta")
    assert all(b.is_meta and b.shape == a.shape for (_, a), (_, b) in zip(leaves(batch), leaves(on_meta)))


def test_attention_rule_is_the_block_diagonal_mask_of_the_pairs():
    # the rule on per-token values, evaluated the way FlexAttention evaluates a mask_mod, against the mask built the
    # long way: per example, causal within its prompt + responses, a response seeing the prompt and itself only
    from torch.nn.attention.flex_attention import create_mask

    from gemma import attention_rule
    example, part, pos = [], [], []
    expected = torch.zeros(0, 0, dtype=torch.bool)
    for e, (p, rs) in enumerate(EXAMPLES):
        parts = torch.tensor([0] * len(p) + [k + 1 for k, r in enumerate(rs) for _ in r])
        block = torch.ones(len(parts), len(parts), dtype=torch.bool).tril() & \
            ((parts[None, :] == 0) | (parts[None, :] == parts[:, None]))
        expected = torch.block_diag(expected, block)
        example += [e] * len(parts)
        part += parts.tolist()
        pos += list(range(len(p))) + [len(p) + i for r in rs for i in range(len(r))]
    example, part, pos = torch.tensor(example), torch.tensor(part), torch.tensor(pos)
    N = len(example)
    mask_mod = lambda b, h, q, k: attention_rule(example[q], part[q], pos[q], example[k], part[k], pos[k])  # noqa: E731
    assert torch.equal(create_mask(mask_mod, None, None, N, N, device="cpu")[0, 0], expected)
