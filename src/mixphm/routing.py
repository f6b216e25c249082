"""Stochastic routing: which expert each adapter uses on each training forward pass.

The choice is a pure function of (routing seed, step), never of a process's global RNG,
so every rank of a distributed run routes identically and a resumed run routes exactly
as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def expert_choices(seed: int, step: int, num_layers: int, num_experts: int) -> Tensor:
    """One expert index per adapter layer for training step ``step``: (num_layers,) long."""
    mixed = int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0])
    generator = torch.Generator().manual_seed(mixed)
    return torch.randint(num_experts, (num_layers,), generator=generator)


class ExpertRouter:
    """Holds the current step's choices for every adapter of one model.

    ``advance`` is called once per training forward of the model (a forward pre-hook that
    ``add_mixphm`` installs), so each adapter reads ``choices[router_slot]``: a 0-dim
    device tensor, no host synchronisation and no Python branch on the expert.

    ``choices`` (num_layers,) long is one persistent tensor: it moves to the model's device
    on the first ``advance`` there, and from then on every step's choices are written into
    it in place. A compiled or CUDA-graph-captured forward reads it by address, so a replay
    reads the choices of the step whose ``advance`` ran last (the hook runs outside the
    compiled forward: compile ``model.forward``, see ``mixphm.compile_forward``).
    """

    def __init__(self, seed: int, num_layers: int, num_experts: int) -> None:
        self.seed, self.num_layers, self.num_experts = seed, num_layers, num_experts
        self.step = 0
        self.choices = expert_choices(seed, 0, num_layers, num_experts)

    def advance(self, device: torch.device) -> None:
        self.step += 1
        self._write(device)

    def _write(self, device: torch.device | None = None) -> None:
        if device is not None and self.choices.device != device:
            self.choices = self.choices.to(device)  # once, before any step reads it there
        choices = expert_choices(self.seed, self.step, self.num_layers, self.num_experts)
        self.choices.copy_(choices, non_blocking=True)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.step = state["seed"], state["step"]
        self._write()
