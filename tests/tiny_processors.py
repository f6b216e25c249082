"""Tiny processors for the tiny VLMs of ``tiny_models``: the real transformers processor
classes around a word-level tokenizer whose image token has the tiny models' id (60)."""

from __future__ import annotations

import transformers as tf
from tiny_models import IMAGE_TOKEN, VOCAB
from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = [
    "what",
    "color",
    "is",
    "the",
    "shape",
    "?",
    "which",
    "how",
    "many",
    "a",
    "an",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "triangle",
    "yes",
    "no",
    "one",
    "two",
    "User:",
    "Assistant:",
    "answer",
    "en",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}User: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image }}{% else %} {{ c['text'] }}{% endif %}"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tokenizer(image_token: str, extra: tuple[str, ...] = ()) -> tf.PreTrainedTokenizerFast:
    """Ids: <pad> 0, <s> 1, </s> 2, <unk> 3, words from 4, ``image_token`` 60, ``extra`` 61…"""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    fillers = [f"w{i}" for i in range(len(vocab), IMAGE_TOKEN)]
    vocab.update({w: i for i, w in enumerate(fillers, len(vocab))})
    for i, token in enumerate((image_token, *extra)):
        vocab[token] = IMAGE_TOKEN + i
    assert len(vocab) <= VOCAB
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.add_special_tokens({"additional_special_tokens": [image_token, *extra]})
    return fast


def _template(image: str) -> str:
    return CHAT_TEMPLATE.replace("{{ image }}", image)


def blip() -> tf.BlipProcessor:
    image = tf.BlipImageProcessor(size={"height": 32, "width": 32})
    return tf.BlipProcessor(image_processor=image, tokenizer=tokenizer("<image>"))


def idefics3() -> tf.Idefics3Processor:
    image = tf.Idefics3ImageProcessor(
        size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    tok = tokenizer("<image>", ("<fake_token_around_image>", "<global-img>"))
    return tf.Idefics3Processor(
        image_processor=image, tokenizer=tok, image_seq_len=4, chat_template=_template("<image>")
    )


def paligemma() -> tf.PaliGemmaProcessor:
    image = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    image.image_seq_length = 16
    return tf.PaliGemmaProcessor(image_processor=image, tokenizer=tokenizer("<image>"))


def qwen2_vl() -> tf.Qwen2VLProcessor:
    """Without torchvision, transformers cannot check a missing video processor's class
    (its VIDEO_PROCESSOR_MAPPING is a stub), so only that check is skipped here."""
    from transformers.processing_utils import ProcessorMixin

    image = tf.Qwen2VLImageProcessor(
        min_pixels=16 * 16, max_pixels=16 * 16, patch_size=4, temporal_patch_size=1, merge_size=2
    )
    tok = tokenizer("<|image_pad|>", ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>"))
    check = ProcessorMixin.check_argument_for_proper_class
    try:
        ProcessorMixin.check_argument_for_proper_class = (  # type: ignore[method-assign]
            lambda self, name, arg: None if arg is None else check(self, name, arg)
        )
        return tf.Qwen2VLProcessor(
            image_processor=image,
            tokenizer=tok,
            chat_template=_template("<|vision_start|><|image_pad|><|vision_end|>"),
        )
    finally:
        ProcessorMixin.check_argument_for_proper_class = check  # type: ignore[method-assign]


PROCESSORS = {"blip": blip, "idefics3": idefics3, "paligemma": paligemma, "qwen2_vl": qwen2_vl}
