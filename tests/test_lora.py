"""lora.py against PEFT, in both directions, on random Gemma checkpoints. Run: python -m pytest -q tests/test_lora.py"""
import json

import pytest
import torch
import torch.nn as nn

from gemma import Gemma, GemmaConfig, pad
from hf_reference import hf_positions, random_hf_gemma
from lora import LoRALinear, add_lora, disabled_lora, load_adapter, merge_lora, save_adapter

TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma")
    random_hf_gemma("mha").save_pretrained(path, safe_serialization=True)  # heads x head_dim != hidden
    return str(path)


def hf_model(path, cls="GemmaForCausalLM"):
    import transformers
    kwargs = dict(num_labels=1) if cls == "GemmaForSequenceClassification" else {}
    return getattr(transformers, cls).from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                     **kwargs).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = [[2] + torch.randint(3, 512, (n,), generator=g).tolist() for n in (13, 7, 10)]
    return pad(rows, 0, "right")


def our_logits(model, ids, mask):
    with torch.no_grad():
        return model.logits(model(ids, mask))


def their_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits


def our_reward(model, head, ids, mask):
    with torch.no_grad():
        hidden = model(ids, mask)
        return head(hidden[torch.arange(len(ids)), mask.sum(-1) - 1]).squeeze(-1)  # last real token, right padding


def randomise_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.2)  # non-zero: the update matters


def test_our_adapter_loads_in_peft(checkpoint, tmp_path):
    import peft
    ours = add_lora(Gemma.from_pretrained(checkpoint), r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj")).eval()
    ids, mask = batch()
    base = our_logits(ours, ids, mask)
    randomise_lora(ours)
    save_adapter(ours, tmp_path, base_model_name_or_path=checkpoint)
    theirs = peft.PeftModel.from_pretrained(hf_model(checkpoint), tmp_path).eval()
    logits, ref = our_logits(ours, ids, mask), their_logits(theirs, ids, mask)
    real = mask.bool()
    assert (logits - base)[real].abs().max() > 0.1, "the adapter should change the model"
    diff = (logits - ref)[real].abs().max().item()
    print(f"ours -> PEFT, causal LM: max |logit diff| = {diff:.2e}")
    assert diff <= TOL


def test_our_adapter_with_reward_head_loads_in_peft(checkpoint, tmp_path):
    import peft
    ours = add_lora(Gemma.from_pretrained(checkpoint), r=8, alpha=8, targets="all").eval()
    randomise_lora(ours, seed=1)
    head = nn.Linear(ours.config.hidden_size, 1, bias=False)
    save_adapter(ours, tmp_path, modules_to_save={"score": head}, base_model_name_or_path=checkpoint)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    theirs = peft.PeftModel.from_pretrained(hf_model(checkpoint, "GemmaForSequenceClassification"), tmp_path).eval()
    ids, mask = batch(seed=2)
    reward = our_reward(ours, head, ids, mask)
    with torch.no_grad():
        ref = theirs(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits.squeeze(-1)
    diff = (reward - ref).abs().max().item()
    print(f"ours -> PEFT, reward model: max |reward diff| = {diff:.2e}")
    assert reward.abs().max() > 0.1 and diff <= TOL


@pytest.mark.parametrize("task", ["CAUSAL_LM", "SEQ_CLS"])
def test_peft_adapter_loads_in_ours(checkpoint, tmp_path, task):
    import peft
    cls = "GemmaForCausalLM" if task == "CAUSAL_LM" else "GemmaForSequenceClassification"
    torch.manual_seed(0)  # PEFT's init_lora_weights=False draws B like A: a non-zero update
    config = peft.LoraConfig(task_type=task, r=4, lora_alpha=12, lora_dropout=0.1, init_lora_weights=False,
                             target_modules=["k_proj", "o_proj", "gate_proj"])
    theirs = peft.get_peft_model(hf_model(checkpoint, cls), config).eval()
    theirs.save_pretrained(tmp_path)
    ours = Gemma.from_pretrained(checkpoint)
    head = nn.Linear(ours.config.hidden_size, 1, bias=False)
    load_adapter(ours, tmp_path, modules_to_save={"score": head} if task == "SEQ_CLS" else None)
    ours.eval()
    ids, mask = batch(seed=3)
    if task == "CAUSAL_LM":
        ref, got = their_logits(theirs, ids, mask), our_logits(ours, ids, mask)
        diff = (got - ref)[mask.bool()].abs().max().item()
    else:
        with torch.no_grad():
            ref = theirs(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits.squeeze(-1)
        diff = (our_reward(ours, head, ids, mask) - ref).abs().max().item()
    print(f"PEFT -> ours, {task}: max |diff| = {diff:.2e}")
    assert diff <= TOL
    layer = ours.layers[0].self_attn.o_proj
    assert isinstance(layer, LoRALinear) and layer.scaling == 3.0 and layer.dropout.p == 0.1


def test_merge_keeps_outputs_and_removes_lora(checkpoint, tmp_path):
    import peft
    ours = add_lora(Gemma.from_pretrained(checkpoint), r=4, alpha=8, targets="all").eval()
    randomise_lora(ours, seed=4)
    save_adapter(ours, tmp_path)
    ids, mask = batch(seed=5)
    before = our_logits(ours, ids, mask)
    merge_lora(ours)
    diff = (our_logits(ours, ids, mask) - before)[mask.bool()].abs().max().item()
    print(f"merge_lora: max |logit diff| = {diff:.2e}")
    assert diff <= 1e-5
    assert not any("lora" in name for name, _ in ours.named_parameters())
    assert not any(isinstance(m, LoRALinear) for m in ours.modules())
    merged = peft.PeftModel.from_pretrained(hf_model(checkpoint), tmp_path).merge_and_unload()  # PEFT's own merge
    theirs = merged.state_dict()
    for key, value in ours.state_dict().items():
        assert (value - theirs["model." + key]).abs().max() <= 1e-6, key


def test_disabled_lora_is_the_base_model_and_comes_back(checkpoint, tmp_path):
    # reference: PEFT's own disable_adapter() on transformers' model, and the adapter back on outside the block
    import peft
    ours = add_lora(Gemma.from_pretrained(checkpoint), r=4, alpha=8, targets="all").eval()
    randomise_lora(ours, seed=6)
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(hf_model(checkpoint), tmp_path).eval()
    ids, mask = batch(seed=7)
    with disabled_lora(ours), theirs.disable_adapter():
        off, off_ref = our_logits(ours, ids, mask), their_logits(theirs, ids, mask)
    on, on_ref = our_logits(ours, ids, mask), their_logits(theirs, ids, mask)
    m = mask.bool()
    assert (off - off_ref)[m].abs().max() <= TOL and (on - on_ref)[m].abs().max() <= TOL
    assert (on - off)[m].abs().max() > 100 * TOL  # the adapter matters, so the first check could fail
    with pytest.raises(ValueError, match="no LoRA layers"):
        with disabled_lora(Gemma.from_pretrained(checkpoint)):
            pass


def test_training_changes_only_lora_and_head(checkpoint):
    ours = add_lora(Gemma.from_pretrained(checkpoint), r=4, alpha=4, dropout=0.1)
    head = nn.Linear(ours.config.hidden_size, 1, bias=False)
    frozen = {k: v.clone() for k, v in ours.state_dict().items() if "lora_" not in k}
    trainable = {k: v.clone() for k, v in ours.state_dict().items() if "lora_" in k}
    params = [p for p in ours.parameters() if p.requires_grad] + list(head.parameters())
    assert len(params) == 2 * 2 * 3 + 1  # A and B of q and v in 3 layers, and the head
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)  # weight decay would move any base weight it saw
    ids, mask = batch(seed=6)
    for _ in range(3):
        hidden = ours(ids, mask)
        r = head(hidden[torch.arange(len(ids)), mask.sum(-1) - 1]).squeeze(-1)
        loss = -torch.nn.functional.logsigmoid(r[0] - r[1:]).mean() + ours.logits(hidden).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = ours.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items()), "a base weight changed"
    assert all(p.grad is None for n, p in ours.named_parameters() if "lora_" not in n)
    assert all(not torch.equal(state[k], v) for k, v in trainable.items() if k.endswith("lora_A"))


def test_bf16_base_keeps_float32_lora(checkpoint):
    ours = add_lora(Gemma.from_pretrained(checkpoint, dtype=torch.bfloat16), targets="all")
    lora = [p for p in ours.parameters() if p.requires_grad]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    assert all(p.dtype == torch.bfloat16 for p in ours.parameters() if not p.requires_grad)
    opt = torch.optim.AdamW(lora, lr=1e-3)
    ids, mask = batch()
    hidden = ours(ids, mask)
    assert hidden.dtype == torch.bfloat16
    hidden.float().pow(2).mean().backward()
    opt.step()
    assert all(p.grad.dtype == torch.float32 and opt.state[p]["exp_avg"].dtype == torch.float32 for p in lora)


def test_dropout_only_on_the_lora_branch(checkpoint):
    ours = Gemma.from_pretrained(checkpoint).train()
    ids, mask = batch()
    with torch.no_grad():
        base = ours(ids, mask)
        add_lora(ours, dropout=0.5, targets="all").train()  # B = 0: any change would come from the frozen path
        assert torch.equal(ours(ids, mask), base)


def test_gemma_2b_trainable_count():
    with torch.device("meta"):
        model = add_lora(Gemma(GemmaConfig.gemma_2b()), r=64, alpha=64)
    # 18 layers x 64 x ((2048 + 2048) for q_proj + (2048 + 256) for v_proj)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 7_372_800


# -----------------------------------------------------------------------------
# mismatches are refused with a message naming the problem


@pytest.fixture
def adapter(checkpoint, tmp_path):
    ours = add_lora(Gemma.from_pretrained(checkpoint), r=4, alpha=4, targets=("q_proj", "v_proj"))
    save_adapter(ours, tmp_path / "adapter")
    return tmp_path / "adapter"


def test_refuses_rank_mismatch(checkpoint, adapter):
    with pytest.raises(ValueError, match=r"LoRA rank 4, the model's LoRA layers have rank \[8\]"):
        load_adapter(add_lora(Gemma.from_pretrained(checkpoint), r=8, alpha=8), adapter)


def test_refuses_target_mismatch(checkpoint, adapter):
    with pytest.raises(ValueError, match=r"targets \['q_proj', 'v_proj'\], which does not match"):
        load_adapter(add_lora(Gemma.from_pretrained(checkpoint), r=4, alpha=4, targets="all"), adapter)


def test_refuses_shape_mismatch(adapter, tmp_path):
    other = random_hf_gemma("gqa")  # another hidden size
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    with pytest.raises(ValueError, match=r"q_proj\.lora_A\.weight' has shape \(4, 96\), the model expects \(4, 64\)"):
        load_adapter(Gemma.from_pretrained(str(tmp_path / "other")), adapter)


def test_refuses_unknown_and_missing_keys(checkpoint, adapter):
    from safetensors.torch import load_file, save_file
    path = adapter / "adapter_model.safetensors"
    tensors = load_file(path)
    save_file({**tensors, "base_model.model.score.weight": torch.zeros(1, 96)}, path)
    with pytest.raises(ValueError, match=r"unexpected tensor 'base_model\.model\.score\.weight'.*modules_to_save"):
        load_adapter(Gemma.from_pretrained(checkpoint), adapter)
    tensors.pop("base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight")
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"lacks 'base_model\.model\.model\.layers\.2\.self_attn\.v_proj\.lora_B"):
        load_adapter(Gemma.from_pretrained(checkpoint), adapter)


def test_refuses_missing_head_and_unsupported_config(checkpoint, adapter):
    head = nn.Linear(96, 1, bias=False)
    with pytest.raises(ValueError, match=r"lacks 'base_model\.model\.score\.weight'"):
        load_adapter(Gemma.from_pretrained(checkpoint), adapter, modules_to_save={"score": head})
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        load_adapter(Gemma.from_pretrained(checkpoint), adapter)
    with pytest.raises(FileNotFoundError, match="expected a PEFT adapter folder"):
        load_adapter(Gemma.from_pretrained(checkpoint), adapter / "nowhere")
