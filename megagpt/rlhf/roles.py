"""PPO's four models, each built on its role's groups, and what each computes from a rollout.

    actor      GPT from rlhf.actor_init; trained (DeepSpeed engine: ZeRO over the role's DP group)
    critic     ScalarGPT from rlhf.reward_init (the value head starts as the reward head); trained
    reward     ScalarGPT from rlhf.reward_init; frozen: no optimizer, no gradients
    reference  GPT from rlhf.actor_init (pi_SFT); frozen

A trained role goes through megagpt.parallel.parallelize like any run (so compile and,
later, activation recompute apply to it), with its own groups as DeepSpeed's mpu.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from megagpt.config import Config
from megagpt.model.gpt import GPT, ScalarGPT, at_positions
from megagpt.model.vocab_parallel import token_logprobs
from megagpt.parallel.topology import ParallelContext
from megagpt.rlhf.layout import TRAINED, RoleGrid, init_checkpoint, role_model

MODEL = {"actor": GPT, "reference": GPT, "critic": ScalarGPT, "reward": ScalarGPT}
PRECISION_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Role:
    name: str
    pc: ParallelContext
    module: nn.Module
    cfg: Config  # the run's config at this role's layout
    engine: Optional[object] = None  # DeepSpeed engine of a trained role
    rng: Optional[object] = None

    def params(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.module.named_parameters())

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """The forward pass: through the engine for a trained role (its ZeRO hooks), else the module."""
        return (self.engine or self.module)(tokens)


def role_config(cfg: Config, role: str, pc: ParallelContext) -> Config:
    """The run's config as this role sees it: the model of its init checkpoint (a reward model may be
    another size than the policy, as InstructGPT's 6B RM for its 175B policy) without dropout, its TP size,
    PPO's micro-batch, and for the critic rlhf.critic_lr.

    Dropout is off in every role, as in Ziegler et al.'s and TRL's PPO: with it on, the actor's log pi_old
    and the critic's values are noisy draws, so the KL to the reference is not 0 before any update and the
    ratio's clip fires on noise (measured on the gpt2 presets' 0.1: KL -0.056 per sequence, 0.7% clipped)."""
    r = cfg.rlhf
    optim = cfg.optim
    if role == "critic" and r.critic_lr is not None:
        optim = dataclasses.replace(optim, lr=r.critic_lr)
    model = dataclasses.replace(role_model(cfg, role), hidden_dropout=0.0, attention_dropout=0.0)
    return dataclasses.replace(cfg, model=model, parallel=dataclasses.replace(cfg.parallel, tp=pc.tp, pp=1),
                               optim=optim, train=dataclasses.replace(cfg.train, micro_batch_size=r.micro_batch_size))


def build_role(cfg: Config, role: str, pc: ParallelContext) -> Role:
    """The role's model on this rank, with its init checkpoint's weights."""
    from megagpt.parallel.parallelize import layer_context, parallelize
    from megagpt.train.checkpoint import resolve_checkpoint
    from megagpt.train.universal import copy_weights, load_universal

    rcfg = role_config(cfg, role, pc)
    path = resolve_checkpoint(init_checkpoint(cfg, role))
    if role in TRAINED:
        mini_batch = cfg.rlhf.rollout_batch_size // cfg.rlhf.mini_batches
        engine, rng = parallelize(rcfg, pc, mini_batch, MODEL[role], mpu=RoleGrid(pc))
        role_ = Role(role, pc, engine.module, rcfg, engine, rng)
        load_universal(engine, role_.params(), pc, path, with_optimizer=False)
        return role_
    ctx, rng = layer_context(rcfg, pc)
    module = MODEL[role](ctx)
    copy_weights(module, path, pc)
    module.requires_grad_(False)
    dtype = PRECISION_DTYPE[cfg.train.precision]  # as the trained roles' engines hold their weights
    return Role(role, pc, module.to(device=pc.device, dtype=dtype).eval(), rcfg, rng=rng)


def policy_logprobs(role: Role, tokens: torch.Tensor, with_entropy: bool = False):
    """log pi(tokens[:, a+1] | tokens[:, :a+1]) for every action a: (N, L-1) (and the entropy (N, L-1))."""
    logits = role(tokens)[:, :-1]
    if role.cfg.rlhf.temperature != 1:  # the policy that samples (the reference too: the KL compares like with like)
        logits = logits / role.cfg.rlhf.temperature
    return token_logprobs(logits, tokens[:, 1:], role.pc.tp_group, role.cfg.model.vocab_size, with_entropy)


def state_values(role: Role, tokens: torch.Tensor) -> torch.Tensor:
    """V before every action: the scalar head at positions 0 .. L-2, (N, L-1)."""
    return role(tokens)[:, :-1].float()


def sequence_scores(role: Role, tokens: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """r(x, y) (N,): the reward model's scalar at each row's final token."""
    return at_positions(role(tokens), final).float()
