"""MixPHM: redundancy-aware parameter-efficient tuning for low-resource VQA (CVPR 2023)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mixphm.adapter import MixPHMAdapter
    from mixphm.config import MixPHMConfig
    from mixphm.evaluation import vqa_accuracy
    from mixphm.inject import (
        add_mixphm,
        compile_forward,
        deploy,
        describe_placement,
        mixphm_adapters,
        parameter_counts,
    )
    from mixphm.serialization import load_adapter, save_adapter

_HOMES = {
    "MixPHMAdapter": "mixphm.adapter",
    "MixPHMConfig": "mixphm.config",
    "add_mixphm": "mixphm.inject",
    "compile_forward": "mixphm.inject",
    "deploy": "mixphm.inject",
    "describe_placement": "mixphm.inject",
    "load_adapter": "mixphm.serialization",
    "mixphm_adapters": "mixphm.inject",
    "parameter_counts": "mixphm.inject",
    "save_adapter": "mixphm.serialization",
    "vqa_accuracy": "mixphm.evaluation",
}

__all__ = [
    "MixPHMAdapter",
    "MixPHMConfig",
    "add_mixphm",
    "compile_forward",
    "deploy",
    "describe_placement",
    "load_adapter",
    "mixphm_adapters",
    "parameter_counts",
    "save_adapter",
    "vqa_accuracy",
]


def __getattr__(name: str) -> Any:
    """Each public name imports its module on first use (PEP 562): importing ``mixphm`` for
    its command line or its config does not load torch."""
    if name not in _HOMES:
        raise AttributeError(f"module 'mixphm' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
