"""What the generative backbones (VL-T5, Hugging Face VLMs) share: decoding options, the
padding of token rows, and the score-weighted answer loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORED = -100
"""The label of a position that is not an answer token."""


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


def score_weighted_answer_loss(
    logits: Tensor, labels: Tensor, scores: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Σ_b score_b · (cross-entropy averaged over row b's answer tokens) / B, as the VL-T5
    code trains VQA. logits (B, T, V) predict labels (B, T) position by position (shifted
    already); positions labelled ``IGNORED`` count nowhere; scores (B,). Only the answer
    positions' logits are taken to float32: a VLM's prompt holds hundreds of image tokens."""
    answer_tokens = labels != IGNORED
    rows, positions = answer_tokens.nonzero(as_tuple=True)
    token_losses = F.cross_entropy(
        logits[rows, positions].float(),
        labels[rows, positions],
        reduction="none",
        label_smoothing=label_smoothing,
    )
    sums = token_losses.new_zeros(labels.shape[0]).index_add(0, rows, token_losses)
    per_answer = sums / answer_tokens.sum(1).clamp(min=1)
    return (per_answer * scores.to(per_answer.device)).mean()
