"""Routing in training and the merged expert in evaluation."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

import mixphm.phm
from mixphm import MixPHMConfig
from mixphm.adapter import MixPHMAdapter
from mixphm.phm import PHMRule
from mixphm.routing import ExpertRouter

D = 16
CONFIG = MixPHMConfig(reduction_factor=2, phm_dim=2, phm_rank=2, dropout=0.0, num_experts=3)


def make_adapter(config=CONFIG, num_layers=1):
    torch.manual_seed(0)
    router = ExpertRouter(seed=7, num_layers=num_layers, num_experts=config.num_experts)
    rule = PHMRule(config.phm_dim) if config.phm_dim > 1 else None
    adapter = MixPHMAdapter(D, config, rule, router, layer_index=0).double()
    with torch.no_grad():  # make the experts (and the rule) clearly distinct
        for p in adapter.parameters():
            p.add_(torch.randn_like(p))
    return adapter, router


def gelu_new(x):
    """GELU's tanh approximation as the reference code's ``gelu_new`` writes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def reference_forward(h, down, up, activation=gelu_new):
    (down_w, down_b), (up_w, up_b) = down, up
    return F.linear(activation(F.linear(h, down_w, down_b)), up_w, up_b)


@pytest.mark.parametrize(("name", "activation"), [("gelu_new", gelu_new), ("gelu", F.gelu)])
def test_the_adapter_nonlinearity_is_the_configured_gelu(name, activation):
    adapter, _ = make_adapter(MixPHMConfig(**{**CONFIG.to_dict(), "activation": name}))
    adapter.eval()
    h = 3 * torch.randn(2, 5, D, dtype=torch.float64)
    weights = adapter.merged_weights()
    expected = reference_forward(h, weights[:2], weights[2:], activation)
    torch.testing.assert_close(adapter(h), expected, rtol=1e-12, atol=1e-12)
    other = F.gelu if activation is gelu_new else gelu_new
    assert not torch.allclose(adapter(h), reference_forward(h, weights[:2], weights[2:], other))


def test_training_forward_uses_exactly_the_routed_expert():
    adapter, router = make_adapter()
    h = torch.randn(2, 5, D, dtype=torch.float64)
    seen = set()
    for _ in range(12):
        router.advance(torch.device("cpu"))
        chosen = int(router.choices[0])
        seen.add(chosen)
        expected = reference_forward(h, adapter.down.expert(0), adapter.up.expert(chosen))
        torch.testing.assert_close(adapter(h), expected)
        for other in set(range(3)) - {chosen}:
            other_out = reference_forward(h, adapter.down.expert(0), adapter.up.expert(other))
            assert not torch.allclose(adapter(h), other_out)
    assert seen == {0, 1, 2}


def test_only_the_routed_expert_gets_a_nonzero_gradient():
    adapter, router = make_adapter()
    router.advance(torch.device("cpu"))
    chosen = int(router.choices[0])
    adapter(torch.randn(2, 5, D, dtype=torch.float64)).sum().backward()
    grad = adapter.up.right.grad
    for e in range(3):
        assert (grad[e].abs().sum() > 0) == (e == chosen)


def test_eval_output_equals_single_adapter_with_averaged_factors():
    adapter, _ = make_adapter()
    adapter.eval()
    single_config = MixPHMConfig(**{**CONFIG.to_dict(), "num_experts": 1})
    single = MixPHMAdapter(D, single_config, adapter.down.rule, adapter.router, 0).double()
    with torch.no_grad():
        single.down.load_state_dict(adapter.down.state_dict())
        single.up.left.copy_(adapter.up.left.mean(0, keepdim=True))
        single.up.right.copy_(adapter.up.right.mean(0, keepdim=True))
        single.up.bias.copy_(adapter.up.bias.mean(0, keepdim=True))
    single.eval()
    h = torch.randn(3, 4, D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(adapter(h), single(h))


def test_merge_by_products_option_reaches_the_forward():
    adapter, _ = make_adapter(MixPHMConfig(**{**CONFIG.to_dict(), "merge": "products"}))
    adapter.eval()
    h = torch.randn(3, D, dtype=torch.float64)
    weights = [adapter.up.expert(e) for e in range(3)]
    up = (
        torch.stack([w for w, _ in weights]).mean(0),
        torch.stack([b for _, b in weights]).mean(0),
    )
    with torch.no_grad():
        torch.testing.assert_close(adapter(h), reference_forward(h, adapter.down.expert(0), up))


class CountingWeights:
    def __init__(self, monkeypatch):
        self.calls = 0
        original = mixphm.phm.phm_weight_t

        def counted(*args):
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(mixphm.phm, "phm_weight_t", counted)


def test_changing_the_merge_mode_after_an_evaluation_serves_the_new_merge():
    adapter, _ = make_adapter()
    adapter.eval()
    h = torch.randn(3, D, dtype=torch.float64)
    products = [adapter.up.expert(e) for e in range(3)]
    by_products = (
        torch.stack([w for w, _ in products]).mean(0),
        torch.stack([b for _, b in products]).mean(0),
    )
    with torch.no_grad():
        by_factors = adapter(h)
        adapter.merge_mode = "products"
        expected = reference_forward(h, adapter.down.expert(0), by_products)
        torch.testing.assert_close(adapter(h), expected)
        assert not torch.allclose(adapter(h), by_factors)


def test_eval_with_gradients_reaches_every_expert():
    adapter, _ = make_adapter()
    adapter.eval()
    adapter(torch.randn(2, D, dtype=torch.float64)).sum().backward()
    for e in range(3):
        assert adapter.up.right.grad[e].abs().sum() > 0


def test_training_forward_builds_weights_per_call_not_per_token(monkeypatch):
    adapter, _ = make_adapter()
    counter = CountingWeights(monkeypatch)
    adapter(torch.randn(64, 128, D, dtype=torch.float64))
    assert counter.calls == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_adapter_computes_in_the_hidden_dtype(dtype):
    adapter, _ = make_adapter()
    adapter.float()
    assert adapter(torch.randn(2, D, dtype=dtype)).dtype == dtype


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="dropout must be in"):
        MixPHMConfig(dropout=1.5)
    with pytest.raises(ValueError, match="merge must be"):
        MixPHMConfig(merge="sum")
    with pytest.raises(ValueError, match="unknown preset 'lora'"):
        MixPHMConfig.preset("lora")
    with pytest.raises(ValueError, match="not divisible by reduction_factor=5"):
        MixPHMAdapter(D, MixPHMConfig(reduction_factor=5), PHMRule(4), ExpertRouter(0, 1, 4), 0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_experts", 2.0, "num_experts must be int, got 2.0"),
        ("vision_tower", 1, "vision_tower must be bool, got 1"),
        ("phm_rank", "8", "phm_rank must be int | None, got '8'"),
        ("target_modules", {"wo": 1}, "target_modules must be list[str] | str | None"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MixPHMConfig(**{field: value})
    MixPHMConfig(dropout=0, phm_rank=None)  # an int is a float; optional fields take None
