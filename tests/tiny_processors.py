"""Tiny processors for the tiny VLMs of ``tiny_models``: the real transformers processor
classes around a word-level tokenizer whose image token has the tiny models' id (60)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TypeVar

import transformers as tf
from tiny_models import IMAGE, IMAGE_TOKEN, VOCAB
from tokenizers import Tokenizer, models, pre_tokenizers

P = TypeVar("P", bound=tf.ProcessorMixin)
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
    "Question:",
    "Answer:",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}User: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image }}{% else %} {{ c['text'] }}{% endif %}"
    "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tokenizer(
    placeholder: str, extra: tuple[str, ...] = (), **named: str
) -> tf.PreTrainedTokenizerFast:
    """Ids: <pad> 0, <s> 1, </s> 2, <unk> 3, words from 4, ``placeholder`` (the image token)
    60, ``extra`` 61…; ``named`` special tokens (``boi_token="<start_of_image>"``) become
    attributes of the tokenizer, as processors look some of theirs up there."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    fillers = [f"w{i}" for i in range(len(vocab), IMAGE_TOKEN)]
    vocab.update({w: i for i, w in enumerate(fillers, len(vocab))})
    for i, token in enumerate((placeholder, *extra)):
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
        **named,
    )
    fast.add_special_tokens({"additional_special_tokens": [placeholder, *extra]})
    return fast


def _template(image: str) -> str:
    return CHAT_TEMPLATE.replace("{{ image }}", image)


def blip() -> tf.BlipProcessor:
    image = tf.BlipImageProcessor(size={"height": 32, "width": 32})
    return tf.BlipProcessor(image_processor=image, tokenizer=tokenizer("<image>"))


def blip2() -> tf.Blip2Processor:
    """4 query tokens (the processor adds "<image>", id 60, before the prompt)."""
    image = tf.BlipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    return tf.Blip2Processor(
        image_processor=image, tokenizer=tokenizer("<image>"), num_query_tokens=4
    )


def florence2() -> tf.Florence2Processor:
    """17 image tokens (DaViT's 4 × 4 positions and their mean), which the processor puts
    before "<s> prompt </s>"."""
    image = tf.CLIPImageProcessor(
        size={"height": IMAGE, "width": IMAGE}, crop_size=IMAGE, do_center_crop=False
    )
    image.image_seq_length = 17
    return tf.Florence2Processor(
        image_processor=image, tokenizer=tokenizer("<image>", image_token="<image>")
    )


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


@contextmanager
def _no_video_processor_check() -> Iterator[None]:
    """Without torchvision, transformers cannot check the class of a missing (or stand-in)
    video processor (its VIDEO_PROCESSOR_MAPPING is a stub), so only that check is skipped
    here."""
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class
    try:
        ProcessorMixin.check_argument_for_proper_class = (  # type: ignore[method-assign]
            lambda self, name, arg: None if name == "video_processor" else check(self, name, arg)
        )
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = check  # type: ignore[method-assign]


@contextmanager
def _num2words_stand_in() -> Iterator[None]:
    """SmolVLMProcessor refuses to start without num2words, which only spells out video
    frame counts and is not installed here: a stand-in passes that check."""
    from transformers.models.smolvlm import processing_smolvlm

    installed = processing_smolvlm.num2words
    try:
        processing_smolvlm.num2words = str
        yield
    finally:
        processing_smolvlm.num2words = installed


def _qwen(processor: type[P]) -> P:
    """Qwen2-VL / Qwen2.5-VL: images of at most 16 × 16 pixels in 4-pixel patches, 2 × 2 of
    them merged into one token."""
    image = tf.Qwen2VLImageProcessor(
        min_pixels=16 * 16, max_pixels=16 * 16, patch_size=4, temporal_patch_size=1, merge_size=2
    )
    tok = tokenizer("<|image_pad|>", ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>"))
    with _no_video_processor_check():
        return processor(
            image_processor=image,
            tokenizer=tok,
            chat_template=_template("<|vision_start|><|image_pad|><|vision_end|>"),
        )


def qwen2_vl() -> tf.Qwen2VLProcessor:
    return _qwen(tf.Qwen2VLProcessor)


def qwen2_5_vl() -> tf.Qwen2_5_VLProcessor:
    return _qwen(tf.Qwen2_5_VLProcessor)


def llava() -> tf.LlavaProcessor:
    """4 × 4 patches of 8 pixels and CLIP's class token, which the model drops: 16 tokens."""
    image = tf.CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size=IMAGE)
    return tf.LlavaProcessor(
        image_processor=image,
        tokenizer=tokenizer("<image>"),
        patch_size=IMAGE // 4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_template("<image>"),
    )


def llava_next() -> tf.LlavaNextProcessor:
    """An overview and one crop of IMAGE pixels (the only grid pinpoint) per image."""
    image = tf.LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE}, crop_size=IMAGE, image_grid_pinpoints=[[IMAGE, IMAGE]]
    )
    return tf.LlavaNextProcessor(
        image_processor=image,
        tokenizer=tokenizer("<image>"),
        patch_size=IMAGE // 4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_template("<image>"),
    )


def llava_onevision() -> tf.LlavaOnevisionProcessor:
    """As LLaVA-NeXT, with SigLIP's 16 tokens per view (no class token)."""
    image = tf.LlavaOnevisionImageProcessor(
        size={"height": IMAGE, "width": IMAGE}, image_grid_pinpoints=[[IMAGE, IMAGE]]
    )
    with _no_video_processor_check():
        return tf.LlavaOnevisionProcessor(
            image_processor=image,
            tokenizer=tokenizer("<image>", ("<video>",)),
            num_image_tokens=16,
            vision_feature_select_strategy="full",
            chat_template=_template("<image>"),
        )


def smolvlm() -> tf.SmolVLMProcessor:
    """As Idefics3, with a stand-in video processor: the real one needs torchvision, which is
    not installed, and the chat template only reads its frame sampling (None: none) off it."""
    image = tf.SmolVLMImageProcessor(
        size={"longest_edge": IMAGE},
        max_image_size={"longest_edge": IMAGE},
        do_image_splitting=False,
    )
    tok = tokenizer("<image>", ("<fake_token_around_image>", "<global-img>"))
    video = SimpleNamespace(num_frames=None, fps=None)
    with _no_video_processor_check(), _num2words_stand_in():
        return tf.SmolVLMProcessor(
            image_processor=image,
            tokenizer=tok,
            video_processor=video,
            image_seq_len=4,
            chat_template=_template("<image>"),
        )


def idefics2() -> tf.Idefics2Processor:
    image = tf.Idefics2ImageProcessor(
        size={"shortest_edge": IMAGE, "longest_edge": IMAGE}, do_image_splitting=False
    )
    tok = tokenizer("<image>", ("<fake_token_around_image>", "<end_of_utterance>"))
    return tf.Idefics2Processor(
        image_processor=image, tokenizer=tok, image_seq_len=4, chat_template=_template("<image>")
    )


def gemma3() -> tf.Gemma3Processor:
    """4 image tokens between <start_of_image> (61) and <end_of_image> (62)."""
    image = tf.Gemma3ImageProcessor(size={"height": IMAGE, "width": IMAGE})
    tok = tokenizer(
        "<image_soft_token>",
        ("<start_of_image>", "<end_of_image>"),
        image_token="<image_soft_token>",
        boi_token="<start_of_image>",
        eoi_token="<end_of_image>",
    )
    return tf.Gemma3Processor(
        image_processor=image,
        tokenizer=tok,
        image_seq_length=4,
        chat_template=_template("<start_of_image>"),
    )


def internvl() -> tf.InternVLProcessor:
    """One tile per image (max_patches 1): 4 <IMG_CONTEXT> tokens between <img> (61) and
    </img> (62)."""
    image = tf.GotOcr2ImageProcessor(size={"height": IMAGE, "width": IMAGE}, max_patches=1)
    tok = tokenizer(
        "<IMG_CONTEXT>",
        ("<img>", "</img>", "<video>"),
        context_image_token="<IMG_CONTEXT>",
        start_image_token="<img>",
        end_image_token="</img>",
        video_token="<video>",
    )
    with _no_video_processor_check():
        return tf.InternVLProcessor(
            image_processor=image,
            tokenizer=tok,
            image_seq_length=4,
            chat_template=_template("<IMG_CONTEXT>"),
        )


def mllama() -> tf.MllamaProcessor:
    """One <|image|> token per image, whose IMAGE-pixel tiles (at most 2) the text attends to."""
    image = tf.MllamaImageProcessor(size={"height": IMAGE, "width": IMAGE}, max_image_tiles=2)
    return tf.MllamaProcessor(
        image_processor=image,
        tokenizer=tokenizer("<|image|>"),
        chat_template=_template("<|image|>"),
    )


PROCESSORS = {
    "blip": blip,
    "blip2-flan-t5": blip2,
    "blip2-opt": blip2,
    "florence2": florence2,
    "gemma3": gemma3,
    "idefics2": idefics2,
    "idefics3": idefics3,
    "internvl": internvl,
    "llava": llava,
    "llava-next": llava_next,
    "llava-onevision": llava_onevision,
    "mllama": mllama,
    "paligemma": paligemma,
    "qwen2.5-vl": qwen2_5_vl,
    "qwen2_vl": qwen2_vl,
    "smolvlm": smolvlm,
}
