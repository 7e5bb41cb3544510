"""
DIAL (arXiv 2501.00911, sections 2.1-2.2): a reward model whose embeddings a Wasserstein critic cannot tell apart
across domains. The reward head learns preferences on labelled source pairs (Bradley-Terry, eq. 5); a critic on the
same embedding estimates the Wasserstein-1 distance between source and target (eq. 2) under a gradient penalty
(eq. 3); the backbone minimises BT + lam * W with the critic frozen, the critic maximises W - lam_gp * GP (eq. 4).

This file knows nothing about Gemma or text. A backbone is any module with backbone(inputs) -> (emb, lm_loss):
emb (N, D) holds one embedding per sequence (or point) of the step, in a fixed order, and lm_loss is a scalar
next-token loss over the tokens the inputs flagged for it, or None. A step's batch is a dict: `inputs` for the
backbone plus index tensors into the rows of emb (see train_step), so every sequence goes through the backbone once.

What is subtle:
- the critic trains on *detached* embeddings, so its loss never reaches the backbone; the backbone then sees the
  critic through lam * W only, with the critic's parameters frozen so the model step cannot move them;
- the head and the critic run in float32 whatever the backbone's dtype (bf16 rewards tie too often);
- target labels are read by the oracle methods only;
- the soft penalty's balance depends on the embeddings' scale (see Critic): a scale s fixed at step 0 removes that.

Glossary: N rows of emb, D embedding size, n source pairs (or questions), K wrong answers per question.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

METHODS = ("src-pref", "dial", "src-pref-sft", "src-pref-tgt-ntp", "tgt-pref", "src-tgt-pref")
ORACLES = ("tgt-pref", "src-tgt-pref")  # the only methods allowed to read target labels
LM_METHODS = ("src-pref-sft", "src-pref-tgt-ntp")  # add the backbone's next-token loss
TARGET_METHODS = ("dial", "src-pref-tgt-ntp") + ORACLES  # read target examples (only the oracles, their labels)
PROMPTED = ("base-lm", "few-shot-lm")  # prompted baselines that train nothing: prompted.py, not train_step
# logs that are gradient norms at the embeddings: split over parts (micro-batches, processes) that each hold their
# own rows, the step's gradient is the parts' mean, whose norm is sqrt(sum of the parts' squared norms) / parts
NORM_LOGS = ("pull_bt", "pull_w")


def combine_norms(squares_sum, parts):
    return squares_sum ** 0.5 / parts


@dataclass
class DialConfig:
    lam: float = 0.01                 # weight of W in the model loss (lambda, appendix A.1)
    lam_gp: float = 1.0               # weight of the gradient penalty in the critic loss
    critic_iters: int = 3             # critic updates per micro-batch, before the model's loss
    critic_lr: float = 1e-4
    critic_weight_decay: float = 1e-3
    lm_weight: float = 1.0            # weight of the next-token loss of src-pref-sft and src-pref-tgt-ntp
    lm_detach: bool = False           # True: the released code's float, logged but with no gradient (no effect)

# -----------------------------------------------------------------------------
# the model: backbone, reward head (phi), critic (psi)


def last_token(hidden, mask):
    """hidden (B, T, D), mask (B, T) with 1 = real token -> (B, D) at each row's last real token.
    Works for right padding (the authors' choice) and left padding alike: it takes the last position whose mask is 1."""
    T = mask.shape[1]
    idx = (mask.bool() * torch.arange(1, T + 1, device=mask.device)).argmax(1)  # (B,) the largest real position
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


class Critic(nn.Module):
    """f(x) = s * g(x / s), g the paper's MLP D -> 256 -> 128 -> 1. s = 1 (the default) is the paper's critic.

    Why s: the critic maximises W - lam_gp * GP with a soft penalty. For two domains whose embeddings lie a distance d
    apart, a critic of slope a along that direction scores about a * d - lam_gp * (a - 1)^2, best at
    a = 1 + d / (2 lam_gp): the "1-Lipschitz" critic's slope grows with the embedding scale. On Gemma 3 270M (norms
    about 90 for English, 190 for Chinese, 190 apart) a critic trained alone on frozen embeddings, as DIAL's steps feed
    it, reaches a slope of 45 after 200 steps at lam_gp 1 (and climbing: 24 against tweets, 47 apart, after 450), so
    the backbone's pull, lam * |grad f|, is tens of times the lam the paper set, and grows with the domain gap.
    WGAN-GP's penalty assumes data of unit scale. With s fixed at step 0 to the mean source embedding norm, g sees
    unit-scale inputs and the critic trains on W / s - lam_gp * GP (critic_step): d / s is at most about 2 for any
    backbone and the slope stays near 1 (2.0 at lam_gp 1, 1.1 at lam_gp 10 on the same embeddings; measured by
    tests/test_real_model.py -k lipschitz), and W = mean f(src) - mean f(tgt) stays in the embedding's own units, so
    lam keeps the paper's meaning: the weight
    of a distance measured by a (nearly) 1-Lipschitz critic. f's gradient is g's, so gradient_penalty is unchanged.

    In the live game (3-epoch runs, English -> Chinese, docs/real_model.md) the backbone pulls the domains together
    (mean norms 93 / 116 in the first quarter, 69 / 68 in the last), so the paper's critic does not run away as it
    does on frozen embeddings: its slope settles at 1.5 to 2.5 over three seeds (GP 0.8 to 2.3); the scaled critic's
    stays at 1.02 to 1.05 (GP 0.001). The scaled critic must keep up with the backbone: at the paper's critic lr 1e-4
    against a model lr of 3e-4 it lagged (slope 0.8, W below zero, embedding norms blown up to 200-450, validation at
    chance); at the paper's critic:model lr ratio of 2 (critic lr 6e-4) it tracks."""

    def __init__(self, dim, activation="gelu", scale=1.0):
        super().__init__()
        if activation not in ("gelu", "none"):
            raise ValueError(f"critic activation must be 'gelu' (the paper) or 'none' (the released code), "
                             f"got {activation!r}")
        if not (scale > 0 and scale < float("inf")):
            raise ValueError(f"the critic's scale must be a positive finite number, got {scale}")
        # The authors' config asks for "gelu", but their domain-adaptation library only knows relu, tanh, ... and
        # returns no layer for an unknown name, so the critic they ran was affine: "none" reproduces that.
        act = nn.GELU if activation == "gelu" else nn.Identity
        self.net = nn.Sequential(nn.Linear(dim, 256), act(), nn.Linear(256, 128), act(), nn.Linear(128, 1))
        self.scale = float(scale)  # a setting of the run (config.json), not a weight: never trained, never saved

    def forward(self, x):
        return self.scale * self.net(x / self.scale).squeeze(-1)  # (N, D) -> (N,); s = 1: the paper's, bit for bit


class RewardModel(nn.Module):
    def __init__(self, backbone, dim, critic_activation="gelu", critic_scale=1.0):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, 1, bias=False, dtype=torch.float32)
        nn.init.normal_(self.head.weight, std=0.02)  # as transformers initialises Gemma's score head
        self.critic = Critic(dim, critic_activation, critic_scale).float()
        # keep these two in float32: cast the backbone alone (model.backbone.to(torch.bfloat16)), never the whole model

    def forward(self, inputs):
        emb, lm_loss = self.backbone(inputs)
        return emb.float(), lm_loss  # (N, D) float32 for the head and the critic

    def reward(self, emb):
        return self.head(emb.float()).squeeze(-1)  # (N, D) -> (N,)

# -----------------------------------------------------------------------------
# losses


def _scores(critic, x):
    return critic(x).reshape(x.shape[0])  # a critic may return (N,) or (N, 1)


def bt_loss(r_chosen, r_rejected):
    """Bradley-Terry, eq. 5 (as a loss to minimise): mean -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def mcq_loss(r_correct, r_wrong):
    """Odd-one-out with K wrong answers: r_correct (N,), r_wrong (N, K) -> the mean of the N * K pairwise BT losses."""
    if r_wrong.ndim != 2 or r_wrong.shape[0] != r_correct.shape[0]:
        raise ValueError(f"r_wrong should have shape (N, K) with N = {r_correct.shape[0]}, got {tuple(r_wrong.shape)}")
    return -F.logsigmoid(r_correct[:, None] - r_wrong).mean()


def wasserstein(critic, src, tgt):
    """The critic's estimate of W1(source, target), eq. 2: mean f(src) - mean f(tgt)."""
    return _scores(critic, src).mean() - _scores(critic, tgt).mean()


def gradient_penalty(critic, src, tgt, generator=None):
    """Eq. 3: mean (||grad_x f(x)|| - 1)^2, two-sided as in WGAN-GP, at points x built from src (n_s, D), tgt (n_t, D).
    The result depends on the critic only: the embeddings are detached here."""
    src, tgt = src.detach(), tgt.detach()
    n_s, n_t, M = src.shape[0], tgt.shape[0], max(src.shape[0], tgt.shape[0])
    if min(n_s, n_t) == 0:
        raise ValueError(f"the gradient penalty needs source and target rows, got {n_s} source and {n_t} target")
    # Pairing: each side is shuffled and tiled to M = max(n_s, n_t) rows, so every row of the larger side appears once
    # and every row of the smaller side floor(M/n) or ceil(M/n) times, each with a random partner. (The released code
    # tiles without shuffling, which with equal counts always pairs source row i with target row i.)
    dev = generator.device if generator is not None else src.device
    i = torch.randperm(n_s, generator=generator, device=dev)[torch.arange(M, device=dev) % n_s].to(src.device)
    j = torch.randperm(n_t, generator=generator, device=dev)[torch.arange(M, device=dev) % n_t].to(src.device)
    a = torch.rand(M, 1, generator=generator, device=dev).to(src)  # (M, 1) one mixing weight per pair
    s, t = src[i], tgt[j]  # (M, D)
    # The paper penalises "not only at source and target embeddings, but at random interpolates between the two", and
    # the released code does the same: so do we, at the M interpolates and at the 2M points they join. With few
    # embeddings per step this also keeps the critic Lipschitz where the data actually is.
    x = torch.cat([s + a * (t - s), s, t]).requires_grad_(True)  # (3M, D)
    (g,) = torch.autograd.grad(_scores(critic, x).sum(), x, create_graph=True)  # create_graph: GP trains the critic
    return (g.norm(dim=1) - 1).pow(2).mean()


def critic_grad_norm(critic, x):
    """Mean ||grad_x f(x)|| over the rows of x (N, D): how far from 1-Lipschitz the critic is where the data is, and
    (times lam) how hard W pulls each embedding. Computed on a detached copy: nothing reaches any weight."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_scores(critic, x).sum(), x)
    return g.norm(dim=1).mean()


def critic_optimizer(critic, cfg):
    # AdamW (decoupled weight decay) as the issue asks; the released code used Adam, whose weight decay is an L2 term
    return torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=cfg.critic_weight_decay)

# -----------------------------------------------------------------------------
# one optimisation step, for every method


def _pref(r, chosen, rejected):
    """Preference loss and accuracy (ties count half) on rows chosen (n,) against rejected (n,) or (n, K)."""
    rc, rr = r[chosen], r[rejected]  # (n,), (n,) or (n, K)
    loss = mcq_loss(rc, rr) if rr.ndim == 2 else bt_loss(rc, rr)
    d = rc[:, None] - rr if rr.ndim == 2 else rc - rr
    return loss, (torch.sign(d) + 1).mean() / 2  # for K wrong answers: the fraction of (row, wrong) pairs won


def critic_step(critic, src, tgt, critic_opt, cfg, generator=None):
    """cfg.critic_iters updates maximising W / s - lam_gp * GP (eq. 4's inner max; s = critic.scale, 1 in the paper)
    on detached embeddings; returns the last W and GP."""
    src, tgt = src.detach(), tgt.detach()  # the critic's loss must never reach the backbone
    w = gp = torch.zeros((), device=src.device)
    for _ in range(cfg.critic_iters):
        w = wasserstein(critic, src, tgt)
        gp = gradient_penalty(critic, src, tgt, generator)
        critic_opt.zero_grad(set_to_none=True)
        (cfg.lam_gp * gp - w / getattr(critic, "scale", 1.0)).backward()  # see Critic: why / s
        critic_opt.step()
    critic_opt.zero_grad(set_to_none=True)  # no stale critic gradient for anyone's optimiser to act on
    return w.detach(), gp.detach()


def train_step(model, micro_batches, method, opt, critic_opt, cfg, generator=None, gather=None):
    """One optimiser step of `method` over a list of micro-batches (gradient accumulation); returns mean logs.
    Each micro-batch is a dict: `inputs` for the backbone, covering every sequence of it, and index tensors into the
    rows of the embeddings: `src_chosen` (n,), `src_rejected` (n,) or (n, K) for multiple choice, `tgt` (unlabelled
    target rows; dial only), and for the oracles only `tgt_chosen`, `tgt_rejected`. opt holds the backbone's trainable
    parameters and the head; critic_opt the critic's (dial only). generator makes the gradient penalty reproducible.
    gather: under data parallelism, a function returning the rows of every process stacked in process order, so that
    each process's critic trains on the whole global batch and stays identical to the others."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    need = ["inputs", "src_chosen", "src_rejected"]
    need += ["tgt"] if method == "dial" else []
    need += ["tgt_chosen", "tgt_rejected"] if method in ORACLES else []  # no other method may even look at them
    logs = {}
    for batch in micro_batches:
        missing = [k for k in need if k not in batch]
        if missing:
            raise ValueError(f"method {method!r} needs the batch keys {', '.join(missing)}, which a micro-batch lacks")
        emb, lm_loss = model(batch["inputs"])  # (N, D): the step's only backbone forward
        r = model.reward(emb)  # (N,)
        bt, acc = _pref(r, batch["src_chosen"], batch["src_rejected"])
        src_rows = torch.cat([batch["src_chosen"], batch["src_rejected"].reshape(-1)])
        loss, out = bt, {"bt": bt, "acc": acc, "emb_src": emb[src_rows].detach().norm(dim=1).mean()}
        if method == "dial" or method in ORACLES:  # the mean embedding norm of each domain: the scale the critic sees
            tgt_rows = batch["tgt"] if method == "dial" else torch.cat([batch["tgt_chosen"],
                                                                         batch["tgt_rejected"].reshape(-1)])
            out["emb_tgt"] = emb[tgt_rows].detach().norm(dim=1).mean()
        if method in ORACLES:
            tgt_bt, _ = _pref(r, batch["tgt_chosen"], batch["tgt_rejected"])
            loss = tgt_bt if method == "tgt-pref" else bt + tgt_bt
        if method in LM_METHODS:
            if lm_loss is None:
                raise ValueError(f"method {method!r} adds the backbone's next-token loss, but the backbone returned "
                                 "None: flag the " + ("source chosen" if method == "src-pref-sft" else "target")
                                 + " tokens in the inputs")
            # a tensor with its graph; the released code added a float here (lm_detach reproduces it)
            loss = loss + cfg.lm_weight * (lm_loss.detach() if cfg.lm_detach else lm_loss)
            out["lm"] = lm_loss
        if method == "dial":
            chosen, rejected, tgt = emb[batch["src_chosen"]], emb[batch["src_rejected"].reshape(-1)], emb[batch["tgt"]]
            src = torch.cat([chosen, rejected])  # every source row
            g = gather or (lambda x: x)  # gathered role by role: the global batch in the order one process would see
            _, out["gp"] = critic_step(model.critic, torch.cat([g(chosen.detach()), g(rejected.detach())]),
                                       g(tgt.detach()), critic_opt, cfg, generator)
            model.critic.requires_grad_(False)  # frozen: W's gradient flows through the critic to emb, not into it
            w = wasserstein(model.critic, src, tgt)
            # what the game looks like (logs only; nothing here reaches a weight): the critic's slope at the step's
            # embeddings, and the size of each loss's gradient at the embeddings (head / frozen critic, cheap)
            out["critic_grad"] = critic_grad_norm(model.critic, torch.cat([src, tgt]))
            out["pull_bt"], out["pull_w"] = (torch.autograd.grad(x, emb, retain_graph=True)[0].norm()
                                             for x in (bt, cfg.lam * w))
            model.critic.requires_grad_(True)
            loss, out["w"] = loss + cfg.lam * w, w  # eq. 4's outer min, plus the source loss
        (loss / len(micro_batches)).backward()
        out["loss"] = loss
        for k, v in out.items():  # detached tensors, summed: no device sync until the end of the step
            logs[k] = logs.get(k, 0) + (v.detach() ** 2 if k in NORM_LOGS else v.detach())
    opt.step()
    opt.zero_grad(set_to_none=True)
    values = torch.stack([v.float() for v in logs.values()]).tolist()  # the step's one host-device sync
    n = len(micro_batches)
    return {k: combine_norms(v, n) if k in NORM_LOGS else v / n for k, v in zip(logs, values)}
