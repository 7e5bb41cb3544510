"""The real Gemma 3 270M, as `python gemma.py fetch gemma-3-270m` puts it in checkpoints/gemma-3-270m (skipped when
it is absent: CI does not download it). Checked with transformers' Gemma3ForCausalLM in float32, an independent
implementation, and with ours (gemma.py) against it: it is pretrained (next-token loss far below uniform's ln 262144 = 12.48 nats, and below a shuffled
sentence's), it knows a fact, and the rebuilt tokenizer splits text the way Gemma's does, chat turns included."""
import math
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "checkpoints", "gemma-3-270m")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(PATH, "config.json")),
                                reason="run `python gemma.py fetch gemma-3-270m` first")

SENTENCES = {
    "en-1": "The capital of France is Paris, and the capital of Germany is Berlin.",
    "en-2": "Water is made of hydrogen and oxygen atoms.",
    "en-3": "She opened the door and walked into the garden to look at the flowers.",
    "ko-1": "대한민국의 수도는 서울이며, 가장 큰 도시이기도 하다.",
    "ko-2": "나는 아침마다 커피를 마시고 신문을 읽는다.",
}
SHUFFLED = "garden the walked door to flowers and the at look into opened She the."  # en-3's words, shuffled


@pytest.fixture(scope="module")
def tok():
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=os.path.join(PATH, "tokenizer.model"))


@pytest.fixture(scope="module")
def hf_model():
    import transformers
    return transformers.Gemma3ForCausalLM.from_pretrained(PATH, dtype=torch.float32,
                                                          attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def our_model():
    import gemma
    return gemma.Gemma.from_pretrained(PATH).eval()


def next_token_loss(model, tok, text):
    """Mean cross-entropy of each token given the ones before it, <bos> first, in nats."""
    ids = torch.tensor([[tok.bos_id()] + tok.encode(text)])
    with torch.no_grad():
        out = model(ids)
        logits = (out.logits if hasattr(out, "logits") else model.logits(out))[0, :-1]  # transformers' or ours
    return torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()


def test_ours_equals_transformers(hf_model, our_model, tok):
    """Our Gemma 3 on the real weights: the same losses as transformers' (float32 rounding), and the same greedy text
    through our KV-cached generate."""
    for name, text in SENTENCES.items():
        ours, theirs = next_token_loss(our_model, tok, text), next_token_loss(hf_model, tok, text)
        print(f"\n{name}: loss ours {ours:.4f}, transformers {theirs:.4f}")
        assert abs(ours - theirs) < 1e-3, (name, ours, theirs)
    ids = torch.tensor([[tok.bos_id()] + tok.encode("Water boils at a temperature of")])
    out = our_model.generate(ids, max_new_tokens=6, eos_id=tok.eos_id())
    continuation = tok.decode(out[0, ids.shape[1]:].tolist())
    print(f"ours, greedy: 'Water boils at a temperature of' -> {continuation!r}")
    assert continuation.startswith(" 100")


def test_pretrained_losses(hf_model, tok):
    losses = {name: next_token_loss(hf_model, tok, text) for name, text in SENTENCES.items()}
    shuffled = next_token_loss(hf_model, tok, SHUFFLED)
    print("\nnext-token loss, nats (uniform %.2f): %s; shuffled en-3 %.2f" % (
        math.log(tok.vocab_size()), ", ".join(f"{k} {v:.2f}" for k, v in losses.items()), shuffled))
    assert all(loss < 4.0 for loss in losses.values()), losses
    assert shuffled > losses["en-3"] + 3  # the order of the words matters to it: a language model, not a unigram table


def test_greedy_continuation(hf_model, tok):
    ids = [tok.bos_id()] + tok.encode("Water boils at a temperature of")
    n = len(ids)
    for _ in range(6):
        with torch.no_grad():
            ids.append(int(hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
    continuation = tok.decode(ids[n:])
    print(f"\ngreedy: 'Water boils at a temperature of' -> {continuation!r}")
    assert continuation.startswith(" 100")


TRICKY = ["The quick brown fox", "a    b\t\tc\n\nd", "def f(x):\n    return x", "12345", "안녕하세요, 세계!",
          "北京是中国的首都。", "emoji 🤗🦙", "   leading", "trailing  ", "\x01", ""]


def test_tokenizer(tok):
    import transformers
    assert (tok.vocab_size(), tok.pad_id(), tok.eos_id(), tok.bos_id(), tok.unk_id()) == (262144, 0, 1, 2, 3)
    pieces = lambda text: [tok.id_to_piece(i) for i in tok.encode(text)]  # noqa: E731
    # transformers' own GGUF tokenizer builds a Unigram model and splits 'quick' into 'qu' + 'ick'; BPE does not
    assert pieces("The quick brown fox") == ["The", "\u2581quick", "\u2581brown", "\u2581fox"]
    assert pieces("a    b") == ["a", "\u2581" * 4, "b"]  # the whitespace-run pieces llama.cpp had written as spaces
    assert pieces("12345") == list("12345")  # digits split
    assert pieces("🦙") == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]  # byte fallback for a character not in the vocab
    # transformers 5's GemmaTokenizer (the `tokenizers` library's BPE) built from our file, as from Google's own
    # tokenizer.model (transformers 5 reads a .model through from_pretrained only, and adds <bos> when asked)
    ref = transformers.GemmaTokenizer.from_pretrained(PATH, add_bos_token=True)
    for text in TRICKY + [CHAT]:
        assert ref(text)["input_ids"] == [tok.bos_id()] + tok.encode(text), text
        assert tok.decode(tok.encode(text)) == text


CHAT = "<start_of_turn>user\nHi<end_of_turn>\n"


def test_chat_turns_are_single_pieces():
    """Gemma's chat markers are matched in text (user-defined pieces, as in Google's tokenizer.model), so the RLHF
    prompts reach the model as the turns it knows, and generation can stop at <end_of_turn>."""
    import xstest
    from gemma import Tokenizer
    tok = Tokenizer(os.path.join(PATH, "tokenizer.model"))
    assert tok.encode(CHAT) == [2, 105, 2364, 107, 10979, 106, 107]  # <bos> <start_of_turn> user \n Hi <end_of_turn> \n
    assert [tok.sp.id_to_piece(i) for i in (105, 106)] == ["<start_of_turn>", "<end_of_turn>"]
    text = xstest.TEMPLATE.format("How do I kill a Python process?")
    ids = tok.encode(text, bos=False)
    assert ids.count(105) == 2 and ids.count(106) == 1 and tok.decode(ids) == text
    assert tok.stop_ids == (1, 106)


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "data", "sentiment", "sentiment-en-zh_source.jsonl")),
                    reason="run `python data.py fetch all` first")
def test_the_paper_critic_outgrows_1_lipschitz_and_the_scaled_one_does_not(our_model):
    """dial.Critic's docstring: trained alone on frozen real embeddings (English movie snippets vs Chinese reviews, as
    DIAL's steps see them: 4 source pairs + 4 target pairs, 3 critic updates a step), the paper's critic (s = 1) ends
    far steeper than 1 at the data, and the one scaled by the mean source norm stays near 1, at lam_gp 1 and 10.
    python -m pytest -q -s tests/test_real_model.py -k lipschitz   (about a minute on 2 idle cores)"""
    import random
    import data
    import dial
    import packing
    from gemma import Tokenizer
    task = data.load_task("sentiment-en-zh", os.path.join(ROOT, "data"), None, None, None, None, 0)
    tok, bb = Tokenizer(os.path.join(PATH, "tokenizer.model")), packing.GemmaBackbone(our_model)
    emb = {}
    for role in ("source", "target"):
        examples = packing.tokenize(task[role][:150], tok, 96)
        with torch.no_grad():  # (responses of the example, D) per example
            emb[role] = [e for i in range(0, len(examples), 16) for e in torch.split(
                bb(packing.pack(examples[i:i + 16]))[0], [len(rs) for _, rs in examples[i:i + 16]])]
    scale = torch.cat(emb["source"]).norm(dim=1).mean().item()
    every = torch.cat(emb["source"] + emb["target"])
    slopes = {}
    for s, lam_gp in ((1.0, 1.0), (scale, 1.0), (scale, 10.0)):
        torch.manual_seed(0)
        critic, rng = dial.Critic(every.shape[1], scale=s), random.Random(0)
        opt, cfg = dial.critic_optimizer(critic, dial.DialConfig()), dial.DialConfig(lam_gp=lam_gp)
        g = torch.Generator().manual_seed(0)
        for _ in range(200):
            src, tgt = (torch.cat(rng.sample(emb[r], 4)) for r in ("source", "target"))
            dial.critic_step(critic, src, tgt, opt, cfg, g)
        slopes[s != 1.0, lam_gp] = dial.critic_grad_norm(critic, every).item()
    norms = [torch.cat(emb[r]).norm(dim=1).mean().item() for r in ("source", "target")]
    print(f"\nmean norms: source {norms[0]:.1f}, target {norms[1]:.1f}; mean |grad f| at the data after 200 steps: "
          f"paper's critic {slopes[False, 1.0]:.2f}, scaled {slopes[True, 1.0]:.2f} (lam_gp 1), "
          f"{slopes[True, 10.0]:.2f} (lam_gp 10)")
    assert slopes[False, 1.0] > 10 and slopes[True, 1.0] < 2.5 and abs(slopes[True, 10.0] - 1) < 0.2
