"""The training recipe on a tiny backbone: every method trains, runs resume exactly,
checkpoints are atomic, a diverging loss stops clearly."""

import json

import pytest
import torch
from tiny_models import tiny_candidates, tiny_split, tiny_vlm

import mixphm.training.checkpoint as checkpoint
import mixphm.training.objectives as objectives
import mixphm.training.recipe as recipe
from mixphm.training.methods import METHODS, apply_method, method_settings
from mixphm.training.objectives import CandidateScoring
from mixphm.training.recipe import RunSpec, TrainingDiverged, train

DATA = (tiny_split(32, seed=0), tiny_split(16, seed=1), tiny_split(40, seed=2))
OBJECTIVE = CandidateScoring(tiny_candidates())


def run(method, tmp_path, epochs=3, **kwargs):
    spec = RunSpec(method, 32, 13, "tiny", max_epochs=epochs)
    return train(spec, tiny_vlm, DATA, OBJECTIVE, tmp_path / method, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_and_trains(method, tmp_path):
    result = run(method, tmp_path, epochs=2)
    assert result.epochs == 2 and 0 <= result.test_accuracy <= 100
    assert 0 < result.trainable_parameters <= result.total_parameters
    if method != "full":
        assert result.trainable_parameters < 0.2 * result.total_parameters
    assert (tmp_path / method / "result.json").is_file()
    predictions = json.loads((tmp_path / method / recipe.PREDICTIONS_FILE).read_text())
    test = DATA[2]
    assert list(predictions) == [e.question_id for e in test.examples]
    scored = recipe.prediction_accuracy(test, list(predictions.values()))
    assert scored == result.test_accuracy


def train_losses(tmp_path, method):
    return checkpoint.load(tmp_path / method / "checkpoint.pt")["state"]["train_loss"]


@pytest.mark.parametrize("method", ["mixphm", "lora", "full"])
def test_training_lowers_the_loss(method, tmp_path):
    run(method, tmp_path, epochs=8)
    losses = train_losses(tmp_path, method)
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_the_regularizer_enters_the_mixphm_ra_loss(tmp_path):
    run("mixphm", tmp_path, epochs=1)
    run("mixphm-ra", tmp_path, epochs=1)
    # same seed, data and routing: the first step's loss differs only by α·L_red + β·L_mi
    plain, regularized = train_losses(tmp_path, "mixphm")[0], train_losses(tmp_path, "mixphm-ra")[0]
    assert regularized != pytest.approx(plain, abs=1e-4)


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, monkeypatch):
    straight = run("mixphm", tmp_path / "a", epochs=4)
    evaluations = {"count": 0}
    original = recipe.accuracy

    def interrupted(*args, **kwargs):
        evaluations["count"] += 1
        if evaluations["count"] == 3:  # during the third epoch's dev evaluation
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(recipe, "accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("mixphm", tmp_path / "b", epochs=4)
    monkeypatch.setattr(recipe, "accuracy", original)
    assert checkpoint.load(tmp_path / "b" / "mixphm" / "checkpoint.pt")["state"]["epoch"] == 2
    resumed = run("mixphm", tmp_path / "b", epochs=4)
    for field in ("dev_accuracy", "test_accuracy", "epochs", "best_epoch"):
        assert getattr(resumed, field) == getattr(straight, field), field
    a = checkpoint.load(tmp_path / "a" / "mixphm" / "checkpoint.pt")
    b = checkpoint.load(tmp_path / "b" / "mixphm" / "checkpoint.pt")
    for name, value in a["trainable"].items():
        assert torch.equal(value, b["trainable"][name]), name
    assert a["routing"] == b["routing"]


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic({"state": {"epoch": 1}}, path)
    original_save = torch.save

    def crash(state, target):
        original_save({"half": "written"}, target)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"state": {"epoch": 2}}, path)
    assert checkpoint.load(path)["state"]["epoch"] == 1


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"count": 0}
    original = objectives.soft_cross_entropy

    def poisoned(logits, targets):
        calls["count"] += 1
        loss = original(logits, targets)
        return loss * float("nan") if calls["count"] > 4 else loss  # epoch 3 (2 steps per epoch)

    monkeypatch.setattr(objectives, "soft_cross_entropy", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan in epoch 2; stopped\. The last good"):
        run("pfeiffer", tmp_path, epochs=4)
    saved = checkpoint.load(tmp_path / "pfeiffer" / "checkpoint.pt")
    assert saved["state"]["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in saved["trainable"].values())


def test_early_stopping_after_patience_evaluations(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "accuracy", lambda *args, **kwargs: 50.0)
    patience = method_settings("pfeiffer").patience
    result = run("pfeiffer", tmp_path, epochs=patience + 10)
    assert result.epochs == patience + 1 and result.best_epoch == 0


def test_method_settings_follow_the_reference_script():
    settings = method_settings("mixphm")
    assert (settings.lr, settings.batch_size, settings.warmup, settings.grad_clip) == (
        5e-3,
        16,
        0.05,
        5.0,
    )
    assert settings.patience == 20
    with pytest.raises(ValueError, match="unknown method 'prompt'"):
        method_settings("prompt")


def test_two_gloo_processes_match_a_single_process_with_the_same_global_batch(tmp_path):
    from ddp_training_worker import DATA as WORKER_DATA
    from two_ranks import TESTS, torchrun_two_ranks

    torchrun_two_ranks(str(TESTS / "ddp_training_worker.py"), str(tmp_path))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))

    captured = {}

    def build():
        captured["model"] = tiny_vlm()
        return captured["model"]

    train(
        RunSpec("adamix", 32, 13, "tiny", max_epochs=2),
        build,
        WORKER_DATA,
        OBJECTIVE,
        tmp_path / "single",
    )
    single = recipe.trainable_state(captured["model"])
    assert rank0.keys() == single.keys()
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6)
    moved = [n for n, v in single.items() if not torch.equal(v, tiny_state_before()[n])]
    assert moved  # training really changed the adapters


def tiny_state_before():
    from mixphm.training.methods import apply_method

    torch.manual_seed(13)
    model = apply_method(tiny_vlm(), "adamix", 13)
    return recipe.trainable_state(model)


def test_a_single_expert_variant_merges_to_that_expert():
    from mixphm.inject import mixphm_adapters
    from mixphm.training.experts import ExpertDiagnosis, format_diagnosis, single_expert

    model = apply_method(tiny_vlm(), "mixphm", seed=13)
    with torch.no_grad():
        for _, adapter in mixphm_adapters(model):
            adapter.up.left.add_(torch.randn_like(adapter.up.left))  # experts now differ
    expected = [adapter.up.expert(2) for _, adapter in mixphm_adapters(model)]
    single_expert(model, 2)
    for (_, adapter), (weight, bias) in zip(mixphm_adapters(model), expected, strict=True):
        merged_weight, merged_bias = adapter.up.merged("factors")
        torch.testing.assert_close(merged_weight, weight)
        torch.testing.assert_close(merged_bias, bias)
    rows = [
        ExpertDiagnosis("a", "merge factors", 50.0),
        ExpertDiagnosis("b", "merge factors", 60.0),
    ]
    assert format_diagnosis(rows).splitlines()[-1].split()[-1] == "55.0"


def test_adapter_options_override_the_preset_and_are_recorded(tmp_path):
    options = (("num_experts", 1), ("dropout", 0.0))
    spec = RunSpec("mixphm", 32, 13, "tiny", max_epochs=1, adapter_options=options)
    one_expert = train(spec, tiny_vlm, DATA, OBJECTIVE, tmp_path / "one")
    default = run("mixphm", tmp_path, epochs=1)
    assert one_expert.trainable_parameters < default.trainable_parameters
    recorded = json.loads((tmp_path / "one" / "result.json").read_text())
    assert recorded["adapter_options"] == {"num_experts": 1, "dropout": 0.0}
    with pytest.raises(ValueError, match="adapter options apply to the MixPHM family only"):
        train(
            RunSpec("lora", 32, 13, "tiny", 1, adapter_options=options),
            tiny_vlm,
            DATA,
            OBJECTIVE,
            tmp_path / "l",
        )
