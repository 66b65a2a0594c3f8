"""The layout-free checkpoint form, `universal/`: one file per (pp, tp) shard of the saving layout.

    universal/pp0_tp1.pt = {"params": {canonical name: {"fp32", "exp_avg", "exp_avg_sq"}},
                            "partition_dims": {name: dim, -1 if replicated}, "tp": 2, "tp_rank": 1,
                            "optimizer_step": 40, "loss_scaler": fp16's dynamic scale, or None}

Each tensor is whole over DP (gathered from ZeRO's partitions) and a TP shard along its partition dim,
keyed by the pp = 1 module's parameter names, so any (tp, pp, dp, ZeRO stage) can load it: TP shards
are concatenated and re-cut for the loading layout. megagpt.train.checkpoint writes and picks it; the
Hugging Face export and PPO's frozen roles read it too.
"""

from __future__ import annotations

import glob
import os
import pickle
from typing import Optional

import torch

from megagpt.errors import CheckpointError, on_every_rank
from megagpt.parallel.topology import ParallelContext

ADAM_STATES = ("exp_avg", "exp_avg_sq")


def partition_dim(param: torch.Tensor) -> int:
    return param.partition_dim if getattr(param, "tensor_model_parallel", False) else -1


def base_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's wrapper (ZeRO, BF16/FP16 optimizers); the engine's own at ZeRO 0 fp32."""
    opt = engine.optimizer
    return opt if isinstance(opt, torch.optim.Optimizer) else opt.optimizer


def plain_masters(engine) -> Optional[dict]:
    """Without ZeRO's or BF16_Optimizer's parameter mappings (ZeRO 0 but bf16 at pp > 1): {id(param): the
    fp32 tensor AdamW steps}, the parameter itself (fp32) or FP16_UnfusedOptimizer's master copy; else None."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    opt = engine.optimizer
    if isinstance(opt, torch.optim.Optimizer):
        return {id(p): p for group in opt.param_groups for p in group["params"]}
    if isinstance(opt, FP16_UnfusedOptimizer):
        return {id(low): master for lows, masters in zip(opt.fp16_groups, opt.fp32_groups)
                for low, master in zip(lows, masters)}
    return None


def adam_state(opt: torch.optim.Optimizer, master: torch.Tensor) -> dict:
    """master's AdamW state, created as AdamW's first step makes it if it has none yet (fused: fp32 step)."""
    state = opt.state[master]
    if "exp_avg" not in state:
        state["step"] = torch.zeros((), dtype=torch.float32, device=master.device)
        state["exp_avg"] = torch.zeros_like(master, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(master, memory_format=torch.preserve_format)
    return state


def universal_shard(engine, params: list, pc: ParallelContext) -> Optional[dict]:
    """This TP shard's full-DP fp32 weights and Adam moments of the engine's (canonical name, parameter)
    pairs, gathered over DP (a collective over the engine's DP group); dp rank 0 gets them, others None.
    At ZeRO 0 every dp rank holds them whole already."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    masters = plain_masters(engine)
    if masters is None:
        link_adam_state(engine)
    tensors, dims = {}, {}
    for name, param in params:
        if pc.pp_rank > 0 and name.startswith("embedding."):
            # The last stage's copy of the tied embedding: its word embeddings equal stage 0's, its
            # position embeddings are unused there (never trained), so stage 0 alone is saved.
            continue
        if masters is not None:
            master = masters[id(param)]
            state = base_optimizer(engine).state.get(master, {})
            entry = {"fp32": master.detach().float()}
            for key in ADAM_STATES:
                entry[key] = state[key] if key in state else torch.zeros_like(entry["fp32"])
        else:
            entry = {"fp32": safe_get_full_fp32_param(param)}
            for key in ADAM_STATES:
                entry[key] = safe_get_full_optimizer_state(param, key)
        if entry["fp32"] is None:
            raise CheckpointError(f"parameter {name} has no DeepSpeed fp32 master copy; cannot save it layout-free")
        if pc.dp_rank == 0:  # the gather above is collective; the copy to host memory only for the rank that saves
            tensors[name] = {k: v.detach().cpu().clone() for k, v in entry.items()}
            dims[name] = partition_dim(param)
    if pc.dp_rank != 0:
        return None
    return {"params": tensors, "partition_dims": dims, "tp": pc.tp, "tp_rank": pc.tp_rank,
            "optimizer_step": optimizer_step(engine), "loss_scaler": loss_scaler_state(engine)}


# fp16's dynamic loss scale (DeepSpeed's DynamicLossScaler, which ZeRO 1/2/3 step fp16 with): its scale, the
# steps it has counted, its last overflow and the overflows it still tolerates before lowering the scale.
LOSS_SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def dynamic_loss_scaler(engine):
    """The engine's dynamic loss scaler; None without one (fp32 and bf16 have a static one, or none)."""
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    return scaler if getattr(scaler, "dynamic", False) else None


def loss_scaler_state(engine) -> Optional[dict]:
    """The engine's dynamic loss scale as it stands (the same on every rank: overflows are agreed); None
    without one."""
    scaler = dynamic_loss_scaler(engine)
    return None if scaler is None else {field: getattr(scaler, field) for field in LOSS_SCALER_FIELDS}


def restore_loss_scaler(engine, state: Optional[dict]) -> None:
    """Continue the saved dynamic loss scale; a run without one (saved in fp32 or bf16) keeps the fresh scale."""
    scaler = dynamic_loss_scaler(engine)
    if state is None or scaler is None:
        return
    for field in LOSS_SCALER_FIELDS:
        setattr(scaler, field, state[field])


def optimizer_step(engine) -> int:
    for state in base_optimizer(engine).state.values():
        if "step" in state:
            return int(state["step"])
    return 0


VOCAB_WEIGHT = "embedding.word_embeddings.weight"


def load_universal(engine, params: list, pc: ParallelContext, path: str, with_optimizer: bool,
                   new_parameters: tuple = (), grow: dict | None = None) -> None:
    """Set the engine's (canonical name, parameter) pairs, and their Adam moments, from universal/ shards.
    grow: {name: (rows, std, seed)}: a weight the checkpoint holds fewer rows of, the rest drawn N(0, std)
    from `seed` (the same at every layout) before this rank takes its TP shard."""
    from deepspeed.utils import safe_set_full_optimizer_state

    shards = UniversalShards(path)
    step = shards.optimizer_step
    masters = plain_masters(engine)
    if masters is None:
        link_adam_state(engine)
    with torch.no_grad():
        for name, param in params:
            if name.startswith(new_parameters) and name not in shards.where:
                continue
            full = shards.full(name)
            if grow and name in grow and full["fp32"].shape[0] < grow[name][0]:
                rows, std, seed = grow[name]
                old = full["fp32"]
                extra = torch.empty(rows - old.shape[0], *old.shape[1:]).normal_(
                    0.0, std, generator=torch.Generator().manual_seed(seed))
                full = {"fp32": torch.cat([old, extra.to(old.dtype)])}
            mine = {k: tp_shard(v, partition_dim(param), pc.tp, pc.tp_rank) for k, v in full.items()}
            if mine["fp32"].shape != param.shape:
                raise CheckpointError(f"checkpoint {path}: {name} has shape {tuple(mine['fp32'].shape)} here, "
                                      f"the model expects {tuple(param.shape)}")
            if masters is not None:
                master = masters[id(param)]
                param.copy_(mine["fp32"].to(param.dtype))
                master.copy_(mine["fp32"].to(master.device, master.dtype))
                if with_optimizer:
                    state = adam_state(base_optimizer(engine), master)
                    for key in ADAM_STATES:
                        state[key].copy_(mine[key])
                continue
            assign(param, mine["fp32"])
            if with_optimizer:
                for key in ADAM_STATES:
                    safe_set_full_optimizer_state(param, mine[key].to(param.device), key)
    if with_optimizer:  # a weights-only checkpoint leaves the fresh optimizer as it is
        restore_loss_scaler(engine, shards.loss_scaler)
        for state in base_optimizer(engine).state.values():
            if torch.is_tensor(state.get("step")):
                state["step"].fill_(step)
            elif "step" in state:
                state["step"] = step


def copy_weights(model: torch.nn.Module, path: str, pc: ParallelContext) -> None:
    """Fill a pp = 1 model outside any engine (inference, PPO's frozen roles) with this rank's TP shards."""
    shards = UniversalShards(path)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(tp_shard(shards.full(name)["fp32"], partition_dim(param), pc.tp, pc.tp_rank))


def assign(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Set a trained parameter: the model's copy and the ZeRO optimizer's fp32 master copy."""
    from deepspeed.utils import safe_set_full_fp32_param

    with torch.no_grad():
        param.copy_(value.to(param.dtype))
    safe_set_full_fp32_param(param, value.float().to(param.device))


def link_adam_state(engine) -> None:
    """Give every ZeRO partition its Adam state and link it to the parameters' fragments.

    DeepSpeed 0.19.8 links fragments after stepping the first param group only, so the
    second group (biases, norms: no weight decay) never gets its moments linked; a fresh
    engine has no state at all. The state created here is what AdamW's first step makes.
    """
    zero = engine.optimizer
    if not hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        return
    base = zero.optimizer
    for group in base.param_groups:
        for flat in group["params"]:
            state = base.state[flat]
            if "exp_avg" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=flat.device)
                state["exp_avg"] = torch.zeros_like(flat)
                state["exp_avg_sq"] = torch.zeros_like(flat)
    zero._hp_optimizer_states_linked = False
    zero._lazy_init_hp_params_optimizer_state()


def _unreadable(path: str, file: str, exc: Exception) -> str:
    from megagpt.train.checkpoint import read_meta, sha256_file

    recorded = read_meta(path)["files"].get(os.path.relpath(file, path))
    if recorded is not None and sha256_file(file) != recorded:
        return f"{file} fails its sha256 checksum"
    return f"{file} cannot be read ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]})"  # torch's: pages


def tp_shard(full: torch.Tensor, dim: int, tp: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's slice of a full tensor along its partition dim (-1: replicated, the whole tensor)."""
    return full if dim < 0 else full.chunk(tp, dim=dim)[tp_rank].contiguous()


class UniversalShards:
    """Reads `universal/` lazily: full tensors assembled from the TP shards that hold them."""

    def __init__(self, path: str):
        self.files = {}
        for file in sorted(glob.glob(os.path.join(path, "universal", "pp*_tp*.pt"))):
            try:
                self.files[file] = torch.load(file, mmap=True, weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
                # what the unpickler met in a damaged file (a UnicodeDecodeError, say): read before the ranks verify
                # the checksums (the parameters' names, in a launcher's checks), so the checksum is told here
                raise CheckpointError(f"checkpoint {path}: {_unreadable(path, file, exc)}") from None
        if not self.files:
            raise CheckpointError(f"checkpoint {path}: universal/ holds no shards")
        self.where: dict[str, list] = {}
        for shard in self.files.values():
            for name in shard["params"]:
                self.where.setdefault(name, {})[shard["tp_rank"]] = shard
        self.optimizer_step = max(s.get("optimizer_step", 0) for s in self.files.values())
        self.loss_scaler = next((s["loss_scaler"] for s in self.files.values() if s.get("loss_scaler")), None)
        self.path = path

    def names(self) -> list[str]:
        return list(self.where)

    def full(self, name: str) -> dict:
        if name not in self.where:
            raise CheckpointError(f"checkpoint {self.path}: parameter {name} is not in universal/")
        by_rank = self.where[name]
        ranks = sorted(by_rank)
        first = by_rank[ranks[0]]
        dim = first["partition_dims"][name]
        if dim < 0:
            return dict(first["params"][name])
        if ranks != list(range(first["tp"])):
            raise CheckpointError(f"checkpoint {self.path}: {name} is missing TP shards (have {ranks} of {first['tp']})")
        keys = first["params"][name].keys()
        return {k: torch.cat([by_rank[r]["params"][name][k] for r in ranks], dim=dim) for k in keys}


def whole_shard(tensors: dict[str, torch.Tensor]) -> dict:
    """The one shard of a weights-only checkpoint made from full tensors (import-hf): no partition dims, no
    optimizer state; loading cuts each tensor for its own layout."""
    params = {name: {"fp32": t.float().contiguous()} for name, t in tensors.items()}
    return {"params": params, "partition_dims": {name: -1 for name in params}, "tp": 1, "tp_rank": 0,
            "optimizer_step": 0, "loss_scaler": None}


GPT_PARTS = ("embedding.", "blocks.", "final_norm.")  # a GPT language model's parameter names (megagpt.model.gpt)


def _heads(path: str) -> tuple[dict, Optional[list[str]]]:
    """A checkpoint's megagpt.json and the parameters it holds besides a GPT's (None for a PPO checkpoint, whose
    roles are in folders of their own, and one without universal/ shards, which its readers refuse themselves)."""
    from megagpt.train.checkpoint import read_meta

    meta = read_meta(path)
    if "ppo" in meta or not meta["universal"]:
        return meta, None
    return meta, [n for n in UniversalShards(path).names() if not n.startswith(GPT_PARTS)]


def require_reward_model(path: str, key: str) -> None:
    """`key` reads a reward model (ScalarGPT): a checkpoint without its value_head (a language model, a classifier)
    is refused, naming what it is, rather than failing inside the ranks or starting from an untrained head."""
    from megagpt.train.checkpoint import META, read_meta

    meta, heads = _heads(path)
    if "ppo" in meta:
        raise CheckpointError(f"{key}: checkpoint {path} is a PPO checkpoint, not a reward model; give a reward "
                              f"model's checkpoint (a `megagpt rm` run)")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isfile(os.path.join(parent, META)) and "ppo" in read_meta(parent):  # a role's folder: <step>/critic
        role = os.path.basename(os.path.normpath(path))
        what = "critic, a value function that scores every prefix" if role == "critic" else f"{role}, a policy"
        raise CheckpointError(f"{key}: checkpoint {path} is a PPO run's {what}, not a reward model; give a "
                              f"`megagpt rm` run")
    if heads is not None and not any(n.startswith("value_head.") for n in heads):
        what = f"a model with {heads[0]} (a fine-tuned classifier)" if heads else "a language model"
        raise CheckpointError(f"{key}: checkpoint {path} is {what}, not a reward model (no value_head); "
                              f"train one with `megagpt rm`")


def require_language_model(path: str, command: str) -> None:
    """`command` reads language models: a checkpoint with a head besides the tied unembedding (a reward model's
    value_head, a fine-tuned classifier's head) is refused, naming it, rather than read as one without it."""
    meta, heads = _heads(path)
    if "ppo" in meta:  # the roles' weights are in folders of their own
        raise on_every_rank(CheckpointError(f"{command}: checkpoint {path} is a PPO checkpoint; read its policy, "
                                            f"{path}/actor"))
    if heads:
        raise on_every_rank(CheckpointError(
            f"{command}: checkpoint {path} holds {heads[0]}, a head a language model has no place for (a reward "
            f"model or fine-tuned classifier); {command} reads language models"))
