"""Placement on stacks that are not uniform transformer blocks: hybrids (Mamba layers beside
attention ones), a feed-forward that normalises its inner activations (sub-LN), a model that
carries a convolutional VQ image tokenizer; and describe_placement, the plan before
training."""

import pytest
import torch
import transformers as tf
from tiny_models import BUILDERS, FAMILIES, TinyAttention, output_tensors, text_config

from mixphm import (
    MixPHMConfig,
    add_mixphm,
    describe_placement,
    load_adapter,
    mixphm_adapters,
    parameter_counts,
    save_adapter,
)
from mixphm.placement import CONVOLUTIONAL, PlacementError, hidden_size

SMALL = MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2, dropout=0.0, vision_tower=True)
HYBRIDS = ["bamba", "falcon-h1", "nemotron-h", "zamba2"]
FAMILIES_HERE = [*HYBRIDS, "kosmos2", "janus"]
"""Kosmos-2's text feed-forward is sub-LN; Janus carries a VQ image tokenizer."""


@pytest.fixture(params=FAMILIES_HERE)
def built(request):
    """(family, its tiny model and batch)."""
    return request.param, BUILDERS[request.param]()


def adapters_per_stack(model, plan):
    """{stack path: number of adapters ``model`` has in that stack of ``plan``}."""
    paths = [path for path, _ in mixphm_adapters(model)]
    return {s.path: sum(p.startswith(f"{s.path}.") for p in paths) for s in plan.stacks}


def test_each_stack_gets_an_adapter_per_block_with_a_feedforward(built):
    name, tiny = built
    plan = describe_placement(tiny.model, SMALL)
    model = add_mixphm(tiny.model, SMALL)
    expected = {"language": tiny.text_blocks - tiny.skipped_blocks, "vision": tiny.vision_blocks}
    assert adapters_per_stack(model, plan) == {s.path: expected[s.side] for s in plan.stacks}
    sides = ["language", "vision"] if tiny.vision_blocks else ["language"]
    assert sorted(s.side for s in plan.stacks) == sides
    assert len(list(mixphm_adapters(model))) == sum(expected.values())
    if name == "falcon-h1":  # the Mamba mixer's out_proj is a token mixer's, not a feed-forward
        assert not any("mamba" in path for path, _ in mixphm_adapters(model))


def test_only_adapters_train_and_gradients_reach_every_one(built):
    _, tiny = built
    model = add_mixphm(tiny.model, SMALL)
    adapters = [adapter for _, adapter in mixphm_adapters(model)]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for adapter in adapters for p in adapter.parameters()}
    model.train()
    model(**tiny.batch).loss.backward()
    for adapter in adapters:
        assert adapter.down.bias.grad.abs().sum() > 0
        assert adapter.up.bias.grad.abs().sum() > 0


def test_every_adapter_reaches_the_output_and_reloads_exactly(built, tmp_path):
    name, tiny = built
    model = add_mixphm(tiny.model, SMALL).eval()
    with torch.no_grad():
        before = output_tensors(model, tiny.batch)
        for path, adapter in mixphm_adapters(model):  # each one moves the output itself
            adapter.up.bias.add_(1.0)
            after = output_tensors(model, tiny.batch)
            assert not all(torch.equal(a, b) for a, b in zip(after, before, strict=True)), path
            before = after
        # every adapter now differs from a fresh one: the reload must bring its weights
    save_adapter(model, tmp_path)
    fresh = load_adapter(BUILDERS[name]().model, tmp_path).eval()
    with torch.no_grad():
        for got, expected in zip(output_tensors(fresh, tiny.batch), after, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_describe_placement_reports_skipped_blocks_and_counts_what_add_mixphm_adds(built):
    name, tiny = built
    model = tiny.model
    state = {key: value.clone() for key, value in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    plan = describe_placement(model, SMALL)
    assert torch.equal(torch.random.get_rng_state(), rng)  # add_mixphm draws as without it
    assert model.state_dict().keys() == state.keys()  # nothing attached
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    skipped = [skip for stack in plan.stacks for skip in stack.skipped]
    layer_types = getattr(model.config, "layer_types", None) or []
    kinds = FAMILIES[name].skipped_layers
    assert [index for index, _ in skipped] == [
        str(i) for i, kind in enumerate(layer_types) if kind in kinds
    ]
    assert all(why.startswith("no feed-forward output; mixes tokens by ") for _, why in skipped)
    if name == "janus":
        assert plan.not_searched == (
            ("model.vqmodel.encoder.down", CONVOLUTIONAL),
            ("model.vqmodel.decoder.up", CONVOLUTIONAL),
        )
    trainable, total = parameter_counts(add_mixphm(model, SMALL))
    assert (plan.trainable, plan.total) == (trainable, total)
    assert sum(stack.trainable for stack in plan.stacks) == trainable
    assert plan.adapters == len(list(mixphm_adapters(model)))


def test_describe_placement_formats_the_plan_as_text():
    plan = describe_placement(BUILDERS["nemotron-h"]().model, SMALL)
    assert str(plan).splitlines() == [
        f"NemotronHForCausalLM: 2 adapters; trainable params: {plan.trainable:,} || all params: "
        f"{plan.total:,} || trainable%: {100 * plan.trainable / plan.total:.4f}",
        f"  model.layers (language): 2 of 4 blocks adapted, {plan.trainable:,} trainable "
        "parameters",
        "    adapted 1, 3: mixer.down_proj",
        "    skipped 0: no feed-forward output; mixes tokens by a convolution or state-space scan "
        "(mixer)",
        "    skipped 2: no feed-forward output; mixes tokens by attention (mixer)",
    ]
    janus = str(describe_placement(BUILDERS["janus"]().model, MixPHMConfig(reduction_factor=4)))
    assert "  not searched: model.vision_model.encoder.layers: the vision side" in janus
    assert "  not searched: model.vqmodel.encoder.down: 2-D convolutional stages" in janus


def test_describe_placement_of_named_layers_groups_them_by_stack():
    model = BUILDERS["zamba2"]().model
    config = MixPHMConfig(reduction_factor=4, target_modules=["down_proj", "lm_head"])
    plan = describe_placement(model, config)
    (stack,) = plan.stacks
    down = ("shared_transformer.feed_forward.down_proj",)
    assert stack.adapted == (("1", down), ("3", down))
    assert stack.skipped == (
        ("0", "target_modules names none of its layers"),
        ("2", "target_modules names none of its layers"),
    )
    assert plan.elsewhere == ("lm_head",)
    assert plan.trainable == parameter_counts(add_mixphm(model, config))[0]


def nemotron_h(*layer_types, **fields):
    """A tiny Nemotron-H model (no forward needed) whose layers are ``layer_types``."""
    config = tf.NemotronHConfig(
        **text_config("decoder", layers_block_type=list(layer_types), **fields)
    )
    return tf.NemotronHModel(config)


def test_a_hybrid_without_attention_is_placed_and_one_without_a_feedforward_refused():
    model = add_mixphm(nemotron_h("linear_attention", "mlp", mamba_num_heads=4), SMALL)
    assert [path for path, _ in mixphm_adapters(model)] == ["layers.1.mixer.down_proj.mixphm"]
    with pytest.raises(
        PlacementError,
        match=r"NemotronHModel: no block of layers has a feed-forward output \(layers\.0: no "
        r"feed-forward output; mixes tokens by a convolution or state-space scan \(mixer\); "
        r"layers\.1: no feed-forward output; mixes tokens by attention \(mixer\)\)\. Name the",
    ):
        add_mixphm(nemotron_h("linear_attention", "full_attention", mamba_num_heads=4))


def test_fused_experts_in_a_hybrid_are_refused_though_other_layers_have_a_feedforward():
    model = nemotron_h(
        "linear_attention",
        "mlp",
        "moe",
        mamba_num_heads=4,
        n_routed_experts=2,
        moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32,
    )
    with pytest.raises(
        PlacementError,
        match=r"not every transformer block has a feed-forward output .*"
        r"layers\.2\.mixer\.experts: fused experts",
    ):
        add_mixphm(model)


def test_emu3s_vq_tokenizer_is_left_alone_even_by_attention_adapters():
    """Emu3's VQ-VAE holds attention (with linear projections) in every down- and up-sampling
    stage; its stages are convolutional, not transformer blocks."""
    vq = dict(
        codebook_size=64,
        base_channels=32,  # its GroupNorms take 32 groups
        channel_multiplier=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[0, 1],
        hidden_size=32,
    )
    config = tf.Emu3Config(vq_config=vq, text_config=text_config("decoder"), vocabulary_map={})
    model = tf.Emu3ForConditionalGeneration(config)
    houlsby = MixPHMConfig.preset("houlsby", reduction_factor=4, vision_tower=True)
    plan = describe_placement(model, houlsby)
    assert [path for path, _ in plan.not_searched] == [
        "model.vqmodel.encoder.down_block.down",
        "model.vqmodel.decoder.up_block.up",
    ]
    paths = [path for path, _ in mixphm_adapters(add_mixphm(model, houlsby))]
    assert len(paths) == 4 and all(path.startswith("model.text_model.") for path in paths)


class SubLNFeedForward(torch.nn.Module):
    """up (…, d) → (…, 4d), a LayerNorm of the inner width 4d, down (…, 4d) → (…, d)."""

    def __init__(self, width):
        super().__init__()
        self.up, self.norm = torch.nn.Linear(width, 4 * width), torch.nn.LayerNorm(4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, x):
        return self.down(self.norm(torch.relu(self.up(x))))


class ParallelBlock(torch.nn.Module):
    """Attention and a sub-LN feed-forward side by side after one norm: as many norms of the
    inner width as of the residual width, the feed-forward's first."""

    def __init__(self, width=8):
        super().__init__()
        self.feedforward = SubLNFeedForward(width)
        self.mixer = TinyAttention(width)
        self.norm = torch.nn.LayerNorm(width)

    def forward(self, x):
        normed = self.norm(x)
        return x + self.mixer(normed) + self.feedforward(normed)


def test_a_subln_feedforward_is_sized_by_the_residual_width_not_its_inner_norm():
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([ParallelBlock(), ParallelBlock()])
    assert hidden_size(model.blocks[0]) == 8
    add_mixphm(model, MixPHMConfig(reduction_factor=2, phm_dim=2))
    assert [(p, a.up.d_out) for p, a in mixphm_adapters(model)] == [
        ("blocks.0.feedforward.down.mixphm", 8),
        ("blocks.1.feedforward.down.mixphm", 8),
    ]
