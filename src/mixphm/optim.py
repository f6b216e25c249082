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

A step never reads the routing record to the host: it runs AdamW on every expert by
multi-tensor (``torch._foreach_*``) operations and then restores, with ``torch.where`` on
the device-side record, the tensors and step counts of the experts that were not routed.
So a step on a GPU queues its kernels without waiting for the device (only the very first
step syncs, to check that the record was kept), and the routed experts' values are those
of the per-tensor update that produced the committed results, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mixphm.inject import CONFIG_ATTRIBUTE
from mixphm.phm import PHMProjection, PHMRule


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
            self._update(group)
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

    def _update(self, group: dict[str, Any]) -> None:
        """AdamW on the group's tensors, stacked experts whole, by one multi-tensor call per
        operation; then each stacked tensor's unrouted experts get their values and step
        counts back, so each expert's state moves only in the steps that routed it.

        The operations and their order are those of the per-tensor update that produced the
        committed results, so those stay reproducible bit for bit (a test pins this)."""
        columns: tuple[list[Tensor], ...] = ([], [], [], [], [])
        unrouted: list[tuple[Tensor, list[Tensor], list[Tensor]]] = []
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self._state(param)
            tensors = (param, param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])
            for column, tensor in zip(columns, tensors, strict=True):
                column.append(tensor)
            projection = self.experts.get(param)
            if projection is not None:
                updated = [param, state["exp_avg"], state["exp_avg_sq"], state["step"]]
                routed = projection.routed.view(-1, *[1] * (param.dim() - 1))
                unrouted.append((routed, updated, [t.clone() for t in updated]))
        params, grads, exp_avgs, exp_avg_sqs, steps = columns
        if not params:
            return
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1 - beta2)
        # bias corrections in float32 or wider (in bfloat16, 1 - 0.999 rounds to 0); for float32
        # and float64 parameters in their dtype, as the per-tensor form computed them
        counted = [
            step.to(torch.promote_types(param.dtype, torch.float32))
            for step, param in zip(steps, params, strict=True)
        ]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, torch._foreach_sqrt(bias_correction(beta2, counted)))
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(exp_avgs, bias_correction(beta1, counted))
        torch._foreach_div_(update, denom)
        if group["weight_decay"]:
            torch._foreach_add_(update, torch._foreach_mul(params, group["weight_decay"]))
        torch._foreach_mul_(update, group["lr"])
        torch._foreach_sub_(params, update)
        for routed, updated, before in unrouted:
            for tensor, old in zip(updated, before, strict=True):
                tensor.copy_(torch.where(routed, tensor, old))

    def _state(self, param: Tensor) -> dict[str, Tensor]:
        state: dict[str, Tensor] = self.state[param]
        if not state:
            stacked = param in self.experts
            step_shape = (param.shape[0], *[1] * (param.dim() - 1)) if stacked else ()
            state["step"] = torch.zeros(step_shape, dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # torch's load_state_dict leaves "step" where it was saved; it belongs with the param
        state["step"] = state["step"].to(param.device)
        return state


def bias_correction(beta: float, steps: list[Tensor]) -> tuple[Tensor, ...]:
    """1 - beta ** step for each step count."""
    corrections = torch._foreach_pow(beta, steps)
    torch._foreach_neg_(corrections)
    torch._foreach_add_(corrections, 1)
    return corrections


def routed_parameters(model: nn.Module) -> dict[Tensor, PHMProjection]:
    """Every trainable stacked-expert parameter of ``model`` → its projection."""
    return {
        param: projection
        for projection in model.modules()
        if isinstance(projection, PHMProjection) and projection.num_experts > 1
        for param in projection.parameters(recurse=False)
        if param.requires_grad
    }


NO_DECAY_NAME_PARTS = ("bias", "LayerNorm.weight")
"""The reference trainer's rule: no weight decay for parameters whose name contains these."""


def decays(model: nn.Module) -> dict[Tensor, bool]:
    """Whether each trainable parameter of ``model`` is weight-decayed, by the reference
    trainer's rule: every parameter whose name contains neither "bias" nor
    "LayerNorm.weight". The adapter family's tensors are all decayed (the reference's PHM
    biases are named without "bias", so its rule decays every MixPHM tensor, S included),
    or none of them where the adapters' config says ``weight_decay=False``."""
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    adapters_decay = config is None or config.weight_decay
    adapter_owned = {
        id(param)
        for module in model.modules()
        if isinstance(module, PHMProjection | PHMRule)
        for param in module.parameters(recurse=False)
    }
    return {
        param: adapters_decay
        if id(param) in adapter_owned
        else not any(part in name for part in NO_DECAY_NAME_PARTS)
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def adamw(
    model: nn.Module, lr: float, weight_decay: float = 0.01, eps: float = 1e-6
) -> torch.optim.Optimizer:
    """The optimizer for ``model``'s trainable parameters: ``ExpertAdamW`` when it has
    routed experts, else torch's AdamW. Defaults are the reference recipe's; with
    ``weight_decay`` the parameters ``decays`` exempts form a second group without it."""
    decayed = decays(model)
    groups = [
        {"params": [p for p, decay in decayed.items() if decay], "weight_decay": weight_decay},
        {"params": [p for p, decay in decayed.items() if not decay], "weight_decay": 0.0},
    ]
    params: list[dict[str, Any]] = (
        [group for group in groups if group["params"]]
        if weight_decay
        else [{"params": list(decayed), "weight_decay": 0.0}]
    )
    experts = routed_parameters(model)
    if experts:
        return ExpertAdamW(params, experts, lr=lr, eps=eps)
    return torch.optim.AdamW(params, lr=lr, eps=eps)
