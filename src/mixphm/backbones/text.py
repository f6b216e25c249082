"""Tokenising prompts and candidate answers for the offline default backbone."""

from __future__ import annotations

from typing import Any

from torch import Tensor

MAX_PROMPT_TOKENS = 40


def encode_prompts(tokenizer: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
    """Prompts (each with a [MASK]) → ids, attention mask: (B, T) each. A prompt longer
    than MAX_PROMPT_TOKENS is cut and its last token before [SEP] becomes the [MASK]."""
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lost = ~(ids == tokenizer.mask_token_id).any(1)
    if lost.any():
        last = mask.sum(1) - 2  # the position before [SEP]
        ids[lost, last[lost]] = tokenizer.mask_token_id
    return ids, mask


def encode_candidates(tokenizer: Any, answers: list[str]) -> tuple[Tensor, Tensor]:
    """Candidate answer strings → ids, attention mask: (C, A) each."""
    batch = tokenizer(answers, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]
