"""AdamW for stacked experts: an expert that was not routed in a step is left untouched.

The experts of a projection live in one tensor (leading axis E), so an expert the router
did not pick still receives a gradient: zeros. Plain AdamW would then move it by its
momentum, decay it, and count the step in its bias correction. With the experts as
separate modules (the reference code sets every ``.grad`` to None after a step), AdamW
skips an unrouted expert entirely. ``ExpertAdamW`` reproduces that: moments, weight decay
and the step count of expert e change only in steps in which e was routed.

The routing record is cleared by ``step`` and by ``zero_grad``, so a step that a
``GradScaler`` skips (inf/nan gradients under fp16) does not carry its expert into the
next step. Call ``zero_grad`` before the forward pass, not between forward and backward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mixphm.phm import PHMProjection


class ExpertAdamW(torch.optim.Optimizer):
    """AdamW (Loshchilov & Hutter) with per-expert state for stacked expert parameters.

    ``experts`` maps each stacked parameter (E, ...) to the projection whose ``routed``
    (E,) mask says which experts a step used; ``step`` and ``zero_grad`` clear the mask.
    Other parameters get torch's AdamW update. State per parameter: ``step`` (per expert,
    (E, 1, ..., 1), for stacked parameters; a scalar otherwise), ``exp_avg``, ``exp_avg_sq``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        experts: Mapping[Tensor, PHMProjection],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.experts = dict(experts)
        self._projections = list(dict.fromkeys(self.experts.values()))
        self._order_checked = False

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._order_checked:
            self._check_routing_recorded()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        self._clear_routing()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self._clear_routing()

    def _clear_routing(self) -> None:
        for projection in self._projections:
            projection.routed.zero_()

    def _check_routing_recorded(self) -> None:
        """A nonzero gradient with no routed expert means zero_grad ran between forward and
        backward and erased the record; checked on the first step only (host syncs)."""
        unrecorded = [
            param
            for param, projection in self.experts.items()
            if param.grad is not None
            and bool(param.grad.any())
            and not bool(projection.routed.any())
        ]
        if unrecorded:
            raise RuntimeError(
                f"ExpertAdamW: {len(unrecorded)} stacked expert parameters have gradients but "
                "no routed expert was recorded; zero_grad() clears the routing record, so "
                "call it before the forward pass (zero_grad, forward, backward, step)"
            )
        self._order_checked = True

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        grad = param.grad
        assert grad is not None
        beta1, beta2 = group["betas"]
        gate = self._gate(param)
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros_like(gate, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # torch's load_state_dict leaves "step" where it was saved; it belongs with the param
        state["step"] = state["step"].to(param.device)
        steps, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        steps += gate
        exp_avg.lerp_(grad, (1 - beta1) * gate)
        exp_avg_sq.lerp_(grad * grad, (1 - beta2) * gate)
        counted = steps.clamp(min=1).to(param.dtype)  # an expert not yet routed has gate 0
        denom = exp_avg_sq.sqrt() / (1 - beta2**counted).sqrt() + group["eps"]
        update = exp_avg / (1 - beta1**counted) / denom + group["weight_decay"] * param
        param.sub_(group["lr"] * gate * update)

    def _gate(self, param: Tensor) -> Tensor:
        """1 where this step updates ``param``: a scalar, or (E, 1, ..., 1) per expert."""
        projection = self.experts.get(param)
        if projection is None:
            return torch.ones((), dtype=param.dtype, device=param.device)
        return projection.routed.to(param.dtype).view(-1, *([1] * (param.dim() - 1)))


def routed_parameters(model: nn.Module) -> dict[Tensor, PHMProjection]:
    """Every trainable stacked-expert parameter of ``model`` → its projection."""
    return {
        param: projection
        for projection in model.modules()
        if isinstance(projection, PHMProjection) and projection.num_experts > 1
        for param in projection.parameters(recurse=False)
        if param.requires_grad
    }


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer for ``model``'s trainable parameters: ``ExpertAdamW`` when it has
    routed experts, else torch's AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    experts = routed_parameters(model)
    if experts:
        return ExpertAdamW(params, experts, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
