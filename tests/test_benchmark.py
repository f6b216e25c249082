"""The benchmark's bookkeeping: the zero-shot row is scored once and its answers kept; an
ablation gets its own folder and row; a finished run is never taken for a different one."""

import json
from types import SimpleNamespace

import pytest
from tiny_models import tiny_candidates, tiny_split, tiny_vlm

import mixphm.training.benchmark as benchmark
from mixphm.training.recipe import PREDICTIONS_FILE, RunSpec, prediction_accuracy, train


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


def finish(spec, out):
    folder = benchmark.run_dir(out, spec)
    folder.mkdir(parents=True)
    result = {"method": spec.method, "k": spec.k, "seed": spec.seed, "backbone": spec.backbone}
    (folder / "result.json").write_text(json.dumps(result))  # as runs before 2026-11-30 wrote
    return folder


def test_an_ablation_is_not_mistaken_for_the_finished_preset(tmp_path):
    preset = RunSpec("mixphm", 64, 13)
    ablation = RunSpec("mixphm", 64, 13, adapter_options=(("num_experts", 1), ("dropout", 0.0)))
    assert finish(preset, tmp_path).name == "seed13"
    assert benchmark.run_dir(tmp_path, ablation).parts[-3] == "mixphm+dropout=0.0+num_experts=1"
    assert benchmark.pending([preset, ablation], tmp_path) == [ablation]


def test_a_finished_run_with_other_settings_is_refused(tmp_path):
    finish(RunSpec("mixphm", 64, 13), tmp_path)
    capped = RunSpec("mixphm", 64, 13, max_epochs=3)
    with pytest.raises(ValueError, match="max_epochs=None, not max_epochs=3; use another"):
        benchmark.pending([capped], tmp_path)


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tmp_path):
    data = (tiny_split(32, seed=0), tiny_split(16, seed=1), tiny_split(40, seed=2))
    objective = benchmark.CandidateScoring(tiny_candidates())
    train(RunSpec("mixphm", 32, 13, "tiny", max_epochs=1), tiny_vlm, data, objective, tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file()
    bf16 = RunSpec("mixphm", 32, 13, "tiny", max_epochs=1, mixed_precision="bf16")
    with pytest.raises(ValueError, match="mixed_precision='no', not mixed_precision='bf16'"):
        train(bf16, tiny_vlm, data, objective, tmp_path)
