"""PPO-ptx's math (InstructGPT §3.5, with Ziegler et al. 2019's per-token KL), layout-free.

The objective the actor maximises is

    E_(x,y)~pi [ r(x, y) - beta * log(pi(y|x) / pi_SFT(y|x)) ] + gamma * E_x~pretrain [ log pi(x) ]

Positions: a rollout is tokens (N, L), prompt then response then eod padding. Action a
(0 <= a < L-1) is "emit tokens[:, a+1] after tokens[:, :a+1]"; its log-prob is read
from the logits at position a, and the critic's value at position a is V of the state
before it. A row's actions are a = p-1 .. p+r-2 for a prompt of p tokens and a
response of r (its eod included); `action_mask` marks them.

Per-token reward: -beta * (log pi_old - log pi_ref) at every action, plus r(x, y) at the
last one. GAE(gamma, lambda) over the actions gives advantages and returns; the losses
are PPO's clipped surrogate and the clipped value loss, each a masked mean over a
micro-batch's actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def action_mask(prompt_len: torch.Tensor, response_len: torch.Tensor, length: int) -> torch.Tensor:
    """(N, length - 1) float: 1 at each row's response actions."""
    a = torch.arange(length - 1, device=prompt_len.device)[None, :]
    first = (prompt_len - 1)[:, None]
    return ((a >= first) & (a < first + response_len[:, None])).float()


def last_action(prompt_len: torch.Tensor, response_len: torch.Tensor) -> torch.Tensor:
    """(N,) index of each row's last action (it emits the response's final token)."""
    return prompt_len + response_len - 2


def token_rewards(score: torch.Tensor, logp_old: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                  last: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards (N, A), per-token KL estimate (N, A)): the KL penalty at every action, r(x, y) at the last."""
    kl = (logp_old - logp_ref) * mask
    rewards = -kl_coef * kl
    rewards = rewards.scatter_add(1, last[:, None], score[:, None].to(rewards.dtype))
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (N, A), zero outside the mask; the value after a row's last action is 0."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for a in range(rewards.shape[1] - 1, -1, -1):
        live = mask[:, a]
        delta = rewards[:, a] + gamma * next_value - values[:, a]
        running = (delta + gamma * lam * running) * live
        advantages[:, a] = running
        next_value = torch.where(live > 0, values[:, a], next_value)
    return advantages, (advantages + values) * mask


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries of the whole rollout batch."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


@dataclass
class PolicyLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> PolicyLoss:
    """PPO's clipped surrogate, to minimise."""
    ratio = torch.exp(logp - logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(logp_old - logp, mask)
    return PolicyLoss(masked_mean(torch.maximum(unclipped, clipped), mask), clip_fraction, approx_kl)


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> torch.Tensor:
    """The clipped value loss: new values may not leave the rollout's by more than `clip` for free."""
    clipped = values_old + (values - values_old).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def actor_loss(policy: torch.Tensor, ptx: torch.Tensor, ptx_coef: float) -> torch.Tensor:
    """The PPO-ptx actor loss: the surrogate plus gamma times the pretraining LM loss (-log pi(x))."""
    return policy + ptx_coef * ptx if ptx_coef else policy


class KLController:
    """beta: fixed, or adapted towards a target KL (Ziegler et al. 2019, eq. 2):
    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * samples / horizon)."""

    def __init__(self, value: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, kl: float, samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * samples / self.horizon
