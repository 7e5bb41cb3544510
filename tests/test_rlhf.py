"""rlhf.py, ppo.py and xstest.py: the PPO pieces against closed forms, the policy's log-probs and gradients on a tiny
model, a PPO epoch (clipping, the dropped remainder, NaN refused), the XSTest data and the judge measured out of
sample, the reward budget, and a whole two-generation run with the defaults."""
import json
import os
import random

import numpy as np
import pytest
import torch

import figures
import ppo
import rlhf
import xstest
from gemma import Gemma, GemmaConfig, pad
from lora import LoRALinear, add_lora, load_adapter


# -----------------------------------------------------------------------------
# PPO arithmetic against hand-computed values


def test_gae_hand_computed():
    r = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 5.0]])
    v = torch.tensor([[0.5, 1.0, 0.2], [0.5, 1.0, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 2 ends after two tokens: its third entry is padding
    adv, ret = ppo.gae(r, v, m, gamma=1.0, lam=0.5)
    # row 1: A2 = 2 - 0.2 = 1.8; A1 = (0 + 0.2 - 1) + 0.5 * 1.8 = 0.1; A0 = (1 + 1 - 0.5) + 0.5 * 0.1 = 1.55
    # row 2: the episode ends at t = 1: A1 = 0 - 1 = -1; A0 = (1 + 1 - 0.5) + 0.5 * (-1) = 1.0
    assert torch.allclose(adv, torch.tensor([[1.55, 0.1, 1.8], [1.0, -1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[2.05, 1.1, 2.0], [1.5, 0.0, 0.0]]))
    # gamma = lambda = 1: the advantage is the Monte-Carlo return minus the value
    adv, _ = ppo.gae(r, v, m, 1.0, 1.0)
    assert torch.allclose(adv[0], torch.tensor([3.0, 2.0, 2.0]) - v[0])


def test_kl_and_token_rewards():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-0.5, -1.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert torch.equal(ppo.kl_per_token(logp, ref), logp - ref)
    r = ppo.token_rewards(logp, ref, torch.tensor([2.0, -1.0]), m, kl_coef=0.1)
    expected = torch.tensor([[-0.05, 0.0, -0.05 + 2.0], [0.05, 0.2 - 1.0, 0.0]])  # the score at the last real token
    assert torch.allclose(r, expected)


def test_whiten_matches_numpy_on_real_tokens():
    x = torch.tensor([[1.0, 2.0, 7.0], [3.0, 100.0, -50.0]])
    m = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    real = np.array([1.0, 2.0, 7.0, 3.0])
    w = ppo.whiten(x, m)
    assert np.allclose(w[m.bool()].numpy(), (real - real.mean()) / real.std(ddof=1), atol=1e-5)
    assert torch.equal(w[~m.bool()], torch.zeros(2))  # padding plays no part and stays zero
    assert np.allclose(ppo.whiten(x, m, shift_mean=False)[m.bool()].numpy(), (real - real.mean()) / real.std(ddof=1)
                       + real.mean(), atol=1e-5)


def test_policy_loss_clips_as_the_ppo_paper():
    A = torch.tensor([[2.0, 2.0, -1.0, -1.0]])
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5]], requires_grad=True)
    m = torch.ones(1, 4)
    loss, clipfrac = ppo.policy_loss(torch.log(ratio), torch.zeros(1, 4), A, m, clip=0.2)
    # per token: max(-A rho, -A clip(rho)): A > 0, rho 1.5 -> -2 * 1.2 (clipped); A > 0, rho 0.5 -> -2 * 0.5;
    # A < 0, rho 0.5 -> 1 * 0.8 (clipped); A < 0, rho 1.5 -> 1 * 1.5
    assert torch.isclose(loss, torch.tensor((-2.4 - 1.0 + 0.8 + 1.5) / 4))
    assert clipfrac == 0.5
    loss.backward()
    assert torch.allclose(ratio.grad, torch.tensor([[0.0, -0.5, 0.0, 0.25]]))  # no gradient where clipped


def test_value_loss_clips():
    v_old, R, m = torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, -1.0]]), torch.ones(1, 3)
    v = torch.tensor([[0.5, 2.0, 0.1]])
    # token 1: |dv| 0.5 -> clipped to 0.2: max(0.25, 0.64) = 0.64; token 2: max(1, 0.64) = 1;
    # token 3: within the clip: (0.1 + 1)^2 = 1.21
    assert torch.isclose(ppo.value_loss(v, v_old, R, m, clip=0.2), torch.tensor(0.5 * (0.64 + 1.0 + 1.21) / 3))

# -----------------------------------------------------------------------------
# the policy on a tiny model


@pytest.fixture
def policy():
    torch.manual_seed(0)
    cfg = GemmaConfig.tiny()
    cfg.vocab_size = 300
    return rlhf.Policy(add_lora(Gemma(cfg), r=4, alpha=8, verbose=False))


def rollout_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    q = [[2] + torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 9, 3)]
    r = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 1, 6)]
    return (*pad(q, 0, "left"), *pad(r, 0, "right")), q, r


def randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.5)


def test_zero_lora_has_zero_kl(policy):
    batch, _, _ = rollout_batch()
    with torch.no_grad():
        logp, ref = policy(*batch)[0], rlhf.ref_logp(policy, *batch)
        assert torch.equal(ppo.kl_per_token(logp, ref), torch.zeros_like(logp))  # B = 0: the policy is the base
        randomise(policy.gemma)
        logp = policy(*batch)[0]
        assert (ppo.kl_per_token(logp, ref)[batch[3].bool()].abs() > 1e-4).all()  # so the first check could fail


def test_padded_log_probs_equal_each_sequence_alone(policy):
    randomise(policy.gemma)
    batch, qs, rs = rollout_batch()
    with torch.no_grad():
        logp, values = policy(*batch)
        for i, (q, r) in enumerate(zip(qs, rs)):
            ids = torch.tensor([q + r])
            logits = policy.gemma.logits(policy.gemma(ids))[0, len(q) - 1:-1].float()  # no padding at all
            alone = torch.log_softmax(logits, -1)[torch.arange(len(r)), torch.tensor(r)]
            assert torch.allclose(logp[i, :len(r)], alone, atol=1e-5)
            assert torch.equal(logp[i, len(r):], torch.zeros(logp.shape[1] - len(r)))  # zero on padding


def test_loss_gradients_match_their_surrogates(policy):
    # at the rollout (ratio 1, values = old values) the clipped losses have the gradients of their plain forms:
    # policy: -mean(A log pi) (REINFORCE with advantages); value: 0.5 mean (V - R)^2
    randomise(policy.gemma)
    batch, _, _ = rollout_batch(seed=3)
    m = batch[3].float()
    with torch.no_grad():
        old_logp, old_v = policy(*batch)
    g = torch.Generator().manual_seed(4)
    adv, ret = torch.randn(m.shape, generator=g) * m, torch.randn(m.shape, generator=g) * m
    params = [p for p in policy.parameters() if p.requires_grad]

    def grads(loss):
        return torch.autograd.grad(loss, params, allow_unused=True)

    logp, v = policy(*batch)
    pg = grads(ppo.policy_loss(logp, old_logp, adv, m)[0])
    logp, v = policy(*batch)
    pg_ref = grads(-ppo.masked_mean(adv * logp, m))
    logp, v = policy(*batch)
    vf = grads(ppo.value_loss(v, old_v, ret, m))
    logp, v = policy(*batch)
    vf_ref = grads(0.5 * ppo.masked_mean((v - ret) ** 2, m))
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    for name, a, b, c, d in zip(names, pg, pg_ref, vf, vf_ref):
        if name.startswith("value_head"):
            assert a is None  # the policy loss never reaches the value head
        else:
            assert torch.allclose(a, b, atol=1e-6), name
        assert torch.allclose(c, d, atol=1e-6), name
    assert any(a is not None and a.abs().max() > 0 for a in pg)  # the checks above compared real gradients

class PadTok:
    pad_id = 0


def ppo_cfg(**kw):
    return {"batch": 2, "device": "cpu", "temperature": 1.0, "reward_len": 64, "kl_coef": 0.05, "gamma": 1.0,
            "lam_gae": 0.95, "ppo_epochs": 4, "mini_batches": 1, "clip": 0.2, "vf_clip": 0.2, "vf_coef": 0.1, **kw}


def test_ppo_epoch_clips_drops_the_remainder_and_refuses_nan(policy, monkeypatch):
    """Five pairs in rollout batches of two: two batches, the fifth pair dropped. One pass per batch keeps the ratio
    at 1 (no clipping: the released code's REINFORCE); TRL's four passes move it and clipping acts. A NaN score is
    refused in one sentence before any update."""
    g = torch.Generator().manual_seed(5)
    qs = [[2] + torch.randint(3, 300, (n,), generator=g).tolist() for n in (4, 6, 3, 5, 2)]
    rs = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (3, 5, 1, 4, 2)]
    prompts, texts = [{"prompt": "p"}] * 5, ["t"] * 5
    scores = iter([torch.tensor([2.0, -1.0]), torch.tensor([-1.5, 1.0])] * 2)
    monkeypatch.setattr(rlhf, "rm_examples", lambda *a: None)
    monkeypatch.setattr(rlhf, "rm_scores", lambda *a: next(scores))
    for epochs, clipped in ((1, False), (4, True)):
        randomise(policy.gemma, seed=epochs)
        opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
        logs = rlhf.ppo_epoch(policy, None, PadTok(), prompts, qs, rs, texts, opt, ppo_cfg(ppo_epochs=epochs),
                              random.Random(0), 1)
        assert logs["updates"] == 2 * epochs and logs["pairs_dropped"] == 1
        assert (logs["clipfrac_max"] > 0) == clipped and all(np.isfinite(v) for v in logs.values()), logs
    monkeypatch.setattr(rlhf, "rm_scores", lambda *a: torch.tensor([float("nan"), 1.0]))
    before = [p.clone() for p in policy.parameters()]
    with pytest.raises(FloatingPointError, match="PPO, generation 3, rollout batch 0: non-finite advantages"):
        rlhf.ppo_epoch(policy, None, PadTok(), prompts, qs, rs, texts, opt, ppo_cfg(), random.Random(0), 3)
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # no update made with them


def test_reward_budget_of_both_methods():
    cfg = {"batch": 8, "reward_epochs": 1, "generations": 20}
    # 70 pairs: 9 steps before PPO; 225 fresh responses a generation: 29 steps each for dial
    assert rlhf.reward_budget(cfg, 70, 225, 0) == {"batch": 8, "src-pref": 9, "dial": 9 + 20 * 29, "this_run": 0}
    assert rlhf.arm({"method": "dial", "lam": 0.0}) == "dial-lam0"
    assert rlhf.arm({"method": "dial", "lam": 0.01}) == "dial"
    with pytest.raises(ValueError, match="--mini-batches 3 must divide --batch 8"):
        rlhf.resolve(rlhf.parse_args(["--mini-batches", "3"]))
    assert rlhf.resolve(rlhf.parse_args([]))["ppo_epochs"] == 4  # TRL's default


# -----------------------------------------------------------------------------
# data and judge


def test_judge_is_measured_out_of_sample():
    _, completions = xstest.load_xstest()
    fit, held = xstest.split_completions(completions, seed=0)
    assert len(completions) == 900 and len(fit) == len(held) == 450
    assert {c["id"] for c in fit}.isdisjoint({c["id"] for c in held})  # a prompt's two completions stay together
    assert xstest.REFUSAL == xstest.choose_phrases(fit)  # the judge's phrases: chosen on the fitting half alone
    assert xstest.choose_phrases(held) != xstest.REFUSAL  # (so the half they are chosen on matters)
    report = xstest.judge_report(xstest.string_match_judge)
    ours, theirs = report, report["xstest_matcher"]
    print(f"held-out half: string match {ours}; XSTest's matcher {theirs}")
    assert report["evaluation"] == "held-out" and report["n"] == 450 and theirs["n"] == 450
    assert ours["accuracy"] >= 0.85 and ours["accuracy"] > theirs["accuracy"] and ours["refusal_recall"] > 0.7
    assert xstest.string_match_judge(["q"] * 2, ["I'm sorry, but I cannot help with that.", "Sure! Here is how."]) == \
        [True, False]
    assert xstest.xstest_matcher(["q"] * 3, ["  Sorry, no.", "No, never.", "Yes. I cannot say no, though."]) == \
        [True, True, False]  # XSTest's rule: the start of the response only
    a = xstest.agreement(lambda q, r: [True] * len(r), held)
    assert a["refusal_recall"] == 1 and a["compliance_recall"] == 0 and a["accuracy"] == a["refusals"] / a["n"]


def test_split_and_source_pairs():
    prompts, completions = xstest.load_xstest()
    assert len(prompts) == 450 and sum(p["safe"] for p in prompts) == 250
    train, held = xstest.split_prompts(prompts, seed=0)
    assert {p["id"] for p in train}.isdisjoint({p["id"] for p in held}) and len(train) + len(held) == 450
    assert sum(p["safe"] for p in train) == 125 and sum(not p["safe"] for p in train) == 100  # stratified
    assert [p["id"] for p in xstest.split_prompts(prompts, seed=0)[0]] == [p["id"] for p in train]  # seeded
    assert [p["id"] for p in xstest.split_prompts(prompts, seed=1)[0]] != [p["id"] for p in train]
    pairs = xstest.source_pairs(completions, prompts)
    assert len(pairs) == 140  # SOURCE.txt: 22 safe and 118 unsafe prompts have a full compliance and a full refusal
    human = {c["completion"]: c["refused"] for c in completions}
    by_text = {xstest.TEMPLATE.format(p["prompt"]): p["safe"] for p in prompts}
    for row in pairs:
        safe = by_text.get(row["prompt"], False)  # the one prompt whose wording changed upstream is unsafe
        assert human[row["response_chosen"]] == (not safe) and human[row["response_rejected"]] == safe


def test_bad_judge_and_flags_get_one_sentence():
    with pytest.raises(ValueError, match="--judge 'nope'"):
        xstest.load_judge("nope")
    with pytest.raises(ValueError, match="--batch must be at least 1"):
        rlhf.resolve(rlhf.parse_args(["--batch", "0"]))


def test_plot_reads_run_folders(tmp_path):
    for method, seed, curve in (("src-pref", 0, [0.5, 0.6]), ("src-pref", 1, [0.4, 0.6]), ("dial", 0, [0.5, 0.7])):
        d = tmp_path / method / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"method": method, "seed": seed, "train_true_reward": curve,
                                                    "eval_true_reward": [[0, 0.5], [2, curve[-1]]]}))
    out = figures.rlhf([str(tmp_path)], str(tmp_path / "fig.png"))
    assert os.path.getsize(out) > 10000
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        figures.rlhf([str(tmp_path / "empty")], str(tmp_path / "x.png"))

# -----------------------------------------------------------------------------
# with generation


def test_sampled_tokens_are_the_teacher_forced_argmax(policy):
    # greedy generation (KV cache, left padding) picks, at every step, the argmax of what teacher forcing computes
    randomise(policy.gemma)
    (q_ids, q_mask, _, _), _, _ = rollout_batch()
    with torch.no_grad():
        seq = policy.gemma.generate(q_ids, q_mask, max_new_tokens=6, temperature=0.0)
        r = seq[:, q_ids.shape[1]:]
        logp, _ = policy(q_ids, q_mask, r, torch.ones_like(r))
        h = policy.gemma(torch.cat([q_ids, r], 1), torch.cat([q_mask, torch.ones_like(r)], 1))
        best = torch.log_softmax(policy.gemma.logits(h[:, q_ids.shape[1] - 1:-1]).float(), -1).max(-1)
    assert torch.equal(best.indices, r)
    assert torch.allclose(logp, best.values, atol=1e-5)  # the rollout's log-probs are those of the chosen tokens


def test_two_generations_of_the_whole_loop(tmp_path):
    # defaults (4 PPO passes per rollout batch of 8) on 17 prompts: a remainder of one, dropped, never whitened alone
    out = str(tmp_path / "run")
    s = rlhf.main(["--model", "tiny", "--method", "dial", "--generations", "2", "--max-prompts", "17",
                   "--pretrain-steps", "10", "--response-len", "8", "--eval-every", "1", "--out", out])
    assert len(s["train_true_reward"]) == 2 and [g for g, _ in s["eval_true_reward"]] == [0, 1, 2]
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2 and all("w" in r["reward_model"] for r in train)
    assert all(np.isfinite(v) for r in train for v in (*r["ppo"].values(), *r["reward_model"].values()))
    assert all(r["ppo"]["updates"] == 2 * 4 and r["ppo"]["pairs_dropped"] == 1 for r in train)
    assert max(r["ppo"]["clipfrac_max"] for r in train) > 0  # the ratio left 1 and clipping acted
    # the reward model's training of both methods: 5 BT epochs of ceil(pairs / 8) steps before PPO; dial also
    # max(ceil(pairs / 8), ceil(17 / 8)) = 3 steps in each generation
    before = 5 * -(-s["source_pairs"] // 8)
    assert s["reward_training"] == {"batch": 8, "src-pref": before, "dial": before + 2 * 3, "this_run": before + 6}
    assert s["judge"]["evaluation"] == "held-out" and s["arm"] == "dial"
    for name in ("config.json", "summary.json", "rlhf.png", "policy/adapter_config.json",
                 "policy/value_head.safetensors", "reward/adapter_model.safetensors"):
        assert os.path.exists(os.path.join(out, name)), name
    trained = load_adapter(Gemma.from_pretrained(os.path.join(out, "base")), os.path.join(out, "policy"))
    assert any(m.lora_B.abs().max() > 0 for m in trained.modules() if isinstance(m, LoRALinear))  # PPO moved it
