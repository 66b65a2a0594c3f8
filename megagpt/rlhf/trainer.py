"""`megagpt ppo`: PPO-ptx with the actor, critic, reward and reference models on their own rank groups.

    megagpt ppo --config PATH [--nproc N] [key=value ...]

One iteration, every rank running the same program and acting for the roles it holds:

    generate  the actor samples responses to rlhf.rollout_batch_size prompts -> critic, reward, reference
    score     at once, each on its own ranks: the actor's log pi_old, the reference's log pi_SFT,
              the reward model's r(x, y), the critic's values; then each goes where it is needed
    train     the actor (clipped surrogate + gamma * pretraining LM loss) and the critic (clipped
              value loss) side by side, rlhf.ppo_epochs passes of rlhf.mini_batches steps each

metrics.jsonl gets one record per iteration (reward, KL, losses, clip fraction, entropy,
samples/s, seconds per phase); checkpoints (megagpt.rlhf.checkpoint) resume exactly, and
SIGTERM/SIGUSR1 save and stop as in pretraining.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import closing
from math import isfinite

import torch
import torch.distributed as dist

from megagpt.config import Config
from megagpt.errors import ConfigError, DataError, StorageError
from megagpt.files import writing
from megagpt.generation import Sampling
from megagpt.parallel.collectives import mean_over
from megagpt.rlhf import ppo as math
from megagpt.rlhf.checkpoint import PPOCheckpointer, PPOState
from megagpt.rlhf.layout import ROLES, RoleGroups, parse_layout
from megagpt.rlhf.roles import Role, build_role, policy_logprobs, sequence_scores, state_values
from megagpt.rlhf.rollout import Exchange, gather_rows, iteration_prompts, sample_rows, share, shuffle_seed, unpack

PPO_POSTFIX = (("reward", "reward", ".3f"), ("kl", "kl", ".3f"), ("samples_s", "samples_per_s", ".1f"))


def sampling(cfg: Config) -> Sampling:
    r = cfg.rlhf
    return Sampling(max_new_tokens=r.max_new_tokens, temperature=r.temperature)


def tokenized_prompts(cfg: Config, tokenizer) -> tuple[list[list[int]], str]:
    """The prompts as ids, and what was left out and why ("" if nothing): an empty prompt gives the
    policy nothing to answer, a long one leaves no room for rlhf.max_new_tokens."""
    from megagpt.rlhf.data import read_prompts

    room = cfg.model.seq_length - cfg.rlhf.max_new_tokens
    ids = [tokenizer.encode(p) for p in read_prompts(cfg.rlhf.prompts)]
    kept = [p for p in ids if 1 <= len(p) <= room]
    empty, long = sum(not p for p in ids), sum(len(p) > room for p in ids)
    if not kept:
        raise DataError(f"{cfg.rlhf.prompts}: no usable prompt ({empty} empty, {long} longer than "
                        f"model.seq_length={cfg.model.seq_length} minus rlhf.max_new_tokens={cfg.rlhf.max_new_tokens})")
    reasons = [f"{n} {why}" for n, why in ((empty, "empty"), (long, "too long")) if n]
    return kept, ", ".join(reasons)


def _chunks(role: Role, n: int):
    rows = share(n, role.pc)
    step = role.cfg.train.micro_batch_size
    return [slice(i, min(i + step, rows.stop)) for i in range(rows.start, rows.stop, step)]


@torch.no_grad()
def role_outputs(role: Role, tokens: torch.Tensor, final: torch.Tensor) -> dict:
    """What this role contributes to the iteration, for the whole batch (its DP ranks split the rows)."""
    n = tokens.shape[0]
    parts = defaultdict(list)
    for rows in _chunks(role, n):
        if role.name == "actor":
            logp, entropy = policy_logprobs(role, tokens[rows], with_entropy=True)
            parts["logp"].append(logp)
            parts["entropy"].append(entropy)
        elif role.name == "reference":
            parts["logp"].append(policy_logprobs(role, tokens[rows]))
        elif role.name == "critic":
            parts["values"].append(state_values(role, tokens[rows]))
        else:
            parts["score"].append(sequence_scores(role, tokens[rows], final[rows]))
    return {k: gather_rows(torch.cat(v), role.pc) for k, v in parts.items()}


class Iteration:
    """One PPO iteration's data on this rank, and the two updates."""

    def __init__(self, cfg: Config, roles: dict, exchange: Exchange, device: torch.device):
        self.cfg, self.r, self.roles, self.exchange, self.device = cfg, cfg.rlhf, roles, exchange, device

    def rollout(self, prompts: list[list[int]], iteration: int, eod: int, vocab: int) -> torch.Tensor:
        n = self.r.rollout_batch_size
        batch = iteration_prompts(prompts, iteration, n, self.cfg.train.seed)
        length = max(map(len, batch)) + self.r.max_new_tokens
        packed = None
        if "actor" in self.roles:
            actor = self.roles["actor"]
            rows = range(n)[share(n, actor.pc)]
            part = sample_rows(actor, batch, rows, length, sampling(self.cfg), eod, self.cfg.train.seed, iteration,
                               vocab)
            packed = gather_rows(part, actor.pc)
        return self.exchange.send(packed, "actor", ("critic", "reward", "reference"), (n, length + 2), torch.int64,
                                  self.device)

    def score(self, packed: torch.Tensor, eod: int) -> dict:
        """Every role's results where they are needed: the 'experience' of this iteration."""
        tokens, plen, rlen = unpack(packed)
        n, actions = tokens.shape[0], tokens.shape[1] - 1
        mine = {name: role_outputs(role, tokens, plen + rlen - 1) for name, role in self.roles.items()}
        exp = {"tokens": tokens, "mask": math.action_mask(plen, rlen, tokens.shape[1]),
               "last": math.last_action(plen, rlen), "response_len": rlen}
        if "actor" in mine:
            exp["entropy"] = mine["actor"]["entropy"]
        for key, src, dst, shape in (("logp_old", "actor", ("critic",), (n, actions)),
                                     ("logp_ref", "reference", ("actor", "critic"), (n, actions)),
                                     ("score", "reward", ("actor", "critic"), (n,)),
                                     ("values", "critic", ("actor",), (n, actions))):
            local = mine.get(src, {}).get("logp" if key.startswith("logp") else key)
            exp[key] = self.exchange.send(local, src, dst, shape, torch.float32, self.device)
        if exp.get("score") is not None:  # the ranks that got r(x, y): actor and critic (a frozen role's: None)
            exp["unfinished"] = tokens.gather(1, (plen + rlen - 1)[:, None])[:, 0] != eod
            if self.r.missing_eos_penalty:
                exp["score"] = exp["score"] - self.r.missing_eos_penalty * exp["unfinished"].float()
        return exp

    def advantages(self, exp: dict, kl_coef: float) -> None:
        rewards, exp["kl"] = math.token_rewards(exp["score"], exp["logp_old"], exp["logp_ref"], exp["mask"],
                                                exp["last"], kl_coef)
        exp["advantages"], exp["returns"] = math.gae(rewards, exp["values"], exp["mask"], self.r.gamma, self.r.lam)
        if self.r.whiten_advantages:
            exp["advantages"] = math.whiten(exp["advantages"], exp["mask"])

    def _minibatches(self, role: Role, iteration: int):
        """(epoch, mini-batch index, this rank's micro-batches of rows): the same rows at every layout."""
        n, r = self.r.rollout_batch_size, self.r
        size = n // r.mini_batches
        for epoch in range(r.ppo_epochs):
            seed = shuffle_seed(self.cfg.train.seed, iteration, epoch)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self.device)
            for m in range(r.mini_batches):
                rows = order[m * size:(m + 1) * size][share(size, role.pc)]
                yield epoch, m, rows.split(r.micro_batch_size)

    def train_actor(self, exp: dict, iteration: int, ptx_data, ptx_first: int) -> dict:
        from megagpt.data.datasets import micro_batches
        from megagpt.model.vocab_parallel import token_logprobs

        actor, r = self.roles["actor"], self.r
        size = r.rollout_batch_size // r.mini_batches
        sums = defaultdict(list)
        for epoch, m, micro in self._minibatches(actor, iteration):
            ptx = None
            if ptx_data is not None:
                first = ptx_first + (epoch * r.mini_batches + m) * size
                ptx = micro_batches(ptx_data, first, size, r.micro_batch_size, actor.pc.dp_rank, actor.pc.dp)
            for i, rows in enumerate(micro):
                logp = policy_logprobs(actor, exp["tokens"][rows])
                pl = math.policy_loss(logp, exp["logp_old"][rows], exp["advantages"][rows], exp["mask"][rows],
                                      r.clip_ratio)
                ptx_loss = torch.zeros((), device=self.device)
                if ptx is not None:
                    tokens, (labels, mask) = next(ptx)
                    logits = actor(tokens.to(self.device))
                    lp = token_logprobs(logits, labels.to(self.device), actor.pc.tp_group, actor.cfg.model.vocab_size)
                    ptx_loss = -math.masked_mean(lp, mask.to(self.device))
                loss = math.actor_loss(pl.loss, ptx_loss, r.ptx_coef)
                actor.engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
                actor.engine.backward(loss)
                actor.engine.step()
                if i == len(micro) - 1:
                    sums["actor_grad_norm"].append(grad_norm(actor.engine))
                for key, value in (("policy_loss", pl.loss), ("ptx_loss", ptx_loss), ("clip_fraction", pl.clip_fraction),
                                   ("approx_kl", pl.approx_kl)):
                    sums[key].append(value.detach())
        norms = sums.pop("actor_grad_norm")
        return {**{k: mean_over(torch.stack(v).mean(), actor.pc.dp_group, actor.pc.dp) for k, v in sums.items()},
                "actor_grad_norm": worst(norms)}

    def train_critic(self, exp: dict, iteration: int) -> dict:
        critic, r = self.roles["critic"], self.r
        losses, norms = [], []
        for _, _, micro in self._minibatches(critic, iteration):
            for i, rows in enumerate(micro):
                values = state_values(critic, exp["tokens"][rows])
                loss = math.value_loss(values, exp["values"][rows], exp["returns"][rows], exp["mask"][rows],
                                       r.value_clip)
                critic.engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
                critic.engine.backward(loss)
                critic.engine.step()
                losses.append(loss.detach())
            norms.append(grad_norm(critic.engine))
        return {"value_loss": mean_over(torch.stack(losses).mean(), critic.pc.dp_group, critic.pc.dp),
                "critic_grad_norm": worst(norms)}


def grad_norm(engine) -> float | None:
    """The global gradient norm of the engine's last optimizer step (the same on every rank of its role)."""
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


def worst(norms: list) -> float | None:
    """The largest norm, or a non-finite one if any (max() passes over NaN)."""
    measured = [n for n in norms if n is not None]
    bad = [n for n in measured if not isfinite(n)]
    return bad[0] if bad else max(measured, default=None)


def sample_records(exp: dict, iteration: int, tokenizer, count: int) -> list[dict]:
    """The first `count` rollouts as text, with their reward: what the policy is learning to say."""
    records = []
    tokens, first = exp["tokens"], exp["last"] - exp["response_len"] + 2  # the response's first position
    for i in range(min(count, tokens.shape[0])):
        start, end = int(first[i]), int(exp["last"][i]) + 2
        records.append({"step": iteration, "prompt": tokenizer.decode(tokens[i, :start].tolist()),
                        "response": tokenizer.decode(t for t in tokens[i, start:end].tolist() if t != tokenizer.eod),
                        "reward": float(exp["score"][i])})
    return records


def gather_metrics(local: dict) -> dict:
    """Every rank's metrics merged on every rank (each role's leader reports its own)."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged = {}
    for part in parts:
        merged.update(part)
    return merged


def _now(device: torch.device) -> float:
    """The time once this rank's queued work is done: on CUDA, kernels and collectives run behind the host,
    and a phase's mark taken as its last launch returns counted its GPU time in the next phase's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def ppo(cfg: Config) -> None:
    """One rank of `megagpt ppo`."""
    from megagpt.dir_lock import hold_on_rank_zero
    from megagpt.parallel.distributed import init_distributed

    device = init_distributed(cfg.run.device, timeout_minutes=cfg.run.dist_timeout_minutes)
    lock = hold_on_rank_zero(cfg.run.dir, "run.dir", "training run", device)
    try:
        _ppo(cfg, device)
    finally:
        if lock is not None:
            lock.close()


def _ppo(cfg: Config, device: torch.device) -> None:
    from megagpt.data.datasets import build_datasets, note_epochs
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.rlhf.data import checkpoint_tokenizer
    from megagpt.train.checkpoint import require_verified, resolve_checkpoint
    from megagpt.train.guard import check_finite
    from megagpt.train.metrics import RunLog, stop_if_unwritten, written_by_rank_zero
    from megagpt.train.pretrain import Preemption, open_run_dir
    from megagpt.train.profiling import StepProfiler

    rank, t, r = dist.get_rank(), cfg.train, cfg.rlhf
    specs = parse_layout(cfg, dist.get_world_size())
    for key in ("actor_init", "reward_init"):  # every rank at once, before each role group loads what it needs
        require_verified(resolve_checkpoint(getattr(r, key)), what=f"rlhf.{key}: checkpoint")
    groups = RoleGroups(specs)
    exchange = Exchange(groups)
    roles = {name: build_role(cfg, name, pc) for name in ROLES if (pc := groups.context(name, device)) is not None}
    tokenizer = Tokenizer.load(checkpoint_tokenizer(r.actor_init, r.tokenizer))
    prompts, left_out = tokenized_prompts(cfg, tokenizer)
    ptx_data = None
    if r.ptx_coef:
        ptx_data, _ = build_datasets(cfg, t.steps * r.ppo_epochs * r.rollout_batch_size, 1)
    checkpointer = PPOCheckpointer(cfg, roles, device)
    state = checkpointer.resume()
    kl = math.KLController(state.kl_coef, r.kl_target, r.kl_horizon)
    def open_records():
        open_run_dir(cfg, state.iteration)
        if ptx_data is not None and state.iteration < t.steps:  # the ptx samples' order, as pretraining notes it
            note_epochs(cfg.run.dir, ptx_data, state.iteration)

    written_by_rank_zero(rank == 0, device, open_records)
    if rank == 0:
        layout = ", ".join(f"{n} {len(s.ranks)}x(tp={s.tp}, dp={s.dp})" for n, s in specs.items())
        print(f"megagpt ppo: {'colocated' if r.layout is None else 'split'}: {layout}; {len(prompts)} prompts"
              + (f" (left out: {left_out})" if left_out else "")
              + (f"; resumed after iteration {state.iteration}" if state.iteration else ""), flush=True)
    log = RunLog(cfg.run.dir, rank == 0, t.steps, cfg.run.tensorboard, t.progress, first_step=state.iteration,
                 desc="ppo", postfix=PPO_POSTFIX, log_interval=t.log_interval)
    preemption = Preemption(device, t.exit_duration_minutes)
    it = Iteration(cfg, roles, exchange, device)
    profiler = StepProfiler(t.profile_steps, t.profile_ranks, rank, device, cfg.run.dir)
    record = {}
    with closing(profiler):  # a loop that stops inside train.profile_steps still writes what it profiled
        for iteration in range(state.iteration + 1, t.steps + 1):
            profiler.before(iteration)
            start = time.perf_counter()
            packed = it.rollout(prompts, iteration, tokenizer.eod, tokenizer.vocab_size)
            generated = scored = _now(device)
            local = {}
            if packed is not None:
                exp = it.score(packed, tokenizer.eod)
                scored = _now(device)
                if "actor" in roles or "critic" in roles:
                    it.advantages(exp, kl.value)
                    if "actor" in roles:
                        local.update(it.train_actor(exp, iteration, ptx_data, state.ptx_samples))
                    if "critic" in roles:
                        local.update(it.train_critic(exp, iteration))
                    mask = exp["mask"]
                    local.update(reward=exp["score"].mean().item(), kl=exp["kl"].sum(dim=1).mean().item(),
                                 response_length=exp["response_len"].float().mean().item(),
                                 unfinished=exp["unfinished"].float().mean().item())
                    if "entropy" in exp:
                        local["entropy"] = math.masked_mean(exp["entropy"], mask).item()
                    if rank == 0 and r.log_samples and log.problem is None:
                        samples = os.path.join(cfg.run.dir, "samples.jsonl")
                        try:
                            with writing(samples), open(samples, "a") as f:
                                f.writelines(json.dumps(s) + "\n" for s in sample_records(exp, iteration, tokenizer,
                                                                                          r.log_samples))
                        except StorageError as exc:  # a full disk: the ranks agree on it below
                            log.problem = exc
            trained = _now(device)
            if rank == 0:
                local.update(time_generate_s=generated - start, time_score_s=scored - generated,
                             time_train_s=trained - scored)
            merged = gather_metrics(local if rank in (s.leader for s in specs.values()) else {})
            elapsed = time.perf_counter() - start
            profiler.after(iteration)
            record = {"step": iteration, **merged, "kl_coef": kl.value,
                      "samples_per_s": r.rollout_batch_size / elapsed, "step_time_s": elapsed}
            if profiler.marks(iteration):
                record["profiled"] = True
            log.step(record)
            # fp16 reports an infinite norm for the steps it skips to lower the loss scale
            watched = ("policy_loss", "ptx_loss", "value_loss") + (() if t.precision == "fp16" else
                                                                   ("actor_grad_norm", "critic_grad_norm"))
            check_finite(f"PPO iteration {iteration}", {k: merged.get(k) for k in watched}, checkpointer.root)
            # before a save: rank 0's records so far, and whether to stop early, in one collective
            stopping = preemption.agreed(log.problem, preemptible=iteration < t.steps)
            kl.update(merged["kl"], r.rollout_batch_size)
            state = PPOState(iteration, state.ptx_samples + (r.ppo_epochs * r.rollout_batch_size if ptx_data else 0),
                             kl.value)
            if stopping:
                profiler.close()  # the steps it profiled, not the save
                checkpointer.save(state)
                preemption.stop(log, cfg.run.dir, rank == 0, f"iteration {iteration} to {checkpointer.root}")
                return
            if t.save_interval and (iteration % t.save_interval == 0 or iteration == t.steps):
                checkpointer.save(state)
    stop_if_unwritten(device, log.problem)
    log.close()
    if rank == 0 and not record:  # a rerun of a finished run (as pretraining's says)
        print(f"megagpt ppo: {cfg.run.dir} has trained {state.iteration} iterations already, train.steps={t.steps} "
              f"(raise train.steps to continue it)", flush=True)
    elif rank == 0:
        print(f"megagpt ppo: {t.steps} iterations; last reward {record['reward']:.3f}, KL {record['kl']:.3f}, "
              f"beta {record['kl_coef']:.4f}; metrics in {cfg.run.dir}/metrics.jsonl", flush=True)
    dist.barrier()


def _check_policy_shape(cfg: Config, meta: dict, path: str) -> None:
    """model.* names the policy's shape, which is rlhf.actor_init's (a setting that differs was ignored: the roles
    are their checkpoints' models); model.seq_length may be shorter, as the context a rollout fills."""
    from megagpt.train.checkpoint import SHAPE_KEYS, model_shape

    ours = model_shape(cfg)
    diff = [f"model.{k}={ours[k]} (it has {meta['model'].get(k)})" for k in SHAPE_KEYS
            if k != "seq_length" and meta["model"].get(k) != ours[k]]
    if diff:
        raise ConfigError(f"rlhf.actor_init: checkpoint {path} is the policy PPO trains, and the config names another "
                          f"shape: {', '.join(diff)}; set model.* to the policy's")


def preflight_ppo(cfg: Config, world: int) -> None:
    """Before any process starts: the layout fits the world, the files read, the models agree on tokens."""
    from megagpt.data.checks import check_training_data, find_tokenizer
    from megagpt.data.tokenizer import Tokenizer
    from megagpt.data.tokenizer import keep_tokenizer
    from megagpt.rlhf.data import checkpoint_tokenizer, read_prompts
    from megagpt.train.checkpoint import read_meta, resolve_init
    from megagpt.train.universal import require_language_model, require_reward_model

    parse_layout(cfg, world)
    read_prompts(cfg.rlhf.prompts)
    for key in ("actor_init", "reward_init"):
        path = resolve_init(f"rlhf.{key}", getattr(cfg.rlhf, key), cfg.run.dir)
        if not read_meta(path)["universal"]:
            raise DataError(f"rlhf.{key}: checkpoint {path} has no universal/ shards (train.universal_checkpoint=false)")
        if key == "actor_init":  # the policy is a language model; the reward model is the one with a head
            require_language_model(path, "rlhf.actor_init")
            _check_policy_shape(cfg, read_meta(path), path)
        else:
            require_reward_model(path, "rlhf.reward_init")
    actor = checkpoint_tokenizer(cfg.rlhf.actor_init, cfg.rlhf.tokenizer)
    reward = checkpoint_tokenizer(cfg.rlhf.reward_init)
    actor_ids = Tokenizer.load(actor).fingerprint
    if Tokenizer.load(reward).fingerprint != actor_ids:
        raise DataError(f"rlhf.reward_init's tokenizer ({reward}) differs from the actor's ({actor}): the reward "
                        f"model would read the actor's token ids as other words")
    if cfg.rlhf.ptx_coef:
        check_training_data(cfg)
        data = find_tokenizer(cfg)
        if data is not None and Tokenizer.load(data).fingerprint != actor_ids:
            raise DataError(f"the pretraining data mixed in (rlhf.ptx_coef) were tokenized with {data}, not the actor's "
                            f"tokenizer {actor}: their ids would be other words to the actor")
    keep_tokenizer(actor, cfg.run.dir)
