"""Tiny random instances of the architectures MixPHM must attach to, with a toy batch each.

``BUILDERS[name]()`` builds one family from its row in ``FAMILIES`` (no downloads) and returns
a :class:`Tiny`: ``batch`` feeds ``model(**batch)`` and yields a scalar loss;
``generate_kwargs`` feeds ``model.generate`` and is None for models that do not generate.

A row names the transformers model class, the style of the shared tiny text and vision configs
(``text_config`` / ``vision_config`` below, under those field names of composite configs), the
fields that differ from them, how many image tokens the prompt needs and which extra inputs
the forward takes. Adding a family is adding a row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
import transformers as tf
from torch import nn

VOCAB = 64
IMAGE_TOKEN = 60  # the image placeholder of every prompt; 61-63 are free for other specials
SPECIAL_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
IMAGE = 32  # images are IMAGE × IMAGE pixels (Qwen's are 16 × 16, in 4-pixel patches)

# The config fields that hold the number of blocks, per text / vision config style.
LAYER_FIELDS = {
    "decoder": ("num_hidden_layers",),
    "encoder": ("num_hidden_layers",),
    "opt": ("num_hidden_layers",),
    "gpt2": ("n_layer",),
    "t5": ("num_layers", "num_decoder_layers"),
    "bart": ("encoder_layers", "decoder_layers"),
    "vit": ("num_hidden_layers",),
    "kosmos2": ("layers",),
    "mllama": ("num_hidden_layers", "num_global_layers"),
    "qwen2-vl": ("depth",),
    "qwen2.5-vl": ("depth",),
    "davit": ("depths",),
}


@dataclass
class Tiny:
    """A tiny model, a batch that gives it a loss and, if it generates, generate's kwargs.

    ``text_blocks`` counts the blocks of the language model (encoder + decoder of an
    encoder-decoder, the text tower of a dual encoder), ``skipped_blocks`` those of them
    without a feed-forward (a hybrid's Mamba-only or attention-only layers, which placement
    skips), ``vision_blocks`` those of the vision tower (0 without one).
    """

    model: nn.Module
    batch: dict[str, Any]
    generate_kwargs: dict[str, Any] | None
    text_blocks: int = 0
    vision_blocks: int = 0
    skipped_blocks: int = 0


def text_config(style: str, width: int = 16, layers: int = 2, **fields: Any) -> dict[str, Any]:
    """Fields of a tiny language model ``width`` wide with ``layers`` blocks (per stack of an
    encoder-decoder), 2 attention heads, an FFN twice as wide and the tiny vocabulary, named
    as the config class of ``style`` names them: "decoder" (LLaMA and its kin, the hybrids),
    "encoder" (BERT, CLIP, SigLIP, BLIP), "opt", "gpt2", "t5", "bart" or "kosmos2".
    ``fields`` add or override fields."""
    heads, ffn = 2, 2 * width
    match style:
        case "decoder":
            names = dict(
                hidden_size=width,
                intermediate_size=ffn,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=1,
                head_dim=width // heads,
            )
        case "encoder":
            names = dict(
                hidden_size=width,
                intermediate_size=ffn,
                num_hidden_layers=layers,
                num_attention_heads=heads,
            )
        case "opt":
            names = dict(
                hidden_size=width,
                ffn_dim=ffn,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                word_embed_proj_dim=width,
            )
        case "gpt2":
            names = dict(n_embd=width, n_inner=ffn, n_layer=layers, n_head=heads, n_positions=32)
        case "t5":
            names = dict(
                d_model=width,
                d_ff=ffn,
                num_layers=layers,
                num_decoder_layers=layers,
                num_heads=heads,
                d_kv=width // heads,
                decoder_start_token_id=0,
            )
        case "bart":
            names = dict(
                d_model=width,
                encoder_layers=layers,
                decoder_layers=layers,
                encoder_attention_heads=heads,
                decoder_attention_heads=heads,
                encoder_ffn_dim=ffn,
                decoder_ffn_dim=ffn,
                decoder_start_token_id=2,
            )
        case "kosmos2":
            names = dict(embed_dim=width, layers=layers, ffn_dim=ffn, attention_heads=heads)
        case _:
            raise ValueError(f"unknown text config style {style!r}")
    return {**names, "vocab_size": VOCAB, **SPECIAL_TOKENS, **fields}


def vision_config(style: str, width: int = 16, layers: int = 1, **fields: Any) -> dict[str, Any]:
    """Fields of a tiny vision tower ``width`` wide with ``layers`` blocks and 2 heads that
    cuts an IMAGE-pixel image into 4 × 4 patches, named as the config class of ``style``
    names them: "vit" (CLIP, SigLIP and the ViTs of most VLMs), "mllama" (``layers`` local
    and ``layers`` global blocks), "qwen2-vl" / "qwen2.5-vl" (16-pixel images, 2 × 2 patches
    merged into one token) or "davit" (Florence-2: two stages of ``layers`` blocks each, the
    second 2 × width wide). ``fields`` add or override fields."""
    heads, ffn, patch = 2, 2 * width, IMAGE // 4
    match style:
        case "vit":
            names = dict(
                hidden_size=width,
                intermediate_size=ffn,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                image_size=IMAGE,
                patch_size=patch,
            )
        case "mllama":
            names = dict(
                hidden_size=width,
                intermediate_size=ffn,
                num_hidden_layers=layers,
                num_global_layers=layers,
                attention_heads=heads,
                image_size=IMAGE,
                patch_size=patch,
            )
        case "qwen2-vl":
            names = dict(
                embed_dim=width,
                hidden_size=width,
                depth=layers,
                num_heads=heads,
                mlp_ratio=2,
                patch_size=4,
                spatial_merge_size=2,
                temporal_patch_size=1,
            )
        case "qwen2.5-vl":
            names = dict(
                hidden_size=width,
                out_hidden_size=width,
                intermediate_size=ffn,
                depth=layers,
                num_heads=heads,
                patch_size=4,
                spatial_merge_size=2,
                temporal_patch_size=1,
                window_size=16,  # one 2 × 2-token attention window per image
                fullatt_block_indexes=[layers - 1],
            )
        case "davit":
            names = dict(
                depths=[layers, layers],
                embed_dim=[width, 2 * width],
                num_heads=[heads, heads],
                num_groups=[heads, heads],
                patch_size=[7, 3],
                patch_stride=[4, 2],  # 32 px → 8 × 8 → 4 × 4 positions
                patch_padding=[3, 1],
                patch_prenorm=[False, True],
                window_size=4,
                drop_path_rate=0.0,
            )
        case _:
            raise ValueError(f"unknown vision config style {style!r}")
    return {**names, **fields}


def _ids(batch: int, length: int, offset: int = 3) -> torch.Tensor:
    """Distinct ordinary tokens (3-42: neither special nor image tokens)."""
    return torch.arange(batch * length).reshape(batch, length) % 40 + offset


def _pixels(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _token_types(name: str) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """An input ``name`` that marks image tokens 1 and text tokens 0."""
    return lambda ids: {name: (ids == IMAGE_TOKEN).long()}


def _qwen_inputs(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """One image per row of 4 × 4 patches of 3 · 1 · 4 · 4 = 48 values (its 2 × 2 merge gives
    4 image tokens), as Qwen2-VL's processor flattens them, and the token types Qwen2-VL's
    multimodal RoPE needs in transformers 5."""
    return {
        "pixel_values": _pixels(len(ids) * 16, 48),
        "image_grid_thw": torch.tensor([[1, 4, 4]] * len(ids)),
        **_token_types("mm_token_type_ids")(ids),
    }


def _image_sizes(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """LLaVA-NeXT / OneVision: each image is IMAGE × IMAGE pixels."""
    return {"image_sizes": torch.tensor([[IMAGE, IMAGE]] * len(ids))}


def _mllama_inputs(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mllama: one image per row on the first of its 2 tiles (aspect ratio id 1 is 1 × 1),
    which every token attends to through the cross-attention layers."""
    rows, length = ids.shape
    tiles = torch.tensor([1, 0])
    return {
        "aspect_ratio_ids": torch.ones(rows, 1, dtype=torch.long),
        "aspect_ratio_mask": tiles.expand(rows, 1, 2).clone(),
        "cross_attention_mask": tiles.expand(rows, length, 1, 2).clone(),
    }


@dataclass(frozen=True)
class Family:
    """How to build one tiny model and its batch.

    ``model`` is the transformers model class (its ``config_class`` gives the config).
    ``text`` / ``vision`` are the styles of ``text_config`` / ``vision_config`` (``vision``
    None: no vision tower) and ``text_fields`` / ``vision_fields`` override them; ``flat``
    families take the text fields as their top-level config, the others nest them under
    ``text_config`` and ``vision_config``. ``fields`` are further top-level config fields.
    The prompt is ``image_tokens`` IMAGE_TOKENs and 5 text tokens; ``pixels`` is the shape of
    ``pixel_values`` for a batch of 2 (None: none, or ``extra`` makes them); ``extra`` makes
    further inputs from the prompt. ``target`` picks the loss: "causal" (labels = the
    prompt), "seq2seq" (labels = a separate answer), "masked" (a masked-LM label per token),
    "soft" (soft scores over ``num_labels`` answers) or "contrastive" (``return_loss``);
    causal and seq2seq models also generate. ``text_towers`` counts the language models that
    share ``text_config`` (BLIP's question encoder and answer decoder). ``skipped_layers`` are
    the values of a hybrid's ``layer_types`` whose layers hold no feed-forward.
    """

    model: type[tf.PreTrainedModel]
    text: str
    vision: str | None = "vit"
    target: Literal["causal", "seq2seq", "masked", "soft", "contrastive"] = "causal"
    image_tokens: int = 0
    pixels: tuple[int, ...] | None = (2, 3, IMAGE, IMAGE)
    extra: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None
    flat: bool = False
    text_towers: int = 1
    skipped_layers: tuple[str, ...] = ()
    text_fields: dict[str, Any] = field(default_factory=dict)
    vision_fields: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


TEXT_ONLY = dict(vision=None, pixels=None, flat=True)
IMAGE_LISTS = (2, 1, 3, IMAGE, IMAGE)  # Idefics: a list of one image per row
# LLaVA-NeXT / OneVision: per image, an overview and one IMAGE-pixel crop.
ANYRES = dict(pixels=(2, 2, 3, IMAGE, IMAGE), extra=_image_sizes)
PINPOINTS = [[IMAGE, IMAGE]]
MROPE = {"type": "mrope", "mrope_section": [1, 1, 2]}
# A Mamba-2 mixer of 4 heads of 8 over 2 × 16 channels with an 8-state scan in chunks of 8, as
# Bamba and Falcon-H1 name its fields (Zamba2 and Nemotron-H name them their own way).
MAMBA2 = dict(
    mamba_n_heads=4,
    mamba_d_head=8,
    mamba_n_groups=1,
    mamba_d_state=8,
    mamba_chunk_size=8,
    mamba_expand=2,
)

FAMILIES: dict[str, Family] = {
    "t5": Family(
        tf.T5ForConditionalGeneration,
        "t5",
        target="seq2seq",
        **TEXT_ONLY,
        text_fields=dict(width=24),
    ),
    # Its linear layers are transformers' Conv1D (weights stored transposed).
    "gpt2": Family(tf.GPT2LMHeadModel, "gpt2", **TEXT_ONLY),
    "bert": Family(
        tf.BertForMaskedLM,
        "encoder",
        target="masked",
        **TEXT_ONLY,
        text_fields=dict(width=24),
    ),
    "bart": Family(
        tf.BartForConditionalGeneration,
        "bart",
        target="seq2seq",
        **TEXT_ONLY,
    ),
    "blip": Family(
        tf.BlipForQuestionAnswering,
        "encoder",
        target="seq2seq",
        text_towers=2,
        text_fields=dict(layers=1, encoder_hidden_size=16, sep_token_id=2),
        vision_fields=dict(patch_size=16),
    ),
    "blip2-opt": Family(
        tf.Blip2ForConditionalGeneration,
        "opt",
        image_tokens=4,
        text_fields=dict(model_type="opt"),
        fields=dict(
            num_query_tokens=4,
            qformer_config=text_config("encoder", layers=1, encoder_hidden_size=16),
        ),
    ),
    "blip2-flan-t5": Family(
        tf.Blip2ForConditionalGeneration,
        "t5",
        target="seq2seq",
        image_tokens=4,
        text_fields=dict(model_type="t5", layers=1, feed_forward_proj="gated-gelu"),
        fields=dict(
            num_query_tokens=4,
            qformer_config=text_config("encoder", layers=1, encoder_hidden_size=16),
        ),
    ),
    "vilt": Family(
        tf.ViltForQuestionAnswering,
        "encoder",
        vision=None,
        target="soft",
        flat=True,
        fields=dict(image_size=IMAGE, patch_size=16, num_labels=5, max_image_length=-1),
    ),
    # LLaVA's vision_feature_layer -2 would leave a 1-block tower's block out of the loss.
    "llava": Family(
        tf.LlavaForConditionalGeneration,
        "decoder",
        image_tokens=16,
        text_fields=dict(model_type="llama"),
        vision_fields=dict(model_type="clip_vision_model"),
        fields=dict(vision_feature_layer=-1, image_seq_length=16),
    ),
    # 16 overview tokens, then the crop's 4 × 4 tokens with a newline after each row: 36.
    "llava-next": Family(
        tf.LlavaNextForConditionalGeneration,
        "decoder",
        image_tokens=36,
        text_fields=dict(model_type="llama"),
        vision_fields=dict(model_type="clip_vision_model"),
        fields=dict(image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1),
        **ANYRES,
    ),
    "llava-onevision": Family(
        tf.LlavaOnevisionForConditionalGeneration,
        "decoder",
        image_tokens=36,
        text_fields=dict(model_type="qwen2"),
        vision_fields=dict(model_type="siglip_vision_model", vision_use_head=False),
        fields=dict(image_grid_pinpoints=PINPOINTS),
        **ANYRES,
    ),
    # The perceiver resamples each image to its 4 latents.
    "idefics2": Family(
        tf.Idefics2ForConditionalGeneration,
        "decoder",
        image_tokens=4,
        pixels=IMAGE_LISTS,
        text_fields=dict(model_type="mistral"),
        fields=dict(
            perceiver_config=dict(
                hidden_size=16,
                resampler_n_latents=4,
                resampler_depth=1,
                resampler_n_heads=2,
                resampler_head_dim=8,
                num_key_value_heads=1,
            )
        ),
    ),
    # 4 × 4 patches, pixel-shuffled by scale_factor 2: 4 image tokens.
    "idefics3": Family(
        tf.Idefics3ForConditionalGeneration,
        "decoder",
        image_tokens=4,
        pixels=IMAGE_LISTS,
        text_fields=dict(model_type="llama"),
        fields=dict(scale_factor=2),
    ),
    "smolvlm": Family(
        tf.SmolVLMForConditionalGeneration,
        "decoder",
        image_tokens=4,
        pixels=IMAGE_LISTS,
        text_fields=dict(model_type="llama"),
        fields=dict(scale_factor=2),
    ),
    # One token per patch: 16.
    "paligemma": Family(
        tf.PaliGemmaForConditionalGeneration,
        "decoder",
        image_tokens=16,
        text_fields=dict(model_type="gemma"),
        vision_fields=dict(vision_use_head=False),
        fields=dict(projection_dim=16),
    ),
    # 4 × 4 patches average-pooled to mm_tokens_per_image = 2 × 2.
    "gemma3": Family(
        tf.Gemma3ForConditionalGeneration,
        "decoder",
        image_tokens=4,
        extra=_token_types("token_type_ids"),
        vision_fields=dict(vision_use_head=False),
        fields=dict(mm_tokens_per_image=4, boi_token_index=61, eoi_token_index=62),
    ),
    "qwen2_vl": Family(
        tf.Qwen2VLForConditionalGeneration,
        "decoder",
        vision="qwen2-vl",
        image_tokens=4,
        pixels=None,
        extra=_qwen_inputs,
        text_fields=dict(model_type="qwen2_vl_text", rope_scaling=MROPE),
        fields=dict(video_token_id=61, vision_start_token_id=62),
    ),
    "qwen2.5-vl": Family(
        tf.Qwen2_5_VLForConditionalGeneration,
        "decoder",
        vision="qwen2.5-vl",
        image_tokens=4,
        pixels=None,
        extra=_qwen_inputs,
        text_fields=dict(model_type="qwen2_5_vl_text", rope_scaling=MROPE),
        fields=dict(video_token_id=61, vision_start_token_id=62, vision_end_token_id=63),
    ),
    # One <|image|> token per image; the text attends to the image in its layer 1, through
    # cross-attention. The projector reads the last hidden state and that of block 0.
    "mllama": Family(
        tf.MllamaForConditionalGeneration,
        "decoder",
        vision="mllama",
        image_tokens=1,
        pixels=(2, 1, 2, 3, IMAGE, IMAGE),
        extra=_mllama_inputs,
        text_fields=dict(cross_attention_layers=[1]),
        vision_fields=dict(
            max_num_tiles=2,
            supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]],
            intermediate_layers_indices=[0],
            vision_output_dim=32,
        ),
    ),
    # 4 × 4 patches, pixel-shuffled by downsample_ratio 0.5: 4 image tokens.
    "internvl": Family(
        tf.InternVLForConditionalGeneration,
        "decoder",
        image_tokens=4,
        text_fields=dict(model_type="qwen2"),
        fields=dict(image_seq_length=4),
    ),
    # The 4 × 4 positions of DaViT's last stage and their mean: 17 image tokens.
    "florence2": Family(
        tf.Florence2ForConditionalGeneration,
        "bart",
        vision="davit",
        target="seq2seq",
        image_tokens=17,
        text_fields=dict(model_type="bart"),
        vision_fields=dict(projection_dim=16),
    ),
    # Hybrids: Mamba-2 layers beside attention layers, each with its feed-forward (Bamba); with
    # attention in parallel to the scan in every layer (Falcon-H1); Mamba layers without a
    # feed-forward and hybrid layers that add a shared transformer block (Zamba2); and
    # layers that hold a scan, attention or a feed-forward alone (Nemotron-H).
    "bamba": Family(
        tf.BambaForCausalLM,
        "decoder",
        **TEXT_ONLY,
        text_fields=dict(layers=3, attn_layer_indices=[1], **MAMBA2),
    ),
    "falcon-h1": Family(
        tf.FalconH1ForCausalLM,
        "decoder",
        **TEXT_ONLY,
        text_fields=dict(mamba_d_ssm=32, **MAMBA2),
    ),
    "zamba2": Family(
        tf.Zamba2ForCausalLM,
        "decoder",
        **TEXT_ONLY,
        skipped_layers=("linear_attention",),
        text_fields=dict(
            layers=4,
            layers_block_type=["linear_attention", "hybrid", "linear_attention", "hybrid"],
            n_mamba_heads=4,
            mamba_ngroups=1,
            mamba_d_state=8,
            chunk_size=8,
        ),
    ),
    "nemotron-h": Family(
        tf.NemotronHForCausalLM,
        "decoder",
        **TEXT_ONLY,
        skipped_layers=("linear_attention", "full_attention"),
        text_fields=dict(
            layers=4,
            layers_block_type=["linear_attention", "mlp", "full_attention", "mlp"],
            mamba_num_heads=4,
            mamba_head_dim=8,
            n_groups=1,
            ssm_state_size=8,
            chunk_size=8,
        ),
    ),
    # Its text feed-forward normalises its inner activations (sub-LN: a LayerNorm of ffn_dim
    # between fc1 and fc2); 4 latent queries carry the image into 4 image positions.
    "kosmos2": Family(
        tf.Kosmos2ForConditionalGeneration,
        "kosmos2",
        image_tokens=4,
        extra=_token_types("image_embeds_position_mask"),
        fields=dict(latent_query_num=4),
    ),
    # Janus understands images through its SigLIP tower (16 tokens) and carries a VQ image
    # tokenizer for generation: convolutional stages with attention in the last down-sampling
    # one, which placement leaves alone.
    "janus": Family(
        tf.JanusForConditionalGeneration,
        "decoder",
        image_tokens=16,
        text_fields=dict(model_type="llama"),
        vision_fields=dict(num_image_tokens=16, projection_dim=16),
        fields=dict(
            vq_config=dict(
                base_channels=32,  # its GroupNorms take 32 groups
                channel_multiplier=[1, 2],
                num_res_blocks=1,
                embed_dim=8,
                num_embeddings=64,
                latent_channels=8,
                projection_dim=16,
                image_token_embed_dim=16,
            )
        ),
    ),
    "clip": Family(
        tf.CLIPModel,
        "encoder",
        target="contrastive",
        fields=dict(projection_dim=16),
    ),
    "siglip": Family(tf.SiglipModel, "encoder", target="contrastive"),
}


def _blocks(config: Any, style: str) -> int:
    """The number of blocks a (sub-)config of ``style`` asks for."""
    counts = [getattr(config, name) for name in LAYER_FIELDS[style]]
    return sum(sum(c) if isinstance(c, list | tuple) else c for c in counts)


def build(name: str, seed: int = 0) -> Tiny:
    """The tiny model of family ``name`` (weights drawn after ``torch.manual_seed(seed)``)."""
    family = FAMILIES[name]
    text = text_config(family.text, **family.text_fields)
    if family.flat:
        kwargs = {**text, **family.fields}
    else:
        kwargs = {"text_config": text, **family.fields}
        if family.vision is not None:
            kwargs["vision_config"] = vision_config(family.vision, **family.vision_fields)
    if family.image_tokens:
        kwargs["image_token_id"] = IMAGE_TOKEN
    config = family.model.config_class(**kwargs)
    torch.manual_seed(seed)
    model = family.model(config)

    ids = torch.cat([torch.full((2, family.image_tokens), IMAGE_TOKEN), _ids(2, 5)], dim=1)
    inputs: dict[str, Any] = {"input_ids": ids}
    if family.pixels is not None:
        inputs["pixel_values"] = _pixels(*family.pixels)
    if family.extra is not None:
        inputs.update(family.extra(ids))
    match family.target:
        case "causal":
            batch = {**inputs, "labels": ids}
        case "seq2seq":
            batch = {**inputs, "labels": _ids(2, 3, offset=10)}
        case "masked":
            batch = {**inputs, "labels": _ids(*ids.shape, offset=5)}
        case "soft":
            scores = torch.zeros(2, config.num_labels)
            scores[0, 1], scores[1, 3] = 1.0, 0.6
            batch = {**inputs, "labels": scores}
        case "contrastive":
            batch = {**inputs, "return_loss": True}
    generates = family.target in ("causal", "seq2seq")

    text_part = config if family.flat else config.text_config
    layer_types = getattr(text_part, "layer_types", None) or []
    return Tiny(
        model,
        batch,
        {**inputs, "max_new_tokens": 3} if generates else None,
        text_blocks=family.text_towers * _blocks(text_part, family.text),
        vision_blocks=_blocks(config.vision_config, family.vision) if family.vision else 0,
        skipped_blocks=sum(kind in family.skipped_layers for kind in layer_types),
    )


BUILDERS: dict[str, Callable[[], Tiny]] = {name: partial(build, name) for name in FAMILIES}
t5, bert = BUILDERS["t5"], BUILDERS["bert"]  # imported by name by several tests


def output_tensors(model: nn.Module, batch: dict[str, Any]) -> list[torch.Tensor]:
    """Every tensor ``model(**batch)`` returns (loss, logits, hidden states...), flattened."""
    found = []

    def collect(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, tuple | list):
            for item in value:
                collect(item)

    torch.manual_seed(0)  # ViLT draws the order of its image patches from the global RNG
    collect(model(**batch).to_tuple())
    return found


def tiny_vlm(seed: int = 0):
    """An OfflineVLM with a 2-layer random BERT (width 48, no dropout) and 4 visual tokens
    of 8 features. Width 48 fits every preset: 48 / 16 = 3, 48 / 12 = 4 (divisible by n)."""
    from mixphm.backbones.offline_vlm import OfflineVLM, OfflineVLMConfig

    torch.manual_seed(seed)
    text = tf.BertModel(
        tf.BertConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=96,
            vocab_size=VOCAB,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    return OfflineVLM(text, OfflineVLMConfig(visual_dim=8, visual_tokens=4, mask_token_id=4))


def tiny_split(rows: int, candidates: int = 5, seed: int = 0):
    """An EncodedSplit of random questions whose answer is readable from the visual input:
    candidate i is right when visual token 0 has its largest value at feature i."""
    from mixphm.data.examples import VQAExample
    from mixphm.training.data import EncodedSplit

    g = torch.Generator().manual_seed(seed)
    answers_index = torch.randint(candidates, (rows,), generator=g)
    visual = torch.randn(rows, 4, 8, generator=g)
    visual[torch.arange(rows), 0, answers_index] += 4.0
    ids = torch.randint(10, VOCAB, (rows, 6), generator=g)
    ids[:, 0], ids[:, -2], ids[:, -1] = 1, 4, 2  # [CLS] … [MASK] [SEP]
    mask = torch.ones(rows, 6, dtype=torch.long)
    mask[::3, 3] = 0  # some padding inside the prompt is fine for attention
    targets = torch.nn.functional.one_hot(answers_index, candidates).float()
    examples = tuple(
        VQAExample(f"q{i}", f"i{i}", "?", (f"a{int(a)}",), {f"a{int(a)}": 1.0}, answer_type="t")
        for i, a in enumerate(answers_index)
    )
    return EncodedSplit(examples, ids, mask, visual, targets, "exact")


def tiny_candidates(candidates: int = 5):
    from mixphm.training.data import Candidates

    ids = torch.arange(10, 10 + 2 * candidates).reshape(candidates, 2)
    return Candidates(tuple(f"a{i}" for i in range(candidates)), ids, torch.ones_like(ids))


class TinyAttention(torch.nn.Module):
    """Attention by structure only, for hand-built models no table lists: a fused query-key-
    value linear and an output linear ``proj`` back to ``width``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.qkv(x)[..., : x.shape[-1]])
