"""The benchmark's zero-shot row: scored once, answers kept, read back on the next call."""

import json
from types import SimpleNamespace

from tiny_models import tiny_candidates, tiny_split, tiny_vlm

import mixphm.training.benchmark as benchmark
from mixphm.training.recipe import PREDICTIONS_FILE, prediction_accuracy


def test_the_zero_shot_row_keeps_its_answers_and_is_not_recomputed(tmp_path, monkeypatch):
    test = tiny_split(40, seed=2)
    monkeypatch.setattr(
        benchmark, "_setup", SimpleNamespace(candidates=tiny_candidates(), test=test)
    )
    monkeypatch.setattr(benchmark, "backbone_factory", lambda name: tiny_vlm)
    result = benchmark.zero_shot("tiny", tmp_path, test_limit=None)
    folder = tmp_path / "runs" / "tiny" / "zero-shot" / "k0" / "seed0"
    predictions = json.loads((folder / PREDICTIONS_FILE).read_text())
    assert list(predictions) == [e.question_id for e in test.examples]
    assert prediction_accuracy(test, list(predictions.values())) == result.test_accuracy

    monkeypatch.setattr(benchmark, "backbone_factory", None)  # a recomputation would fail
    reread = benchmark.zero_shot("tiny", tmp_path, test_limit=None)
    assert (reread.method, reread.test_accuracy) == ("zero-shot", result.test_accuracy)
