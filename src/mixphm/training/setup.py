"""What every run on the offline default shares, built once per process: the tokenizer,
easy-VQA's training pool and test split, cached image features, the candidate answers."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mixphm.assets import load_minilm
from mixphm.backbones.offline_vlm import OfflineVLM
from mixphm.data import VQADataset, load_easy_vqa, sample_low_resource
from mixphm.pretraining.recipe import cache_root, pretrained_backbone
from mixphm.training.choices import BACKBONES as BACKBONES
from mixphm.training.choices import DATASETS as DATASETS
from mixphm.training.data import (
    Candidates,
    EncodedSplit,
    candidate_answers,
    encode_split,
    image_features,
)

TEST_SUBSET_SEED = 0


def backbone_factory(name: str) -> Callable[[], nn.Module]:
    """``pretrained``: the cached VL-pretrained backbone (built on first use);
    ``unpretrained``: the same encoders composed with fresh visual layers."""
    if name == "pretrained":
        pretrained_backbone()  # build the cache now, not inside the first run
        return pretrained_backbone
    if name == "unpretrained":
        return OfflineVLM.from_packages
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


@dataclass
class OfflineSetup:
    tokenizer: Any
    pool: VQADataset
    test: EncodedSplit
    features: dict[str, Tensor]
    candidates: Candidates

    @classmethod
    def build(cls, dataset: str = "easy-vqa", test_limit: int | None = 2000) -> OfflineSetup:
        """``test_limit`` questions of the test split, a fixed seeded sample (None: all)."""
        if dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {dataset!r}; the offline default has {', '.join(DATASETS)}"
            )
        tokenizer, _ = load_minilm()
        pool, full_test = load_easy_vqa("train"), load_easy_vqa("test")
        test = full_test
        if test_limit is not None and test_limit < len(full_test):
            ids = [e.question_id for e in full_test.examples]
            random.Random(TEST_SUBSET_SEED).shuffle(ids)
            chosen = set(ids[:test_limit])
            test = full_test.subset([q for q in full_test.by_id if q in chosen], "test")
        cache = cache_root() / "features"
        features = {**image_features(pool, cache), **image_features(full_test, cache)}
        candidates = Candidates.from_answers(tokenizer, candidate_answers(pool))
        return cls(
            tokenizer,
            pool,
            encode_split(test, tokenizer, candidates, features),
            features,
            candidates,
        )

    def splits(self, k: int, seed: int) -> tuple[EncodedSplit, EncodedSplit, EncodedSplit]:
        """(D_train, D_dev, test) for one run of the protocol."""
        sampled = sample_low_resource(self.pool, k, seed)
        train, dev = (
            encode_split(d, self.tokenizer, self.candidates, self.features)
            for d in (sampled.train, sampled.dev)
        )
        return train, dev, self.test
