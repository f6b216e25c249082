"""Loaders for easy-VQA (offline, from its package), VQA v2, OK-VQA and GQA files.

Every loader returns a ``VQADataset``. Visual input comes from a folder of images
(``images=``: ``<image_id>.jpg``, e.g. ``COCO_val2014_000000393225.jpg`` or GQA's
``2354786.jpg``) or from a region feature file (``features=``: ``*_obj36.h5``).

Bad input stops with a one-line ``DataError`` naming the file, except questions whose
image is absent: with ``on_missing="skip"`` they are dropped, counted in
``dataset.skipped`` and logged; the default ``"error"`` stops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from mixphm.data.examples import (
    DataError,
    ImageFiles,
    Metric,
    VisualSource,
    VQADataset,
    VQAExample,
)
from mixphm.data.features import RegionFeatureFile, RegionFeatureFiles
from mixphm.evaluation import normalize_answer, vqa_accuracy

log = logging.getLogger("mixphm.data")

OnMissing = Literal["error", "skip"]
EASY_VQA_COLORS = frozenset({"red", "green", "blue", "black", "gray", "teal", "brown", "yellow"})


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: malformed JSON at line {error.lineno} column {error.colno} ({error.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: unreadable ({error})") from None


def _get(entry: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{path}: {where} lacks the field {key!r}")
    return entry[key]


Features = str | Path | Sequence[str | Path]


def _visual_source(
    image_ids: set[str], images: str | Path | None, features: Features | None
) -> VisualSource:
    if (images is None) == (features is None):
        raise DataError("give exactly one of images= (a folder) or features= (.h5 files)")
    if isinstance(features, str | Path):
        return RegionFeatureFile(features)
    if features is not None:
        return RegionFeatureFiles(features)
    folder = Path(images)  # type: ignore[arg-type]
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    return ImageFiles({image_id: folder / f"{image_id}.jpg" for image_id in image_ids})


def _dataset(
    name: str,
    split: str,
    examples: list[VQAExample],
    visual: VisualSource,
    metric: Metric,
    source: Path,
    on_missing: OnMissing,
) -> VQADataset:
    present = [e for e in examples if e.image_id in visual]
    missing = len(examples) - len(present)
    if missing:
        first = next(e for e in examples if e.image_id not in visual)
        message = (
            f"{source}: {missing} of {len(examples)} questions have no image, e.g. question "
            f"{first.question_id} (image {first.image_id})"
        )
        if on_missing == "error":
            raise DataError(message + "; pass on_missing='skip' to drop them")
        log.warning("%s; skipped", message)
    return VQADataset(name, split, present, visual, metric, missing, str(source))


def soft_scores(answers: list[str]) -> dict[str, float]:
    """Soft score of each distinct normalised answer: its VQA accuracy against all answers."""
    return {normalize_answer(a): vqa_accuracy(a, answers) for a in dict.fromkeys(answers)}


def load_vqa(
    questions: str | Path,
    annotations: str | Path | None = None,
    *,
    images: str | Path | None = None,
    features: Features | None = None,
    name: str = "vqa-v2",
    on_missing: OnMissing = "error",
) -> VQADataset:
    """VQA v2 or OK-VQA from the official question and annotation JSON files.

    Image ids become COCO file stems: ``COCO_<data_subtype>_<12-digit id>``. Without
    annotations (test-dev) the questions have no answers and cannot be scored.
    """
    questions_path = Path(questions)
    raw = read_json(questions_path)
    subtype = _get(raw, "data_subtype", questions_path, "the file")
    entries = _get(raw, "questions", questions_path, "the file")
    by_question: dict[Any, Any] = {}
    if annotations is not None:
        annotations_path = Path(annotations)
        notes = _get(read_json(annotations_path), "annotations", annotations_path, "the file")
        for i, note in enumerate(notes):
            by_question[_get(note, "question_id", annotations_path, f"annotation {i}")] = note
    examples = []
    for i, entry in enumerate(entries):
        question_id = _get(entry, "question_id", questions_path, f"question {i}")
        image_number = _get(entry, "image_id", questions_path, f"question {i}")
        note = by_question.get(question_id, {})
        if annotations is not None and not note:
            raise DataError(f"{annotations}: no annotation for question {question_id}")
        answers = [
            _get(a, "answer", Path(annotations or ""), f"question {question_id}'s answers")
            for a in note.get("answers", [])
        ]
        examples.append(
            VQAExample(
                question_id=str(question_id),
                image_id=f"COCO_{subtype}_{int(image_number):012d}",
                question=_get(entry, "question", questions_path, f"question {i}"),
                answers=tuple(answers),
                scores=soft_scores(answers) if answers else {},
                question_type=str(note.get("question_type", "")),
                answer_type=str(note.get("answer_type", "")),
            )
        )
    ids = {e.image_id for e in examples}
    visual = _visual_source(ids, images, features)
    return _dataset(name, subtype, examples, visual, "vqa", questions_path, on_missing)


def load_vlt5_vqa(
    path: str | Path,
    *,
    images: str | Path | None = None,
    features: Features | None = None,
    name: str = "vqa-v2",
    metric: Metric = "vqa",
    on_missing: OnMissing = "error",
) -> VQADataset:
    """The LXMERT / VL-T5 split files (``train.json``, ``minival.json``, GQA's and
    OK-VQA's in the same layout): a list of {question_id, img_id, sent, label: {answer:
    score}, answers?, question_type?, answer_type?}. Without ``answers`` a prediction
    scores its ``label`` entry."""
    path = Path(path)
    entries = read_json(path)
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of questions")
    examples = []
    for i, entry in enumerate(entries):
        label = _get(entry, "label", path, f"question {i}")
        answers = [
            _get(a, "answer", path, f"question {i}'s answers") for a in entry.get("answers", [])
        ]
        examples.append(
            VQAExample(
                question_id=str(_get(entry, "question_id", path, f"question {i}")),
                image_id=str(_get(entry, "img_id", path, f"question {i}")),
                question=_get(entry, "sent", path, f"question {i}"),
                answers=tuple(answers),
                scores={normalize_answer(a): float(s) for a, s in label.items()},
                question_type=str(entry.get("question_type", "")),
                answer_type=str(entry.get("answer_type", "")),
            )
        )
    visual = _visual_source({e.image_id for e in examples}, images, features)
    return _dataset(name, path.stem, examples, visual, metric, path, on_missing)


def load_gqa(
    path: str | Path,
    *,
    images: str | Path | None = None,
    features: Features | None = None,
    on_missing: OnMissing = "error",
) -> VQADataset:
    """GQA balanced question files (``testdev_balanced_questions.json``...): a dict
    question id → {imageId, question, answer, types: {structural, detailed}}; scored by
    exact match. question_type is the detailed type, answer_type the structural one."""
    path = Path(path)
    entries = read_json(path)
    if not isinstance(entries, dict):
        raise DataError(f"{path}: expected a JSON object mapping question ids to questions")
    examples = []
    for question_id, entry in entries.items():
        where = f"question {question_id}"
        answer = _get(entry, "answer", path, where)
        types = entry.get("types", {})
        examples.append(
            VQAExample(
                question_id=str(question_id),
                image_id=str(_get(entry, "imageId", path, where)),
                question=_get(entry, "question", path, where),
                answers=(answer,),
                scores={normalize_answer(answer): 1.0},
                question_type=str(types.get("detailed", "")),
                answer_type=str(types.get("structural", "")),
            )
        )
    split = path.stem.replace("_questions", "")
    visual = _visual_source({e.image_id for e in examples}, images, features)
    return _dataset("gqa", split, examples, visual, "exact", path, on_missing)


def easy_vqa_answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "color" if answer in EASY_VQA_COLORS else "shape"


def load_easy_vqa(split: Literal["train", "test"]) -> VQADataset:
    """easy-VQA from its PyPI package (offline): 64 × 64 images of one coloured shape, 13
    answers. Question ids are ``<split>-<index>`` in the package's order."""
    try:
        import easy_vqa
    except ImportError:
        raise DataError("easy-VQA is not installed: pip install easy-vqa") from None
    if split == "train":
        questions, answers, image_numbers = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, image_numbers = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise DataError(f"easy-VQA has the splits 'train' and 'test', not {split!r}")
    examples = [
        VQAExample(
            question_id=f"{split}-{i}",
            image_id=str(number),
            question=question,
            answers=(answer,),
            scores={answer: 1.0},
            answer_type=easy_vqa_answer_type(answer),
        )
        for i, (question, answer, number) in enumerate(
            zip(questions, answers, image_numbers, strict=True)
        )
    ]
    visual = ImageFiles({str(k): Path(v) for k, v in paths.items()})
    return VQADataset("easy-vqa", split, examples, visual, "exact", 0, "easy_vqa package")
