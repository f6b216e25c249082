"""MixPHM under torch.compile: training forward and backward, and merged inference, are one
graph each (fullgraph=True), compiled once while the routed experts and the weights change.

The backend is ``aot_eager``: dynamo captures the forward, AOT autograd the backward, and
both run without inductor's code generation, so the checks stay fast on the CPU and count
exactly what a GPU user's compile would (graphs, breaks, recompiles)."""

import itertools

import pytest
import torch
from tiny_models import t5, tiny_candidates, tiny_split, tiny_vlm
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from mixphm import MixPHMConfig, add_mixphm, compile_forward
from mixphm.backbones.offline_vlm import OfflineVLM
from mixphm.inject import adapter_router
from mixphm.optim import adamw
from mixphm.routing import expert_choices

STEPS = 50


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def tiny_t5():
    """A tiny T5 with MixPHM and the loss of its batch: (model, loss(model) -> Tensor)."""
    built = t5()
    model = add_mixphm(built.model, MixPHMConfig(reduction_factor=4, phm_dim=2))
    return model, lambda m: m(**built.batch).loss


def offline(packaged: bool):
    """The offline backbone (packaged MiniLM, or the 2-layer test one) with MixPHM and a
    candidate-scoring loss on 2 (8) questions: (model, loss(model) -> Tensor)."""
    vlm = OfflineVLM.from_packages() if packaged else tiny_vlm()
    config = MixPHMConfig(reduction_factor=12 if packaged else 4, phm_dim=4 if packaged else 2)
    model = add_mixphm(vlm, config)
    questions = 2 if packaged else 8
    ids, mask, visual, targets = tiny_split(questions).batch(torch.arange(questions))
    if packaged:
        visual = torch.randn(questions, vlm.config.visual_tokens, vlm.config.visual_dim)
    candidates = tiny_candidates()

    def loss(m):
        scores = m(ids, mask, visual, candidates.ids, candidates.mask)
        return torch.nn.functional.binary_cross_entropy_with_logits(scores, targets)

    return model, loss


MODELS = {
    "t5": tiny_t5,
    "offline-tiny": lambda: offline(packaged=False),
    "offline-packaged": lambda: offline(packaged=True),
}


def compiled(model):
    counter = CompileCounterWithBackend("aot_eager")
    compile_forward(model, backend=counter, fullgraph=True)
    return counter


@pytest.mark.parametrize("name", ["t5", "offline-packaged"])
def test_training_compiles_once_while_the_routed_experts_change(name):
    model, loss = MODELS[name]()
    counter = compiled(model)
    optimizer = adamw(model, lr=1e-3)
    router = adapter_router(model)
    model.train()
    routes, losses = [], []
    for _ in range(STEPS):
        optimizer.zero_grad()
        value = loss(model)
        value.backward()
        optimizer.step()
        routes.append(router.choices.clone())
        losses.append(value.item())
    moves = sum(not torch.equal(a, b) for a, b in itertools.pairwise(routes))
    assert moves > STEPS // 2  # the choices changed nearly every step
    assert counter.frame_count == 1, "recompiled while training"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert all(torch.isfinite(torch.tensor(losses)))


def without_dropout(model):
    """Compiled code draws dropout masks from another RNG stream: no dropout, modules or
    functional (T5's attention keeps its rate as a float attribute)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    return model


@pytest.mark.parametrize("name", ["t5", "offline-tiny"])
def test_a_compiled_step_matches_the_eager_step_with_the_same_routing(name):
    torch.manual_seed(0)
    eager, loss = MODELS[name]()
    torch.manual_seed(0)
    fast, _ = MODELS[name]()
    eager, fast = without_dropout(eager), without_dropout(fast)
    compiled(fast)
    optimizers = [adamw(m, lr=1e-2) for m in (eager, fast)]
    for model in (eager, fast):
        model.train()
    for _ in range(4):
        values = []
        for model, optimizer in zip((eager, fast), optimizers, strict=True):
            optimizer.zero_grad()
            value = loss(model)
            value.backward()
            optimizer.step()
            values.append(value.detach())
        # AOT autograd's decompositions round differently from the eager kernels
        torch.testing.assert_close(values[1], values[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(adapter_router(eager).choices, adapter_router(fast).choices)
    for (_, a), (_, b) in zip(eager.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["t5", "offline-tiny"])
def test_merged_inference_is_not_recompiled_by_a_step_or_a_new_routing(name):
    model, loss = MODELS[name]()
    optimizer = adamw(model, lr=1e-2)
    router = adapter_router(model)
    eager_forward = model.forward
    counter = CompileCounterWithBackend("aot_eager")
    merged_forward = torch.compile(eager_forward, backend=counter, fullgraph=True)
    model.eval()
    model.forward = merged_forward
    with torch.no_grad():
        before = loss(model)
    model.forward = eager_forward  # an eager training step: new weights, new routing
    model.train()
    optimizer.zero_grad()
    loss(model).backward()
    optimizer.step()
    router.advance(router.choices.device)
    model.eval()
    with torch.no_grad():
        eager_after = loss(model)
        model.forward = merged_forward
        after = loss(model)
    assert counter.frame_count == 1, "merged inference recompiled"
    assert not torch.equal(after, before)  # it reads the new merged weights
    torch.testing.assert_close(after, eager_after)


def test_the_router_writes_each_steps_choices_into_one_tensor():
    """What a captured CUDA graph relies on: the choices live at one address, and after the
    routing hook of a step that address holds that step's choices."""
    model, loss = tiny_t5()
    router = adapter_router(model)
    address = router.choices.data_ptr()
    model.train()
    for step in range(1, 4):
        loss(model)
        assert router.choices.data_ptr() == address
        expected = expert_choices(router.seed, step, router.num_layers, router.num_experts)
        assert torch.equal(router.choices, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_captured_cuda_graph_reads_each_steps_choices():
    """The forward captured once; each replay after the routing hook's in-place write
    computes what an eager forward with that step's experts computes."""
    built = t5()
    model = add_mixphm(built.model, MixPHMConfig(reduction_factor=4, phm_dim=2))
    model = without_dropout(model).cuda().train()
    batch = {name: tensor.cuda() for name, tensor in built.batch.items()}
    with torch.no_grad():  # distinct experts, so a stale choice shows in the output
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn_like(param))
    router = adapter_router(model)
    router.advance(torch.device("cuda"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):  # warm-up before capture, as CUDA graphs require
            model.forward(**batch)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        captured = model.forward(**batch).logits
    outputs = []
    for step in range(2, 8):
        router.advance(torch.device("cuda"))  # what the hook does before each forward
        graph.replay()
        with torch.no_grad():
            eager = model.forward(**batch).logits
        assert router.step == step
        torch.testing.assert_close(captured, eager)
        outputs.append(captured.clone())
    assert any(not torch.equal(a, b) for a, b in itertools.pairwise(outputs))
