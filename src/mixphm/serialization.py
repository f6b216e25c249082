"""Save and load only the trained adapter weights: a JSON config beside a safetensors file."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mixphm.adapter import MixPHMAdapter
from mixphm.config import MixPHMConfig
from mixphm.inject import (
    CONFIG_ATTRIBUTE,
    adapter_config,
    adapter_router,
    attach,
    deployed_adapters,
    mixphm_adapters,
    plan_adapters,
)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "mixphm-adapter"
RULE_KEY = "rule.S"


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """Every adapter tensor under its model path; the shared rule tensor once, as ``rule.S``."""
    return named_adapter_state(mixphm_adapters(model))


def named_adapter_state(adapters: Iterable[tuple[str, MixPHMAdapter]]) -> dict[str, Tensor]:
    """``adapter_state`` of (path, adapter) pairs, attached to a model or only planned."""
    state: dict[str, Tensor] = {}
    for path, adapter in adapters:
        for name, param in adapter.named_parameters(remove_duplicate=False):
            if name.endswith(RULE_KEY):
                state[RULE_KEY] = param
            else:
                state[f"{path}.{name}"] = param
    return state


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` into ``directory``."""
    state = adapter_state(model)
    if not state:
        deployed = any(True for _ in deployed_adapters(model))
        raise ValueError(
            f"{type(model).__name__}'s MixPHM adapters were deployed (mixphm.deploy): only their "
            "merged weights are left, so save the adapter before deploying"
            if deployed
            else f"{type(model).__name__} has no MixPHM adapters to save"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": 1,
        "base_model_class": type(model).__name__,
        "config": adapter_config(model).to_dict(),
        "routing": adapter_router(model).state_dict(),
        "adapters": {path: adapter.up.d_out for path, adapter in mixphm_adapters(model)},
    }
    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _read_meta(directory: Path) -> dict[str, Any]:
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {directory} is not a saved MixPHM adapter")
    try:
        meta: dict[str, Any] = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{config_path} is not a MixPHM adapter config (format={meta.get('format')!r})"
        )
    return meta


def _listing(keys: set[str]) -> str:
    shown = sorted(keys)[:5]
    return ", ".join(shown) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


SETTINGS = (
    "routing_seed",
    "dropout",
    "merge",
    "activation",
    "rule_init_std",
    "zero_init_up",
    "weight_decay",
)
"""MixPHMConfig fields that leave the weights' shapes and places alone (settings of the
forward, of initialisation or of training): an adapter file that differs from the model's
adapters only in these loads, and its values are taken."""


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a saved adapter into ``model`` (adding the adapters first if it has none).

    Everything is checked before the model is changed: a ValueError names the mismatch when
    the model's class, the adapter config's shape-defining fields, the adapter positions or
    the tensor shapes differ from the saved ones, and the model is left as it was. Where
    the model already has adapters that differ only in ``SETTINGS`` (routing seed, dropout,
    merge mode, nonlinearity), the file's values are applied, with a warning that says so.
    Only safetensors is read.
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    saved_class, model_class = meta["base_model_class"], type(model).__name__
    if saved_class != model_class:
        raise ValueError(f"adapter in {directory} was trained on {saved_class}, not {model_class}")
    config = MixPHMConfig.from_dict(meta["config"])
    attached = any(True for _ in mixphm_adapters(model))
    plan = None if attached else plan_adapters(model, config)
    changed: dict[str, tuple[Any, Any]] = {}
    if attached:
        current = adapter_config(model).to_dict()
        differing = {k: (current[k], v) for k, v in config.to_dict().items() if current[k] != v}
        structural = [k for k in differing if k not in SETTINGS]
        if structural:
            raise ValueError(
                f"adapter in {directory} has a different config: {', '.join(structural)} differ"
            )
        changed = differing
    try:
        saved = load_file(str(directory / WEIGHTS_FILE))
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ValueError(
            f"{directory / WEIGHTS_FILE} is not a readable safetensors file: {error}"
        ) from None
    state = adapter_state(model) if plan is None else named_adapter_state(plan.named_adapters())
    check_fits(saved, state, f"adapter in {directory} does not fit this {model_class}")

    if plan is not None:
        attach(model, plan)
    elif changed:
        setattr(model, CONFIG_ATTRIBUTE, config)
        for _, adapter in mixphm_adapters(model):
            adapter.configure(config)
        warnings.warn(
            f"load_adapter: took {', '.join(f'{k}={new!r}' for k, (_, new) in changed.items())}"
            f" from {directory} (the model's adapters had "
            f"{', '.join(f'{k}={old!r}' for k, (old, _) in changed.items())})",
            stacklevel=2,
        )
    with torch.no_grad():
        for key, param in state.items():
            param.copy_(saved[key])
    adapter_router(model).load_state_dict(meta["routing"])
    return model


def check_fits(saved: dict[str, Tensor], state: dict[str, Tensor], context: str) -> None:
    """Raise ValueError unless ``saved`` has exactly ``state``'s keys and shapes."""
    missing, unexpected = set(state) - set(saved), set(saved) - set(state)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing from the file: {_listing(missing)}")
        if unexpected:
            problems.append(f"not in this model: {_listing(unexpected)}")
        raise ValueError(f"{context}: " + "; ".join(problems))
    for key, param in state.items():
        if saved[key].shape != param.shape:
            raise ValueError(
                f"{context}: {key} has shape {tuple(saved[key].shape)} in the file but "
                f"{tuple(param.shape)} in the model"
            )
