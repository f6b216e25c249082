"""Each loader on its fixture in the public format, and each bad-input case's message."""

import json

import numpy as np
import pytest
from conftest import write_obj36
from PIL import Image

from mixphm.data import (
    DataError,
    RegionFeatures,
    load_easy_vqa,
    load_gqa,
    load_vlt5_vqa,
    load_vqa,
)
from mixphm.evaluation import evaluate


def vqa_files(root):
    folder = root / "vqa_v2"
    return (
        folder / "v2_OpenEnded_mscoco_val2014_questions.json",
        folder / "v2_mscoco_val2014_annotations.json",
    )


def test_vqa_v2_official_files_with_images(fixture_dir):
    questions, annotations = vqa_files(fixture_dir)
    data = load_vqa(questions, annotations, images=fixture_dir / "vqa_v2" / "images")
    assert (data.name, data.split, len(data), data.metric) == ("vqa-v2", "val2014", 3, "vqa")
    first = data.by_id["420"]
    assert first.image_id == "COCO_val2014_000000000042"
    assert first.question == "How many dogs are there?"
    assert len(first.answers) == 10
    assert first.scores == pytest.approx({"2": 1.0, "3": 0.3})  # "two" normalises to "2"
    assert (first.question_type, first.answer_type) == ("how many", "number")
    assert data.by_id["421"].scores == pytest.approx({"red": 1.0, "orange": 0.6, "pink": 0.3})
    image = data.visual.load(first.image_id)
    assert isinstance(image, Image.Image) and image.size == (8, 6)


def test_vqa_v2_official_files_with_region_features(fixture_dir, tmp_path):
    questions, annotations = vqa_files(fixture_dir)
    ids = ["COCO_val2014_000000000042", "COCO_val2014_000000000073"]
    h5 = write_obj36(tmp_path / "val2014_obj36.h5", ids, numeric_keys=True)
    data = load_vqa(questions, annotations, features=h5)
    regions = data.visual.load(data.by_id["730"].image_id)
    assert isinstance(regions, RegionFeatures)
    assert regions.features.shape == (36, 2048) and regions.features.dtype == np.float32
    np.testing.assert_allclose(regions.boxes[0], [10 / 640, 20 / 480, 0.5, 0.5])


def test_vlt5_split_file_and_features(fixture_dir, tmp_path):
    ids = ["COCO_val2014_000000262148", "COCO_val2014_000000393225"]
    h5 = write_obj36(tmp_path / "val2014_obj36.h5", ids)
    data = load_vlt5_vqa(fixture_dir / "vlt5" / "karpathy_test.json", features=h5)
    assert data.split == "karpathy_test" and len(data) == 2
    looking = data.by_id["262148000"]
    assert looking.scores == {"down": 1.0, "at table": 0.3} and len(looking.answers) == 10
    sky = data.by_id["393225000"]
    assert sky.answers == () and sky.scores == {"yes": 1.0}
    report = evaluate(data, {"262148000": "at table", "393225000": "Yes"})
    assert report.overall == pytest.approx(100 * (0.3 + 1.0) / 2)
    assert report.per_answer_type == pytest.approx({"other": 30.0, "yes/no": 100.0})


def test_features_split_over_several_files_read_as_one(fixture_dir, tmp_path):
    path = fixture_dir / "vlt5" / "karpathy_test.json"
    ids = sorted({e["img_id"] for e in json.loads(path.read_text())})
    first = write_obj36(tmp_path / "train2014_obj36.h5", ids[:1])
    rest = write_obj36(tmp_path / "val2014_obj36.h5", ids[1:])
    data = load_vlt5_vqa(path, features=[first, rest])
    for image in ids:
        assert data.visual.load(image).features.shape == (36, 2048)
    with pytest.raises(DataError, match=r"no features for image 'nowhere' in .*train2014"):
        data.visual.load("nowhere")


def test_gqa_balanced_questions(fixture_dir):
    data = load_gqa(
        fixture_dir / "gqa" / "testdev_balanced_questions.json",
        images=fixture_dir / "gqa" / "images",
    )
    assert (data.name, data.split, data.metric, len(data)) == (
        "gqa",
        "testdev_balanced",
        "exact",
        2,
    )
    woman = data.by_id["201640614"]
    assert (woman.image_id, woman.answers, woman.question_type, woman.answer_type) == (
        "n235859",
        ("woman",),
        "relS",
        "query",
    )
    report = evaluate(data, {"201307251": "No.", "201640614": "man"})
    assert report.overall == 50.0 and report.per_answer_type == {"query": 0.0, "verify": 100.0}


def test_okvqa_files(fixture_dir):
    folder = fixture_dir / "okvqa"
    data = load_vqa(
        folder / "OpenEnded_mscoco_val2014_questions.json",
        folder / "mscoco_val2014_annotations.json",
        images=folder / "images",
        name="ok-vqa",
    )
    (only,) = data.examples
    assert only.scores == pytest.approx({"race": 1.0, "motocross": 0.6, "ride": 0.6})
    assert evaluate(data, {"2971475": "ride"}).overall == pytest.approx(60.0)


def test_easy_vqa_from_its_package():
    data = load_easy_vqa("test")
    assert (len(data), data.metric) == (9673, "exact")
    answers = {a for e in data.examples for a in e.answers}
    assert len(answers) == 13
    assert {e.answer_type for e in data.examples} == {"yes/no", "color", "shape"}
    image = data.visual.load(data.examples[0].image_id)
    assert image.size == (64, 64)
    assert len(load_easy_vqa("train")) == 38575


# --- bad input ------------------------------------------------------------------------


def test_malformed_json_names_file_and_position(fixture_dir):
    questions, annotations = vqa_files(fixture_dir)
    questions.write_text('{"questions": [}')
    with pytest.raises(DataError, match=r"questions\.json: malformed JSON at line 1 column 16"):
        load_vqa(questions, annotations, images=fixture_dir / "vqa_v2" / "images")


def test_missing_file_and_missing_field(fixture_dir):
    questions, annotations = vqa_files(fixture_dir)
    with pytest.raises(DataError, match=r"nope\.json: file not found"):
        load_vqa(fixture_dir / "nope.json", annotations, images=fixture_dir)
    questions.write_text('{"data_subtype": "val2014", "questions": [{"image_id": 1}]}')
    with pytest.raises(DataError, match=r"question 0 lacks the field 'question_id'"):
        load_vqa(questions, annotations, images=fixture_dir / "vqa_v2" / "images")


def test_missing_image_stops_or_is_skipped_and_counted(fixture_dir):
    questions, annotations = vqa_files(fixture_dir)
    images = fixture_dir / "vqa_v2" / "images"
    (images / "COCO_val2014_000000000073.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 3 questions have no image, e.g. question 730"):
        load_vqa(questions, annotations, images=images)
    data = load_vqa(questions, annotations, images=images, on_missing="skip")
    assert (len(data), data.skipped) == (2, 1)


def test_unreadable_image_names_the_file(fixture_dir):
    questions, annotations = vqa_files(fixture_dir)
    images = fixture_dir / "vqa_v2" / "images"
    (images / "COCO_val2014_000000000042.jpg").write_bytes(b"not a jpeg")
    data = load_vqa(questions, annotations, images=images)
    with pytest.raises(DataError, match=r"COCO_val2014_000000000042\.jpg: unreadable image"):
        data.visual.load("COCO_val2014_000000000042")


def test_question_whose_image_is_absent_from_the_feature_file(fixture_dir, tmp_path):
    h5 = write_obj36(tmp_path / "obj36.h5", ["COCO_val2014_000000262148"])
    path = fixture_dir / "vlt5" / "karpathy_test.json"
    with pytest.raises(DataError, match=r"1 of 2 questions have no image, e.g. question 393225000"):
        load_vlt5_vqa(path, features=h5)
    assert load_vlt5_vqa(path, features=h5, on_missing="skip").skipped == 1


def test_broken_feature_file(fixture_dir, tmp_path):
    bad = tmp_path / "bad_obj36.h5"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=r"bad_obj36\.h5: not a readable HDF5 file"):
        load_vlt5_vqa(fixture_dir / "vlt5" / "karpathy_test.json", features=bad)


def test_empty_split(fixture_dir):
    path = fixture_dir / "gqa" / "empty_questions.json"
    path.write_text("{}")
    with pytest.raises(DataError, match=r"empty_questions\.json: the empty split has no questions"):
        load_gqa(path, images=fixture_dir / "gqa" / "images")


def test_visual_input_must_be_given_once(fixture_dir):
    with pytest.raises(DataError, match="exactly one of images="):
        load_gqa(fixture_dir / "gqa" / "testdev_balanced_questions.json")


def test_missing_predictions_are_reported(fixture_dir):
    data = load_gqa(
        fixture_dir / "gqa" / "testdev_balanced_questions.json",
        images=fixture_dir / "gqa" / "images",
    )
    with pytest.raises(ValueError, match=r"no prediction for 1 of 2 questions, e.g. '201640614'"):
        evaluate(data, {"201307251": "no"})
