"""Every tuning method the benchmark compares, applied to a backbone in place.

- ``full``: every weight trains.
- ``bitfit``: only bias terms train (Ben Zaken et al. 2022).
- ``lora``, ``ia3``: through ``peft`` (``inject_adapter_in_model``, so any nn.Module works),
  on the linear layers ``mixphm.placement`` finds (``nn.Linear`` or transformers' ``Conv1D``).
- ``houlsby``, ``pfeiffer``, ``compacter``, ``adamix``, ``mixphm``: the MixPHM adapter family.
- ``mixphm-ra``: MixPHM with the redundancy regularizer (its weights come from the config).
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from torch import nn

from mixphm.config import Activation, MixPHMConfig
from mixphm.inject import add_mixphm
from mixphm.placement import (
    feedforward_targets,
    ia3_attention_targets,
    linear_maps,
    lora_targets,
)
from mixphm.regularization import RedundancyConfig
from mixphm.training.choices import ADAPTER_METHODS as ADAPTER_METHODS
from mixphm.training.choices import METHODS as METHODS


@dataclass(frozen=True)
class MethodSettings:
    """What one method sets itself, read from ``configs/methods.toml``: its learning rate,
    the candidate rates of a selection on dev, and its own extras (LoRA's rank, the
    regularizer's weights). The rest of how a run trains is the recipe's
    (``mixphm.training.recipes``), shared by every method."""

    lr: float
    lr_grid: tuple[float, ...]
    extra: dict[str, Any]


@functools.cache
def methods_table() -> dict[str, Any]:
    """``configs/methods.toml``, read once per process (every run record's variant name
    asks it for the method's own rate)."""
    text = resources.files("mixphm.configs").joinpath("methods.toml").read_text()
    return tomllib.loads(text)


def method_settings(method: str) -> MethodSettings:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    own = dict(methods_table()[method])
    return MethodSettings(lr=own.pop("lr"), lr_grid=tuple(own.pop("lr_grid")), extra=own)


def regularizer_config(method: str) -> RedundancyConfig | None:
    """The redundancy regularizer a method trains with, or None."""
    if method != "mixphm-ra":
        return None
    extra = method_settings(method).extra
    return RedundancyConfig(alpha=extra["alpha"], beta=extra["beta"])


def adapter_config(
    method: str,
    seed: int,
    adapter_options: Mapping[str, Any] | None = None,
    activation: Activation = "gelu_new",
) -> MixPHMConfig | None:
    """The adapters a MixPHM-family method adds (None for the other methods): its preset
    with the recipe's ``activation``, and ``adapter_options`` overriding fields of both
    (ablations). Raises ValueError for options the method cannot take; cheap, so callers
    check before any work."""
    options = dict(adapter_options or {})
    if method not in (*ADAPTER_METHODS, "mixphm-ra"):
        if options:
            raise ValueError(f"adapter options apply to the MixPHM family only, not to {method}")
        return None
    preset = "mixphm" if method == "mixphm-ra" else method
    return MixPHMConfig.preset(
        preset, **{"routing_seed": seed, "activation": activation, **options}
    )


def weights_transposed(model: nn.Module, paths: Sequence[str]) -> bool:
    """peft's ``fan_in_fan_out``: whether the linear layers at ``paths`` store their weight
    (in_features, out_features), as transformers' Conv1D does (GPT-2), so that merging an
    update transposes it. peft would correct a wrong value layer by layer, with a warning."""
    modules = dict(model.named_modules())
    return any(linear.transposed for _, linear in linear_maps((p, modules[p]) for p in paths))


def apply_method(
    model: nn.Module,
    method: str,
    seed: int,
    adapter_options: Mapping[str, Any] | None = None,
    activation: Activation = "gelu_new",
) -> nn.Module:
    """Make exactly the method's parameters trainable (adding them where needed).
    ``activation`` is the recipe's adapter nonlinearity; ``adapter_options`` override
    fields of the MixPHM-family preset (ablations)."""
    settings = method_settings(method)
    adapters = adapter_config(method, seed, adapter_options, activation)
    if adapters is not None:
        return add_mixphm(model, adapters)
    if method == "full":
        return model.requires_grad_(True)
    if method == "bitfit":
        model.requires_grad_(False)
        biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
        if not biases:
            raise ValueError(f"{type(model).__name__} has no bias terms: BitFit does not apply")
        for p in biases:
            p.requires_grad_(True)
        return model
    if method in ("lora", "ia3"):
        from peft import IA3Config, LoraConfig, inject_adapter_in_model

        model.requires_grad_(False)
        config: Any
        if method == "lora":
            targets = lora_targets(model)
            config = LoraConfig(
                r=settings.extra["rank"],
                lora_alpha=settings.extra["alpha"],
                target_modules=targets,
                fan_in_fan_out=weights_transposed(model, targets),
            )
        else:
            feedforward = feedforward_targets(model)
            targets = ia3_attention_targets(model) + feedforward
            config = IA3Config(
                target_modules=targets,
                feedforward_modules=feedforward,
                fan_in_fan_out=weights_transposed(model, targets),
            )
        return inject_adapter_in_model(config, model)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
