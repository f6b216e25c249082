"""The redundancy regularizer's terms, its masks, its capture, and linear CKA."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import BUILDERS, t5

from mixphm import MixPHMConfig, add_mixphm, mixphm_adapters
from mixphm.regularization import (
    ActivationCapture,
    RedundancyConfig,
    RedundancyRegularizer,
    decorrelation_penalty,
    jsd_mutual_information_loss,
    linear_cka,
)


def random_batch(b=3, length=7, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, h_a, final = (torch.randn(b, length, d, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 5:] = False  # a shorter sample
    return h, h_a, final, mask


def with_padding(tensors, mask, extra=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    padded = [
        torch.cat(
            [t, 100 * torch.randn(t.shape[0], extra, t.shape[2], generator=g, dtype=t.dtype)], 1
        )
        for t in tensors
    ]
    return padded, torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], 1)


def test_padding_changes_neither_term():
    h, h_a, final, mask = random_batch()
    (ph, ph_a, pfinal), pmask = with_padding((h, h_a, final), mask)
    torch.testing.assert_close(
        decorrelation_penalty(ph_a, ph, pmask), decorrelation_penalty(h_a, h, mask)
    )
    torch.testing.assert_close(
        jsd_mutual_information_loss(ph_a, pfinal, pmask),
        jsd_mutual_information_loss(h_a, final, mask),
    )
    # and the masked-out tokens really were excluded: counting them changes the value
    assert not torch.allclose(
        decorrelation_penalty(ph_a, ph, pmask | True), decorrelation_penalty(h_a, h, mask)
    )


def test_penalty_is_zero_for_diagonal_correlation_and_positive_otherwise():
    # token i of h_a and of h are the same basis vector (any scale): C is diagonal
    basis = torch.eye(6, dtype=torch.float64)
    h_a = (basis[[0, 1, 2, 3]] * 3.0).reshape(2, 2, 6)
    h = basis[[0, 1, 2, 3]].reshape(2, 2, 6)
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert decorrelation_penalty(h_a, h, mask).item() == 0.0
    h_mixed = h.clone()
    h_mixed[0, 0, 4] = 1.0  # token 0 of h now also points along axis 4
    assert decorrelation_penalty(h_a, h_mixed, mask).item() > 0.0
    rh, rh_a, _, rmask = random_batch()
    value = decorrelation_penalty(rh_a, rh, rmask, lam=3.9e-3)
    tokens_a = torch.nn.functional.normalize(rh_a[rmask], dim=-1)
    tokens = torch.nn.functional.normalize(rh[rmask], dim=-1)
    c = tokens_a.T @ tokens
    expected = 3.9e-3 * (c.pow(2).sum() - c.diag().pow(2).sum()) / 3
    torch.testing.assert_close(value, expected)


def test_mutual_information_is_higher_for_paired_than_shuffled_representations():
    g = torch.Generator().manual_seed(0)
    sample_codes = torch.randn(8, 1, 16, generator=g)
    h_a = sample_codes + 0.3 * torch.randn(
        8, 5, 16, generator=g
    )  # tokens carry their sample's code
    final = sample_codes.expand(8, 5, 16) + 0.3 * torch.randn(8, 5, 16, generator=g)
    mask = torch.ones(8, 5, dtype=torch.bool)
    paired = -jsd_mutual_information_loss(h_a, final, mask)
    shuffled = -jsd_mutual_information_loss(h_a, final[torch.randperm(8, generator=g)], mask)
    assert paired > shuffled + 1.0


def test_mutual_information_with_a_single_sample_has_only_the_positive_part():
    _, h_a, final, mask = random_batch(b=1)
    scores = h_a[mask] @ final[mask].mean(0)
    expected = -(torch.log(torch.tensor(2.0, dtype=scores.dtype)) - F.softplus(-scores)).mean()
    torch.testing.assert_close(jsd_mutual_information_loss(h_a, final, mask), expected)


def adapted_t5():
    torch.manual_seed(0)
    built = t5()
    model = add_mixphm(built.model, MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2))
    model.train()
    return model, built.batch


def t5_masks(batch):
    encoder = torch.ones_like(batch["input_ids"], dtype=torch.bool)
    encoder[1, -2:] = False
    return {"encoder": encoder, "decoder": batch["labels"] != -100}


def test_the_regularizers_gradient_reaches_every_adapter_of_both_stacks():
    model, batch = adapted_t5()
    regularizer = RedundancyRegularizer(model, RedundancyConfig())
    assert regularizer.stacks == ["decoder", "encoder"]
    with regularizer.recording():
        model(**batch)
    loss, parts = regularizer.loss(t5_masks(batch))
    assert set(parts) == {"redundancy", "mutual_information"}
    loss.backward()
    adapters = list(mixphm_adapters(model))
    assert {path.split(".")[0] for path, _ in adapters} == {"encoder", "decoder"}
    for path, adapter in adapters:
        for name, param in adapter.named_parameters():
            if name != "down.rule.S":  # the shared S's one copy sits in the first adapter
                assert param.grad is not None and param.grad.abs().sum() > 0, f"{path}.{name}"


def test_each_term_switches_off_on_its_own():
    model, batch = adapted_t5()
    masks = t5_masks(batch)
    results, captures = {}, {}
    for name, config in {
        "both": RedundancyConfig(alpha=0.2, beta=0.04),
        "red": RedundancyConfig(alpha=0.2, beta=0.0),
        "mi": RedundancyConfig(alpha=0.0, beta=0.04),
    }.items():
        regularizer = RedundancyRegularizer(model, config)
        torch.manual_seed(0)
        with regularizer.recording():
            model(**batch)
        results[name] = regularizer.loss(masks)
        captures[name] = regularizer.capture
    assert set(results["red"][1]) == {"redundancy"} and set(results["mi"][1]) == {
        "mutual_information"
    }
    # the weighted sum of the layer means, not just the sum of the two terms alone
    both, parts = results["both"]
    expected = 0.2 * parts["redundancy"].item() + 0.04 * parts["mutual_information"].item()
    assert both.item() == pytest.approx(expected, rel=1e-6)
    assert parts["redundancy"].item() == pytest.approx(mean_red(captures["both"], masks), rel=1e-6)


def mean_red(capture, masks):
    """The redundancy term by hand from a recording: the mean over each stack's layers,
    then over the stacks."""
    by_stack = {}
    for layer in capture.layers.values():
        by_stack.setdefault(layer.stack, []).append(
            decorrelation_penalty(layer.h_a, layer.h, masks[layer.stack].bool()).item()
        )
    return sum(sum(v) / len(v) for v in by_stack.values()) / len(by_stack)


def test_stacks_with_unequal_adapter_counts_weigh_alike():
    """The reference's 0.5 · (encoder mean + decoder mean), not a mean pooled over layers."""
    torch.manual_seed(0)
    built = t5()  # 2 + 2 blocks; adapted: both encoder blocks, the first decoder block
    targets = r"(encoder\.block\.\d|decoder\.block\.0)\.layer\.\d\.DenseReluDense\.wo"
    config = MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2, target_modules=targets)
    model = add_mixphm(built.model, config)
    regularizer = RedundancyRegularizer(model, RedundancyConfig(alpha=1.0, beta=0.0))
    with regularizer.recording():
        model(**built.batch)
    masks = t5_masks(built.batch)
    _, parts = regularizer.loss(masks)
    layers = regularizer.capture.layers.values()
    assert sorted(layer.stack for layer in layers) == ["decoder", "encoder", "encoder"]
    red = parts["redundancy"].item()
    assert red == pytest.approx(mean_red(regularizer.capture, masks), rel=1e-6)
    pooled = [decorrelation_penalty(a.h_a, a.h, masks[a.stack].bool()).item() for a in layers]
    assert red != pytest.approx(sum(pooled) / len(pooled), rel=1e-3)


def test_switched_off_regularizer_installs_no_hooks():
    model, batch = adapted_t5()
    regularizer = RedundancyRegularizer(model, RedundancyConfig(alpha=0.0, beta=0.0))
    with regularizer.recording():
        assert all(not a._forward_hooks for _, a in mixphm_adapters(model))
        model(**batch)
    assert regularizer.loss({}) == (0.0, {})


def test_hooks_are_removed_after_recording_and_masks_are_required():
    model, batch = adapted_t5()
    regularizer = RedundancyRegularizer(model, RedundancyConfig())
    with regularizer.recording():
        assert all(a._forward_hooks for _, a in mixphm_adapters(model))
        model(**batch)
    assert all(not a._forward_hooks for _, a in mixphm_adapters(model))
    with pytest.raises(ValueError, match=r"no token mask for the stacks \['decoder'\]"):
        regularizer.loss({"encoder": t5_masks(batch)["encoder"]})


def test_tokens_flattened_across_rows_are_captured_in_rows():
    """OPT's feed-forward runs its (B, L) tokens as (B·L, d): the capture puts them back."""
    built = BUILDERS["blip2-opt"]()
    model = add_mixphm(built.model, MixPHMConfig(reduction_factor=4, phm_dim=2))
    capture = ActivationCapture(model)
    with capture.recording():
        model(**built.batch)
    for layer in capture.layers.values():
        rows = capture.finals[layer.stack].shape[:2]
        assert layer.h.shape[:2] == layer.h_a.shape[:2] == rows == built.batch["input_ids"].shape


def test_linear_cka_of_self_is_one_and_of_independent_is_near_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, x).item() == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ rotation).item() == pytest.approx(1.0)  # rotation, scale
    assert linear_cka(x, torch.randn(2000, 24, generator=g)).item() < 0.02
