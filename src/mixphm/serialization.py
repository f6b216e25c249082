"""Save and load only the trained adapter weights: a JSON config beside a safetensors file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mixphm.config import MixPHMConfig
from mixphm.inject import adapter_config, adapter_router, add_mixphm, mixphm_adapters

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "mixphm-adapter"
RULE_KEY = "rule.S"


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """Every adapter tensor under its model path; the shared rule tensor once, as ``rule.S``."""
    state: dict[str, Tensor] = {}
    for path, adapter in mixphm_adapters(model):
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
        raise ValueError(f"{type(model).__name__} has no MixPHM adapters to save")
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


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a saved adapter into ``model`` (adding the adapters first if it has none).

    Raises a ValueError naming the mismatch when the model's class, adapter config, adapter
    positions or tensor shapes differ from the saved ones. Only safetensors is read.
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    saved_class, model_class = meta["base_model_class"], type(model).__name__
    if saved_class != model_class:
        raise ValueError(f"adapter in {directory} was trained on {saved_class}, not {model_class}")
    config = MixPHMConfig.from_dict(meta["config"])
    if not any(True for _ in mixphm_adapters(model)):
        add_mixphm(model, config)
    elif adapter_config(model) != config:
        current = adapter_config(model).to_dict()
        differing = [k for k, v in config.to_dict().items() if current[k] != v]
        raise ValueError(
            f"adapter in {directory} has a different config: {', '.join(differing)} differ"
        )

    try:
        saved = load_file(str(directory / WEIGHTS_FILE))
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ValueError(
            f"{directory / WEIGHTS_FILE} is not a readable safetensors file: {error}"
        ) from None
    state = adapter_state(model)
    missing, unexpected = set(state) - set(saved), set(saved) - set(state)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing from the file: {_listing(missing)}")
        if unexpected:
            problems.append(f"not in this model: {_listing(unexpected)}")
        raise ValueError(
            f"adapter in {directory} does not fit this {model_class}: " + "; ".join(problems)
        )
    for key, param in state.items():
        if saved[key].shape != param.shape:
            raise ValueError(
                f"adapter in {directory} does not fit this {model_class}: {key} has shape "
                f"{tuple(saved[key].shape)} in the file but {tuple(param.shape)} in the model"
            )
    with torch.no_grad():
        for key, param in state.items():
            param.copy_(saved[key])
    adapter_router(model).load_state_dict(meta["routing"])
    return model
