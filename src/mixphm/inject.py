"""Attach MixPHM adapters to a Hugging Face transformers model (or any PyTorch model).

The sub-layers are found by the model's structure (``mixphm.placement``) or named by the
user (``MixPHMConfig.target_modules``): each is a linear layer (``nn.Linear`` or
transformers' ``Conv1D``) producing a sub-layer's output. The adapter is registered as a
child ``mixphm`` of that linear layer and a forward hook turns its output h into
h + adapter(h), before the block's residual add. The base model's own parameter names are
unchanged, so its checkpoints still load into the adapted model. ``describe_placement``
shows where the adapters would go, and which blocks would be skipped, before any is attached.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mixphm.adapter import DeployedAdapter, MixPHMAdapter
from mixphm.config import MixPHMConfig
from mixphm.phm import PHMRule
from mixphm.placement import (
    ATTENTION_OUTPUTS,
    FEEDFORWARD,
    LinearMap,
    Search,
    Stack,
    named_linears,
    not_searched,
    per_block,
    skip_reason,
    stacks,
)
from mixphm.routing import ExpertRouter

ADAPTER_NAME = "mixphm"
CONFIG_ATTRIBUTE = "mixphm_config"
ROUTER_ATTRIBUTE = "mixphm_router"


def searches(config: MixPHMConfig) -> list[Search]:
    """What placement by structure looks for in each block: its feed-forward output, and its
    attention outputs with ``attention_adapters``."""
    return [FEEDFORWARD, ATTENTION_OUTPUTS] if config.attention_adapters else [FEEDFORWARD]


def find_targets(model: nn.Module, config: MixPHMConfig) -> list[tuple[str, LinearMap]]:
    """(path, output linear) of every sub-layer to adapt, in module order: the linears
    ``config.target_modules`` names, or else the feed-forward output of every block that has
    one (and attention outputs with ``attention_adapters``), found by structure
    (``mixphm.placement``). Raises PlacementError (a ValueError) saying what was searched."""
    if config.target_modules is not None:
        return named_linears(model, config.target_modules)
    found = [
        target
        for search in searches(config)
        for target in per_block(model, config.vision_tower, search)
    ]
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


@dataclass(frozen=True)
class StackPlacement:
    """Where one stack's adapters go. ``adapted``: (block index, the linear layers adapters
    follow in it, relative to the block); ``skipped``: (block index, why); ``trainable``: the
    parameters its adapters add (a tensor shared with an earlier stack counted there)."""

    path: str
    side: Literal["language", "vision"]
    adapted: tuple[tuple[str, tuple[str, ...]], ...]
    skipped: tuple[tuple[str, str], ...]
    trainable: int

    def __str__(self) -> str:
        blocks = len(self.adapted) + len(self.skipped)
        lines = [
            f"{self.path} ({self.side}): {len(self.adapted)} of {blocks} blocks adapted, "
            f"{self.trainable:,} trainable parameters"
        ]
        places = {
            linears: [i for i, ls in self.adapted if ls == linears] for _, linears in self.adapted
        }
        lines += [f"  adapted {index_ranges(i)}: {', '.join(ls)}" for ls, i in places.items()]
        reasons = {why: [i for i, w in self.skipped if w == why] for _, why in self.skipped}
        lines += [f"  skipped {index_ranges(i)}: {why}" for why, i in reasons.items()]
        return "\n".join(lines)


@dataclass(frozen=True)
class PlacementPlan:
    """What ``add_mixphm(model, config)`` would do, per stack (``stacks``); the stacks not
    searched and why (``not_searched``); linears ``target_modules`` names outside every stack
    (``elsewhere``); and ``parameter_counts`` of the model it would leave: ``trainable`` (the
    adapters', the stacks' and those of ``elsewhere`` together) and ``total``. ``str()``
    formats it as text."""

    model: str
    adapters: int
    stacks: tuple[StackPlacement, ...]
    not_searched: tuple[tuple[str, str], ...]
    elsewhere: tuple[str, ...]
    trainable: int
    total: int

    def __str__(self) -> str:
        lines = [
            f"{self.model}: {self.adapters} adapters; trainable params: {self.trainable:,} || "
            f"all params: {self.total:,} || trainable%: {100 * self.trainable / self.total:.4f}"
        ]
        lines += [f"  {line}" for stack in self.stacks for line in str(stack).split("\n")]
        lines += [f"  not searched: {path}: {why}" for path, why in self.not_searched]
        if self.elsewhere:
            lines.append(f"  outside every stack: {', '.join(self.elsewhere)}")
        return "\n".join(lines)


def index_ranges(indices: Sequence[str]) -> str:
    """Block indices with runs shortened: ["0", "1", "2", "5"] → "0-2, 5"."""
    runs: list[list[int]] = []
    for index in map(int, indices):
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(
        f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs
    )


NAMED_NONE = "target_modules names none of its layers"


def describe_placement(model: nn.Module, config: MixPHMConfig | None = None) -> PlacementPlan:
    """Where ``add_mixphm(model, config)`` would put adapters, which blocks it would skip and
    why, and the parameters they would add (peft's ``print_trainable_parameters``, per
    stack): ``print(describe_placement(model, config))``. Leaves the model (and the global
    random state) as it was; raises PlacementError where ``add_mixphm`` would."""
    config = config or MixPHMConfig()
    with torch.random.fork_rng(devices=[]):  # building the adapters draws their weights
        plan = plan_adapters(model, config)
    added = added_parameters(plan)
    found = stacks(model)
    if config.target_modules is not None:
        placed = (stack_placement(stack, added, []) for stack in found)
        placements, left_out = [p for p in placed if p.adapted], []
    else:
        why_not = {stack.path: not_searched(stack, config.vision_tower) for stack in found}
        placements = [
            stack_placement(stack, added, searches(config))
            for stack in found
            if why_not[stack.path] is None
        ]
        left_out = [(path, why) for path, why in why_not.items() if why is not None]
    blocks = [block.path for stack in found for block in stack.blocks]
    elsewhere = [p for p in added if not any(p.startswith(f"{b}.") for b in blocks)]
    trainable = sum(added.values())
    return PlacementPlan(
        type(model).__name__,
        len(added),
        tuple(placements),
        tuple(left_out),
        tuple(elsewhere),
        trainable,
        parameter_counts(model)[1] + trainable,
    )


def added_parameters(plan: AdapterPlan) -> dict[str, int]:
    """Path of the linear each adapter of ``plan`` follows → the parameters that adapter
    adds (the shared rule tensor counted with the first)."""
    added: dict[str, int] = {}
    seen: set[int] = set()
    for path, adapter in plan.named_adapters():
        new = [p for p in adapter.parameters() if id(p) not in seen]
        seen.update(id(p) for p in new)
        added[path.removesuffix(f".{ADAPTER_NAME}")] = sum(p.numel() for p in new)
    return added


def stack_placement(
    stack: Stack, added: dict[str, int], searched: Sequence[Search]
) -> StackPlacement:
    """``stack``'s part of a plan whose adapters follow the linears ``added`` (path → the
    parameters its adapter adds). A block without one is skipped for lacking what
    ``searched`` looks for, or, where nothing was searched for, because ``target_modules``
    names none of its layers."""
    adapted, skipped, trainable = [], [], 0
    for block in stack.blocks:
        index = block.path.removeprefix(f"{stack.path}.")
        linears = [path for path in added if path.startswith(f"{block.path}.")]
        trainable += sum(added[path] for path in linears)
        if linears:
            adapted.append((index, tuple(p.removeprefix(f"{block.path}.") for p in linears)))
        else:
            skipped.append((index, skip_reason(block, searched) if searched else NAMED_NONE))
    side: Literal["language", "vision"] = "vision" if stack.vision else "language"
    return StackPlacement(stack.path, side, tuple(adapted), tuple(skipped), trainable)
