"""Tiny random instances of the architectures MixPHM must attach to, with a toy batch each.

Every builder returns (model, batch, generate_kwargs): ``batch`` feeds ``model(**batch)``
and yields a loss; ``generate_kwargs`` is None for models that do not generate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as tf
from torch import nn

VOCAB = 64
IMAGE_TOKEN = 60


@dataclass
class Tiny:
    model: nn.Module
    batch: dict[str, Any]
    generate_kwargs: dict[str, Any] | None
    vision_ffn_count: int = 0


def _text_config(model_type: str, **extra: Any) -> dict[str, Any]:
    return dict(
        model_type=model_type,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=VOCAB,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **extra,
    )


def _ids(batch: int, length: int, offset: int = 3) -> torch.Tensor:
    return torch.arange(batch * length).reshape(batch, length) % 40 + offset


def t5() -> Tiny:
    config = tf.T5Config(
        d_model=24,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        d_kv=12,
        vocab_size=VOCAB,
        decoder_start_token_id=0,
    )
    model = tf.T5ForConditionalGeneration(config)
    inputs = {"input_ids": _ids(2, 5)}
    batch = {**inputs, "labels": _ids(2, 3, offset=10)}
    return Tiny(model, batch, {**inputs, "max_new_tokens": 3})


def bert() -> Tiny:
    config = tf.BertConfig(
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        vocab_size=VOCAB,
    )
    model = tf.BertForMaskedLM(config)
    batch = {"input_ids": _ids(2, 6), "labels": _ids(2, 6, offset=5)}
    return Tiny(model, batch, None)


def blip() -> Tiny:
    config = tf.BlipConfig(
        text_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=VOCAB,
            encoder_hidden_size=16,
            bos_token_id=1,
            sep_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=16,
        ),
    )
    model = tf.BlipForQuestionAnswering(config)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": _ids(2, 5), "pixel_values": pixels}
    batch = {**inputs, "labels": _ids(2, 3, offset=10)}
    return Tiny(model, batch, {**inputs, "max_new_tokens": 3}, vision_ffn_count=1)


def vilt() -> Tiny:
    config = tf.ViltConfig(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=16,
        vocab_size=VOCAB,
        num_labels=5,
        max_image_length=-1,
    )
    model = tf.ViltForQuestionAnswering(config)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(2, 5)
    labels[0, 1], labels[1, 3] = 1.0, 0.6
    batch = {"input_ids": _ids(2, 5), "pixel_values": pixels, "labels": labels}
    return Tiny(model, batch, None)


def _image_prompt(image_tokens: int, text: int = 4) -> torch.Tensor:
    row = [IMAGE_TOKEN] * image_tokens + list(range(3, 3 + text))
    return torch.tensor([row, row])


def idefics3() -> Tiny:
    config = tf.Idefics3Config(
        text_config=_text_config("llama"),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        scale_factor=2,
        image_token_id=IMAGE_TOKEN,
    )
    model = tf.Idefics3ForConditionalGeneration(config)
    pixels = torch.randn(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = _image_prompt(4)  # (32 / 8)² patches / scale_factor² = 4 image tokens
    inputs = {"input_ids": ids, "pixel_values": pixels}
    return Tiny(model, {**inputs, "labels": ids}, {**inputs, "max_new_tokens": 3}, 1)


def paligemma() -> Tiny:
    config = tf.PaliGemmaConfig(
        text_config=_text_config("gemma"),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            vision_use_head=False,
        ),
        image_token_index=IMAGE_TOKEN,
        projection_dim=16,
    )
    model = tf.PaliGemmaForConditionalGeneration(config)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = _image_prompt(16)  # (32 / 8)² image tokens
    inputs = {"input_ids": ids, "pixel_values": pixels}
    return Tiny(model, {**inputs, "labels": ids}, {**inputs, "max_new_tokens": 3}, 1)


def qwen2_vl() -> Tiny:
    config = tf.Qwen2VLConfig(
        text_config=_text_config(
            "qwen2_vl_text", rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}
        ),
        vision_config=dict(
            embed_dim=16,
            hidden_size=16,
            depth=1,
            num_heads=2,
            mlp_ratio=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=1,
        ),
        image_token_id=IMAGE_TOKEN,
        video_token_id=61,
        vision_start_token_id=62,
    )
    model = tf.Qwen2VLForConditionalGeneration(config)
    # Two images of 4 × 4 patches of 4 px each (3 · 1 · 4 · 4 = 48 values per patch); the
    # 2 × 2 spatial merge leaves 4 image tokens per image.
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    pixels = torch.randn(32, 48, generator=torch.Generator().manual_seed(0))
    ids = _image_prompt(4)
    token_types = (ids == IMAGE_TOKEN).long()
    inputs = {
        "input_ids": ids,
        "pixel_values": pixels,
        "image_grid_thw": grid,
        "mm_token_type_ids": token_types,
    }
    return Tiny(model, {**inputs, "labels": ids}, {**inputs, "max_new_tokens": 3}, 1)


BUILDERS: dict[str, Callable[[], Tiny]] = {
    "t5": t5,
    "bert": bert,
    "blip": blip,
    "vilt": vilt,
    "idefics3": idefics3,
    "paligemma": paligemma,
    "qwen2_vl": qwen2_vl,
}


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
