"""Where PPO's four models live: each role on its own rank group with its own TP x DP layout.

    rlhf.layout: {actor: {ranks: 2, tp: 2}, critic: {ranks: 2, tp: 1},
                  reward: {ranks: 2, tp: 2}, reference: {ranks: 2, tp: 1}}

gives the roles consecutive, disjoint rank groups in that order (8 ranks: actor 0-1,
critic 2-3, reward 4-5, reference 6-7), so reward and reference scoring, the critic's
values and the actor's own log-probs run at the same time, and the two updates too.
Without `rlhf.layout`, every role spans all ranks at parallel.tp (colocated: the
baseline, and a single process). Inside a group, TP is the fastest axis, as in
megatron-core: ranks [g*tp, (g+1)*tp) of the group are one TP group.

Model code takes its groups explicitly (LayerContext.tp_group), so a role builds on its
groups alone; `RoleGrid` hands the same groups to DeepSpeed as its `mpu`, so ZeRO
shards over the role's DP group and clips over its TP group, never the world's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megagpt.config import Config
from megagpt.errors import ConfigError
from megagpt.parallel.distributed import new_group
from megagpt.parallel.topology import ParallelContext

ROLES = ("actor", "critic", "reward", "reference")
TRAINED = ("actor", "critic")  # the frozen roles hold no optimizer state


@dataclass(frozen=True)
class RoleSpec:
    ranks: tuple[int, ...]
    tp: int

    @property
    def dp(self) -> int:
        return len(self.ranks) // self.tp

    @property
    def leader(self) -> int:
        """The role's first rank, which sends its results to the other roles."""
        return self.ranks[0]


def parse_layout(cfg: Config, world: int) -> dict[str, RoleSpec]:
    """rlhf.layout (or the colocated default) as rank groups; a layout that cannot work is a ConfigError."""
    raw = cfg.rlhf.layout
    if raw is None:
        specs = {role: RoleSpec(tuple(range(world)), cfg.parallel.tp) for role in ROLES}
    else:
        unknown = sorted(set(raw) - set(ROLES))
        missing = [r for r in ROLES if r not in raw]
        if unknown or missing:
            raise ConfigError(f"rlhf.layout must give exactly the roles {', '.join(ROLES)}"
                              + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                              + (f"; missing: {', '.join(missing)}" if missing else ""))
        specs, start = {}, 0
        for role in ROLES:
            entry = raw[role]
            if not isinstance(entry, dict) or set(entry) - {"ranks", "tp"} or "ranks" not in entry:
                raise ConfigError(f"rlhf.layout.{role}={entry!r} must be a mapping {{ranks: N, tp: T}}")
            ranks, tp = entry["ranks"], entry.get("tp", 1)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (ranks, tp)):
                raise ConfigError(f"rlhf.layout.{role}: ranks={ranks!r} and tp={tp!r} must be positive integers")
            specs[role] = RoleSpec(tuple(range(start, start + ranks)), tp)
            start += ranks
        if start != world:
            counts = " + ".join(str(raw[r]["ranks"]) for r in ROLES)
            raise ConfigError(f"rlhf.layout gives {counts} = {start} ranks to the roles, but the world has {world}")
    for role, spec in specs.items():
        check_role(cfg, role, spec)
    return specs


def init_checkpoint(cfg: Config, role: str) -> Optional[str]:
    """Where a role starts: the SFT model for actor and reference, the reward model for critic and reward."""
    return cfg.rlhf.actor_init if role in ("actor", "reference") else cfg.rlhf.reward_init


def role_model(cfg: Config, role: str):
    """The model a role runs: its init checkpoint's (a reward model may differ from the policy), else cfg.model."""
    from megagpt.generation import checkpoint_config

    init = init_checkpoint(cfg, role)
    return checkpoint_config(init)[1].model if init is not None and os.path.isdir(init) else cfg.model


def check_role(cfg: Config, role: str, spec: RoleSpec) -> None:
    m, r = role_model(cfg, role), cfg.rlhf
    where = f"rlhf.layout.{role}" if cfg.rlhf.layout is not None else "parallel.tp"
    if m.seq_length < cfg.model.seq_length:  # its position embeddings end there: an index error in a rank
        raise ConfigError(f"model.seq_length={cfg.model.seq_length}, which prompt + response and the ptx samples "
                          f"fill, is longer than the {role}'s context {m.seq_length} ({init_checkpoint(cfg, role)}): "
                          f"set model.seq_length <= {m.seq_length}")
    if len(spec.ranks) % spec.tp:
        raise ConfigError(f"{where}: tp={spec.tp} must divide the role's {len(spec.ranks)} ranks")
    for what, size in (("model.num_heads", m.num_heads), ("the MLP width", m.ffn_size),
                       ("the padded vocab", m.padded_vocab_size)):
        if size % spec.tp:
            raise ConfigError(f"{where}: tp={spec.tp} must divide {what} {size}")
    if r.rollout_batch_size % spec.dp:
        raise ConfigError(f"rlhf.rollout_batch_size={r.rollout_batch_size} must be a multiple of the {role}'s "
                          f"data-parallel size {spec.dp}")
    if role in TRAINED:
        mini = r.rollout_batch_size // r.mini_batches
        if r.rollout_batch_size % r.mini_batches or mini % (r.micro_batch_size * spec.dp):
            raise ConfigError(f"rlhf.rollout_batch_size={r.rollout_batch_size} / rlhf.mini_batches={r.mini_batches} "
                              f"must be a multiple of rlhf.micro_batch_size*dp={r.micro_batch_size}*{spec.dp} "
                              f"(the {role}'s)")


class RoleGroups:
    """Every process group the roles need; creating them is collective, so every rank builds all of them."""

    def __init__(self, specs: dict[str, RoleSpec]):
        self._groups: dict[tuple, Optional[dist.ProcessGroup]] = {}
        self.specs = specs
        for spec in specs.values():
            for ranks in tp_groups(spec) + dp_groups(spec):
                self.group(ranks)

    def group(self, ranks: tuple[int, ...]) -> Optional[dist.ProcessGroup]:
        """The group of these ranks, made once (dist.new_group is collective over the world)."""
        ranks = tuple(sorted(ranks))
        if ranks not in self._groups:
            whole = ranks == tuple(range(dist.get_world_size()))
            self._groups[ranks] = dist.group.WORLD if whole else new_group(list(ranks))
        return self._groups[ranks]

    def context(self, role: str, device: torch.device) -> Optional[ParallelContext]:
        """This rank's ParallelContext within the role, or None when the role lives elsewhere."""
        spec, rank = self.specs[role], dist.get_rank()
        if rank not in spec.ranks:
            return None
        tp_ranks = next(g for g in tp_groups(spec) if rank in g)
        dp_ranks = next(g for g in dp_groups(spec) if rank in g)
        return ParallelContext(tp=spec.tp, pp=1, dp=spec.dp, rank=rank, tp_rank=tp_ranks.index(rank), pp_rank=0,
                               dp_rank=dp_ranks.index(rank), tp_group=self.group(tp_ranks),
                               dp_group=self.group(dp_ranks), topology=None, device=device)


def tp_groups(spec: RoleSpec) -> list[tuple[int, ...]]:
    return [spec.ranks[i:i + spec.tp] for i in range(0, len(spec.ranks), spec.tp)]


def dp_groups(spec: RoleSpec) -> list[tuple[int, ...]]:
    return [spec.ranks[j::spec.tp] for j in range(spec.tp)]


class RoleGrid:
    """A role's groups in the shape DeepSpeed asks of an `mpu` (as its PipelineParallelGrid gives them)."""

    def __init__(self, pc: ParallelContext):
        self.pc = pc

    def get_data_parallel_group(self):
        return self.pc.dp_group

    def get_data_parallel_rank(self) -> int:
        return self.pc.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self.pc.dp

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(self.pc.dp_group)

    def get_model_parallel_group(self):
        return self.pc.tp_group

    def get_model_parallel_rank(self) -> int:
        return self.pc.tp_rank

    def get_model_parallel_world_size(self) -> int:
        return self.pc.tp

    get_tensor_model_parallel_group = get_slice_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_slice_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_slice_parallel_world_size = get_model_parallel_world_size

    def get_tensor_model_parallel_src_rank(self) -> int:
        return dist.get_process_group_ranks(self.pc.tp_group)[0]

    def get_pipe_parallel_rank(self) -> int:
        return 0

    def get_pipe_parallel_world_size(self) -> int:
        return 1

    get_pipeline_model_parallel_rank = get_pipe_parallel_rank
    get_pipeline_model_parallel_world_size = get_pipe_parallel_world_size
