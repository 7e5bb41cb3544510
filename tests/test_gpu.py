"""The packed step on a GPU: bf16 equals one sequence at a time, no host-device sync inside a step, and the attention
kernel that runs is the one asked for. Every test skips without CUDA. Run: python -m pytest -q tests/test_gpu.py"""
import warnings

import pytest
import torch

import dial
import packing
from gemma import Gemma, GemmaConfig
from lora import add_lora

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Gemma-2b's attention shape (8 query heads, 1 key/value head, head_dim 256) on a narrow, shallow model
CONFIG = GemmaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                     num_attention_heads=8, num_key_value_heads=1, head_dim=256)


def examples(n_pairs, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, CONFIG.vocab_size, (n,), generator=g).tolist()  # noqa: E731
    length = lambda lo, hi: int(torch.randint(lo, hi, (), generator=g))  # noqa: E731
    return [([2] + ids(length(5, 200)), [ids(length(1, 120)), ids(length(1, 120))]) for _ in range(n_pairs)]


def reward_model(dtype):
    """As train.py builds it: the base in `dtype`, LoRA (float32), the head and the critic (float32), on the GPU."""
    torch.manual_seed(0)
    gemma = Gemma(CONFIG).to(dtype)
    add_lora(gemma, r=8, alpha=8, verbose=False)
    with torch.no_grad():
        for name, p in gemma.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return dial.RewardModel(packing.GemmaBackbone(gemma), CONFIG.hidden_size).cuda()


def separate(model, exs):
    gemma = model.backbone.gemma
    return torch.stack([gemma(torch.tensor([p + r], device="cuda"))[0, -1] for p, rs in exs for r in rs]).float()


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_packed_bf16_equals_separate_sequences_within_bf16_rounding():
    # The yardstick is bf16's own error: per-sequence bf16 against a float32 run of the same weights. The packed bf16
    # step may differ from float32 by no more than twice that (its sums run in another order, over other tiles).
    exs = examples(8)
    inputs = packing.to_device(packing.pack(exs), "cuda")
    with torch.no_grad():
        exact = separate(reward_model(torch.float32), exs)
        model = reward_model(torch.bfloat16)
        one_by_one, packed = separate(model, exs), model(inputs)[0]
    bf16_error = rel(one_by_one, exact)
    assert 0 < bf16_error < 0.05
    assert rel(packed, exact) <= 2 * bf16_error
    assert rel(packed, one_by_one) <= 2 * bf16_error


def dial_step(model):
    opt = torch.optim.AdamW([p for p in model.backbone.parameters() if p.requires_grad] + list(model.head.parameters()))
    critic_opt = dial.critic_optimizer(model.critic, dial.DialConfig())
    gen = torch.Generator("cuda").manual_seed(0)
    exs = examples(8, seed=1)
    return lambda: dial.train_step(model, [packing.to_device(packing.step_batch(exs[:4], exs[4:], "dial"), "cuda")],
                                   "dial", opt, critic_opt, dial.DialConfig(), gen)


def test_no_host_device_sync_inside_a_step():
    model = reward_model(torch.bfloat16)
    step = dial_step(model)
    step()  # warm-up: lazy initialisations (cuBLAS handles, optimiser state) may sync once
    inputs = packing.to_device(packing.step_batch(examples(4), examples(4, seed=2), "dial")["inputs"], "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        emb, _ = model(inputs)  # the packed forward and backward of the backbone
        model.reward(emb).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    # the whole optimisation step (critic iterations, gradient penalty, both optimisers): one sync, its logs'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            logs = step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    assert set(logs) >= {"bt", "w", "gp", "loss"}


def test_the_packed_attention_runs_the_memory_efficient_kernel():
    model = reward_model(torch.bfloat16)
    inputs = packing.to_device(packing.pack(examples(8)), "cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        model.reward(model(inputs)[0]).sum().backward()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    assert sum("aten::_efficient_attention_forward" == n for n in names) == CONFIG.num_hidden_layers
    assert sum("aten::_efficient_attention_backward" == n for n in names) == CONFIG.num_hidden_layers
    assert not [n for n in names if "cudnn_attention" in n or "flash_attention" in n or "attention_math" in n]
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert any("fmha" in n for n in kernels), kernels[:20]  # the memory-efficient (cutlass fmha) kernels ran
