"""The learning-rate schedule every recipe of the project uses."""

from __future__ import annotations


def linear_warmup_decay(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` of the steps, then linear decay."""
    warm = max(1, round(total * warmup))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))
