"""Named random streams that work on any device.

megatron-core's RNG tracker is CUDA-only. Dropout inside a tensor-parallel region (the
attention probabilities of this rank's heads) must differ across TP ranks, while
dropout on replicated activations must agree across them; both agree across DP
replicas. We keep one saved generator state per stream and swap it into the default
generator for the duration of a `fork`.
"""

from __future__ import annotations

import contextlib

import torch

DEFAULT = "default"
TENSOR_PARALLEL = "tensor-parallel"


class RNGStreams:
    def __init__(self, seed: int, tp_rank: int, pp_rank: int, device: torch.device):
        self.device = device
        base = seed + 100 * pp_rank
        self.states = {DEFAULT: self._state_for(base), TENSOR_PARALLEL: self._state_for(base + 2718 + tp_rank)}
        self._set(self.states[DEFAULT])

    def _get(self) -> torch.Tensor:
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.get_rng_state()

    def _set(self, state: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    def _state_for(self, seed: int) -> torch.Tensor:
        saved = self._get()
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        else:
            torch.manual_seed(seed)
        state = self._get()
        self._set(saved)
        return state

    @contextlib.contextmanager
    def fork(self, name: str = TENSOR_PARALLEL):
        saved = self._get()
        self._set(self.states[name])
        try:
            yield
        finally:
            self.states[name] = self._get()
            self._set(saved)

    def recompute_context(self):
        """A `context_fn` for torch.utils.checkpoint over code that forks these streams.

        The checkpoint replays the default generator by itself, but a forked stream has moved
        on by the time the recomputation runs: this puts the forked streams back as they were
        at the forward pass while it recomputes (same dropout masks), then returns them to
        where training had taken them.
        """
        at_forward = {k: v.clone() for k, v in self.states.items() if k != DEFAULT}

        @contextlib.contextmanager
        def replay():
            now = {k: self.states[k] for k in at_forward}
            self.states.update({k: v.clone() for k, v in at_forward.items()})
            try:
                yield
            finally:
                self.states.update(now)

        return contextlib.nullcontext(), replay()

    def state_dict(self) -> dict:
        return {"streams": {k: v.clone() for k, v in self.states.items()}, "current": self._get()}

    def load_state_dict(self, state: dict) -> None:
        self.states = {k: v.clone() for k, v in state["streams"].items()}
        self._set(state["current"])
