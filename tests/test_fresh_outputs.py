"""No output may differ from what the current parameters define, whatever wrote them: every
case compares a model against a fresh one built from the same parameters. And the one
cache there is, ``deploy``, is explicit and refuses training afterwards."""

import copy

import pytest
import torch
from test_adapter import CountingWeights
from tiny_models import BUILDERS
from torch._dynamo.testing import CompileCounterWithBackend

from mixphm import (
    MixPHMConfig,
    add_mixphm,
    compile_forward,
    deploy,
    load_adapter,
    mixphm_adapters,
    save_adapter,
)
from mixphm.optim import adamw

CONFIG = MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2, dropout=0.0)
FAMILIES = ["t5", "bart"]


def adapted(family):
    built = BUILDERS[family]()
    return add_mixphm(built.model, CONFIG).eval(), built.batch


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def fresh_logits(family, model, batch):
    """The logits of a new model of ``family`` given ``model``'s parameters."""
    fresh, _ = adapted(family)
    fresh.load_state_dict(model.state_dict())
    return logits(fresh, batch)


def adapter_parameters(model):
    return [p for _, adapter in mixphm_adapters(model) for p in adapter.parameters()]


@pytest.mark.parametrize("family", FAMILIES)
def test_an_in_place_write_in_eval_mode_is_served_at_once(family):
    model, batch = adapted(family)
    before = logits(model, batch)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.3 * torch.randn_like(p))
    after = logits(model, batch)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh_logits(family, model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_in_eval_mode_is_served_at_once(family):
    model, batch = adapted(family)
    before = logits(model, batch)
    optimizer = adamw(model, lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    assert not model.training
    after = logits(model, batch)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh_logits(family, model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_data_write_then_save_reloads_to_the_same_outputs(family, tmp_path):
    model, batch = adapted(family)
    for p in adapter_parameters(model):
        p.data = p.data + 0.3 * torch.randn_like(p)  # bumps no version counter
    save_adapter(model, tmp_path)
    reloaded = load_adapter(BUILDERS[family]().model, tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch), rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_ema_copy_updated_in_place_serves_its_own_weights(family):
    model, batch = adapted(family)
    ema = copy.deepcopy(model)
    before = logits(ema, batch)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(torch.randn_like(p))
        for averaged, current in zip(
            adapter_parameters(ema), adapter_parameters(model), strict=True
        ):
            averaged.data.mul_(0.5).add_(0.5 * current.data)
    after = logits(ema, batch)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh_logits(family, ema, batch), rtol=0, atol=0)


def test_a_compiled_model_serves_weights_changed_between_calls():
    model, batch = adapted("t5")
    counter = CompileCounterWithBackend("aot_eager")
    compile_forward(model, backend=counter, fullgraph=True)
    before = logits(model, batch)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.3 * torch.randn_like(p))
    after = logits(model, batch)
    assert counter.frame_count == 1
    assert not torch.allclose(after, before)
    # the compiled graph's decompositions round differently from eager kernels
    torch.testing.assert_close(after, fresh_logits("t5", model, batch), rtol=1e-5, atol=1e-5)


def test_deploy_serves_the_merge_without_rebuilding_it(monkeypatch):
    model, batch = adapted("t5")
    expected = logits(model, batch)
    adapters = len(list(mixphm_adapters(model)))
    counter = CountingWeights(monkeypatch)
    deploy(model)
    assert counter.calls == 2 * adapters  # one down and one merged up weight each, once
    assert not list(mixphm_adapters(model))
    assert not any(p.requires_grad for p in model.parameters())
    for _ in range(3):
        torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=0)
    assert counter.calls == 2 * adapters


def test_a_deployed_model_refuses_training_and_saving(tmp_path):
    model, _ = adapted("t5")
    deploy(model)
    with pytest.raises(RuntimeError, match="deployed"):
        model.train()
    with pytest.raises(ValueError, match="save the adapter before deploying"):
        save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="no MixPHM adapters"):
        deploy(model)
    model.eval()  # eval mode stays available
