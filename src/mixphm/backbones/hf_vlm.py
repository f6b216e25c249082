"""Today's Hugging Face VLMs as VQA models: an image-text-to-text model plus its processor.

``HFVisionQA`` builds the prompt each family expects (its image tokens included), trains on
the answer as the target with the soft-score-weighted answer loss (VL-T5's: each row's
answer-token cross-entropy times its score; prompt tokens carry the label −100), and
generates answers as strings. Supported families, by ``model_type``:

- ``blip`` (BlipForQuestionAnswering): the question goes to the text encoder, the answer is
  decoded from ``[bos]`` by the text decoder.
- ``gemma3``, ``idefics2``, ``idefics3`` / ``smolvlm``, ``internvl``, ``llava``,
  ``llava_next``, ``llava_onevision``, ``mllama``, ``qwen2_vl`` and ``qwen2_5_vl``:
  decoder-only (Mllama's text attends to the image by cross-attention); the prompt is the
  processor's chat template with one image and the question, then the generation prompt.
- ``paligemma``: decoder-only with a prefix-LM mask: ``answer en {question}`` as the prefix
  (token type 0), the answer as the suffix (token type 1).

The answer tokens are appended to the processed prompt ids (not re-tokenised with it), so a
training example is exactly the prompt ``generate`` sees followed by the tokens it should
produce. MixPHM goes in with ``add_mixphm(vqa.model, config)`` (``vision_tower=True`` also
adapts the vision encoder).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from PIL import Image
from torch import Tensor, nn

from mixphm.backbones.generation import IGNORED, Decoding, pad_rows, score_weighted_answer_loss
from mixphm.regularization import StackMasks, adapter_stacks

FAMILIES = (
    "blip",
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
VISION_TOWERS = {"vision_model", "vision_tower", "visual", "perceiver_resampler"}
"""Module names under which the supported families keep their vision encoder (Idefics2 also
its perceiver, which resamples each image to latents that are all valid tokens)."""
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
        if self.family == "blip":
            return question
        if self.family == "paligemma":
            return f"{self.processor.image_token}answer en {question}"
        message = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        text: str = self.processor.apply_chat_template(message, add_generation_prompt=True)
        return text

    def _process(self, images: Sequence[Image.Image], questions: Sequence[str]) -> Any:
        prompts = [self.prompt(q) for q in questions]
        pictures: list[Any] = list(images)
        if self.family in IMAGE_LISTS:
            pictures = [[image] for image in images]
        return self.processor(images=pictures, text=prompts, padding=True, return_tensors="pt")

    def training_inputs(
        self, images: Sequence[Image.Image], questions: Sequence[str], answers: Sequence[str]
    ) -> dict[str, Tensor]:
        """Model inputs with ``labels`` (B, T) that score only the answer tokens."""
        self.tokenizer.padding_side = "right"
        inputs = dict(self._process(images, questions))
        if self.family == "blip":
            return {**inputs, **self._blip_targets(answers)}
        eos = self.tokenizer.eos_token or ""
        tails = [self.tokenizer(a + eos, add_special_tokens=False)["input_ids"] for a in answers]
        return self._append_answers(inputs, tails)

    def _blip_targets(self, answers: Sequence[str]) -> dict[str, Tensor]:
        """[bos] answer [sep]: BLIP's decoder starts from bos and stops at sep in generate."""
        text = self.model.config.text_config
        bos, sep = text.bos_token_id, text.sep_token_id
        tails = [
            [bos, *self.tokenizer(a, add_special_tokens=False)["input_ids"], sep] for a in answers
        ]
        ids, mask = pad_rows(tails, text.pad_token_id)
        return {
            "decoder_input_ids": ids,
            "decoder_attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, IGNORED),
        }

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
        loss, is kept."""
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
        (BLIP's decoder: its answer tokens); a vision tower sees every patch and Idefics2's
        perceiver every latent (None)."""
        masks: dict[str, Tensor | None] = {}
        for stack in set(adapter_stacks(self.model).values()):
            parts = set(stack.split("."))
            if parts & VISION_TOWERS:
                masks[stack] = None
            elif "text_decoder" in parts:
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
        """Generated answers, one string per question."""
        decoding = decoding or Decoding()
        self.tokenizer.padding_side = "left"
        inputs = self._process(images, questions)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        generated = self.model.generate(
            **inputs, max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams
        )
        if self.family != "blip":
            generated = generated[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [t.strip() for t in texts]
