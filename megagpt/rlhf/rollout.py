"""Rollouts: the actor samples responses, and tensors move between the role groups.

An iteration's prompts are rlhf.rollout_batch_size consecutive samples of a seeded,
per-epoch shuffled stream over the prompt file, so iteration i always gets the same
prompts. Each actor DP rank samples a contiguous share; row j of the batch draws from
its own generator seeded by (train.seed, iteration, j), so the rollout is the same at
every layout; each use of randomness hashes its seed in a domain of its own (`stream_seed`),
so the mini-batch shuffle never replays a row's stream. A rank's prompts are sampled as
one batch with the KV cache, left-padded to the longest (the cache hides each row's
padding). A rollout is packed as one (N, L + 2) long tensor: the tokens, right-padded
with eod to L = longest prompt + max_new_tokens, then each row's prompt and response lengths.

`Exchange` moves a role's result to the roles that need it: a broadcast from the
source role's leader on a group of just those ranks, made once at start-up. Colocated,
every rank already holds everything and nothing moves.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch
import torch.distributed as dist

from megagpt.generation import Sampling, generate
from megagpt.rlhf.data import epoch_item
from megagpt.rlhf.layout import RoleGroups, RoleSpec

# (source role, destination roles) of every transfer PPO makes
TRANSFERS = (("actor", ("critic", "reward", "reference")),  # the rollout
             ("actor", ("critic",)),  # log pi_old, for the critic's KL-penalised rewards
             ("reference", ("actor", "critic")), ("reward", ("actor", "critic")), ("critic", ("actor",)))


def iteration_prompts(prompts: list[list[int]], iteration: int, n: int, seed: int) -> list[list[int]]:
    """The n prompts of PPO iteration `iteration` (1-based)."""
    return [epoch_item(prompts, (iteration - 1) * n + j, seed) for j in range(n)]


def stream_seed(purpose: str, seed: int, iteration: int, index: int) -> int:
    """The 63-bit seed of one random stream: `purpose` is blake2b's personalisation, so each use has a domain
    of its own. Arithmetic in one domain let uses meet: with (seed*P + iteration)*P + index, the shuffle's
    index 10^6 + epoch at iteration i was row epoch - 3's seed at iteration i + 1."""
    key = f"{seed}/{iteration}/{index}".encode()
    digest = hashlib.blake2b(key, digest_size=8, person=purpose.encode()).digest()
    return int.from_bytes(digest, "big") >> 1


def row_seed(seed: int, iteration: int, row: int) -> int:
    """Row `row` of iteration `iteration`'s rollout: independent of which rank samples it."""
    return stream_seed("rollout", seed, iteration, row)


def shuffle_seed(seed: int, iteration: int, epoch: int) -> int:
    """The order of the rollout's rows in PPO epoch `epoch` of iteration `iteration`."""
    return stream_seed("minibatches", seed, iteration, epoch)


def share(n: int, pc) -> slice:
    """This DP rank's contiguous rows of n."""
    per = n // pc.dp
    return slice(pc.dp_rank * per, (pc.dp_rank + 1) * per)


def sample_rows(actor, prompts: list[list[int]], rows: range, length: int, s: Sampling, eod: int, seed: int,
                iteration: int, vocab: Optional[int] = None) -> torch.Tensor:
    """Packed rollouts (len(rows), length + 2) of the given rows of this iteration's prompts, sampled as
    one left-padded batch (KVCache.pad), then laid out prompt first, response after, eod padding last; new
    tokens among the tokenizer's `vocab` ids (generation.generate)."""
    device = actor.pc.device
    mine = [prompts[r] for r in rows]
    width = max(map(len, mine))
    pad = torch.tensor([width - len(p) for p in mine], dtype=torch.int64, device=device)
    batch = torch.full((len(mine), width), eod, dtype=torch.int64, device=device)
    for i, p in enumerate(mine):
        batch[i, width - len(p):] = torch.tensor(p, dtype=torch.int64, device=device)
    actor.module.eval()
    out = generate(actor.module, batch, s, eod=eod, row_seeds=[row_seed(seed, iteration, r) for r in rows], pad=pad,
                   vocab=vocab)
    actor.module.train()
    new = out[:, width:]
    ended = new == eod
    # a response runs through its first eod (included), or fills max_new_tokens
    response_len = torch.where(ended.any(dim=1), ended.int().argmax(dim=1) + 1,
                               torch.full_like(pad, new.shape[1]))
    packed = torch.full((len(mine), length + 2), eod, dtype=torch.int64, device=device)
    for i, p in enumerate(mine):
        packed[i, :len(p) + new.shape[1]] = out[i, width - len(p):]
    packed[:, length] = torch.tensor([len(p) for p in mine], dtype=torch.int64, device=device)
    packed[:, length + 1] = response_len
    return packed


def gather_rows(part: torch.Tensor, pc) -> torch.Tensor:
    """Every DP rank's contiguous share, concatenated in rank order: the whole batch on every rank of the role."""
    if pc.dp == 1:
        return part
    parts = [torch.empty_like(part) for _ in range(pc.dp)]
    dist.all_gather(parts, part.contiguous(), group=pc.dp_group)
    return torch.cat(parts)


class Exchange:
    """Broadcasts from a role's leader to the ranks of other roles (see the module docstring)."""

    def __init__(self, groups: RoleGroups):
        self.groups, self.specs = groups, groups.specs
        for src, dst in TRANSFERS:  # every rank makes every group, in one order
            members = self._members(src, dst)
            if members is not None:
                groups.group(members)

    def _members(self, src: str, dst: tuple) -> Optional[tuple]:
        """The broadcast group for src -> dst, or None when the destinations already hold the data."""
        source: RoleSpec = self.specs[src]
        wanted = {r for d in dst for r in self.specs[d].ranks}
        if wanted <= set(source.ranks):
            return None
        return tuple(sorted(wanted | {source.leader}))

    def send(self, tensor: Optional[torch.Tensor], src: str, dst: tuple, shape: tuple, dtype: torch.dtype,
             device: torch.device) -> Optional[torch.Tensor]:
        """The src role's tensor on every rank of src and dst (None elsewhere); collective over that group."""
        members = self._members(src, dst)
        if members is None or dist.get_rank() not in members:
            return tensor
        if tensor is None:
            tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(tensor, src=self.specs[src].leader, group=self.groups.group(members))
        return tensor


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (N, L), prompt lengths (N,), response lengths (N,)) of a packed rollout."""
    length = packed.shape[1] - 2
    return packed[:, :length], packed[:, length], packed[:, length + 1]
