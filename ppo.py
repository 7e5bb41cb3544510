"""
The arithmetic of PPO (Schulman et al., 2017, arXiv 1707.06347) as RLHF uses it, in the layout of TRL's PPOv2
trainer, which the DIAL authors ran: plain functions on (B, T) tensors over response tokens, with a mask (1 = a real
response token, 0 = padding after the end). Nothing here knows about models or text; rlhf.py calls these.

    per-token reward   r_t = -beta (log pi(y_t) - log pi_ref(y_t)) + [t = last] * score        (KL-penalised reward)
    TD residual        delta_t = r_t + gamma V_{t+1} - V_t                                       (PPO paper, eq. 12)
    GAE                A_t = delta_t + gamma lambda A_{t+1}                                      (PPO paper, eq. 11)
    returns            R_t = A_t + V_t                                                           (the value target)
    ratio              rho_t = exp(log pi(y_t) - log pi_old(y_t))
    policy loss        mean max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))                  (PPO paper, eq. 7)
    value loss         0.5 mean max((V - R)^2, (V_old + clip(V - V_old, -eps_v, eps_v) - R)^2)
    loss               policy loss + vf_coef * value loss

Means are over real tokens only. Beyond the last real token V = 0 and r = 0, so the last real token's delta is
r_last - V_last: the episode ends there.
"""
import torch


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def whiten(x, mask, shift_mean=True):
    """(x - mean) / std over the real tokens (unbiased variance, as TRL); shift_mean=False keeps the mean. One real
    token has no variance (0 / 0: NaN): whiten a whole rollout batch, never a lone row (rlhf.ppo_epoch)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_per_token(logp, ref_logp):
    """The per-token estimate of KL(pi || pi_ref) on the sampled tokens, log pi - log pi_ref (TRL's "k1")."""
    return logp - ref_logp


def token_rewards(logp, ref_logp, score, mask, kl_coef=0.05):
    """r (B, T): -kl_coef * KL per token, plus the reward model's score (B,) at each row's last real token."""
    r = -kl_coef * kl_per_token(logp, ref_logp) * mask
    last = (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(1)  # (B,) last real position
    r[torch.arange(len(r)), last] += score.to(r.dtype)
    return r


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation: advantages and returns (B, T), computed backwards from the last token."""
    values, rewards = values * mask, rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_adv, next_v = torch.zeros_like(rewards[:, 0]), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        adv[:, t], next_v = next_adv, values[:, t]
    return adv * mask, (adv + values) * mask


def policy_loss(logp, old_logp, adv, mask, clip=0.2):
    """The clipped surrogate objective, as a loss; also the fraction of tokens where clipping took effect."""
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = -adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    return masked_mean(torch.max(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(values, old_values, returns, mask, clip=0.2):
    """The clipped value loss: the new value may not gain from moving more than `clip` away from the rollout's."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def ppo_loss(logp, old_logp, values, old_values, adv, returns, mask, clip=0.2, vf_clip=0.2, vf_coef=0.1):
    """loss = policy loss + vf_coef * value loss; the parts for the logs."""
    pg, clipfrac = policy_loss(logp, old_logp, adv, mask, clip)
    vf = value_loss(values, old_values, returns, mask, vf_clip)
    return pg + vf_coef * vf, {"pg": pg.detach(), "vf": vf.detach(), "clipfrac": clipfrac.detach()}
