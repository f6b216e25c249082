"""Attach MixPHM adapters to a Hugging Face transformers model (or any PyTorch model).

The sub-layers are found by the model's structure (``mixphm.placement``) or named by the
user (``MixPHMConfig.target_modules``): each is a linear layer (``nn.Linear`` or
transformers' ``Conv1D``) producing a sub-layer's output. The adapter is registered as a
child ``mixphm`` of that linear layer and a forward hook turns its output h into
h + adapter(h), before the block's residual add. The base model's own parameter names are
unchanged, so its checkpoints still load into the adapted model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mixphm.adapter import DeployedAdapter, MixPHMAdapter
from mixphm.config import MixPHMConfig
from mixphm.phm import PHMRule
from mixphm.placement import (
    LinearMap,
    attention_outputs,
    feedforward_outputs,
    named_linears,
    per_block,
)
from mixphm.routing import ExpertRouter

ADAPTER_NAME = "mixphm"
CONFIG_ATTRIBUTE = "mixphm_config"
ROUTER_ATTRIBUTE = "mixphm_router"


def find_targets(model: nn.Module, config: MixPHMConfig) -> list[tuple[str, LinearMap]]:
    """(path, output linear) of every sub-layer to adapt, in module order: the linears
    ``config.target_modules`` names, or else every transformer block's feed-forward output
    (and attention outputs with ``attention_adapters``), found by structure
    (``mixphm.placement``). Raises PlacementError (a ValueError) saying what was searched."""
    if config.target_modules is not None:
        return named_linears(model, config.target_modules)
    found = per_block(model, config.vision_tower, feedforward_outputs, "a feed-forward output")
    if config.attention_adapters:
        found += per_block(model, config.vision_tower, attention_outputs, "an attention output")
    order = {path: index for index, (path, _) in enumerate(model.named_modules())}
    return sorted(found, key=lambda target: order[target[0]])


def _add_adapter_output(linear: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    adapter: MixPHMAdapter = getattr(linear, ADAPTER_NAME)
    adapted: Tensor = output + adapter(output)
    return adapted


@dataclass(frozen=True)
class AdapterPlan:
    """The adapters ``add_mixphm`` would attach, built but not yet attached: the model is
    unchanged until ``attach``. ``adapters`` are (path the adapter will have, output linear,
    adapter)."""

    config: MixPHMConfig
    router: ExpertRouter
    adapters: tuple[tuple[str, nn.Module, MixPHMAdapter], ...]

    def named_adapters(self) -> list[tuple[str, MixPHMAdapter]]:
        return [(path, adapter) for path, _, adapter in self.adapters]


def new_rule(config: MixPHMConfig) -> PHMRule | None:
    """A rule tensor S for ``config``'s PHM weights (None for plain ones, n = 1)."""
    return PHMRule(config.phm_dim, config.rule_init_std) if config.phm_dim > 1 else None


def plan_adapters(model: nn.Module, config: MixPHMConfig) -> AdapterPlan:
    """Build the adapters for ``model`` without touching it; raises ValueError when the
    model already has adapters or has nothing to adapt."""
    if any(True for _ in mixphm_adapters(model)):
        raise ValueError(f"{type(model).__name__} already has MixPHM adapters")
    targets = find_targets(model, config)
    router = ExpertRouter(config.routing_seed, len(targets), config.num_experts)
    shared = new_rule(config)
    built = [
        MixPHMAdapter(
            linear.out_features,
            config,
            new_rule(config) if config.rule_per_layer else shared,
            router,
            index,
            owns_rule=index == 0 or config.rule_per_layer,
        )
        for index, (_, linear) in enumerate(targets)
    ]  # all built before any moves: the first one's move takes the shared rule along
    adapters = tuple(
        (f"{path}.{ADAPTER_NAME}", linear.module, adapter.to(linear.weight.device))
        for (path, linear), adapter in zip(targets, built, strict=True)
    )
    return AdapterPlan(config, router, adapters)


def attach(model: nn.Module, plan: AdapterPlan) -> nn.Module:
    """Attach ``plan``'s adapters to ``model`` and freeze everything else."""
    model.requires_grad_(False)
    for _, linear, adapter in plan.adapters:
        linear.add_module(ADAPTER_NAME, adapter)
        linear.register_forward_hook(_add_adapter_output)
    anchor = plan.adapters[0][2].up.bias
    router = plan.router

    def advance_routing(module: nn.Module, args: Any) -> None:
        if module.training:
            router.advance(anchor.device)

    if plan.config.num_experts > 1:  # one expert: nothing to route, no per-forward work
        model.register_forward_pre_hook(advance_routing)
    setattr(model, CONFIG_ATTRIBUTE, plan.config)
    setattr(model, ROUTER_ATTRIBUTE, router)
    return model


def add_mixphm(model: nn.Module, config: MixPHMConfig | None = None) -> nn.Module:
    """Insert a MixPHM adapter after every targeted sub-layer and freeze everything else.

    The model is changed in place and returned. Adapter parameters are float32 on the
    device of the layer they follow; they compute in the dtype of the hidden states.
    """
    return attach(model, plan_adapters(model, config or MixPHMConfig()))


def compile_forward(model: nn.Module, **options: Any) -> nn.Module:
    """Compile ``model.forward`` with ``torch.compile(**options)`` and return the model.

    The routing hook (host code: each training forward's expert choices, written in place
    into the router's device tensor) stays outside the compiled graph, so the forward and
    its backward compile as one graph (``fullgraph=True`` holds) that routes by reading that
    tensor, and a captured CUDA graph reads each step's choices. ``torch.compile(model)``
    also works, with one graph break at the hook.
    """
    model.forward = torch.compile(model.forward, **options)  # type: ignore[method-assign]
    return model


def _attached(model: nn.Module, attribute: str) -> Any:
    if not hasattr(model, attribute):
        raise ValueError(f"{type(model).__name__} has no MixPHM adapters; call add_mixphm first")
    return getattr(model, attribute)


def adapter_config(model: nn.Module) -> MixPHMConfig:
    """The config ``add_mixphm`` attached to ``model``."""
    config: MixPHMConfig = _attached(model, CONFIG_ATTRIBUTE)
    return config


def adapter_router(model: nn.Module) -> ExpertRouter:
    """The router shared by the adapters of ``model`` (its state belongs in checkpoints)."""
    router: ExpertRouter = _attached(model, ROUTER_ATTRIBUTE)
    return router


def mixphm_adapters(model: nn.Module) -> Iterator[tuple[str, MixPHMAdapter]]:
    """(path, adapter) for every MixPHM adapter in ``model``."""
    for path, module in model.named_modules():
        if isinstance(module, MixPHMAdapter):
            yield path, module


def deployed_adapters(model: nn.Module) -> Iterator[tuple[str, DeployedAdapter]]:
    """(path, adapter) for every adapter of ``model`` that ``deploy`` merged."""
    for path, module in model.named_modules():
        if isinstance(module, DeployedAdapter):
            yield path, module


def deploy(model: nn.Module) -> nn.Module:
    """Merge every adapter's experts into fixed weights for inference, as peft's
    ``merge_and_unload`` does for LoRA: each ``MixPHMAdapter`` is replaced by a
    ``DeployedAdapter`` holding its merged weights (built once, here) and no parameters.
    The model is put in eval mode and refuses training mode from then on; save the adapter
    (``save_adapter``) before deploying if you will need it again. Returns the model."""
    adapters = list(mixphm_adapters(model))
    if not adapters:
        raise ValueError(f"{type(model).__name__} has no MixPHM adapters; call add_mixphm first")
    model.eval()
    modules = dict(model.named_modules())
    for path, adapter in adapters:
        parent, _, name = path.rpartition(".")
        setattr(modules[parent], name, DeployedAdapter(adapter))
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
