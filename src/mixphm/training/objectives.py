"""The recipe's only backbone-specific part: how a batch becomes a loss, and a split answers.

- ``CandidateScoring``: the offline default backbone scores a fixed set of answer strings;
  the loss is the soft-score-weighted cross-entropy over them. Splits are ``EncodedSplit``.
- ``AnswerGeneration``: VL-T5 and Hugging Face VLMs generate answers. Each epoch, every
  question's target is drawn from its answers in proportion to their soft scores (as the
  VL-T5 code does), from a generator seeded by (seed, epoch, question), so a resumed run
  draws the same targets. Splits are ``VQADataset``; the visual inputs of the training and
  dev questions (k each) are held in memory after their first epoch, the test split's are
  read from their source (the regions of a whole VQA v2 test split would need ~12 GB).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import Tensor

from mixphm.backbones.generation import Decoding
from mixphm.data.examples import VQADataset, VQAExample
from mixphm.regularization import StackMasks
from mixphm.training.data import Candidates, EncodedSplit

ENCODER_STACK = "text.encoder"
"""The offline backbone's one stack of adapted blocks (for the redundancy regularizer)."""


class Split(Protocol):
    """What the recipe reads of a split: its questions, in order, and its metric."""

    @property
    def examples(self) -> Sequence[VQAExample]: ...

    @property
    def metric(self) -> str: ...

    def __len__(self) -> int: ...


class Objective(Protocol):
    answer_set: tuple[str, ...] | None
    """The fixed answers a model chooses from (saved with a run), or None if open."""

    def loss(self, model: Any, split: Any, rows: Tensor, epoch: int) -> tuple[Tensor, StackMasks]:
        """(answer loss, valid-token mask (B, L) per adapted stack) of these training rows;
        ``model`` is the (possibly DDP-wrapped) model to call."""
        ...

    def predict(self, model: Any, split: Any, keep_inputs: bool = False) -> list[str]:
        """One answer string per question of the split, with merged adapters.
        ``keep_inputs``: the split is asked again (dev, every epoch), so inputs read from
        disk may be held in memory for the next call."""
        ...


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """−Σ_c s_c log p_c averaged over the batch: cross-entropy weighted by soft scores.
    logits, targets: (B, C)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


class CandidateScoring:
    def __init__(self, candidates: Candidates) -> None:
        self.candidates = candidates
        self.answer_set: tuple[str, ...] | None = candidates.answers

    def loss(
        self, model: Any, split: EncodedSplit, rows: Tensor, epoch: int
    ) -> tuple[Tensor, StackMasks]:
        device = next(model.parameters()).device
        ids, mask, visual, targets = (t.to(device) for t in split.batch(rows))
        answers = self.candidates.ids.to(device), self.candidates.mask.to(device)
        logits = model(ids, mask, visual, *answers)
        encoder_mask = extract_model_from_parallel(model).encoder_mask(mask)
        return soft_cross_entropy(logits, targets), {ENCODER_STACK: encoder_mask}

    @torch.no_grad()
    def predict(
        self, model: Any, split: EncodedSplit, keep_inputs: bool = False, batch: int = 256
    ) -> list[str]:
        """Argmax candidate per question, the candidates encoded once. An encoded split
        already holds its inputs, so ``keep_inputs`` changes nothing."""
        model.eval()
        device = next(model.parameters()).device
        answers = model.encode_answers(
            self.candidates.ids.to(device), self.candidates.mask.to(device)
        )
        predictions: list[str] = []
        for _, (ids, mask, visual, _) in split.batches(batch):
            logits = model(
                ids.to(device), mask.to(device), visual.to(device), answer_embeddings=answers
            )
            predictions.extend(self.candidates.answers[i] for i in logits.argmax(-1).tolist())
        return predictions


class GenerativeVQA(Protocol):
    """A generative backbone asked about visual inputs (``VLT5VQA``, ``HFVisionQA``)."""

    model: Any

    def training_loss(
        self,
        model: Any,
        visuals: Sequence[Any],
        questions: Sequence[str],
        answers: Sequence[str],
        scores: Tensor,
    ) -> tuple[Tensor, StackMasks]: ...

    def answer(
        self, visuals: Sequence[Any], questions: Sequence[str], decoding: Decoding | None = None
    ) -> list[str]: ...


def draw_target(example: VQAExample, seed: int, epoch: int) -> tuple[str, float]:
    """One answer with probability ∝ its soft score, and that score; ("", 0) if none scores."""
    answers = [(a, s) for a, s in sorted(example.scores.items()) if s > 0]
    if not answers:
        return "", 0.0
    chooser = random.Random(f"{seed}:{epoch}:{example.question_id}")
    return chooser.choices(answers, weights=[s for _, s in answers])[0]


class AnswerGeneration:
    def __init__(
        self, vqa: GenerativeVQA, seed: int, decoding: Decoding | None = None, batch: int = 64
    ) -> None:
        self.vqa = vqa
        self.seed = seed
        self.decoding = decoding or Decoding()
        self.batch = batch
        self.answer_set: tuple[str, ...] | None = None
        self._visuals: dict[str, Any] = {}

    def visuals(self, dataset: VQADataset, examples: Sequence[VQAExample], keep: bool) -> list[Any]:
        """The examples' visual inputs, each image read once (questions share images);
        ``keep`` holds them in memory for later epochs."""
        cache = self._visuals
        read = {
            image_id: dataset.visual.load(image_id)
            for image_id in dict.fromkeys(e.image_id for e in examples)
            if image_id not in cache
        }
        if keep:
            cache.update(read)
        return [cache[e.image_id] if e.image_id in cache else read[e.image_id] for e in examples]

    def loss(
        self, model: Any, split: VQADataset, rows: Tensor, epoch: int
    ) -> tuple[Tensor, StackMasks]:
        examples = [split.examples[i] for i in rows.tolist()]
        targets = [draw_target(e, self.seed, epoch) for e in examples]
        return self.vqa.training_loss(
            model,
            self.visuals(split, examples, keep=True),
            [e.question for e in examples],
            [answer for answer, _ in targets],
            torch.tensor([score for _, score in targets]),
        )

    @torch.no_grad()
    def predict(self, model: Any, split: VQADataset, keep_inputs: bool = False) -> list[str]:
        model.eval()
        predictions: list[str] = []
        for start in range(0, len(split), self.batch):
            examples = split.examples[start : start + self.batch]
            questions = [e.question for e in examples]
            visuals = self.visuals(split, examples, keep=keep_inputs)
            predictions.extend(self.vqa.answer(visuals, questions, self.decoding))
        return predictions
