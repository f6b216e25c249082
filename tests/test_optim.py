"""ExpertAdamW: stacked experts train exactly like separate modules under torch's AdamW."""

import io

import pytest
import torch
import torch.nn.functional as F
from tiny_models import bert
from torch import nn

from mixphm import MixPHMConfig, add_mixphm, mixphm_adapters
from mixphm.optim import ExpertAdamW, adamw, routed_parameters
from mixphm.phm import PHMProjection, PHMRule, low_rank_blocks, phm_weight_t

ROUTES = [0, 0, 2, 0, 2, 2, 0, 2, 1]
HYPER = {"lr": 1e-2, "weight_decay": 0.1}


def stacked_projection(num_experts: int = 3) -> PHMProjection:
    torch.manual_seed(0)
    projection = PHMProjection(8, 12, num_experts, 4, 2, PHMRule(4)).double()
    with torch.no_grad():  # distinct experts, so a mix-up between them shows
        for p in projection.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return projection


def loss_of(weight_t, bias, x):
    return F.linear(x, weight_t, bias).pow(2).sum()


def test_stacked_experts_match_separate_modules_under_torch_adamw():
    projection = stacked_projection()
    rule = nn.Parameter(projection.rule.S.detach().clone())
    separate = [
        {
            n: nn.Parameter(getattr(projection, n)[e].detach().clone())
            for n in ("left", "right", "bias")
        }
        for e in range(projection.num_experts)
    ]
    reference = torch.optim.AdamW([rule, *(p for e in separate for p in e.values())], **HYPER)
    optimizer = ExpertAdamW(list(projection.parameters()), routed_parameters(projection), **HYPER)
    x = torch.randn(5, 8, dtype=torch.float64)
    for chosen in ROUTES:
        loss_of(*projection.expert(torch.tensor(chosen)), x).backward()
        optimizer.step()
        optimizer.zero_grad()
        expert = separate[chosen]
        weight_t = phm_weight_t(low_rank_blocks(expert["left"], expert["right"]), rule)
        loss_of(weight_t, expert["bias"], x).backward()
        reference.step()
        reference.zero_grad()  # set_to_none: unrouted experts are skipped, as in the reference

    for e, expert in enumerate(separate):
        for name, param in expert.items():
            torch.testing.assert_close(getattr(projection, name)[e], param, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(projection.rule.S, rule, rtol=1e-10, atol=1e-12)
    steps = optimizer.state[projection.left]["step"].flatten().tolist()
    assert steps == [ROUTES.count(e) for e in range(3)]


def test_an_unrouted_expert_stays_put_where_plain_adamw_moves_it():
    def train(make_optimizer):
        projection = stacked_projection()
        optimizer = make_optimizer(projection)
        x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        for chosen in (0, 0, 1):
            before = projection.left[0].detach().clone()
            loss_of(*projection.expert(torch.tensor(chosen)), x).backward()
            optimizer.step()
            optimizer.zero_grad()
        return torch.equal(projection.left[0], before)

    assert train(lambda p: ExpertAdamW(list(p.parameters()), routed_parameters(p), **HYPER))
    assert not train(lambda p: torch.optim.AdamW(p.parameters(), **HYPER))


def test_without_routed_experts_the_update_is_torch_adamw():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    twin = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    twin.load_state_dict(model.state_dict())
    ours = ExpertAdamW(model.parameters(), {}, **HYPER)
    theirs = torch.optim.AdamW(twin.parameters(), **HYPER)
    x = torch.randn(7, 6, dtype=torch.float64)
    for _ in range(5):
        for net, optimizer in ((model, ours), (twin, theirs)):
            net(x).pow(2).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert isinstance(adamw(twin, **HYPER), torch.optim.AdamW)


def test_a_reloaded_optimizer_continues_exactly():
    def run(split_at: int | None):
        projection = stacked_projection()
        optimizer = ExpertAdamW(
            list(projection.parameters()), routed_parameters(projection), **HYPER
        )
        x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        for i, chosen in enumerate(ROUTES):
            if i == split_at:  # through bytes, as a checkpoint would
                buffer = io.BytesIO()
                torch.save(optimizer.state_dict(), buffer)
                buffer.seek(0)
                saved = torch.load(buffer)
                optimizer = ExpertAdamW(
                    list(projection.parameters()), routed_parameters(projection), **HYPER
                )
                optimizer.load_state_dict(saved)
            loss_of(*projection.expert(torch.tensor(chosen)), x).backward()
            optimizer.step()
            optimizer.zero_grad()
        return [p.detach().clone() for p in projection.parameters()]

    for a, b in zip(run(None), run(4), strict=True):
        assert torch.equal(a, b)


def test_the_model_optimizer_knows_every_routed_expert_and_gradients_through_merging_count():
    model = add_mixphm(bert().model, MixPHMConfig(reduction_factor=3))
    assert isinstance(adamw(model, **HYPER), ExpertAdamW)
    adapters = [adapter for _, adapter in mixphm_adapters(model)]
    expected = {id(p) for a in adapters for p in (a.up.left, a.up.right, a.up.bias)}
    assert {id(p) for p in routed_parameters(model)} == expected

    up = adapters[0].up
    with torch.no_grad():
        up.expert(torch.tensor(1))
    assert not up.routed.any()  # no graph, nothing to update
    up.expert(torch.tensor(1))
    assert up.routed.tolist() == [False, True, False, False]
    up.merged("factors")
    assert up.routed.all()


@pytest.mark.parametrize("preset", ["pfeiffer", "houlsby", "compacter"])
def test_single_expert_adapters_use_torch_adamw(preset):
    model = add_mixphm(bert().model, MixPHMConfig.preset(preset, reduction_factor=3))
    assert type(adamw(model, **HYPER)) is torch.optim.AdamW


def test_a_skipped_step_does_not_carry_its_expert_into_the_next():
    """A GradScaler skips ``step`` on inf/nan gradients; zero_grad still clears the record."""
    projection = stacked_projection()
    optimizer = ExpertAdamW(list(projection.parameters()), routed_parameters(projection), **HYPER)
    x = torch.randn(5, 8, dtype=torch.float64)
    loss_of(*projection.expert(torch.tensor(0)), x).backward()
    optimizer.step()  # expert 0 now has momentum that a spurious update would apply
    optimizer.zero_grad()
    loss_of(*projection.expert(torch.tensor(0)), x).backward()
    optimizer.zero_grad()  # the step was skipped
    before = projection.left[0].detach().clone()
    loss_of(*projection.expert(torch.tensor(1)), x).backward()
    optimizer.step()
    assert torch.equal(projection.left[0], before)
    assert optimizer.state[projection.left]["step"].flatten().tolist() == [1, 1, 0]


def test_zero_grad_between_forward_and_backward_is_refused():
    projection = stacked_projection()
    optimizer = ExpertAdamW(list(projection.parameters()), routed_parameters(projection), **HYPER)
    loss = loss_of(*projection.expert(torch.tensor(0)), torch.randn(5, 8, dtype=torch.float64))
    optimizer.zero_grad()
    loss.backward()
    with pytest.raises(RuntimeError, match="call it before the forward pass"):
        optimizer.step()


def gated_adamw_reference(optimizer: ExpertAdamW) -> None:
    """The per-tensor form of the update, gated by the routing mask, as the committed
    results were produced; the multi-tensor step must match it bit for bit."""
    for group in optimizer.param_groups:
        beta1, beta2 = group["betas"]
        for param in group["params"]:
            projection = optimizer.experts.get(param)
            if projection is None:
                gate = torch.ones((), dtype=param.dtype)
            else:
                gate = projection.routed.to(param.dtype).view(-1, *[1] * (param.dim() - 1))
            state = optimizer.state[param]
            if not state:
                state["step"] = torch.zeros_like(gate, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            state["step"] += gate
            state["exp_avg"].lerp_(param.grad, (1 - beta1) * gate)
            state["exp_avg_sq"].lerp_(param.grad * param.grad, (1 - beta2) * gate)
            counted = state["step"].clamp(min=1).to(param.dtype)
            denom = state["exp_avg_sq"].sqrt() / (1 - beta2**counted).sqrt() + group["eps"]
            update = state["exp_avg"] / (1 - beta1**counted) / denom
            update = update + group["weight_decay"] * param
            param.sub_(group["lr"] * gate * update)
        for projection in optimizer._projections:
            projection.routed.zero_()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_the_multi_tensor_step_matches_the_per_tensor_update_bit_for_bit(weight_decay):
    def train(step):
        torch.manual_seed(0)  # adapter init and dropout
        model = add_mixphm(bert().model, MixPHMConfig(reduction_factor=3))
        optimizer = adamw(model, lr=1e-2, weight_decay=weight_decay)
        assert isinstance(optimizer, ExpertAdamW)
        ids = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(3))
        model.train()
        for forwards in (1, 2, 1, 1, 2):  # two forwards route up to two experts per adapter
            for _ in range(forwards):
                model(input_ids=ids).logits.pow(2).mean().backward()
            with torch.no_grad():
                step(optimizer)
            optimizer.zero_grad()
        return [p.detach() for p in model.parameters() if p.requires_grad]

    ours = train(ExpertAdamW.step)
    reference = train(gated_adamw_reference)
    assert all(torch.equal(a, b) for a, b in zip(ours, reference, strict=True))


def test_bfloat16_parameters_train_like_torch_adamw():
    """In bfloat16, 1 - 0.999 rounds to 0: bias corrections there would stall every update
    and turn a zero gradient into NaN."""
    ours = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    theirs = nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    ours_optimizer = ExpertAdamW([ours], {}, **HYPER)
    theirs_optimizer = torch.optim.AdamW([theirs], **HYPER)
    for _ in range(3):
        grad = torch.tensor([1.0, -1.0, 0.0, 0.5], dtype=torch.bfloat16)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        ours_optimizer.step()
        theirs_optimizer.step()
    torch.testing.assert_close(ours, theirs)

    projection = stacked_projection().to(torch.bfloat16)
    optimizer = ExpertAdamW(list(projection.parameters()), routed_parameters(projection), **HYPER)
    before = projection.left.detach().clone()
    x = torch.randn(5, 8, dtype=torch.bfloat16)
    for _ in range(2):
        F.linear(x, *projection.expert(torch.tensor(1))).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.isfinite(p).all() for p in projection.parameters())
    assert not torch.equal(projection.left[1], before[1])
    assert torch.equal(projection.left[0], before[0])
