"""
How the rows of a task become the tensors of one step: tokenisation, prompt-shared packing, the layout of a packed
stream's attention, paired source/target batching, moving a batch to the device, and the Gemma backbone that reads a
packed batch (dial.py's backbone contract). What the tasks and their rows are is data.py.

An example is (prompt ids, [response ids, ...]), tokenised apart so that the responses of one row share their
prompt's ids exactly: a pair has 2 responses (chosen, rejected), an odd-one-out question 5 (correct first), a text 1
(its prompt is just <bos>). pack() lays each example out as ONE sequence, the prompt once followed by every response,
where a response sees the prompt and itself but not the other responses and its positions continue from the prompt.
A causal model then computes exactly the hidden states of the separate sequences <bos> prompt response_k, but the
prompt (often the longer part: a Reddit post) only once, and its gradient is the sum over the responses.

The examples of a step are laid end to end in one stream of N tokens with no padding, which every matmul of the model
runs on. Attention alone needs a rectangle: the examples are placed, whole, into B rows of T slots (attention_rows),
and each slot carries its token's example, part (0 the prompt, k + 1 response k) and position. gemma.attention_rule
turns these into the (B, 1, T, T) mask of the paper's figure of a pair, once per step, and each layer makes ONE
attention call over the rows, whatever the number of examples (see gemma.Attention.forward). B and T are small
integers known on the host; T is rounded up to ROW_MULTIPLE so that few distinct shapes occur.
"""
import functools
import random

import torch

import dial
from formats import row_sequences

SEPARATOR = "\n\n"  # between prompt and response, unless the prompt already ends in whitespace (odd-one-out)
TRUNCATIONS = ("prompt", "right")  # ours (the prompt is cut first, from the left) and the released code's
ROW_MULTIPLE = 64  # row length rounded up to this: few distinct shapes, and aligned as GPU attention kernels want (8, 16)


def tokenize(rows, tok, max_len=1024, separator=SEPARATOR, truncation="prompt"):
    """rows -> examples (prompt ids, [response ids]) with <bos> + prompt + separator + response_k at most max_len
    tokens for every k. truncation "prompt": the prompt is cut first, from the left (after <bos>), so that the end of
    the post and the whole response stay; a response alone longer than max_len - 1 tokens keeps its first max_len - 1.
    truncation "right" (the released code's): each sequence <bos> + prompt + separator + response_k is cut on the
    right to max_len tokens; a prompt of max_len tokens or more leaves no response at all, so every response of the
    row is the same sequence, the prompt's first max_len tokens (here: its first max_len - 1, then its next token as
    the "response"), and all of them get the same reward."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"unknown truncation {truncation!r}; expected one of {', '.join(TRUNCATIONS)}")
    examples = []
    for row in rows:
        seqs = row_sequences(row)
        prompt = seqs[0][0]
        p = tok.encode(prompt + ("" if not prompt or prompt[-1].isspace() else separator)) if prompt else [tok.bos_id]
        if truncation == "right":
            rs = [tok.encode(r, bos=False) for _, r in seqs]
            cut = [r[:max_len - len(p)] for r in rs]
            examples.append((p, cut) if len(p) < max_len else (p[:max_len - 1], [p[max_len - 1:max_len]] * len(rs)))
            continue
        rs = [tok.encode(r, bos=False)[:max_len - 1] for _, r in seqs]
        keep = max_len - max(len(r) for r in rs)  # >= 1: room for <bos> at least
        examples.append(([p[0]] + p[len(p) - keep + 1:] if len(p) > keep else p, rs))
    return examples


def pack(examples, lm=None):
    """Lays the examples end to end in one stream of tokens, no padding, and returns the backbone's inputs:
      ids, pos (N,); attention: the row layout of the stream's attention (attention_rows); last (n,): the index of
      the last token of every response, example by example, responses in order (= the rows of the embeddings); with
      lm: lm_index (M,) the index of the token that predicts each target token, lm_target (M,) its id.
    lm: per example, None or (response indices, with_prompt): which sequences' tokens the next-token loss predicts,
    and whether the prompt's own tokens count (once per listed response, as separate sequences would count them)."""
    ids, pos, example, part, last, index, target = [], [], [], [], [], [], []
    for e, (p, rs) in enumerate(examples):
        p0 = len(ids)
        ids += p
        pos += range(len(p))
        part += [0] * len(p)
        starts = []
        for k, r in enumerate(rs):
            starts.append(len(ids))
            ids += r
            pos += range(len(p), len(p) + len(r))  # every response continues from the prompt
            part += [k + 1] * len(r)
            last.append(len(ids) - 1)
        example += [e] * (len(ids) - p0)
        for k in (lm[e][0] if lm is not None and lm[e] is not None else ()):
            if lm[e][1]:  # prompt token i is predicted by token i - 1
                index += range(p0, p0 + len(p) - 1)
                target += p[1:]
            # the first response token is predicted by the prompt's last token, the others by their predecessor
            index += [p0 + len(p) - 1] + list(range(starts[k], starts[k] + len(rs[k]) - 1))
            target += rs[k]
    inputs = dict(ids=torch.tensor(ids), pos=torch.tensor(pos), attention=attention_rows(example, part, pos),
                  last=torch.tensor(last))
    if lm is not None:
        inputs.update(lm_index=torch.tensor(index, dtype=torch.long), lm_target=torch.tensor(target, dtype=torch.long))
    return inputs


def attention_rows(example, part, pos, multiple=ROW_MULTIPLE):
    """The layout of a packed stream's attention, from its tokens' example ids, parts (0 prompt, k + 1 response k) and
    positions (N each, each example's tokens contiguous): the examples go whole into B rows of T slots, T = the
    longest example rounded up to `multiple`, first fit from the longest (fewer, fuller rows: attention costs B T^2).
    Returns tensors: example, part, pos (B, T) per slot, a pad slot being example -1, part 0, position 0 (so that it
    sees the other pads and no real token sees it); token (B * T,) the stream index each slot reads (pads read token
    0, whose result they never send back); slot (N,) the slot of each stream token."""
    spans = []  # [start, length] of each example in the stream
    for i, e in enumerate(example):
        if i == 0 or e != example[i - 1]:
            spans.append([i, 0])
        spans[-1][1] += 1
    T = -(-max(n for _, n in spans) // multiple) * multiple
    used, slot = [], [0] * len(example)  # used: slots taken in each row so far
    for start, n in sorted(spans, key=lambda s: -s[1]):
        b = next((b for b, u in enumerate(used) if u + n <= T), len(used))
        used += [0] * (b == len(used))
        slot[start:start + n] = range(b * T + used[b], b * T + used[b] + n)
        used[b] += n
    B, slot = len(used), torch.tensor(slot)

    def per_slot(values, pad):
        out = torch.full((B * T,), pad, dtype=torch.long)
        out[slot] = torch.tensor(values, dtype=torch.long)
        return out.view(B, T)

    return dict(example=per_slot(example, -1), part=per_slot(part, 0), pos=per_slot(pos, 0),
                token=per_slot(range(len(example)), 0).view(-1), slot=slot)


def to_device(x, device):
    """A batch (dicts, lists and tuples of tensors and numbers) moved to the device in one copy per dtype: its
    tensors flattened into one host buffer (pinned, on a GPU), copied without blocking the host, and split there."""
    def walk(x, f):  # x with f applied to each of its tensors
        if isinstance(x, dict):
            return {k: walk(v, f) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v, f) for v in x)
        return f(x) if isinstance(x, torch.Tensor) else x

    device = torch.device(device)
    tensors = []
    walk(x, tensors.append)
    moved = {}  # id of a tensor -> its copy on the device: a view into the one buffer of its dtype
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group])
        flat = (flat.pin_memory() if device.type == "cuda" else flat).to(device, non_blocking=True)
        for t, part in zip(group, flat.split([t.numel() for t in group])):
            moved[id(t)] = part.view(t.shape)
    return walk(x, lambda t: moved[id(t)])


class GemmaBackbone(torch.nn.Module):
    """DIAL's backbone contract for Gemma: inputs from pack() -> (the final-norm hidden state at the last token of
    every response (n, D), the next-token loss over the flagged tokens or None). One decoder pass for everything;
    the last layer computes only the tokens read, and the 256k-wide logits only at the M flagged positions."""

    def __init__(self, gemma):
        super().__init__()
        self.gemma = gemma

    def forward(self, inputs):
        n, lm = len(inputs["last"]), "lm_index" in inputs
        keep = torch.cat([inputs["last"], inputs["lm_index"]]) if lm else inputs["last"]
        hidden = self.gemma(inputs["ids"], inputs["attention"], inputs["pos"], keep=keep)  # (n [+ M], D)
        loss = None
        if lm:
            loss = torch.nn.functional.cross_entropy(self.gemma.logits(hidden[n:]).float(), inputs["lm_target"])
        return hidden[:n], loss


def step_batch(src, tgt, method):
    """One micro-batch for dial.train_step from tokenised source and target examples: every sequence packed into one
    backbone input, and the rows of each role. Target examples enter only for the methods that use them, and their
    chosen/rejected rows only for the oracles: the other methods never see which target response is which."""
    use_tgt = method in dial.TARGET_METHODS
    examples = src + (tgt if use_tgt else [])
    lm = None
    if method == "src-pref-sft":  # the source chosen responses, conditioned on their prompts
        lm = [((0,), False)] * len(src)
    elif method == "src-pref-tgt-ntp":  # every target text in full, as a language model would read it
        lm = [None] * len(src) + [(tuple(range(len(rs))), True) for _, rs in tgt]
    first = torch.tensor([0] + [len(rs) for _, rs in examples]).cumsum(0)  # each example's first embedding row
    batch = {"inputs": pack(examples, lm)}

    def roles(lo, hi):  # chosen (n,), rejected (n,) for pairs or (n, K) for multiple choice
        chosen = first[lo:hi]
        wrong = chosen[:, None] + torch.arange(1, len(examples[lo][1]))
        return chosen, wrong[:, 0] if wrong.shape[1] == 1 else wrong

    batch["src_chosen"], batch["src_rejected"] = roles(0, len(src))
    if use_tgt:
        batch["tgt"] = torch.arange(first[len(src)], first[-1])
    if method in dial.ORACLES:
        batch["tgt_chosen"], batch["tgt_rejected"] = roles(len(src), len(examples))
    return batch


def paired_indices(n, batch_size, step, seed, domain):
    """Which of a domain's n examples step `step` takes: consecutive slices of an endless sequence of seeded shuffles
    (a fresh shuffle at each pass over the data), so the smaller domain cycles while the larger one is read once.
    A function of the step alone, so that a resumed run reads exactly the batches it would have read."""
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        k, j = divmod(i, n)
        out.append(_shuffle(n, seed, domain, k)[j])
    return out


@functools.lru_cache(maxsize=8)
def _shuffle(n, seed, domain, k):
    return random.Random(f"{domain}/{seed}/{k}").sample(range(n), n)
