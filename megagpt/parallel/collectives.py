"""The collectives the trainer makes itself, and an audit of every collective a rank makes.

NCCL refuses CPU tensors; gloo accepts CPU and GPU tensors alike. A tensor made with
no device lands on the CPU, so on a GPU rank it crashes the first NCCL collective it
reaches (this killed every early H100 run), while CPU tests with gloo never notice.
Hence: the trainer's own collectives build their tensors on the rank's device here,
and `CollectiveAudit` lets a CPU test prove that no tensor made without a device
reaches any collective: it tags the results of factory calls (`torch.tensor`,
`torch.zeros`, ...) given no device, of `torch.from_numpy` and of `.cpu()` (a copy: on a GPU rank), and whatever is
computed from tagged tensors alone (`torch.tensor(x) * 2`, `torch.stack`, `zeros_like`,
`.float()`: on a GPU rank these stay on the CPU too; one placed operand puts the result on
the device); it untags a tensor moved with an explicit `.to(device)`, and fails a
collective handed a tagged tensor, as NCCL would on a GPU rank.
Set MEGAGPT_AUDIT_COLLECTIVES=DIR to audit a run: each rank writes DIR/rank_N.json.
"""

from __future__ import annotations

import atexit
import json
import os
import weakref
from typing import Optional

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

AUDIT_ENV = "MEGAGPT_AUDIT_COLLECTIVES"


def any_rank(flag: bool, device: torch.device, group: Optional[dist.ProcessGroup] = None) -> bool:
    """True on every rank of `group` if it is true on any."""
    return any_ranks([flag], device, group)[0]


def any_ranks(flags: list[bool], device: torch.device, group: Optional[dist.ProcessGroup] = None) -> list[bool]:
    """any_rank of each flag, in one collective (a step's checks cost one all-reduce and one host sync)."""
    value = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return [bool(v) for v in value.tolist()]


def mean_over(value: torch.Tensor, group: Optional[dist.ProcessGroup], size: int) -> float:
    """The mean of a scalar over the `size` ranks of `group` (a tensor already on the rank's device)."""
    if size > 1:
        value = value.detach().clone()
        dist.all_reduce(value, group=group)
        value = value / size
    return value.item()


# ---------------------------------------------------------------- audit

# What a rank may hand to a collective; torch.distributed's entry points taking tensors.
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
               "broadcast", "reduce", "all_to_all", "all_to_all_single", "gather", "scatter", "send", "recv",
               "isend", "irecv", "_all_gather_base", "_reduce_scatter_base")
FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.empty, torch.full, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye}


class CollectiveAudit(TorchFunctionMode):
    """Fails any collective handed a tensor that was made without a device (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.deviceless: dict[int, str] = {}  # id(tensor) -> the factory that made it
        self.calls: dict[str, int] = {}
        self._originals: dict[str, object] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES and kwargs.get("device") is None and isinstance(out, torch.Tensor):
            self._tag(out, func.__name__)
        elif func is torch.Tensor.cpu and isinstance(out, torch.Tensor):
            if out is not args[0]:  # on a CPU rank .cpu() returns the tensor itself, placed as it was
                self._tag(out, "Tensor.cpu")
        elif (func is torch.Tensor.to and _names_device(args[1:], kwargs) or func is torch.Tensor.cuda) \
                and isinstance(out, torch.Tensor):
            self.deviceless.pop(id(out), None)
        elif kwargs.get("device") is not None:  # zeros_like(t, device=d), t.new_zeros(n, device=d): placed
            pass
        else:
            inputs = _tensors_in(list(args) + list(kwargs.values()))
            if inputs and all(id(t) in self.deviceless for t in inputs):  # where they are, the result is
                origin = self.deviceless[id(inputs[0])]
                for t in _tensors_in([out]):
                    if id(t) not in self.deviceless:
                        self._tag(t, origin)
        return out

    def _tag(self, tensor: torch.Tensor, origin: str) -> None:
        key = id(tensor)
        self.deviceless[key] = origin
        weakref.finalize(tensor, self.deviceless.pop, key, None)

    def check(self, op: str, tensors) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        for t in tensors:
            if id(t) in self.deviceless:
                raise RuntimeError(f"collective audit: {op} was handed a tensor made by torch.{self.deviceless[id(t)]} "
                                   f"with no device, or from such tensors alone (shape {tuple(t.shape)}); NCCL "
                                   f"refuses it on a GPU rank")

    def install(self) -> "CollectiveAudit":
        for op in COLLECTIVES:
            original = getattr(dist, op, None)
            if original is not None:
                self._originals[op] = original
                setattr(dist, op, self._wrap(op, original))
        from_numpy = self._originals["from_numpy"] = torch.from_numpy  # a function torch_function modes do not see

        def tagged_from_numpy(array):
            out = from_numpy(array)
            self._tag(out, "from_numpy")
            return out

        torch.from_numpy = tagged_from_numpy
        self.__enter__()
        return self

    def uninstall(self) -> None:
        self.__exit__(None, None, None)
        for op, original in self._originals.items():
            setattr(torch if op == "from_numpy" else dist, op, original)

    def _wrap(self, op: str, original):
        def audited(*args, **kwargs):
            self.check(op, _tensors_in(list(args) + list(kwargs.values())))
            return original(*args, **kwargs)

        audited.__wrapped__ = original
        return audited

    def report(self) -> dict:
        return {"calls": dict(sorted(self.calls.items()))}


def _names_device(args, kwargs) -> bool:
    if kwargs.get("device") is not None:
        return True
    return any(isinstance(a, (str, torch.device)) or (isinstance(a, torch.Tensor)) for a in args)


def _tensors_in(values) -> list[torch.Tensor]:
    found = []
    for v in values:
        if isinstance(v, torch.Tensor):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found += _tensors_in(v)
    return found


def audit_from_env() -> Optional[CollectiveAudit]:
    """Install the audit if MEGAGPT_AUDIT_COLLECTIVES names a directory; the rank's report is written at exit."""
    out_dir = os.environ.get(AUDIT_ENV)
    if not out_dir:
        return None
    audit = CollectiveAudit().install()
    rank = os.environ.get("RANK", "0")

    def write() -> None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"rank_{int(rank):05d}.json"), "w") as f:
            json.dump(audit.report(), f)

    atexit.register(write)
    return audit
