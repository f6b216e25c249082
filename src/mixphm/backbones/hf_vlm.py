"""Today's Hugging Face VLMs as VQA models: an image-text-to-text model plus its processor.

``HFVisionQA`` builds the prompt each family expects (its image tokens included), trains on
the answer as the target with the soft-score-weighted answer loss (VL-T5's: each row's
answer-token cross-entropy times its score; prompt tokens carry the label −100), and
generates answers as strings. Supported families, by ``model_type``:

- ``blip`` (BlipForQuestionAnswering): the question goes to the text encoder, the answer is
  decoded from ``[bos]`` by the text decoder.
- ``blip-2`` (Blip2ForConditionalGeneration): ``Question: {question} Answer:`` after the
  Q-Former's query tokens; with a decoder-only language model (OPT) the answer follows the
  prompt, with an encoder-decoder one (Flan-T5) it is decoded from the decoder start token.
- ``florence2``: the question after the image tokens goes to BART's encoder, the answer is
  decoded from the decoder start token (and ``<s>``, where generation forces it).
- ``gemma3``, ``idefics2``, ``idefics3`` / ``smolvlm``, ``internvl``, ``llava``,
  ``llava_next``, ``llava_onevision``, ``mllama``, ``qwen2_vl`` and ``qwen2_5_vl``:
  decoder-only (Mllama's text attends to the image by cross-attention); the prompt is the
  processor's chat template with one image and the question, then the generation prompt.
- ``paligemma``: decoder-only with a prefix-LM mask: ``answer en {question}`` as the prefix
  (token type 0), the answer as the suffix (token type 1).

The answer tokens are appended to the processed prompt ids (not re-tokenised with it) or,
where the answer has a decoder of its own, to the ids that decoder starts from: a training
example is exactly what ``generate`` sees followed by the tokens it should produce. MixPHM
goes in with ``add_mixphm(vqa.model, config)`` (``vision_tower=True`` also adapts the vision
encoder, and BLIP-2's Q-Former).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from accelerate.utils import extract_model_from_parallel
from PIL import Image
from torch import Tensor, nn

from mixphm.backbones.generation import IGNORED, Decoding, pad_rows, score_weighted_answer_loss
from mixphm.regularization import StackMasks, adapter_stacks

FAMILIES = (
    "blip",
    "blip-2",
    "florence2",
    "gemma3",
    "idefics2",
    "idefics3",
    "internvl",
    "llava",
    "llava_next",
    "llava_onevision",
    "mllama",
    "paligemma",
    "qwen2_5_vl",
    "qwen2_vl",
    "smolvlm",
)
IMAGE_LISTS = {"gemma3", "idefics2", "idefics3", "mllama", "smolvlm"}
"""Families whose processor takes a list of images per prompt."""
VISION_TOWERS = {"vision_model", "vision_tower", "visual", "perceiver_resampler", "qformer"}
"""Module names under which the supported families keep their vision encoder (Idefics2 also
its perceiver and BLIP-2 its Q-Former, which resample each image to latents or queries that
are all valid tokens)."""
ANSWER_DECODERS = {"text_decoder", "decoder"}
"""Module names under which a family whose answer has a decoder of its own keeps that decoder
(BLIP's text decoder, T5's and BART's decoder); a decoder-only model's ``decoder`` (OPT's)
reads the prompt and the answer as one sequence."""
PLAIN_PROMPTS = {
    "blip": "{question}",
    "blip-2": "Question: {question} Answer:",
    "florence2": "{question}",
    "paligemma": "{image}answer en {question}",
}
"""The prompt of each family without a chat template. ``{image}`` is the processor's image
token (PaliGemma's processor expands it); BLIP-2's and Florence-2's processors add their
image tokens themselves, BLIP has none."""
UNMASKED_QUESTION_PADDING = {"blip"}
"""Families whose ``generate`` ignores the question's padding mask (BLIP's answer decoder
cross-attends to every question position, while its training forward masks padding)."""
SUFFIX_TOKEN_TYPE: dict[str, dict[str, int | None]] = {
    "paligemma": {"token_type_ids": 1},
    "gemma3": {"token_type_ids": 0},
    "mllama": {"cross_attention_mask": None},
    "qwen2_vl": {"mm_token_type_ids": 0},
    "qwen2_5_vl": {"mm_token_type_ids": 0},
}
"""Per family, the per-token inputs (B, T, …) it takes besides the ids, and their value on
appended answer tokens (None: the last prompt token's): PaliGemma's prefix-LM types (suffix =
1), Gemma 3's image types and Qwen2-VL's / Qwen2.5-VL's modality types (text = 0), Mllama's
cross-attention mask (B, T, images, tiles), so that the answer sees the image."""


def model_family(model: nn.Module) -> str:
    family = str(getattr(getattr(model, "config", None), "model_type", ""))
    if family not in FAMILIES:
        raise ValueError(
            f"no VQA prompt format for model_type {family!r}; supported: {', '.join(FAMILIES)}"
        )
    return family


class HFVisionQA:
    """A transformers VLM and its processor, asked questions about images."""

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model: Any = model
        self.processor = processor
        self.tokenizer: Any = getattr(processor, "tokenizer", processor)
        self.family = model_family(model)

    @property
    def answer_in_decoder(self) -> bool:
        """Whether the answer goes to a decoder of its own (BLIP, BLIP-2 with Flan-T5,
        Florence-2) rather than after the prompt."""
        return self.family == "blip" or bool(self.model.config.is_encoder_decoder)

    @classmethod
    def from_pretrained(cls, name_or_path: str, dtype: torch.dtype | None = None) -> HFVisionQA:
        """A hub id (needs the internet once) or a local directory saved by transformers."""
        from transformers import (
            AutoConfig,
            AutoModelForImageTextToText,
            AutoProcessor,
            BlipForQuestionAnswering,
        )

        model: Any
        try:
            processor = AutoProcessor.from_pretrained(name_or_path)
            if AutoConfig.from_pretrained(name_or_path).model_type == "blip":
                model = BlipForQuestionAnswering.from_pretrained(name_or_path, dtype=dtype)
            else:
                model = AutoModelForImageTextToText.from_pretrained(name_or_path, dtype=dtype)
        except OSError as error:
            raise ValueError(f"cannot load VLM {name_or_path!r}: {error}") from None
        return cls(model, processor)

    def prompt(self, question: str) -> str:
        if self.family in PLAIN_PROMPTS:
            image = str(getattr(self.processor, "image_token", ""))
            return PLAIN_PROMPTS[self.family].format(image=image, question=question)
        message = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        text: str = self.processor.apply_chat_template(message, add_generation_prompt=True)
        return text

    def _process(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        padding_side: Literal["left", "right"],
    ) -> Any:
        """The processor's inputs for one prompt per image, padded on ``padding_side``."""
        self.tokenizer.padding_side = padding_side
        prompts = [self.prompt(q) for q in questions]
        pictures: list[Any] = list(images)
        if self.family in IMAGE_LISTS:
            pictures = [[image] for image in images]
        return self.processor(images=pictures, text=prompts, padding=True, return_tensors="pt")

    def training_inputs(
        self, images: Sequence[Image.Image], questions: Sequence[str], answers: Sequence[str]
    ) -> dict[str, Tensor]:
        """Model inputs with ``labels`` (B, T) that score only the answer tokens: those of
        the prompt followed by its answer, or where the answer has a decoder of its own, the
        prompt's and the decoder's (``decoder_input_ids``, ``decoder_attention_mask``,
        ``labels`` (B, T'))."""
        inputs = dict(self._process(images, questions, padding_side="right"))
        tails = [self._answer_tokens(a) for a in answers]
        if self.answer_in_decoder:
            return {**inputs, **self._decoder_targets(tails)}
        return self._append_answers(inputs, tails)

    def _answer_tokens(self, answer: str) -> list[int]:
        """The answer's ids and the id that ends its generation: BLIP's [sep], otherwise
        the tokenizer's eos (none if it has none)."""
        ids: list[int] = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        if self.family == "blip":
            end = self.model.config.text_config.sep_token_id
        else:
            end = self.tokenizer.eos_token_id
        return ids if end is None else [*ids, end]

    def decoder_start(self) -> list[int]:
        """The ids a decoder of its own starts each answer from in ``generate``, unscored in
        training: BLIP's [bos]; otherwise the decoder start token, then bos where generation
        forces it (Florence-2's checkpoints do)."""
        text = self.model.config.text_config
        if self.family == "blip":
            return [text.bos_token_id]
        forced_bos = self.model.generation_config.forced_bos_token_id
        return [text.decoder_start_token_id, *([] if forced_bos is None else [forced_bos])]

    def _decoder_targets(self, tails: list[list[int]]) -> dict[str, Tensor]:
        """Start ids + answer tokens, right-padded → ``decoder_input_ids``,
        ``decoder_attention_mask`` and ``labels`` (B, T'), the start ids unscored."""
        start = self.decoder_start()
        ids, mask = pad_rows(
            [[*start, *tail] for tail in tails], self.model.config.text_config.pad_token_id
        )
        labels = ids.masked_fill(mask == 0, IGNORED)
        labels[:, : len(start)] = IGNORED
        return {"decoder_input_ids": ids, "decoder_attention_mask": mask, "labels": labels}

    def _append_answers(self, inputs: dict[str, Any], tails: list[list[int]]) -> dict[str, Tensor]:
        """Prompt rows (right-padded) + answer tokens → ids, mask, labels and the family's
        per-token inputs of ``SUFFIX_TOKEN_TYPE``."""
        lengths = inputs["attention_mask"].sum(1).tolist()
        width = max(n + len(t) for n, t in zip(lengths, tails, strict=True))
        rows = len(tails)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((rows, width), pad, dtype=torch.long)
        mask = torch.zeros(rows, width, dtype=torch.long)
        labels = torch.full((rows, width), IGNORED, dtype=torch.long)
        if self.family == "paligemma" and "token_type_ids" not in inputs:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        family_types = SUFFIX_TOKEN_TYPE.get(self.family, {})
        answer_types = {k: v for k, v in family_types.items() if k in inputs}
        types = {k: inputs[k].new_zeros(rows, width, *inputs[k].shape[2:]) for k in answer_types}
        for row, (n, tail) in enumerate(zip(lengths, tails, strict=True)):
            end = n + len(tail)
            ids[row, :n] = inputs["input_ids"][row, :n]
            ids[row, n:end] = torch.tensor(tail)
            mask[row, :end] = 1
            labels[row, n:end] = torch.tensor(tail)
            for key, answer_type in answer_types.items():
                types[key][row, :n] = inputs[key][row, :n]
                types[key][row, n:end] = (
                    inputs[key][row, n - 1] if answer_type is None else answer_type
                )
        return {**inputs, **types, "input_ids": ids, "attention_mask": mask, "labels": labels}

    def training_loss(
        self,
        model: Any,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        answers: Sequence[str],
        scores: Tensor,
    ) -> tuple[Tensor, StackMasks]:
        """(Σ_b score_b · mean answer-token cross-entropy_b / B, the token mask of each
        stack that holds adapters, ``stack_masks``). BLIP's label smoothing, part of its own
        loss, is kept. The logits (B, T, V) are the decoder's where the answer has one."""
        inputs = self.training_inputs(images, questions, answers)
        labels = inputs.pop("labels")
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with self._answer_logits(model) as captured:
            outputs = model(**inputs)
        logits = captured[0] if captured else outputs.logits  # (B, T, V)
        smoothing = self.model.config.text_config.label_smoothing if self.family == "blip" else 0.0
        loss = score_weighted_answer_loss(
            logits[:, :-1],  # position t predicts token t + 1
            labels[:, 1:].to(device),
            scores,
            smoothing,
        )
        return loss, self.stack_masks(inputs)

    def stack_masks(self, inputs: dict[str, Tensor]) -> dict[str, Tensor | None]:
        """The valid tokens of each stack of ``self.model`` that holds adapters (what the
        redundancy regularizer averages over), from ``training_inputs``: a text stack sees
        the prompt, image tokens included, and the answer, the padding of both excluded
        (an encoder: the prompt; the answer's own decoder: its start and answer tokens); a
        vision tower sees every patch, Idefics2's perceiver every latent and BLIP-2's Q-Former
        every query (None)."""
        masks: dict[str, Tensor | None] = {}
        for stack in set(adapter_stacks(self.model).values()):
            parts = set(stack.split("."))
            if parts & VISION_TOWERS:
                masks[stack] = None
            elif self.answer_in_decoder and parts & ANSWER_DECODERS:
                masks[stack] = inputs["decoder_attention_mask"].bool()
            else:
                masks[stack] = inputs["attention_mask"].bool()
        return masks

    @contextmanager
    def _answer_logits(self, model: Any) -> Iterator[list[Tensor]]:
        """BLIP's question-answering output has no logits: collect its text decoder's while
        the (possibly DDP-wrapped) model runs. Other families return them; yields []."""
        captured: list[Tensor] = []
        if self.family != "blip":
            yield captured
            return
        decoder = extract_model_from_parallel(model).text_decoder
        handle = decoder.register_forward_hook(lambda _m, _i, out: captured.append(out.logits))
        try:
            yield captured
        finally:
            handle.remove()

    @torch.no_grad()
    def answer(
        self,
        images: Sequence[Image.Image],
        questions: Sequence[str],
        decoding: Decoding | None = None,
    ) -> list[str]:
        """Generated answers, one string per question. A decoder-only model continues its
        prompts, so they are padded on the left; an encoder's are padded on the right, where
        absolute positions (BLIP's BERT, Florence-2's BART) stay as in training. BLIP's
        ``generate`` lets the answer decoder attend to every question position, padding
        included, so its questions are answered in groups of equal length, unpadded."""
        decoding = decoding or Decoding()
        if self.family not in UNMASKED_QUESTION_PADDING:
            return self._generate(images, questions, decoding)
        answers = [""] * len(questions)
        for group in self._equal_length_groups(questions):
            texts = self._generate(
                [images[i] for i in group], [questions[i] for i in group], decoding
            )
            for i, text in zip(group, texts, strict=True):
                answers[i] = text
        return answers

    def _equal_length_groups(self, questions: Sequence[str]) -> list[list[int]]:
        """Indices of ``questions`` grouped by the token length of their prompts."""
        groups: dict[int, list[int]] = {}
        for index, question in enumerate(questions):
            length = len(self.tokenizer(self.prompt(question))["input_ids"])
            groups.setdefault(length, []).append(index)
        return list(groups.values())

    def _generate(
        self, images: Sequence[Image.Image], questions: Sequence[str], decoding: Decoding
    ) -> list[str]:
        """Generated answers of one batch of prompts, padded as ``answer`` says."""
        inputs = self._process(
            images, questions, padding_side="right" if self.answer_in_decoder else "left"
        )
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        generated = self.model.generate(
            **inputs, max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams
        )
        if not self.answer_in_decoder:
            generated = generated[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [t.strip() for t in texts]
