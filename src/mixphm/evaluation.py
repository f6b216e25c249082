"""VQA metrics: the official VQA accuracy, GQA exact match, and per-type breakdowns.

Answer normalisation follows the official VQA evaluation script (Antol et al. 2015;
github.com/GT-Vision-Lab/VQA): newlines and tabs become spaces; punctuation is removed
(or turned into a space when it joins two words); a period is dropped unless a digit
follows it; commas between digits go; text is lower-cased; number words zero to ten
become digits; the articles a, an, the are dropped; apostrophe-less contractions get their
apostrophes back ("dont" → "don't"). One deliberate difference: the official script
normalises only when the ten human answers disagree; here both sides are always
normalised, so "Two" and "2" agree even when all annotators wrote "two".
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mixphm.data.examples import VQADataset, VQAExample

PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've
hasn't haven't he'd he'd've he'll he's how'd how'll how's i'd've i'm i've isn't it'd
it'd've it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock
oughtn't shan't she'd've should've shouldn't shouldn't've somebody'd somebody'd've
somebody'll somebody's someone'd someone'd've someone'll someone's something'd
something'd've something'll that's there'd there'd've there're there's they'd they'd've
they'll they're they've twas wasn't we'd've we're we've weren't what'll what're what's
what've when's where'd where's where've who'd who'd've who'll who're who's who've why'll
why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd
you'd've you'll you're you've
""".split()  # noqa: SIM905
# Dropping apostrophes from these would give ordinary words; they are left alone.
_REAL_WORDS = frozenset(
    {"its", "lets", "wed", "well", "were", "ill", "id", "shed", "hell", "shell"}
)


def _apostrophe_variants(word: str) -> Iterable[str]:
    """Every spelling of ``word`` with some (not none) of its apostrophes removed."""
    pieces = word.split("'")
    for keep in itertools.product((True, False), repeat=len(pieces) - 1):
        if all(keep):
            continue
        yield pieces[0] + "".join(
            ("'" if k else "") + p for k, p in zip(keep, pieces[1:], strict=True)
        )


CONTRACTIONS = {
    variant: word
    for word in _CONTRACTIONS
    for variant in _apostrophe_variants(word)
    if variant not in _REAL_WORDS
}
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")


def _strip_punctuation(original: str) -> str:
    text = original
    digits_with_comma = _COMMA_BETWEEN_DIGITS.search(original) is not None
    for mark in PUNCTUATION:
        beside_space = mark + " " in original or " " + mark in original
        text = text.replace(mark, "" if beside_space or digits_with_comma else " ")
    return _PERIOD_NOT_DECIMAL.sub("", text)


def normalize_answer(answer: str) -> str:
    """The official VQA answer normalisation (see the module docstring)."""
    text = _strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


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
