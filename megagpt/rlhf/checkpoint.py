"""PPO checkpoints: both trained roles layout-free, the iteration's state, every rank's RNG.

    <run.dir>/checkpoints/
        latest                        the tag of the newest complete checkpoint (written last)
        step_00000010/
            megagpt.json              iteration, PPO state (ptx position, beta), config, inputs, sha256 of every file
            actor/megagpt.json        the actor alone as a megagpt checkpoint: generate/export-hf/sft read it
            actor/universal/pp0_tpN.pt    fp32 weights and Adam moments of each TP shard
            critic/...                the same for the critic
            rng/rank_00003.pt

The frozen roles are not saved: they are their init checkpoints, reloaded on resume, which refuses where
rlhf.actor_init or rlhf.reward_init now names another checkpoint (megagpt.train.inputs).
Each role's universal form is gathered over that role's DP group only; the files are
written by the role's DP-rank-0 ranks, and the metadata by rank 0, last.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from megagpt.config import Config
from megagpt.errors import CheckpointError
from megagpt.rlhf.layout import TRAINED
from megagpt.train.checkpoint import (FORMAT_VERSION, LATEST, META, abandon_save, candidates, check_same_run,
                                      checkpoint_root, checksums, first_problem, make_save_dirs, model_shape,
                                      other_device_note, prune, read_latest, read_meta, restore_rng, rng_state,
                                      save_file, set_aside_earlier_run, starts_afresh, tag_for, verify_everywhere,
                                      write_meta_and_latest)
from megagpt.train.inputs import describe_inputs
from megagpt.train.universal import load_universal, universal_shard


@dataclass
class PPOState:
    iteration: int = 0  # PPO iterations done
    ptx_samples: int = 0  # pretraining samples the ptx term has consumed
    kl_coef: float = 0.0  # beta, which the adaptive controller moves


class PPOCheckpointer:
    """Every method is collective over the world."""

    def __init__(self, cfg: Config, roles: dict, device: torch.device):
        self.cfg, self.roles, self.device = cfg, roles, device  # roles: this rank's
        self.root = checkpoint_root(cfg.run.dir)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.inputs = describe_inputs(cfg) if self.rank == 0 else None  # prompts, ptx shards, the frozen models

    def save(self, state: PPOState) -> str:
        path = os.path.join(self.root, tag_for(state.iteration))
        failures: list[str] = []  # this rank's writes that failed (a full disk): every rank still makes the collectives
        if self.rank == 0:
            make_save_dirs(path, ["rng", *(f"{r}/universal" for r in TRAINED)], failures)
        problem = first_problem(failures[0] if failures else None)  # the other ranks write into these directories
        if problem:
            raise abandon_save(path, problem, self.root)
        for name in TRAINED:
            role = self.roles.get(name)
            if role is None:
                continue
            shard = universal_shard(role.engine, role.params(), role.pc)
            if shard is not None:
                save_file(lambda f: torch.save(shard, f),
                          os.path.join(path, name, "universal", f"pp0_tp{role.pc.tp_rank}.pt"), failures)
        streams = {name: role.rng.state_dict() for name, role in self.roles.items()}
        rng = rng_state(streams, self.device)
        save_file(lambda f: torch.save(rng, f), os.path.join(path, "rng", f"rank_{self.rank:05d}.pt"), failures)
        problem = first_problem(failures[0] if failures else None)
        if problem:
            raise abandon_save(path, problem, self.root)
        sums = checksums(path)
        if self.rank == 0:
            writes = []
            for name in TRAINED:  # each role's directory is a checkpoint of its own
                own = {f[len(name) + 1:]: s for f, s in sums.items() if f.startswith(name + "/")}
                writes.append((os.path.join(path, name, META), json.dumps(self._meta(state, own), indent=1)))
            meta = {**self._meta(state, sums), "ppo": asdict(state), "world": self.world, "inputs": self.inputs,
                    "cwd": os.getcwd()}
            writes += [(os.path.join(path, META), json.dumps(meta, indent=1, sort_keys=True)),
                       (os.path.join(self.root, LATEST), tag_for(state.iteration) + "\n")]
            write_meta_and_latest(writes, failures)
        problem = first_problem(failures[0] if failures else None)
        if problem:
            raise abandon_save(path, problem, self.root)
        if self.rank == 0:
            prune(self.root, self.cfg.train.keep_last, state.iteration)
        dist.barrier()
        return path

    def _meta(self, state: PPOState, files: dict) -> dict:
        return {"format_version": FORMAT_VERSION, "step": state.iteration, "consumed_samples": 0,
                "consumed_tokens": 0, "layout": None, "model": model_shape(self.cfg), "weights_only": False,
                "universal": True, "config": self.cfg.to_dict(), "files": files}

    def resume(self) -> PPOState:
        """The newest verified checkpoint's state, with the trained roles loaded; a fresh state without one."""
        fresh = PPOState(kl_coef=self.cfg.rlhf.kl_coef)
        if starts_afresh(self.cfg):
            set_aside_earlier_run(self.cfg.run.dir, self.device, "megagpt ppo")
            return fresh
        found, latest = candidates(self.root), read_latest(self.root)
        if latest is not None and latest not in map(os.path.basename, found) and self.rank == 0:
            print(f"megagpt ppo: warning: {self.root}/latest names {latest}, which is missing or incomplete",
                  flush=True)
        for path in found:
            problem = verify_everywhere(path)
            if problem is None:
                return self.load(path)
            if self.rank == 0:
                print(f"megagpt ppo: warning: skipping checkpoint {path}: {problem}", flush=True)
        if found or latest is not None:  # the run saved: starting it over would silently lose it
            raise CheckpointError(f"no usable checkpoint in {self.root}; train.resume=false starts afresh")
        set_aside_earlier_run(self.cfg.run.dir, self.device, "megagpt ppo", why="no checkpoint to resume")
        return fresh

    def load(self, path: str) -> PPOState:
        meta = read_meta(path)
        if "ppo" not in meta:
            raise CheckpointError(f"checkpoint {path} is not a PPO checkpoint (run.dir holds another kind of run)")
        check_same_run(meta["config"], self.cfg, path, meta.get("cwd"))
        for name in TRAINED:
            role = self.roles.get(name)
            if role is not None:
                load_universal(role.engine, role.params(), role.pc, os.path.join(path, name), with_optimizer=True)
        rng_file = os.path.join(path, "rng", f"rank_{self.rank:05d}.pt")
        if meta["world"] == self.world and os.path.isfile(rng_file):  # same world: same ranks, same roles
            state = torch.load(rng_file, weights_only=False)
            streams = restore_rng(state, self.device)
            if streams is None and self.rank == 0:
                print(other_device_note(path, state, self.device), flush=True)
            for name, role in self.roles.items():
                if streams is not None and name in streams:
                    role.rng.load_state_dict(streams[name])
        dist.barrier()
        return PPOState(**meta["ppo"])
