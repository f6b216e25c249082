"""Routing is a function of (seed, step): reproducible, and identical on every rank."""

import torch
from tiny_models import t5
from two_ranks import TESTS, torchrun_two_ranks

from mixphm import MixPHMConfig, add_mixphm
from mixphm.routing import ExpertRouter, expert_choices


def test_choices_depend_only_on_seed_and_step():
    torch.manual_seed(1)
    first = [expert_choices(13, step, 24, 4) for step in range(50)]
    torch.manual_seed(2)
    second = [expert_choices(13, step, 24, 4) for step in range(50)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other_seed = [expert_choices(21, step, 24, 4) for step in range(50)]
    assert not all(torch.equal(a, b) for a, b in zip(first, other_seed, strict=True))
    counts = torch.bincount(torch.cat(first), minlength=4)
    assert counts.min() > 0.2 * counts.sum()  # uniform: each expert near 25% of 1,200 picks


def test_router_resumes_exactly_from_its_state():
    router = ExpertRouter(seed=5, num_layers=8, num_experts=4)
    for _ in range(7):
        router.advance(torch.device("cpu"))
    resumed = ExpertRouter(seed=0, num_layers=8, num_experts=4)
    resumed.load_state_dict(router.state_dict())
    router.advance(torch.device("cpu"))
    resumed.advance(torch.device("cpu"))
    assert torch.equal(router.choices, resumed.choices)


def test_each_training_forward_advances_routing_and_eval_does_not():
    built = t5()
    model = add_mixphm(built.model, MixPHMConfig(reduction_factor=4, phm_dim=2, routing_seed=3))
    router = model.mixphm_router
    model.train()
    for step in range(1, 4):
        model(**built.batch)
        assert router.step == step
        assert torch.equal(router.choices, expert_choices(3, step, 4, 4))
    model.eval()
    with torch.no_grad():
        model(**built.batch)
    assert router.step == 3


def test_two_gloo_processes_route_identically_and_stay_in_sync(tmp_path):
    torchrun_two_ranks(str(TESTS / "routing_worker.py"), str(tmp_path), timeout=300)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0["choices"], rank1["choices"])
    assert len(torch.unique(rank0["choices"])) > 1  # the experts really vary
    for path, state in rank0["state"].items():
        for name, value in state.items():
            assert torch.equal(value, rank1["state"][path][name]), f"{path}.{name}"
        # and they agree on trained weights: every adapter's up-projection moved
        assert not torch.equal(state["up.right"], rank0["initial"][path]["up.right"]), path
