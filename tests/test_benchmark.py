"""The benchmark's bookkeeping: the zero-shot row is scored once and its answers kept; an
ablation gets its own folder and row; a finished run is never taken for a different one;
recipes never share a folder's table."""

import json
from types import SimpleNamespace

import pytest
from tiny_models import tiny_candidates, tiny_split, tiny_vlm

import mixphm.experiments.benchmark as benchmark
from mixphm.training import checkpoint
from mixphm.training.recipe import (
    CHECKPOINT_FILE,
    PREDICTIONS_FILE,
    RunSpec,
    prediction_accuracy,
    train,
)


def test_the_zero_shot_row_keeps_its_answers_and_is_not_recomputed(tmp_path, monkeypatch):
    test = tiny_split(40, seed=2)
    monkeypatch.setattr(
        benchmark, "_setup", SimpleNamespace(candidates=tiny_candidates(), test=test)
    )
    monkeypatch.setattr(benchmark, "backbone_factory", lambda name: tiny_vlm)
    result = benchmark.zero_shot("tiny", tmp_path, test_limit=None, recipe="paper-v1")
    folder = tmp_path / "runs" / "paper-v1" / "tiny" / "zero-shot" / "k0" / "seed0"
    predictions = json.loads((folder / PREDICTIONS_FILE).read_text())
    assert list(predictions) == [e.question_id for e in test.examples]
    assert prediction_accuracy(test, list(predictions.values())) == result.test_accuracy

    monkeypatch.setattr(benchmark, "backbone_factory", None)  # a recomputation would fail
    reread = benchmark.zero_shot("tiny", tmp_path, test_limit=None, recipe="paper-v1")
    assert (reread.method, reread.test_accuracy) == ("zero-shot", result.test_accuracy)


def finish(spec, out, legacy=False, train_seconds=600.0):
    """A finished run's record for ``spec``; ``legacy``: as runs before recipes wrote it."""
    folder = benchmark.run_dir(out, spec)
    folder.mkdir(parents=True)
    result = {"method": spec.method, "k": spec.k, "seed": spec.seed, "backbone": spec.backbone}
    if not legacy:
        result |= {"recipe": spec.recipe, "dev_accuracy": 50.0, "test_accuracy": 60.0}
        result |= {"trainable_parameters": 1, "total_parameters": 10}
        result |= {"train_seconds": train_seconds, "epochs": 30, "best_epoch": 9}
        result |= {"last_test_accuracy": 55.0, "test_questions": 9673}
    (folder / "result.json").write_text(json.dumps(result))
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


def test_the_remaining_estimate_takes_off_what_runs_in_flight_have_trained(tmp_path):
    finish(RunSpec("mixphm", 64, 13), tmp_path)  # 600 s of training
    under_way, fresh = RunSpec("mixphm", 64, 21), RunSpec("mixphm", 64, 42)
    path = benchmark.run_dir(tmp_path, under_way) / CHECKPOINT_FILE
    checkpoint.save_atomic({"elapsed": 450.0}, path)
    # 600 - 450 s for the run under way, 600 s for the fresh one: 750 s with one worker
    assert benchmark.grid_estimate([under_way, fresh], tmp_path, workers=1) == (
        "2 runs to go (1 already under way): about 12 min of training with 1 worker; the "
        "longest, mixphm k = 64 seed 42, about 10 min alone"
    )
    checkpoint.save_atomic({"elapsed": 5000.0}, path)  # past its estimate: none left
    assert benchmark.trained_so_far(tmp_path, [under_way, fresh]) == {under_way: 5000.0}
    assert benchmark.grid_estimate([under_way], tmp_path, workers=1).startswith(
        "1 run to go (1 already under way): about 0 min"
    )


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(tmp_path):
    data = (tiny_split(32, seed=0), tiny_split(16, seed=1), tiny_split(40, seed=2))
    objective = benchmark.CandidateScoring(tiny_candidates())
    train(RunSpec("mixphm", 32, 13, "tiny", max_epochs=1), tiny_vlm, data, objective, tmp_path)
    assert checkpoint.trained_seconds(tmp_path / CHECKPOINT_FILE) > 0
    bf16 = RunSpec("mixphm", 32, 13, "tiny", max_epochs=1, mixed_precision="bf16")
    with pytest.raises(ValueError, match="mixed_precision='no', not mixed_precision='bf16'"):
        train(bf16, tiny_vlm, data, objective, tmp_path)


def test_a_record_without_a_recipe_is_the_legacy_recipe_s_and_never_a_paper_run(tmp_path):
    quick = RunSpec("mixphm", 64, 13, recipe="quick-v1")
    paper_folder = benchmark.run_dir(tmp_path, RunSpec("mixphm", 64, 13))
    assert paper_folder.parts[-5:-3] == ("paper-v1", "pretrained")
    legacy = finish(quick, tmp_path, legacy=True)
    assert benchmark.pending([quick], tmp_path) == []
    paper = RunSpec("mixphm", 64, 13)
    paper_folder.parent.mkdir(parents=True)
    legacy.rename(paper_folder)  # moved by hand into a paper-recipe folder
    with pytest.raises(ValueError, match="recipe='quick-v1', not recipe='paper-v1'"):
        benchmark.pending([paper], tmp_path)


def test_a_folder_of_one_recipe_refuses_runs_and_tables_of_another(tmp_path):
    finish(RunSpec("mixphm", 64, 13, recipe="quick-v1"), tmp_path)
    with pytest.raises(ValueError, match="holds runs made under the recipe quick-v1; runs under"):
        benchmark.run_grid([RunSpec("mixphm", 64, 21)], tmp_path)
    with pytest.raises(ValueError, match="holds runs made under the recipe quick-v1"):
        benchmark.collect(tmp_path, "paper-v1")
    finish(RunSpec("mixphm", 64, 13), tmp_path)
    with pytest.raises(ValueError, match="runs of several recipes \\(paper-v1, quick-v1\\)"):
        benchmark.collect(tmp_path)


def test_a_second_grid_on_the_same_folder_is_refused_while_the_first_trains(tmp_path):
    spec = RunSpec("mixphm", 64, 21, "tiny")
    refused = pytest.raises(RuntimeError, match="another mixphm process is training into")
    with benchmark.training_lock(tmp_path), refused:
        benchmark.run_grid([spec], tmp_path)
    with benchmark.training_lock(tmp_path):  # released when the first one ends
        pass


def test_the_remaining_estimate_comes_from_finished_runs(tmp_path):
    finish(RunSpec("mixphm", 64, 13), tmp_path)  # 600 s of training
    finished = benchmark.collect(tmp_path, "paper-v1")
    left = [RunSpec("mixphm", 64, 21), RunSpec("full", 64, 13), RunSpec("mixphm", 128, 13)]
    # same variant and k: 600 s; same k: 600 s; nearest k of the variant scaled: 1,200 s
    assert benchmark.remaining_estimate(finished, left, workers=2) == (
        "3 runs to go: about 20 min of training with 2 workers; the longest, mixphm k = 128 "
        "seed 13, about 20 min alone"
    )


def test_a_method_without_runs_at_a_k_is_estimated_by_its_cost_relative_to_the_others(tmp_path):
    finish(RunSpec("mixphm", 16, 13), tmp_path, train_seconds=100.0)
    finish(RunSpec("full", 16, 13), tmp_path, train_seconds=400.0)  # 4 times mixphm's
    finish(RunSpec("mixphm", 64, 13), tmp_path, train_seconds=300.0)
    finish(RunSpec("full", 64, 13), tmp_path, train_seconds=300.0)  # as long as mixphm's
    finish(RunSpec("mixphm", 1000, 13), tmp_path, train_seconds=1800.0)
    finished = benchmark.collect(tmp_path, "paper-v1")
    # mixphm's 1,800 s at k = 1000 times full's geometric-mean cost relative to it, 2
    assert benchmark.remaining_estimate(finished, [RunSpec("full", 1000, 13)], workers=1) == (
        "1 run to go: about 1.0 h of training with 1 worker; the longest, full k = 1000 seed "
        "13, about 1.0 h alone"
    )
