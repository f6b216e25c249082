"""What the generative backbones (VL-T5, Hugging Face VLMs) share: decoding options and
the padding of token rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Decoding:
    """Greedy when ``num_beams`` is 1, beam search otherwise."""

    max_new_tokens: int = 10
    num_beams: int = 1


def pad_rows(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token rows of different lengths → right-padded ids and their mask, both (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[*r, *[pad] * (width - len(r))] for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    return ids, mask
