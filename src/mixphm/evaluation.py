"""VQA metrics: the official VQA accuracy, GQA exact match, and per-type breakdowns.

Answer normalisation is the official VQA evaluation script's (Antol et al. 2015;
github.com/GT-Vision-Lab/VQA, ``vqaEval.py``), step by step, with its tables as data
(``configs/vqa_normalization.json``, verbatim): newlines and tabs become spaces and the ends
are stripped; then each punctuation mark in the table's order is deleted where it stands
beside a space anywhere in the answer, or anywhere when a comma sits between two digits,
and is otherwise turned into a space; a period not followed by a digit is deleted; then the
text is lower-cased and split into words, number words become digits, the articles are
dropped, and each word found in the contraction table is replaced by its entry. The table
is taken as it is, quirks included: it has "couldnt've" and "couldn'tve" but no
"couldntve", maps "twas" to "'twas", and its capitalised keys ("Im", "Ive", "Id've") never
match the lower-cased words.

One deliberate difference: the official script gives the human answers only the
punctuation step, and only when they are not all the same; here the human answers get the
whole normalisation, as the prediction does, so "2" matches a unanimous "Two" (official
VQA v2 annotations are already normalised, so their scores are the same either way).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mixphm.data.examples import VQADataset, VQAExample


def _official_tables() -> dict[str, Any]:
    text = resources.files("mixphm.configs").joinpath("vqa_normalization.json").read_text()
    tables: dict[str, Any] = json.loads(text)
    return tables


_TABLES = _official_tables()
PUNCTUATION: tuple[str, ...] = tuple(_TABLES["punctuation"])
NUMBER_WORDS: dict[str, str] = _TABLES["number_words"]
ARTICLES = frozenset(_TABLES["articles"])
CONTRACTIONS: dict[str, str] = _TABLES["contractions"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")


def strip_punctuation(original: str) -> str:
    """The official punctuation step (see the module docstring)."""
    text = original
    digits_with_comma = _COMMA_BETWEEN_DIGITS.search(original) is not None
    for mark in PUNCTUATION:
        beside_space = mark + " " in original or " " + mark in original
        text = text.replace(mark, "" if beside_space or digits_with_comma else " ")
    return _PERIOD_NOT_DECIMAL.sub("", text)


def digits_articles_contractions(text: str) -> str:
    """The official word step: lower case, number words to digits, articles dropped, then
    the contraction table."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation (see the module docstring)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return digits_articles_contractions(strip_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQA accuracy of ``prediction`` against the human ``answers``.

    Each answer is held out in turn; the prediction scores min(1, matches among the
    others / 3); the scores are averaged. With 10 answers this is 0, 0.3, 0.6, 0.9 or 1.
    Shorter lists use the same formula (so 3 identical answers give at most 2/3), except a
    single answer, which is scored by exact match.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    predicted = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == predicted for a in answers)
    if len(answers) == 1:
        return float(matches)
    held_out_match = matches * min(1.0, (matches - 1) / 3)
    held_out_other = (len(answers) - matches) * min(1.0, matches / 3)
    return (held_out_match + held_out_other) / len(answers)


def exact_match(prediction: str, answer: str) -> float:
    """GQA accuracy: 1 if the normalised strings are equal, else 0."""
    return float(normalize_answer(prediction) == normalize_answer(answer))


@dataclass(frozen=True)
class Scored:
    """One question's outcome, as the breakdown needs it."""

    accuracy: float
    question_type: str = ""
    answer_type: str = ""


@dataclass(frozen=True)
class Report:
    """Accuracies in percent: overall and per question / answer type, with counts."""

    overall: float
    count: int
    per_question_type: dict[str, float] = field(default_factory=dict)
    per_answer_type: dict[str, float] = field(default_factory=dict)


def _mean_percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values)


def summarize(results: Iterable[Scored]) -> Report:
    results = list(results)
    if not results:
        raise ValueError("no predictions to evaluate")
    by_question: Mapping[str, list[float]] = defaultdict(list)
    by_answer: Mapping[str, list[float]] = defaultdict(list)
    for r in results:
        if r.question_type:
            by_question[r.question_type].append(r.accuracy)
        if r.answer_type:
            by_answer[r.answer_type].append(r.accuracy)
    return Report(
        overall=_mean_percent([r.accuracy for r in results]),
        count=len(results),
        per_question_type={k: _mean_percent(v) for k, v in sorted(by_question.items())},
        per_answer_type={k: _mean_percent(v) for k, v in sorted(by_answer.items())},
    )


def score(example: VQAExample, prediction: str, metric: str) -> float:
    """Accuracy in [0, 1] of one prediction: VQA accuracy against the human answers (or the
    soft score of the predicted answer when a split file keeps only scores), or exact match."""
    if metric == "exact":
        return exact_match(prediction, example.answers[0])
    if example.answers:
        return vqa_accuracy(prediction, list(example.answers))
    return example.scores.get(normalize_answer(prediction), 0.0)


def evaluate(dataset: VQADataset, predictions: Mapping[str, str]) -> Report:
    """Score a prediction for every question of ``dataset`` with the dataset's metric."""
    missing = [e.question_id for e in dataset.examples if e.question_id not in predictions]
    if missing:
        raise ValueError(
            f"no prediction for {len(missing)} of {len(dataset)} questions, e.g. {missing[0]!r}"
        )
    return summarize(
        Scored(score(e, predictions[e.question_id], dataset.metric), e.question_type, e.answer_type)
        for e in dataset.examples
    )
