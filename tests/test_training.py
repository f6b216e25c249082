"""The training loop on a tiny backbone: every method trains, the recipes' evaluation,
selection and stopping rules hold, runs resume exactly, checkpoints are atomic, a
diverging loss stops clearly. The LoRA and IA3 baselines on GPT-2's Conv1D layers."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import BUILDERS, tiny_candidates, tiny_split, tiny_vlm

import mixphm.training.checkpoint as checkpoint
import mixphm.training.objectives as objectives
import mixphm.training.recipe as recipe
from mixphm.regularization import RedundancyRegularizer
from mixphm.training.methods import METHODS, apply_method, method_settings, regularizer_config
from mixphm.training.objectives import CandidateScoring
from mixphm.training.recipe import (
    RunResult,
    RunSpec,
    TrainingDiverged,
    TrainState,
    train,
    update_selection,
)
from mixphm.training.recipes import PAPER, QUICK, get_recipe

DATA = (tiny_split(32, seed=0), tiny_split(16, seed=1), tiny_split(40, seed=2))
OBJECTIVE = CandidateScoring(tiny_candidates())


def run(method, tmp_path, epochs=3, recipe=PAPER.name, **kwargs):
    spec = RunSpec(method, 32, 13, "tiny", max_epochs=epochs, recipe=recipe)
    return train(spec, tiny_vlm, DATA, OBJECTIVE, tmp_path / method, **kwargs)


def evaluate_paper_recipe_every(epochs, monkeypatch):
    """The paper recipe with a dev evaluation every ``epochs`` epochs, for the runs of this
    process (its other rules unchanged): its rules tested in fewer epochs."""
    shorter = dataclasses.replace(PAPER, eval_every=epochs)
    monkeypatch.setattr(
        recipe, "get_recipe", lambda name: shorter if name == PAPER.name else get_recipe(name)
    )


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


def eval_loss(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_baselines_train_gpt2s_conv1d_layers(method):
    built = BUILDERS["gpt2"]()
    model = apply_method(built.model, method, 13)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(
        f"{method}_" in n for n, p in model.named_parameters() if p.requires_grad
    )
    before = eval_loss(model, built.batch)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(4):
        model.train()
        model(**built.batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert eval_loss(model, built.batch) < before


def test_lora_on_conv1d_starts_as_the_base_model_and_merges_in_its_transposed_layout():
    built = BUILDERS["gpt2"]()
    model = built.model.eval()
    with torch.no_grad():
        base = model(**built.batch).logits
        apply_method(model, "lora", 13)
        fused_qkv = model.get_submodule("transformer.h.0.attn.c_attn")  # Conv1D, 16 → 48
        a, b = fused_qkv.lora_A["default"].weight, fused_qkv.lora_B["default"].weight
        assert not b.any()
        torch.testing.assert_close(model(**built.batch).logits, base, rtol=0, atol=0)
        b.normal_()
        x = torch.randn(2, 5, 16)
        delta = fused_qkv(x) - fused_qkv.base_layer(x)
        torch.testing.assert_close(delta, fused_qkv.scaling["default"] * x @ (b @ a).T)
        unmerged = fused_qkv(x)
        fused_qkv.merge()  # adds (B A)ᵀ to the Conv1D's (in, out) weight
        torch.testing.assert_close(fused_qkv.base_layer(x), unmerged)


def test_ia3_on_conv1d_scales_attention_outputs_and_feedforward_inputs():
    model = apply_method(BUILDERS["gpt2"]().model, "ia3", 13)
    fused_qkv = model.get_submodule("transformer.h.0.attn.c_attn")  # Conv1D, 16 → 48
    feedforward_output = model.get_submodule("transformer.h.0.mlp.c_proj")  # Conv1D, 32 → 16
    with torch.no_grad():
        for layer in (fused_qkv, feedforward_output):
            layer.ia3_l["default"].uniform_(0.5, 1.5)
        qkv_scale = fused_qkv.ia3_l["default"].flatten()
        x = torch.randn(2, 5, 16)
        assert qkv_scale.shape == (48,)
        torch.testing.assert_close(fused_qkv(x), fused_qkv.base_layer(x) * qkv_scale)
        inner_scale = feedforward_output.ia3_l["default"].flatten()
        inner = torch.randn(2, 5, 32)
        assert inner_scale.shape == (32,)
        torch.testing.assert_close(
            feedforward_output(inner), feedforward_output.base_layer(inner * inner_scale)
        )


def test_the_mixphm_ra_loss_is_the_answer_loss_plus_the_regularizer(tmp_path):
    """One step (16 questions, one epoch), no dropout: the recorded loss of MixPHM-RA is the
    answer loss plus α·L_red + β·L_mi of the same weights, routing and batch, recomputed
    here; MixPHM's is the answer loss alone."""
    data = (tiny_split(16, seed=0), *DATA[1:])
    no_dropout = (("dropout", 0.0),)
    for method in ("mixphm", "mixphm-ra"):
        spec = RunSpec(method, 16, 13, "tiny", max_epochs=1, adapter_options=no_dropout)
        train(spec, tiny_vlm, data, OBJECTIVE, tmp_path / method)
    torch.manual_seed(13)  # as train() does before it builds the model
    model = apply_method(tiny_vlm(), "mixphm-ra", 13, dict(no_dropout), PAPER.adapter_activation)
    regularizer = RedundancyRegularizer(model, regularizer_config("mixphm-ra"))
    rows = torch.randperm(16, generator=torch.Generator().manual_seed(13 * 100_003))
    model.train()
    with regularizer.recording():
        answer_loss, masks = OBJECTIVE.loss(model, data[0], rows, 0)
    extra, parts = regularizer.loss(masks)
    assert set(parts) == {"redundancy", "mutual_information"} and extra.item() > 0
    assert train_losses(tmp_path, "mixphm")[0] == pytest.approx(answer_loss.item(), rel=1e-5)
    regularized = train_losses(tmp_path, "mixphm-ra")[0]
    assert regularized == pytest.approx(answer_loss.item() + extra.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "epochs", "seconds_between_checkpoints", "saved_epoch"),
    [
        (PAPER.name, 11, 300.0, 6),  # the checkpoint of the second dev evaluation
        (PAPER.name, 11, 0.0, 8),  # that of the epoch before the third, between evaluations
        (QUICK.name, 4, 300.0, 2),
    ],
)
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(
    tmp_path, monkeypatch, name, epochs, seconds_between_checkpoints, saved_epoch
):
    evaluate_paper_recipe_every(3, monkeypatch)  # dev after epochs 3, 6, 9 and 11
    straight = run("mixphm", tmp_path / "a", epochs, name)
    evaluations = {"count": 0}
    original = recipe.accuracy

    def interrupted(*args, **kwargs):
        evaluations["count"] += 1
        if evaluations["count"] == 3:  # during the third dev evaluation
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(recipe, "accuracy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(
            "mixphm",
            tmp_path / "b",
            epochs,
            name,
            seconds_between_checkpoints=seconds_between_checkpoints,
        )
    monkeypatch.setattr(recipe, "accuracy", original)
    saved = checkpoint.load(tmp_path / "b" / "mixphm" / "checkpoint.pt")["state"]
    assert saved["epoch"] == saved_epoch
    resumed = run("mixphm", tmp_path / "b", epochs, name)
    for field in ("dev_accuracy", "test_accuracy", "last_test_accuracy", "epochs", "best_epoch"):
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
        run("pfeiffer", tmp_path, epochs=4, recipe=QUICK.name)
    saved = checkpoint.load(tmp_path / "pfeiffer" / "checkpoint.pt")
    assert saved["state"]["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in saved["trainable"].values())


def test_the_quick_recipe_evaluates_every_epoch_and_keeps_the_earliest_tie(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "accuracy", lambda *args, **kwargs: 50.0)
    result = run("pfeiffer", tmp_path, epochs=QUICK.patience + 10, recipe=QUICK.name)
    assert result.epochs == QUICK.patience + 1 and result.best_epoch == 0


def score_dev_with(monkeypatch, scores):
    """Dev evaluations return ``scores`` in turn (the last one repeated); returns the list
    that fills with the epochs after which dev was scored."""
    evaluated, sequence, last = [], iter(scores), [None]
    select = recipe.update_selection

    def spy(state, dev, epoch, training):
        evaluated.append(epoch)
        return select(state, dev, epoch, training)

    def score(*args, **kwargs):
        last[0] = next(sequence, last[0])
        return last[0]

    monkeypatch.setattr(recipe, "update_selection", spy)
    monkeypatch.setattr(recipe, "accuracy", score)
    return evaluated


def test_the_paper_recipe_validates_every_10_epochs_and_after_the_last(tmp_path, monkeypatch):
    evaluated = score_dev_with(monkeypatch, [50.0])
    result = run("pfeiffer", tmp_path, epochs=25)
    assert evaluated == [9, 19, 24] and result.epochs == 25
    saved = checkpoint.load(tmp_path / "pfeiffer" / "checkpoint.pt")["state"]
    assert saved["dev_history"] == [50.0] * 3 and len(saved["train_loss"]) == 25
    history = json.loads((tmp_path / "pfeiffer" / recipe.HISTORY_FILE).read_text())
    assert history["dev_epochs"] == [10, 20, 25] and history["dev_accuracy"] == [50.0] * 3
    assert history["train_loss"] == saved["train_loss"]


def test_the_paper_recipe_keeps_the_later_of_equal_dev_scores(tmp_path, monkeypatch):
    score_dev_with(monkeypatch, [50.0])
    result = run("pfeiffer", tmp_path, epochs=30)
    assert result.best_epoch == 29
    best = load_file(str(tmp_path / "pfeiffer" / recipe.BEST_FILE))
    last = checkpoint.load(tmp_path / "pfeiffer" / "checkpoint.pt")["trainable"]
    assert best.keys() == last.keys()
    assert all(torch.equal(best[name], last[name]) for name in best)
    assert result.last_test_accuracy == result.test_accuracy


def test_the_paper_recipe_stops_after_20_validations_without_a_gain_above_the_delta(
    tmp_path, monkeypatch
):
    # a gain of 0.009 points replaces the kept checkpoint (as its ties do) but is not an
    # improvement above the 0.01 delta, so it does not reset the patience
    evaluate_paper_recipe_every(1, monkeypatch)
    evaluated = score_dev_with(monkeypatch, [50.0, 50.009])
    result = run("pfeiffer", tmp_path, epochs=1000)
    assert len(evaluated) == 1 + 20 and result.epochs == 21
    assert result.best_epoch == 20 and result.dev_accuracy == 50.009


def test_selection_and_patience_follow_each_recipe():
    scores = [50.0, 50.005, 50.02, 50.02, 49.0]
    expected = {
        PAPER.name: ([True, True, True, True, False], [0, 1, 0, 1, 2], 3, 50.02),
        QUICK.name: ([True, True, True, False, False], [0, 0, 0, 1, 2], 2, 50.02),
    }
    for name, (kept, stale, best_epoch, counted) in expected.items():
        state, stales = TrainState(), []
        decisions = []
        for epoch, dev in enumerate(scores):
            decisions.append(update_selection(state, dev, epoch, get_recipe(name)))
            stales.append(state.stale)
        assert (decisions, stales, state.best_epoch, state.counted_best) == (
            kept,
            stale,
            best_epoch,
            counted,
        ), name


def test_the_paper_recipe_has_every_item_of_the_reference_recipe():
    assert (PAPER.max_epochs, PAPER.eval_every, PAPER.patience, PAPER.min_delta) == (
        1000,
        10,
        20,
        0.01,
    )
    assert (PAPER.adam_eps, PAPER.weight_decay, PAPER.warmup, PAPER.grad_clip) == (
        1e-6,
        0.01,
        0.05,
        5.0,
    )
    assert PAPER.ties_keep_later and PAPER.batch_size == 16 and PAPER.test_limit is None
    assert PAPER.adapter_activation == "gelu_new"
    assert (PAPER.patience_for("ok-vqa"), PAPER.patience_for("gqa")) == (10, None)
    assert PAPER.patience_for("vqa-v2") == PAPER.patience_for("easy-vqa") == 20
    assert method_settings("mixphm").lr == 5e-3 and method_settings("full").lr == 5e-5
    with pytest.raises(ValueError, match="unknown method 'prompt'"):
        method_settings("prompt")
    with pytest.raises(ValueError, match="unknown recipe 'paper'; choose one of paper-v1"):
        get_recipe("paper")


@pytest.mark.parametrize(
    ("name", "eps", "decay", "approximate"),
    [(PAPER.name, 1e-6, 0.01, "tanh"), (QUICK.name, 1e-8, 0.0, "none")],
)
def test_the_recipe_sets_the_optimizer_and_the_adapter_activation(
    tmp_path, name, eps, decay, approximate
):
    from mixphm.inject import mixphm_adapters

    built = []

    def build():
        built.append(tiny_vlm())
        return built[-1]

    spec = RunSpec("mixphm", 32, 13, "tiny", max_epochs=1, recipe=name)
    train(spec, build, DATA, OBJECTIVE, tmp_path)
    groups = checkpoint.load(tmp_path / "checkpoint.pt")["optimizer"]["param_groups"]
    # one group: every adapter-family tensor (biases and the rule S too) is decayed
    assert [(g["eps"], g["weight_decay"]) for g in groups] == [(eps, decay)]
    assert {adapter.approximate for _, adapter in mixphm_adapters(built[0])} == {approximate}


def test_full_fine_tuning_decays_all_but_biases_and_layer_norm_weights():
    from mixphm.optim import adamw

    model = apply_method(tiny_vlm(), "full", 13)
    decayed, exempt = (
        {id(p) for p in group["params"]} for group in adamw(model, 1e-3).param_groups
    )
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in exempt} == {
        n for n in names.values() if "bias" in n or "LayerNorm.weight" in n
    }
    assert len(decayed) + len(exempt) == len(names) and exempt
    assert [g["weight_decay"] for g in adamw(model, 1e-3).param_groups] == [0.01, 0.0]


@pytest.mark.parametrize(
    ("size", "world", "expected"),
    [
        (16, 2, [([0, 2, 4, 6, 8, 10, 12, 14], 1.0), ([1, 3, 5, 7, 9, 11, 13, 15], 1.0)]),
        (3, 2, [([0, 2], 4 / 3), ([1], 2 / 3)]),  # uneven: weights keep the batch mean
        (1, 2, [([0], 2.0), ([0], 0.0)]),  # rank 1 runs the first row, with weight 0
    ],
)
def test_a_short_last_batch_is_sharded_so_the_ranks_add_up(size, world, expected):
    batch = torch.arange(size)
    shards = [recipe.shard(batch, rank, world) for rank in range(world)]
    assert [(rows.tolist(), weight) for rows, weight in shards] == expected
    # DDP averages the ranks' gradients: every row of the batch counts 1 / size, as in the
    # mean loss of one process
    for rows, weight in shards:
        if weight:
            assert weight / (world * len(rows)) == pytest.approx(1 / size)


def test_a_run_never_resumes_a_checkpoint_of_another_recipe(tmp_path):
    run("pfeiffer", tmp_path, epochs=1, recipe=QUICK.name)
    with pytest.raises(ValueError, match="recipe='quick-v1', not recipe='paper-v1'"):
        run("pfeiffer", tmp_path, epochs=1, recipe=PAPER.name)


@pytest.mark.parametrize("k", [32, 17])  # 17: the last batch has one row, rank 1 none
def test_two_gloo_processes_match_a_single_process_with_the_same_global_batch(tmp_path, k):
    from ddp_training_worker import worker_data
    from two_ranks import TESTS, torchrun_two_ranks

    torchrun_two_ranks(str(TESTS / "ddp_training_worker.py"), str(tmp_path), str(k))
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))

    captured = {}

    def build():
        captured["model"] = tiny_vlm()
        return captured["model"]

    train(
        RunSpec("adamix", k, 13, "tiny", max_epochs=2),
        build,
        worker_data(k),
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
    from mixphm.experiments.experts import ExpertDiagnosis, format_diagnosis, single_expert
    from mixphm.inject import mixphm_adapters

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


def test_a_learning_rate_is_recorded_and_another_one_is_another_run(tmp_path):
    own = RunSpec("pfeiffer", 32, 13, "tiny", max_epochs=1, lr=method_settings("pfeiffer").lr)
    assert own.lr is None and own.variant == "pfeiffer"
    other = RunSpec("pfeiffer", 32, 13, "tiny", max_epochs=1, lr=3e-4)
    assert other.variant == "pfeiffer+lr=0.0003" and other.learning_rate == 3e-4
    result = train(other, tiny_vlm, DATA, OBJECTIVE, tmp_path)
    recorded = json.loads((tmp_path / "result.json").read_text())
    assert recorded["lr"] == result.lr == 3e-4
    assert RunResult.from_record(recorded).variant == "pfeiffer+lr=0.0003"
    older = {k: v for k, v in recorded.items() if k != "lr"}  # written before runs kept lr
    assert RunResult.from_record(older).lr == method_settings("pfeiffer").lr
    assert RunResult.from_record(older).variant == "pfeiffer"


def test_a_run_never_resumes_under_another_learning_rate(tmp_path):
    spec = RunSpec("pfeiffer", 32, 13, "tiny", max_epochs=3, recipe=QUICK.name, lr=3e-4)
    epochs = iter(range(3))

    def interrupt_in_the_second_epoch():
        if next(epochs) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, tiny_vlm, DATA, OBJECTIVE, tmp_path, before_epoch=interrupt_in_the_second_epoch)
    assert (tmp_path / recipe.CHECKPOINT_FILE).is_file()
    with pytest.raises(ValueError, match=r"lr=0\.0003, not lr=0\.002"):
        train(dataclasses.replace(spec, lr=2e-3), tiny_vlm, DATA, OBJECTIVE, tmp_path)
