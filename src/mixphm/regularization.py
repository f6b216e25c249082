"""Redundancy regularization (MixPHM section 3) and the capture of what it needs.

Per adapter layer it needs the pretrained representation h (what the adapter receives, the
sub-layer output), the adapter output h_a, and the final representation of the layer's
stack (encoder or decoder). ``ActivationCapture`` records them with forward hooks that exist
only inside its context, so a model without the regularizer pays nothing.

Every term uses only valid tokens: the caller passes one boolean mask (B, L) per stack
(text padding False, visual tokens True in the encoder; label padding False in the decoder).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixphm.adapter import MixPHMAdapter
from mixphm.inject import mixphm_adapters


@dataclass(frozen=True)
class RedundancyConfig:
    """Weights of the two terms; a weight of 0 switches its term off.

    Reference values: α = 0.2 (``--red_w 0.2``), β = 0.04 (``--align_w 0.2`` times a
    hard-coded 0.2), λ = 3.9e-3 inside the decorrelation penalty.
    """

    alpha: float = 0.2
    """Weight of the decorrelation penalty between h_a and h."""
    beta: float = 0.04
    """Weight of the Jensen-Shannon mutual-information term between h_a and the stack output."""
    lam: float = 3.9e-3
    """λ, scaling the squared off-diagonal cross-correlations."""

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "lam"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0 or self.beta > 0


def _at_least_fp32(x: Tensor) -> Tensor:
    """Statistics of half-precision activations are computed in float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def decorrelation_penalty(h_a: Tensor, h: Tensor, mask: Tensor, lam: float = 3.9e-3) -> Tensor:
    """λ/B · Σ_{i≠j} C_ij², C = Ĥ_aᵀ Ĥ over the valid tokens, rows L2-normalised.

    h_a, h: (B, L, d); mask: (B, L) bool. Returns a scalar; zero iff C is diagonal.
    """
    adapter_tokens = F.normalize(_at_least_fp32(h_a[mask]), dim=-1)  # (N, d)
    pretrained_tokens = F.normalize(_at_least_fp32(h[mask]), dim=-1)  # (N, d)
    correlation = adapter_tokens.T @ pretrained_tokens  # (d, d)
    off_diagonal = correlation.pow(2).sum() - correlation.diagonal().pow(2).sum()
    return lam * off_diagonal / h.shape[0]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid tokens of each sample. x: (B, L, d), mask: (B, L) → (B, d)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def jsd_mutual_information_loss(h_a: Tensor, final: Tensor, mask: Tensor) -> Tensor:
    """Negative Jensen-Shannon MI lower bound between adapter tokens and their sample's
    mean-pooled final representation (Deep InfoMax local-global form).

    Positive pairs: each valid token of h_a with its own sample's summary; negatives: with
    the other samples' summaries. h_a, final: (B, L, d); mask: (B, L) bool. Minimising it
    maximises the MI estimate. With B = 1 there are no negatives and only the positive
    part remains.
    """
    summaries = masked_mean(_at_least_fp32(final), mask)  # (B, d)
    sample_of_token = torch.arange(h_a.shape[0], device=h_a.device).unsqueeze(1).expand_as(mask)
    tokens, owner = _at_least_fp32(h_a[mask]), sample_of_token[mask]  # (N, d), (N,)
    scores = tokens @ summaries.T  # (N, B)
    positive = F.one_hot(owner, h_a.shape[0]).bool()
    log2 = math.log(2.0)
    expected_positive = (log2 - F.softplus(-scores[positive])).mean()
    negatives = scores[~positive]
    if not negatives.numel():
        return -expected_positive
    return (F.softplus(negatives) - log2).mean() - expected_positive


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear centred kernel alignment of two representations of the same N tokens.

    x: (N, d1), y: (N, d2) → scalar in [0, 1]; 1 for representations equal up to
    rotation and scale, near 0 for independent ones.
    """
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    cross = (y.T @ x).pow(2).sum()
    return cross / ((x.T @ x).pow(2).sum().sqrt() * (y.T @ y).pow(2).sum().sqrt())


def adapter_stacks(model: nn.Module) -> dict[str, str]:
    """Adapter path → path of its stack: the module owning the outermost ModuleList (the
    list of blocks) that contains the adapter (``encoder`` / ``decoder`` for T5,
    ``encoder`` for BERT, ``model.language_model`` for Qwen2-VL)."""
    block_lists = [path for path, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    stacks = {}
    for path, _ in mixphm_adapters(model):
        owners = [b for b in block_lists if path.startswith(b + ".")]
        if not owners:
            raise ValueError(f"adapter {path} is not inside a list of blocks; no stack to use")
        stacks[path] = min(owners, key=len).rpartition(".")[0]
    return stacks


def _first_tensor(output: Any) -> Tensor:
    """The hidden states (B, L, d) from a stack's output: a tensor, tuple or ModelOutput."""
    first = output[0] if isinstance(output, tuple | list) else output
    hidden: Tensor = first if isinstance(first, Tensor) else output.last_hidden_state
    return hidden


def batched(hidden: Tensor) -> Tensor:
    """(B, L, d) as it is; packed tokens (N, d) of several samples, as Qwen2-VL's vision
    tower runs them, as one sequence (1, N, d)."""
    return hidden if hidden.dim() == 3 else hidden.unsqueeze(0)


def in_rows(tokens: Tensor, final: Tensor) -> Tensor:
    """An adapter's tokens (1, B·L, d), flattened across the rows of a batch as OPT's
    feed-forward runs them, in the rows (B, L, d) of their stack's output ``final``; any
    other shape as it is."""
    rows, length = final.shape[:2]
    flattened = rows > 1 and tokens.shape[:2] == (1, rows * length)
    return tokens.reshape(rows, length, tokens.shape[-1]) if flattened else tokens


@dataclass
class LayerActivations:
    """One adapter's capture: h and h_a (B, L, d), and the path of its stack."""

    stack: str
    h: Tensor
    h_a: Tensor


class ActivationCapture:
    """Records (h, h_a) per adapter and the final hidden states (B, L, d) per stack while
    its ``recording`` context is open; afterwards the hooks are gone."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack_of = adapter_stacks(model)
        self.stacks = sorted(set(self.stack_of.values()))
        self.layers: dict[str, LayerActivations] = {}
        self.finals: dict[str, Tensor] = {}

    @contextmanager
    def recording(self) -> Iterator[ActivationCapture]:
        self.layers, self.finals = {}, {}
        modules = dict(self.model.named_modules())
        handles = []
        for path, adapter in mixphm_adapters(self.model):
            handles.append(adapter.register_forward_hook(self._adapter_hook(path)))
        for stack in self.stacks:
            handles.append(modules[stack].register_forward_hook(self._stack_hook(stack)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _adapter_hook(self, path: str) -> Any:
        def hook(module: MixPHMAdapter, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            stack = self.stack_of[path]
            self.layers[path] = LayerActivations(stack, batched(inputs[0]), batched(output))

        return hook

    def _stack_hook(self, stack: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            final = batched(_first_tensor(output))
            self.finals[stack] = final
            for layer in self.layers.values():
                if layer.stack == stack:
                    layer.h, layer.h_a = in_rows(layer.h, final), in_rows(layer.h_a, final)

        return hook


StackMasks = Mapping[str, Tensor | None]
"""A (B, L) mask of valid tokens per stack path, or None where every token is valid."""


class RedundancyRegularizer:
    """L_Ra = α · mean(L_red) + β · mean(L_mi), from one captured forward, each mean taken
    over the layers of a stack and then over the stacks (``stack_mean``).

    Use: ``with reg.recording(): out = model(...)`` then ``reg.loss(masks)`` with one mask
    per stack (``reg.stacks`` lists their paths). When both weights are 0 it records nothing.
    """

    def __init__(self, model: nn.Module, config: RedundancyConfig) -> None:
        self.config = config
        self.capture = ActivationCapture(model) if config.enabled else None
        self.stacks = self.capture.stacks if self.capture else []

    @contextmanager
    def recording(self) -> Iterator[None]:
        if self.capture is None:
            yield
            return
        with self.capture.recording():
            yield

    def loss(self, masks: StackMasks) -> tuple[Tensor | float, dict[str, Tensor]]:
        """(weighted loss, {"redundancy": mean L_red, "mutual_information": mean L_mi}), the
        parts detached for logging (no host synchronisation here). ``masks`` holds a (B, L)
        mask per stack, or None for a stack whose every token is valid (a vision tower)."""
        if self.capture is None:
            return 0.0, {}
        missing = [s for s in self.stacks if s not in masks]
        if missing:
            raise ValueError(
                f"no token mask for the stacks {missing}; pass masks={{stack: (B, L)}}"
            )
        layers = list(self.capture.layers.values())
        if not layers:
            raise RuntimeError("nothing was recorded: run the forward inside recording()")

        def valid(layer: LayerActivations) -> Tensor:
            mask = masks[layer.stack]
            if mask is None:
                return torch.ones(layer.h.shape[:2], dtype=torch.bool, device=layer.h.device)
            return mask.bool()

        finals = self.capture.finals
        terms: dict[str, tuple[float, Callable[[LayerActivations], Tensor]]] = {
            "redundancy": (
                self.config.alpha,
                lambda a: decorrelation_penalty(a.h_a, a.h, valid(a), self.config.lam),
            ),
            "mutual_information": (
                self.config.beta,
                lambda a: jsd_mutual_information_loss(a.h_a, finals[a.stack], valid(a)),
            ),
        }
        total: Tensor | float = 0.0
        parts = {}
        for name, (weight, term) in terms.items():
            if weight > 0:
                value = stack_mean(layers, term)
                total = total + weight * value
                parts[name] = value.detach()
        return total, parts


def stack_mean(
    layers: list[LayerActivations], term: Callable[[LayerActivations], Tensor]
) -> Tensor:
    """The mean over stacks of each stack's mean of ``term`` over its layers, as the reference
    averages L_Ra: 0.5 · (encoder mean + decoder mean) for an encoder-decoder, whatever the
    number of adapters in each (a pooled mean over all layers would weight the stack with
    more adapters, a vision tower say, more)."""
    by_stack: dict[str, list[Tensor]] = {}
    for layer in layers:
        by_stack.setdefault(layer.stack, []).append(term(layer))
    return torch.stack([torch.stack(values).mean() for values in by_stack.values()]).mean()
