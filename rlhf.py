"""
RLHF with a DIAL-adapted reward model (paper section 3.8, Fig. 6, appendix A.8): PPO on XSTest prompts.

    python rlhf.py --model tiny --method dial --generations 4        # offline, CPU, minutes
    python rlhf.py --model checkpoints/gemma-3-270m --method src-pref --seed 0   # the paper's settings, a GPU
    python rlhf.py --plot runs/rlhf -o runs/rlhf.png                 # Fig. 6 from several run folders

The loop (appendix A.8; the authors' full_rl.py): train the reward model with Bradley-Terry on labelled pairs; then
each generation samples one response per training prompt from the current policy, judges them (the true reward,
which nothing trains on), (dial only) trains the reward model one epoch with BT on the source pairs plus the
Wasserstein term against the embeddings of those fresh responses (the target domain = the policy's latest outputs,
unlabelled), and runs one epoch of PPO on them. Src-Pref keeps the reward model it started with.

Data (assets/xstest, CC-BY-4.0): 450 prompts that should be answered (safe) or refused (unsafe), split in half,
seeded and stratified, into training and held-out prompts; the source pairs are the human-labelled Mistral-7B
completions of training prompts that have one full compliance and one full refusal (chosen = the right action).
The true reward is 1 when the judge's verdict (refused or not) is the right action for the prompt: by default a
string-match judge (xstest.py); --judge module:function plugs in another (e.g. an LLM judge on a GPU).

PPO is TRL's PPOv2 with its defaults, as the paper says ("all other default parameters from TRL"; the arithmetic is
in ppo.py): a LoRA policy; the reference policy is the same model with the adapter switched off
(lora.disabled_lora: no second copy); a value head on the policy's final hidden states; per-token reward -0.05 KL
with the score at the last response token; GAE (gamma 1, lambda 0.95); advantages whitened over each rollout batch
of 8; 4 passes over it (num_ppo_epochs) in 1 minibatch (num_mini_batches), so that from the second update on the
ratio departs from 1 and the clipped policy and value losses act; loss = pg + 0.1 vf; a last partial rollout batch
is dropped (TRL's drop_last). Differences from the authors' run: they made one pass (the ratio stayed 1: REINFORCE
with a baseline); the value head shares the policy's trunk (they ran a second LoRA model); the score lands on the
last response token rather than one past it (TRL's layout), so that the return is the score itself at gamma = 1.

The reward model's training differs between the methods, as in the paper (DIAL's is the only difference, A.8):
Src-Pref's trains only before PPO, DIAL's one more epoch every generation. `--method dial --lam 0` (the arm
"dial-lam0") trains exactly as DIAL without the alignment term, which separates the two effects; summary.json gives
each method's budget in Bradley-Terry steps.

One run = one folder (default runs/rlhf/<arm>/seed<S>): config.json, metrics.jsonl (per generation: true reward
of the sampled responses, reward-model and PPO logs; held-out greedy evaluations), policy/ (PEFT adapter, with the
value head in value_head.safetensors), reward/ (PEFT adapter with the score head), summary.json, rlhf.png.
"""
import argparse
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import cli
import dial
import figures
import packing
import ppo
import xstest
from gemma import Gemma, Tokenizer, pad
from lora import add_lora, disabled_lora, save_adapter
from processes import command
from runfolder import make_tiny, write_atomically, write_json

PAPER = dict(lr=5e-5, reward_lr=5e-5, response_len=320, reward_epochs=1)  # appendix A.8 and the authors' README
TINY = dict(lr=1e-3, reward_lr=1e-3, response_len=32, reward_epochs=5)  # a tiny model learns little at 5e-5

# -----------------------------------------------------------------------------
# the policy, its value head and its reference; the reward model's scores


class Policy(nn.Module):
    """A Gemma carrying LoRA layers (the trained policy), and a value head on the same final hidden states."""

    def __init__(self, gemma):
        super().__init__()
        self.gemma = gemma
        self.value_head = nn.Linear(gemma.config.hidden_size, 1, dtype=torch.float32)
        nn.init.normal_(self.value_head.weight, std=0.02), nn.init.zeros_(self.value_head.bias)

    def forward(self, q_ids, q_mask, r_ids, r_mask, temperature=1.0):
        """Left-padded queries (B, Q), right-padded responses (B, R) -> log pi(response token) and the value of the
        state before it, each (B, R), zero on padding. Teacher forcing: what sampling computed token by token."""
        hidden = self.gemma(torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1))  # (B, Q + R, D)
        h = hidden[:, q_ids.shape[1] - 1:-1]  # (B, R, D): the states that predict each response token
        logits = self.gemma.logits(h).float() / temperature  # (B, R, V)
        logp = logits.gather(-1, r_ids[..., None]).squeeze(-1) - torch.logsumexp(logits, -1)
        return logp * r_mask, self.value_head(h.float()).squeeze(-1) * r_mask


def ref_logp(policy, *batch, temperature=1.0):
    """log pi_ref: the same model with its adapter switched off."""
    with disabled_lora(policy.gemma):
        return policy(*batch, temperature=temperature)[0]


def queries(tok, prompts, max_len):
    """<bos> + Gemma's user turn + the model-turn cue; a long prompt loses its start, never the cue."""
    q = [tok.encode(xstest.TEMPLATE.format(p["prompt"])) for p in prompts]
    return [r if len(r) <= max_len else r[:1] + r[len(r) - max_len + 1:] for r in q]


@torch.no_grad()
def sample(gemma, tok, qs, cfg, temperature, generator, desc):
    """One response per query: ids up to and including its first stop token (<eos>, or <end_of_turn> where the
    vocabulary has it: tok.stop_ids) or response_len tokens, and their text."""
    ids_out, texts, stops, mode = [], [], tok.stop_ids, gemma.training
    gemma.eval()  # no LoRA dropout while sampling: greedy evaluation stays deterministic
    for k in tqdm(range(0, len(qs), cfg["gen_batch"]), desc=desc, leave=False):
        ids, mask = pad(qs[k:k + cfg["gen_batch"]], tok.pad_id, "left")
        seq = gemma.generate(ids.to(cfg["device"]), mask.to(cfg["device"]), max_new_tokens=cfg["response_len"],
                             temperature=temperature, top_p=1.0, eos_id=stops, generator=generator)
        for row in seq[:, ids.shape[1]:].tolist():
            end = next((k for k, i in enumerate(row) if i in stops), len(row) - 1)
            ids_out.append(row[:end + 1])
            texts.append(tok.decode([i for i in row[:end + 1] if i not in stops]))
    gemma.train(mode)
    return ids_out, texts


def rm_examples(tok, prompts, responses, max_len):
    """(prompt ids, [response ids]) for the reward model: the templated prompt, then the response (packing.tokenize)."""
    rows = [{"prompt": xstest.TEMPLATE.format(p["prompt"]), "response_chosen": r, "response_rejected": r}
            for p, r in zip(prompts, responses)]
    return [(p, rs[:1]) for p, rs in packing.tokenize(rows, tok, max_len)]


@torch.no_grad()
def rm_scores(rm, examples, device, batch=16):
    out = [rm.reward(rm(packing.to_device(packing.pack(examples[k:k + batch]), device))[0])
           for k in range(0, len(examples), batch)]
    return torch.cat(out)


def reward_epoch(rm, src, tgt, method, opt, critic_opt, hp, gp_rng, cfg, step):
    """One epoch of the reward model: BT on the source pairs (+ dial: W against the target examples), batch by batch
    as train.py reads them (the smaller side cycles). Returns the mean logs and the next step number."""
    B, logs = cfg["batch"], []
    n = max(math.ceil(len(src) / B), math.ceil(len(tgt) / B) if method == "dial" else 0)
    for _ in range(n):
        s = [src[i] for i in packing.paired_indices(len(src), B, step, cfg["seed"], "source")]
        t = [tgt[i] for i in packing.paired_indices(len(tgt), B, step, cfg["seed"], "target")] if method == "dial" else []
        batch = packing.to_device(packing.step_batch(s, t, method), cfg["device"])
        logs.append(dial.train_step(rm, [batch], method, opt, critic_opt, hp, gp_rng))
        step += 1
    return {k: float(np.mean([lg[k] for lg in logs])) for k in logs[0]}, step


def ppo_epoch(policy, rm, tok, prompts, qs, responses, texts, opt, cfg, rng, generation):
    """One epoch of PPO over the sampled (query, response) pairs, as TRL's PPOv2 loop: rollout batches of
    cfg['batch'] pairs (a last partial batch is dropped, as TRL's drop_last; the shuffle drops other pairs each
    generation); for each, the rollout quantities from the current policy, advantages whitened over the whole rollout
    batch, then cfg['ppo_epochs'] passes over it in cfg['mini_batches'] shuffled minibatches, one clipped update each:
    from the second update on the policy has moved, the ratio departs from 1 and the clipping acts. Mean logs."""
    B, logs, dev = cfg["batch"], [], cfg["device"]
    order = rng.sample(range(len(qs)), len(qs))
    for k in tqdm(range(0, len(order) - B + 1, B), desc="PPO", leave=False):
        idx = order[k:k + B]
        q_ids, q_mask = pad([qs[i] for i in idx], tok.pad_id, "left")
        r_ids, r_mask = pad([responses[i] for i in idx], tok.pad_id, "right")  # >= 1 token each
        batch = [x.to(dev) for x in (q_ids, q_mask, r_ids, r_mask)]
        m = batch[3].float()
        with torch.no_grad():  # the rollout: old log-probs, values, reference, score
            old_logp, old_v = policy(*batch, temperature=cfg["temperature"])
            ref = ref_logp(policy, *batch, temperature=cfg["temperature"])
            score = rm_scores(rm, rm_examples(tok, [prompts[i] for i in idx], [texts[i] for i in idx],
                                              cfg["reward_len"]), dev)
            rewards = ppo.token_rewards(old_logp, ref, score, m, cfg["kl_coef"])
            adv, ret = ppo.gae(rewards, old_v, m, cfg["gamma"], cfg["lam_gae"])
            adv = ppo.whiten(adv, m)
        if not (torch.isfinite(adv).all() and torch.isfinite(ret).all()):
            raise FloatingPointError(f"PPO, generation {generation}, rollout batch {k // B}: non-finite advantages or "
                                     f"returns (reward-model scores {[round(x, 3) for x in score.tolist()]}, "
                                     f"{int(m.sum())} response tokens); no update made with them")
        updates = []
        for _ in range(cfg["ppo_epochs"]):
            perm = torch.tensor(rng.sample(range(B), B))
            for mb in perm.to(dev).chunk(cfg["mini_batches"]):
                sub = [x[mb] for x in batch]
                logp, v = policy(*sub, temperature=cfg["temperature"])
                loss, out = ppo.ppo_loss(logp, old_logp[mb], v, old_v[mb], adv[mb], ret[mb], m[mb], cfg["clip"],
                                         cfg["vf_clip"], cfg["vf_coef"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                updates.append({"loss": loss.item(), **{name: x.item() for name, x in out.items()}})
        kl = (ppo.kl_per_token(old_logp, ref) * m).sum(1).mean()  # per sequence, as TRL logs it
        logs.append({**{k: float(np.mean([u[k] for u in updates])) for k in updates[0]},
                     "clipfrac_max": max(u["clipfrac"] for u in updates), "kl": kl.item(), "score": score.mean().item(),
                     "updates": len(updates)})
    out = {k: float(np.mean([lg[k] for lg in logs])) for k in logs[0]}
    return {**out, "clipfrac_max": max(lg["clipfrac_max"] for lg in logs), "updates": sum(lg["updates"] for lg in logs),
            "pairs_dropped": len(order) % B}

# -----------------------------------------------------------------------------
# the run


def tiny_base(folder, completions, seed, steps, max_len=64, batch=16, lr=3e-3):
    """A tiny random Gemma with a tokenizer trained on XSTest's text, pre-trained for `steps` steps on the templated
    prompts followed by Mistral's completions (some refuse, most comply): a small policy that can do either."""
    texts = [xstest.TEMPLATE.format(c["prompt"]) + c["completion"] for c in completions]
    make_tiny(folder, texts, 1000, seed)
    if steps == 0:
        return
    tok, model = Tokenizer(os.path.join(folder, "tokenizer.model")), Gemma.from_pretrained(folder)
    rows = [(tok.encode(xstest.TEMPLATE.format(c["prompt"])) + tok.encode(c["completion"], bos=False))[:max_len - 1]
            + [tok.eos_id] for c in completions]
    opt, rng = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01), random.Random(seed)
    for _ in tqdm(range(steps), desc="pre-training the tiny policy", leave=False):
        ids, mask = pad(rng.sample(rows, batch), tok.pad_id)
        logits, keep = model.logits(model(ids, mask))[:, :-1], mask[:, 1:].bool()
        loss = nn.functional.cross_entropy(logits[keep], ids[:, 1:][keep])
        opt.zero_grad(), loss.backward(), opt.step()
    model.save_pretrained(folder)


def build(cfg, folder):
    dtype = torch.bfloat16 if cfg["device"].startswith("cuda") else torch.float32
    torch.manual_seed(cfg["seed"])
    load = lambda: Gemma.from_pretrained(folder, dtype=dtype, device=cfg["device"])  # noqa: E731
    targets = tuple(cfg["lora_targets"].split(","))
    rm_gemma = add_lora(load(), cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"], targets, verbose=False)
    rm = dial.RewardModel(packing.GemmaBackbone(rm_gemma), rm_gemma.config.hidden_size)
    rm.head.to(cfg["device"]), rm.critic.to(cfg["device"])  # float32: never cast the whole reward model
    policy = Policy(add_lora(load(), cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"], targets,
                             verbose=False)).to(cfg["device"])
    return policy, rm, Tokenizer(os.path.join(folder, "tokenizer.model"))


def evaluate(policy, tok, prompts, cfg, judge):
    """Greedy responses to the held-out prompts, judged: the mean true reward."""
    ids, texts = sample(policy.gemma, tok, queries(tok, prompts, cfg["query_len"]), cfg, 0.0, None, "evaluating")
    return float(xstest.true_rewards(judge, prompts, texts).mean()), texts


def arm(cfg):
    """The curve a run belongs to in Fig. 6: its method, or "dial-lam0" for DIAL's reward training with lam 0 (the
    same extra Bradley-Terry steps and schedule as DIAL, no alignment: it separates the two)."""
    return "dial-lam0" if cfg["method"] == "dial" and cfg["lam"] == 0 else cfg["method"]


def reward_budget(cfg, n_src, n_prompts, steps):
    """The reward model's training of each method in Bradley-Terry steps of cfg['batch'] pairs: src-pref trains only
    before PPO; dial (and dial-lam0) also one epoch per generation over max(source pairs, fresh responses)."""
    before = cfg["reward_epochs"] * math.ceil(n_src / cfg["batch"])
    per_generation = max(math.ceil(n_src / cfg["batch"]), math.ceil(n_prompts / cfg["batch"]))
    return {"batch": cfg["batch"], "src-pref": before, "dial": before + cfg["generations"] * per_generation,
            "this_run": steps}


def run(cfg):
    """One RLHF run, written to its folder: the inputs checked, the reward model trained on the source pairs, then
    each generation samples, judges, (DIAL) adapts the reward model to the fresh responses and runs a PPO epoch;
    held-out greedy evaluations; adapters, summary and plot saved. Returns the summary. Long because it is appendix
    A.8's loop read top to bottom, with its state (two models, three optimisers, the curves) in one place."""
    out, method, t0 = cfg["out"], cfg["method"], time.time()
    if os.path.exists(os.path.join(out, "summary.json")):
        raise FileExistsError(f"{out} already holds a finished run: choose another --out")
    if cfg["model"] != "tiny" and not os.path.isdir(cfg["model"]):
        raise FileNotFoundError(f"--model {cfg['model']}: not a folder; fetch a checkpoint (python gemma.py fetch "
                                "gemma-3-270m) or use --model tiny")
    judge = xstest.load_judge(cfg["judge"])
    all_prompts, completions = xstest.load_xstest(cfg["data"])
    train, held = xstest.split_prompts(all_prompts, cfg["data_seed"], cfg["max_prompts"])
    pairs = xstest.source_pairs(completions, train)
    if not pairs:
        raise ValueError(f"no training prompt has a labelled compliance and refusal: raise --max-prompts "
                         f"({cfg['max_prompts']})")
    if len(train) < cfg["batch"]:
        raise ValueError(f"--batch {cfg['batch']} is more than the {len(train)} training prompts: PPO would have no "
                         "full rollout batch; lower --batch or raise --max-prompts")
    os.makedirs(out, exist_ok=True)  # every input checked: now the run folder
    write_json(os.path.join(out, "config.json"), cfg)
    folder = cfg["model"]
    if folder == "tiny":
        folder = os.path.join(out, "base")
        tiny_base(folder, completions, cfg["seed"], cfg["pretrain_steps"])
    policy, rm, tok = build(cfg, folder)
    random.seed(cfg["seed"]), np.random.seed(cfg["seed"]), torch.manual_seed(cfg["seed"])
    rng, gen = random.Random(cfg["seed"]), torch.Generator(cfg["device"]).manual_seed(cfg["seed"])
    src = packing.tokenize(pairs, tok, cfg["reward_len"])
    rm_params = [p for p in rm.backbone.parameters() if p.requires_grad] + list(rm.head.parameters())
    rm_opt = torch.optim.AdamW(rm_params, lr=cfg["reward_lr"], weight_decay=0.01)  # the critic has its own
    hp = dial.DialConfig(lam=cfg["lam"])
    critic_opt, gp_rng = dial.critic_optimizer(rm.critic, hp), torch.Generator(cfg["device"]).manual_seed(cfg["seed"])
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg["lr"], weight_decay=0.01)
    qs = queries(tok, train, cfg["query_len"])
    log = open(os.path.join(out, "metrics.jsonl"), "w")

    def write(record):
        log.write(json.dumps(record) + "\n"), log.flush()

    step, rm_logs = 0, {}
    for _ in range(cfg["reward_epochs"]):  # step 1: the reward model on the labelled pairs, BT only
        rm_logs, step = reward_epoch(rm, src, [], "src-pref", rm_opt, critic_opt, hp, gp_rng, cfg, step)
    write({"generation": 0, "split": "reward", **rm_logs})
    base_eval, _ = evaluate(policy, tok, held, cfg, judge)
    write({"generation": 0, "split": "eval", "true_reward": base_eval})
    train_curve, eval_curve = [], [(0, base_eval)]
    bar = tqdm(range(cfg["generations"]), desc=f"rlhf {method} seed {cfg['seed']}", dynamic_ncols=True)
    for g in bar:
        responses, texts = sample(policy.gemma, tok, qs, cfg, cfg["temperature"], gen, "sampling")
        reward = xstest.true_rewards(judge, train, texts)
        record = {"generation": g + 1, "split": "train", "true_reward": float(reward.mean()),
                  "mean_response_tokens": float(np.mean([len(r) for r in responses])), "example": texts[0][:200]}
        if method == "dial":  # adapt the reward model to the policy's current responses
            tgt = rm_examples(tok, train, texts, cfg["reward_len"])
            rm_logs, step = reward_epoch(rm, src, tgt, "dial", rm_opt, critic_opt, hp, gp_rng, cfg, step)
            record["reward_model"] = rm_logs
        record["ppo"] = ppo_epoch(policy, rm, tok, train, qs, responses, texts, opt, cfg, rng, g + 1)
        write(record)
        train_curve.append(record["true_reward"])
        if cfg["halve_every"] and (g + 1) % cfg["halve_every"] == 0:  # the paper's schedule for dial
            for o in (opt, rm_opt):
                for group in o.param_groups:
                    group["lr"] /= 2
        if (cfg["eval_every"] and (g + 1) % cfg["eval_every"] == 0) or g + 1 == cfg["generations"]:
            eval_curve.append((g + 1, evaluate(policy, tok, held, cfg, judge)[0]))
            write({"generation": g + 1, "split": "eval", "true_reward": eval_curve[-1][1]})
        bar.set_postfix(true=f"{record['true_reward']:.3f}", score=f"{record['ppo']['score']:.2f}",
                        kl=f"{record['ppo']['kl']:.3f}")
    log.close()

    base_name = folder if cfg["model"] != "tiny" else "tiny"
    save_adapter(policy.gemma, os.path.join(out, "policy"), base_model_name_or_path=base_name)
    from safetensors.torch import save_file
    vh = {k: v.contiguous().cpu() for k, v in policy.value_head.state_dict().items()}
    write_atomically(os.path.join(out, "policy", "value_head.safetensors"), lambda tmp: save_file(vh, tmp))
    save_adapter(rm.backbone.gemma, os.path.join(out, "reward"), {"score": rm.head}, base_model_name_or_path=base_name)
    summary = {"method": method, "arm": arm(cfg), "seed": cfg["seed"], "generations": cfg["generations"],
               "train_prompts": len(train), "eval_prompts": len(held), "source_pairs": len(pairs),
               "train_true_reward": train_curve, "eval_true_reward": eval_curve,
               "final_eval_true_reward": eval_curve[-1][1], "reward_training": reward_budget(cfg, len(src), len(train),
                                                                                             step),
               "judge": xstest.judge_report(judge, cfg["judge"], cfg["data"]), "wall_s": round(time.time() - t0, 1)}
    write_json(os.path.join(out, "summary.json"), summary)
    figures.rlhf([out], os.path.join(out, "rlhf.png"))
    print(f"rlhf {method} seed {cfg['seed']}: true reward, training {train_curve[0] if train_curve else float('nan'):.3f}"
          f" -> {train_curve[-1] if train_curve else float('nan'):.3f}; held-out greedy {base_eval:.3f} -> "
          f"{eval_curve[-1][1]:.3f} ({summary['wall_s']:.0f} s)")
    return summary

# -----------------------------------------------------------------------------
# the command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--model", default="tiny", help="Hugging Face checkpoint folder, or 'tiny' (a random tiny Gemma, briefly\n"
                                     "pre-trained on XSTest's completions, saved in <out>/base)")
    a("--method", default="dial", choices=("src-pref", "dial"),
      help="dial with --lam 0: DIAL's reward training without alignment (the arm 'dial-lam0')")
    a("--generations", type=int, default=20, help="PPO epochs, each on freshly sampled responses (paper: 20)")
    a("--seed", type=int, default=0)
    a("--out", help="run folder (default runs/rlhf/<method>/seed<S>)")
    a("--plot", nargs="+", metavar="RUNS", help="only draw Fig. 6 from the run folders in or below RUNS")
    a("-o", "--plot-out", default="runs/rlhf.png", help="the PNG --plot writes (the README's figure: -o assets/...)")
    a("--judge", default="string-match", help="'string-match', or module:function(prompts, responses) -> refused")
    a("--data", default=xstest.XSTEST, help="folder with XSTest's CSV files")
    a("--data-seed", type=int, default=0, help="seed of the train / held-out prompt split")
    a("--max-prompts", type=int, help="use at most N training and N held-out prompts (quick runs)")
    g = p.add_argument_group("optimisation (paper appendix A.8; --model tiny: lr 1e-3, 32-token responses, 5 BT epochs)")
    g.add_argument("--lr", type=float, help="policy and value head (paper: 5e-5)")
    g.add_argument("--reward-lr", type=float, help="reward model (paper: 5e-5)")
    g.add_argument("--batch", type=int, default=8, help="reward-model and PPO batch size")
    g.add_argument("--reward-epochs", type=int, help="BT epochs before PPO (paper: 1, to convergence)")
    g.add_argument("--halve-every", type=int, help="halve every lr after this many generations, 0 = never\n"
                                                   "(default: 5 for dial, as the paper; 0 for src-pref)")
    g.add_argument("--lam", type=float, default=0.01, help="weight of the Wasserstein term (dial)")
    g.add_argument("--lora-r", type=int, default=64)
    g.add_argument("--lora-alpha", type=float, default=64)
    g.add_argument("--lora-dropout", type=float, default=0.0, help="(the authors: 0.1; 0 keeps the PPO ratio at 1)")
    g.add_argument("--lora-targets", default="q_proj,v_proj")
    g = p.add_argument_group("PPO (TRL's PPOv2 defaults, as the authors ran it)")
    g.add_argument("--kl-coef", type=float, default=0.05)
    g.add_argument("--gamma", type=float, default=1.0)
    g.add_argument("--lam-gae", type=float, default=0.95)
    g.add_argument("--clip", type=float, default=0.2, help="policy ratio clip")
    g.add_argument("--vf-clip", type=float, default=0.2, help="value clip")
    g.add_argument("--vf-coef", type=float, default=0.1)
    g.add_argument("--ppo-epochs", type=int, default=4, help="passes over each rollout batch (TRL's num_ppo_epochs)")
    g.add_argument("--mini-batches", type=int, default=1, help="minibatches per pass, one update each (TRL's\n"
                                                               "num_mini_batches); it must divide --batch")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature during training")
    g = p.add_argument_group("lengths and system")
    g.add_argument("--query-len", type=int, default=64, help="prompt tokens (the start of a long prompt is cut)")
    g.add_argument("--response-len", type=int, help="new tokens per response (paper: 320)")
    g.add_argument("--reward-len", type=int, default=512, help="reward-model tokens, prompt + response")
    g.add_argument("--gen-batch", type=int, default=32, help="prompts per generation batch")
    g.add_argument("--eval-every", type=int, default=5, help="greedy held-out evaluation every N generations\n"
                                                           "(and always before the first and after the last)")
    g.add_argument("--pretrain-steps", type=int, default=300, help="--model tiny: pre-training steps of the base")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def resolve(args):
    cfg = {k: v for k, v in vars(args).items() if k not in ("plot", "plot_out")}
    for key, value in (TINY if args.model == "tiny" else PAPER).items():
        cfg[key] = value if cfg[key] is None else cfg[key]
    if cfg["halve_every"] is None:
        cfg["halve_every"] = 5 if args.method == "dial" else 0
    cfg["out"] = cfg["out"] or os.path.join("runs", "rlhf", arm(cfg), f"seed{args.seed}")
    for key in ("batch", "lora_r", "gen_batch", "query_len", "response_len", "reward_len", "ppo_epochs",
                "mini_batches"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {cfg[key]}")
    for key in ("generations", "reward_epochs", "halve_every", "eval_every", "pretrain_steps"):
        if cfg[key] < 0:
            raise ValueError(f"--{key.replace('_', '-')} must not be negative, got {cfg[key]}")
    for key in ("lr", "reward_lr", "temperature"):
        if cfg[key] <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {cfg[key]}")
    if cfg["batch"] % cfg["mini_batches"]:
        raise ValueError(f"--mini-batches {cfg['mini_batches']} must divide --batch {cfg['batch']}")
    if cfg["max_prompts"] is not None and cfg["max_prompts"] < 2:
        raise ValueError(f"--max-prompts must be at least 2, got {cfg['max_prompts']}")
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cli.RUN = None  # until the run folder is known
    with command(args.device, "rlhf") as args.device:
        if args.plot:
            print(f"wrote {figures.rlhf(args.plot, args.plot_out)}")
            return None
        cfg = resolve(args)
        check_sizes(cfg)
        cli.RUN = cfg["out"]  # an unexpected error's traceback goes to RUN/error.log
        return run(cfg)


def check_sizes(cfg):
    """What resolve leaves open, refused before anything is allocated: non-finite numbers, seeds numpy cannot take,
    and sequences longer than the model's positions (a response length of 10**9 would grow its cache for hours)."""
    from gemma import GemmaConfig
    for key, value in cfg.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{key.replace('_', '-')} must be a finite number, got {value}")
    for key in ("seed", "data_seed"):
        if key in cfg and not 0 <= cfg[key] < 2 ** 32:
            raise ValueError(f"--{key.replace('_', '-')} must be in [0, 2**32), got {cfg[key]}")
    config = GemmaConfig.tiny() if cfg["model"] == "tiny" else GemmaConfig.from_json(
        os.path.join(cfg["model"], "config.json")) if os.path.isdir(cfg["model"]) else None
    if config is not None:
        for what, n in (("--query-len + --response-len", cfg["query_len"] + cfg["response_len"]),
                        ("--reward-len", cfg["reward_len"])):
            if n > config.max_position_embeddings:
                raise ValueError(f"{what} is {n} tokens, more than the model's {config.max_position_embeddings} "
                                 "positions")


if __name__ == "__main__":
    main()
