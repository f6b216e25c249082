"""What every dataset yields, whatever its source: questions with answers and visual input."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

Metric = Literal["vqa", "exact"]


class DataError(ValueError):
    """Bad input data; the message is one line naming the file and what is wrong."""


@dataclass(frozen=True)
class VQAExample:
    """One question. ``scores`` maps normalised answers to soft scores in [0, 1] (the
    training targets); ``answers`` keeps the raw human answers for the official metric."""

    question_id: str
    image_id: str
    question: str
    answers: tuple[str, ...]
    scores: dict[str, float]
    question_type: str = ""
    answer_type: str = ""


@dataclass(frozen=True)
class RegionFeatures:
    """Detector regions of one image: features (N, D) and boxes (N, 4) as x1, y1, x2, y2
    divided by the image width and height (so in [0, 1])."""

    features: np.ndarray
    boxes: np.ndarray


class VisualSource(Protocol):
    """Gives the visual input of an image id: a PIL image or its region features."""

    def __contains__(self, image_id: str) -> bool: ...

    def load(self, image_id: str) -> Image.Image | RegionFeatures: ...


@dataclass(frozen=True)
class ImageFiles:
    """Image files on disk, one path per image id."""

    paths: dict[str, Path]

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.paths and self.paths[image_id].is_file()

    def load(self, image_id: str) -> Image.Image:
        path = self.paths.get(image_id)
        if path is None or not path.is_file():
            raise DataError(f"{path or image_id}: image file not found")
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as error:
            raise DataError(f"{path}: unreadable image ({error})") from None


@dataclass
class VQADataset:
    """A split of a VQA dataset. ``skipped`` counts questions dropped at load time (see
    the loaders' ``on_missing``)."""

    name: str
    split: str
    examples: list[VQAExample]
    visual: VisualSource
    metric: Metric = "vqa"
    skipped: int = 0
    source: str = ""
    by_id: dict[str, VQAExample] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.examples:
            raise DataError(f"{self.source or self.name}: the {self.split} split has no questions")
        self.by_id = {e.question_id: e for e in self.examples}
        if len(self.by_id) != len(self.examples):
            raise DataError(f"{self.source or self.name}: duplicate question ids")

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, question_ids: list[str], split: str) -> VQADataset:
        """The examples with these ids, in this order, sharing this dataset's visual input."""
        unknown = [q for q in question_ids if q not in self.by_id]
        if unknown:
            raise DataError(
                f"{self.name}/{self.split}: {len(unknown)} question ids not in the dataset, "
                f"e.g. {unknown[0]!r}"
            )
        examples = [self.by_id[q] for q in question_ids]
        return VQADataset(self.name, split, examples, self.visual, self.metric, 0, self.source)
