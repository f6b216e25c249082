"""Where finished runs gain and lose: test accuracy per answer type, and how concentrated
each type's predictions are (the share of the most frequent predicted answer).

A run that answers every yes/no question "yes" scores about 50% on them whatever it sees;
the share column shows that collapse. This analyses runs already selected on their dev
split; nothing here feeds back into training or model selection.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from tqdm import tqdm

from mixphm.data import load_easy_vqa
from mixphm.data.examples import VQAExample
from mixphm.evaluation import Scored, score, summarize
from mixphm.experiments.records import Run, finished_runs
from mixphm.experiments.tables import markdown_table
from mixphm.training.objectives import CandidateScoring
from mixphm.training.predict import check_finished, load_run
from mixphm.training.recipe import PREDICTIONS_FILE, record_variant, write_predictions
from mixphm.training.setup import OfflineSetup, backbone_factory

UNTYPED = "all"


@dataclass(frozen=True)
class TypeOutcome:
    """One answer type of one run: accuracy and top-answer share in percent."""

    answer_type: str
    count: int
    accuracy: float
    top_answer: str
    top_share: float


@dataclass(frozen=True)
class RunBreakdown:
    backbone: str
    variant: str
    """The method with any adapter options (``record_variant``)."""
    k: int
    seed: int
    test_accuracy: float
    types: tuple[TypeOutcome, ...]


def by_answer_type(
    examples: Sequence[VQAExample], predictions: Sequence[str], metric: str
) -> tuple[TypeOutcome, ...]:
    """Per answer type (``"all"`` for untyped questions), sorted by type name."""
    answer_types = [e.answer_type or UNTYPED for e in examples]
    report = summarize(
        Scored(score(e, p, metric), answer_type=t)
        for e, p, t in zip(examples, predictions, answer_types, strict=True)
    )
    predicted: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for answer_type, prediction in zip(answer_types, predictions, strict=True):
        predicted[answer_type][prediction] += 1
    outcomes = []
    for answer_type, accuracy in report.per_answer_type.items():
        counts = predicted[answer_type]
        top_answer, top_count = counts.most_common(1)[0]
        total = sum(counts.values())
        outcomes.append(
            TypeOutcome(answer_type, total, accuracy, top_answer, 100.0 * top_count / total)
        )
    return tuple(outcomes)


def answering_model(directory: Path, result: dict[str, Any]) -> Any:
    """The model a finished run answered the test split with: its best weights, or the bare
    backbone for the zero-shot row."""
    if result["method"] == "zero-shot":
        return backbone_factory(result["backbone"])().eval()
    return load_run(directory)[0]


def write_test_predictions(runs: Sequence[Run], test_limit: int) -> None:
    """Predict the test sample with each run's model (runs that finished before the recipe
    wrote its predictions)."""
    for directory, result in runs:  # before the minutes the setup takes
        if result["method"] != "zero-shot":
            check_finished(directory)
    setup = OfflineSetup.build(test_limit=test_limit)
    objective = CandidateScoring(setup.candidates)
    for directory, result in tqdm(runs, desc="test predictions", unit="run"):
        predicted = objective.predict(answering_model(directory, result), setup.test)
        write_predictions(setup.test, predicted, directory)


def breakdown(
    paths: Sequence[Path],
    ks: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    test_limit: int = 2000,
) -> list[RunBreakdown]:
    """The breakdown of every finished easy-VQA run in or under ``paths`` (with these ``ks``
    and ``seeds``), read from its test predictions (computed from its weights first where a
    run has none)."""
    runs = finished_runs(paths, ks, seeds)
    missing = [run for run in runs if not (run[0] / PREDICTIONS_FILE).is_file()]
    if missing:
        write_test_predictions(missing, test_limit)
    test = load_easy_vqa("test")
    outcomes = []
    for directory, result in runs:
        predictions: dict[str, str] = json.loads((directory / PREDICTIONS_FILE).read_text())
        unknown = [q for q in predictions if q not in test.by_id]
        if unknown:
            raise ValueError(
                f"{directory}: question {unknown[0]!r} is not in easy-VQA's test split "
                "(the breakdown reads runs of the offline default)"
            )
        examples = [test.by_id[q] for q in predictions]
        types = by_answer_type(examples, list(predictions.values()), test.metric)
        overall = sum(t.accuracy * t.count for t in types) / len(examples)
        if abs(overall - result["test_accuracy"]) > 0.01:
            raise ValueError(
                f"{directory}: its {PREDICTIONS_FILE} scores {overall:.2f} but its result.json "
                f"records {result['test_accuracy']}; the two come from different runs"
            )
        key = (result["backbone"], record_variant(result), result["k"], result["seed"])
        outcomes.append(RunBreakdown(*key, overall, types))
    return outcomes


def format_breakdown(runs: Sequence[RunBreakdown]) -> str:
    """Markdown, one row per backbone, method and k (sorted), means over its seeds: test
    accuracy, then per answer type the accuracy and the top-answer share."""
    groups: defaultdict[tuple[str, str, int], list[RunBreakdown]] = defaultdict(list)
    for run in runs:
        groups[run.backbone, run.variant, run.k].append(run)
    counts = {t.answer_type: t.count for run in runs for t in run.types}
    answer_types = sorted(counts)
    header = ["backbone", "method", "k", "seeds", "test"]
    header += [f"{t} ({counts[t]} q): acc / top share" for t in answer_types]
    rows = []
    for (backbone, variant, k), group in sorted(groups.items()):
        test = mean(r.test_accuracy for r in group)
        cells = [backbone, variant, str(k), str(len(group)), f"{test:.1f}"]
        for answer_type in answer_types:
            found = [t for r in group for t in r.types if t.answer_type == answer_type]
            accuracy, share = mean(t.accuracy for t in found), mean(t.top_share for t in found)
            cells.append(f"{accuracy:.1f} / {share:.0f}")
        rows.append(cells)
    return markdown_table(header, rows, 2)
