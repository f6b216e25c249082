"""MixPHM: redundancy-aware parameter-efficient tuning for low-resource VQA (CVPR 2023)."""

from mixphm.adapter import MixPHMAdapter
from mixphm.config import MixPHMConfig
from mixphm.evaluation import vqa_accuracy
from mixphm.inject import add_mixphm, merge_experts, mixphm_adapters, parameter_counts
from mixphm.serialization import load_adapter, save_adapter

__all__ = [
    "MixPHMAdapter",
    "MixPHMConfig",
    "add_mixphm",
    "load_adapter",
    "merge_experts",
    "mixphm_adapters",
    "parameter_counts",
    "save_adapter",
    "vqa_accuracy",
]
