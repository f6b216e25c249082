"""Turn a VQADataset into tensors for the offline backbone, once, before training.

Prompts are tokenised, grid features looked up (computed once per image and cached), and
soft answer scores laid out over the candidate answers (B, C), so no epoch repeats work.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mixphm.backbones.offline_vlm import prompt
from mixphm.backbones.text import encode_candidates, encode_prompts
from mixphm.backbones.vision import cached_grid_features
from mixphm.data.examples import VQADataset, VQAExample


@dataclass(frozen=True)
class Candidates:
    """The answer strings a model chooses from, tokenised: (C, A) ids and mask."""

    answers: tuple[str, ...]
    ids: Tensor
    mask: Tensor

    @classmethod
    def from_answers(cls, tokenizer: Any, answers: list[str]) -> Candidates:
        if not answers:
            raise ValueError("the candidate answer set is empty")
        ids, mask = encode_candidates(tokenizer, answers)
        return cls(tuple(answers), ids, mask)


def candidate_answers(*datasets: VQADataset) -> list[str]:
    """Every answer with a positive soft score in the datasets, sorted."""
    return sorted({a for d in datasets for e in d.examples for a, s in e.scores.items() if s > 0})


@dataclass(frozen=True)
class EncodedSplit:
    """A split as tensors: prompt ids and mask (N, T), grid features (N, V, D_v) and soft
    targets (N, C) over the candidates. ``examples`` keeps the rows' questions in order."""

    examples: tuple[VQAExample, ...]
    ids: Tensor
    mask: Tensor
    visual: Tensor
    targets: Tensor
    metric: str

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(ids, mask, visual, targets) of these rows, trimmed to their longest prompt."""
        mask = self.mask[rows]
        length = int(mask.sum(1).max())
        return self.ids[rows, :length], mask[:, :length], self.visual[rows], self.targets[rows]

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, tuple[Tensor, ...]]]:
        for start in range(0, len(self), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(self)))
            yield rows, self.batch(rows)


def encode_split(
    dataset: VQADataset, tokenizer: Any, candidates: Candidates, features: Mapping[str, Tensor]
) -> EncodedSplit:
    """``features`` maps image ids to grid features (16, 1280), e.g. ``image_features``."""
    ids, mask = encode_prompts(tokenizer, [prompt(e.question) for e in dataset.examples])
    index = {a: i for i, a in enumerate(candidates.answers)}
    targets = torch.zeros(len(dataset), len(candidates.answers))
    for row, example in enumerate(dataset.examples):
        for answer, score in example.scores.items():
            if answer in index:
                targets[row, index[answer]] = score
    visual = torch.stack([features[e.image_id] for e in dataset.examples])
    return EncodedSplit(tuple(dataset.examples), ids, mask, visual, targets, dataset.metric)


def image_features(dataset: VQADataset, cache_dir: Path) -> dict[str, Tensor]:
    """Grid features of every image of ``dataset``, computed once and cached on disk."""
    return cached_grid_features(
        [e.image_id for e in dataset.examples],
        dataset.visual.load,  # type: ignore[arg-type]
        cache_dir / f"{dataset.name}-{dataset.split}",
    )
