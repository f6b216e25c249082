"""VL-T5 (Cho et al., 2021), the paper's backbone: T5 whose encoder also reads detector regions.

Each region's 2048-d feature and its box are projected to d_model and layer-normed
separately, then added to an image-order and an object-order embedding; the regions
follow the text tokens in the encoder:

    encoder input (B, T + N, d) = [embed(vqa: question …), visual_embedding(features, boxes)]

T5's relative position bias applies between text tokens only (zero for every pair that
involves a region), as in the released code. Answers are decoded as text.

The module keeps the released checkpoints' parameter names (``shared``, ``encoder.*``,
``encoder.visual_embedding.*``, ``decoder.*``, ``lm_head``), so ``load_vlt5_checkpoint``
maps keys by stripping a DDP ``module.`` prefix and dropping tied-embedding aliases, and
reports every key that still does not fit.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5LayerNorm, T5Stack

from mixphm.backbones.generation import (
    IGNORED,
    Decoding,
    pad_rows,
    score_weighted_answer_loss,
)
from mixphm.data.examples import RegionFeatures
from mixphm.regularization import StackMasks

VQA_PROMPT = "vqa: {question}"
VISUAL_SENTINELS = 100
"""VL-T5 appends ``<vis_extra_id_0..99>`` to T5's vocabulary (32,100 → 32,200); region i
takes the embedding of row ``vocab_size − 1 − i`` as its object-order embedding."""

TIED_ALIASES = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "encoder.visual_embedding.obj_order_embedding.weight",
)
IGNORED_UNEXPECTED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
"""Present in old T5 checkpoints, unused by T5 (transformers ignores it too)."""


@dataclass(frozen=True)
class VisualConfig:
    feature_dim: int = 2048
    box_dim: int = 4
    images: int = 2
    """Rows of the image-order embedding (VL-T5 pretrains with two for NLVR2)."""


def box_inputs(boxes: Tensor) -> Tensor:
    """Boxes (B, N, 4) as normalised x1, y1, x2, y2 → the 5 inputs VL-T5 was trained with.

    The released code documents its boxes as (x1, x2, y1, y2) but is fed (x1, y1, x2, y2),
    so its fifth input is (y2 − x2)·(y1 − x1) rather than the area. The checkpoints learned
    that quantity, so it is reproduced here exactly.
    """
    fifth = (boxes[..., 3] - boxes[..., 2]) * (boxes[..., 1] - boxes[..., 0])
    return torch.cat([boxes, fifth.unsqueeze(-1)], -1)


class VisualEmbedding(nn.Module):
    """Region features (B, N, D_f) and boxes (B, N, 4) → region embeddings (B, N, d)."""

    def __init__(self, config: T5Config, visual: VisualConfig) -> None:
        super().__init__()
        width, eps = config.d_model, config.layer_norm_epsilon
        self.feat_embedding = nn.Sequential(
            nn.Linear(visual.feature_dim, width), T5LayerNorm(width, eps=eps)
        )
        self.absolute_vis_pos_embedding = nn.Sequential(
            nn.Linear(visual.box_dim + 1, width), T5LayerNorm(width, eps=eps)
        )
        self.img_order_embedding = nn.Embedding(visual.images, width)

    def forward(self, features: Tensor, boxes: Tensor, object_order: nn.Embedding) -> Tensor:
        """``object_order`` is the shared token embedding (its last rows are the sentinels)."""
        regions = features.shape[1]
        objects = torch.arange(regions, device=features.device)
        image = torch.zeros(regions, dtype=torch.long, device=features.device)
        dtype = self.img_order_embedding.weight.dtype
        embedded: Tensor = (
            self.feat_embedding(features.to(dtype))
            + self.absolute_vis_pos_embedding(box_inputs(boxes.to(dtype)))
            + self.img_order_embedding(image)
            + object_order(object_order.num_embeddings - 1 - objects)
        )
        return embedded


class JointEncoder(T5Stack):
    """T5's encoder stack over [text tokens, regions] (B, T + N, d)."""

    def __init__(self, config: T5Config, visual: VisualConfig) -> None:
        super().__init__(config)
        self.visual_embedding = VisualEmbedding(config, visual)

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual_features: Tensor,
        boxes: Tensor,
    ) -> BaseModelOutput:
        """``attention_mask`` (B, T) covers the text; regions are always attended."""
        text = self.embed_tokens(input_ids)
        regions = self.visual_embedding(visual_features, boxes, self.embed_tokens)
        hidden = self.dropout(torch.cat([text, regions.to(text.dtype)], 1))
        mask = joint_mask(attention_mask, regions.shape[1])

        length, total = input_ids.shape[1], hidden.shape[1]
        first: Any = self.block[0]
        attention = first.layer[0].SelfAttention
        text_bias = attention.compute_bias(length, length, device=hidden.device)  # (1, H, T, T)
        bias = text_bias.new_zeros(1, text_bias.shape[1], total, total)
        bias[:, :, :length, :length] = text_bias
        blocked = (1.0 - mask[:, None, None, :].to(bias.dtype)) * torch.finfo(bias.dtype).min
        bias = bias + blocked  # (B, H, T + N, T + N): the mask rides in the bias, as in T5

        for block in self.block:
            hidden = block(hidden, attention_mask=None, position_bias=bias)[0]
        return BaseModelOutput(last_hidden_state=self.dropout(self.final_layer_norm(hidden)))


def joint_mask(attention_mask: Tensor, regions: int) -> Tensor:
    """Text mask (B, T) → mask of the joint encoder sequence (B, T + N)."""
    return torch.cat([attention_mask, attention_mask.new_ones(len(attention_mask), regions)], 1)


class VLT5(T5ForConditionalGeneration):
    """T5ForConditionalGeneration with a ``JointEncoder``.

    ``forward`` and ``generate`` take ``visual_features`` (B, N, D_f) and ``boxes`` (B, N, 4)
    next to the usual ``input_ids`` / ``attention_mask`` (B, T); logits are (B, L, vocab).
    """

    def __init__(self, config: T5Config, visual: VisualConfig | None = None) -> None:
        super().__init__(config)
        encoder_config = copy.deepcopy(self.encoder.config)
        self.encoder = JointEncoder(encoder_config, visual or VisualConfig())
        self.post_init()

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        visual_features: Tensor | None = None,
        boxes: Tensor | None = None,
        encoder_outputs: Any = None,
        **kwargs: Any,
    ) -> Any:
        if encoder_outputs is None:
            if input_ids is None or attention_mask is None:
                raise ValueError("VLT5 needs input_ids and attention_mask (or encoder_outputs)")
            if visual_features is None or boxes is None:
                raise ValueError("VLT5 needs visual_features (B, N, D) and boxes (B, N, 4)")
            encoder_outputs = self.encoder(input_ids, attention_mask, visual_features, boxes)
            attention_mask = joint_mask(attention_mask, visual_features.shape[1])
        return super().forward(
            attention_mask=attention_mask, encoder_outputs=encoder_outputs, **kwargs
        )

    @torch.no_grad()
    def generate(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual_features: Tensor,
        boxes: Tensor,
        **kwargs: Any,
    ) -> Any:
        """Greedy or beam search (``num_beams``) over the joint encoding; returns token ids."""
        encoded = self.encoder(input_ids, attention_mask, visual_features, boxes)
        mask = joint_mask(attention_mask, visual_features.shape[1])
        return super().generate(encoder_outputs=encoded, attention_mask=mask, **kwargs)


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model; the message lists the keys that differ."""


def _listing(title: str, keys: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {k}" for k in keys[:limit])
    more = f"\n    … and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"  {title} ({len(keys)}):\n{shown}{more}"


def vlt5_state_dict(raw: dict[str, Tensor]) -> dict[str, Tensor]:
    """Released VL-T5 / FewVLM keys → this module's keys: strip ``module.``, drop aliases."""
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    return {k: v for k, v in state.items() if k not in TIED_ALIASES + IGNORED_UNEXPECTED}


def read_vlt5_state(path: str | Path) -> dict[str, Tensor]:
    """A VL-T5 state dict (``torch.save`` file or safetensors) with this module's keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VL-T5 checkpoint not found")
    raw: Any
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        raw = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointMismatch(f"{path}: not a state dict of tensors")
    return vlt5_state_dict(raw)


def load_vlt5_checkpoint(model: VLT5, path: str | Path) -> None:
    """Load a VL-T5 checkpoint into ``model`` (adapters, if added, keep their weights).

    Raises ``CheckpointMismatch`` naming every missing, unexpected or mis-shaped key.
    """
    load_vlt5_state(model, read_vlt5_state(path), str(path))


def load_vlt5_state(model: VLT5, state: dict[str, Tensor], source: str) -> None:
    """``load_vlt5_checkpoint`` for a state dict already read (``source`` names it)."""
    expected = {k: v.shape for k, v in model.state_dict().items() if k not in TIED_ALIASES}
    adapter_keys = {k for k in expected if ".mixphm." in k}
    missing = sorted(set(expected) - set(state) - adapter_keys)
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(v.shape)}, model {tuple(expected[k])}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k]
    )
    if missing or unexpected or misshaped:
        parts = [(t, keys) for t, keys in [("missing", missing), ("unexpected", unexpected)]]
        parts.append(("shape mismatch", misshaped))
        report = "\n".join(_listing(t, keys) for t, keys in parts if keys)
        raise CheckpointMismatch(f"{source} does not fit this VL-T5 model:\n{report}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()


def vlt5_config(state: dict[str, Tensor]) -> tuple[T5Config, VisualConfig]:
    """The configuration a VL-T5 state dict was trained with, read off its tensor shapes
    (T5-base for the released checkpoints: d 768, 12 + 12 layers, 12 heads, 32,200 tokens)."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointMismatch(f"not a VL-T5 checkpoint: it has no {key}")
        return tuple(state[key].shape)

    vocab, width = shape("shared.weight")
    heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")[1]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    feed_forward = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi")
    settings: dict[str, Any] = dict(
        vocab_size=vocab,
        d_model=width,
        d_kv=shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads,
        d_ff=shape(feed_forward + ".weight")[0],
        num_layers=len({k.split(".")[2] for k in state if k.startswith("encoder.block.")}),
        num_decoder_layers=len({k.split(".")[2] for k in state if k.startswith("decoder.block.")}),
        num_heads=heads,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings="lm_head.weight" not in state
        or bool(torch.equal(state["lm_head.weight"], state["shared.weight"])),
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    visual = VisualConfig(
        feature_dim=shape("encoder.visual_embedding.feat_embedding.0.weight")[1],
        box_dim=shape("encoder.visual_embedding.absolute_vis_pos_embedding.0.weight")[1] - 1,
        images=shape("encoder.visual_embedding.img_order_embedding.weight")[0],
    )
    return T5Config(**settings), visual


def vlt5_tokenizer(name_or_path: str = "t5-base") -> Any:
    """T5's tokenizer plus VL-T5's ``<vis_extra_id_*>`` sentinels (a hub id or a local dir)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    sentinels = [f"<vis_extra_id_{i}>" for i in range(VISUAL_SENTINELS)]
    if sentinels[0] not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": sentinels})
    return tokenizer


class VLT5VQA:
    """VL-T5 asked questions about region features, trained as the released code trains it:
    the target answer's token cross-entropy, averaged over its tokens, times its soft score.
    """

    def __init__(
        self,
        model: VLT5,
        tokenizer: Any,
        max_question_tokens: int = 20,
        max_answer_tokens: int = 10,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_question_tokens = max_question_tokens
        self.max_answer_tokens = max_answer_tokens

    @classmethod
    def from_checkpoint(cls, path: str | Path, tokenizer: str = "t5-base") -> VLT5VQA:
        """The released VL-T5 / FewVLM weights (e.g. ``VLT5/Epoch30.pth``), the model sized
        from them, and the T5 tokenizer (hub id or local folder) with VL-T5's sentinels."""
        text = vlt5_tokenizer(tokenizer)
        state = read_vlt5_state(path)
        config, visual = vlt5_config(state)
        if len(text) > config.vocab_size:
            raise CheckpointMismatch(
                f"{path}: {config.vocab_size} token embeddings, but the tokenizer "
                f"{tokenizer!r} has {len(text)} tokens"
            )
        config.pad_token_id = config.decoder_start_token_id = text.pad_token_id
        config.eos_token_id = text.eos_token_id
        model = VLT5(config, visual)
        load_vlt5_state(model, state, str(path))
        return cls(model.eval(), text)

    def _encode(self, texts: Sequence[str], limit: int) -> tuple[Tensor, Tensor]:
        """Token ids and mask (B, ≤ limit), each row ending in </s> as T5 inputs do."""
        eos = self.tokenizer.eos_token_id
        rows = [
            [*self.tokenizer(t, add_special_tokens=False)["input_ids"][: limit - 1], eos]
            for t in texts
        ]
        return pad_rows(rows, self.tokenizer.pad_token_id)

    def inputs(
        self, visuals: Sequence[RegionFeatures], questions: Sequence[str]
    ) -> dict[str, Tensor]:
        """input_ids / attention_mask (B, T), visual_features (B, N, D_f), boxes (B, N, 4)."""
        prompts = [VQA_PROMPT.format(question=q) for q in questions]
        ids, mask = self._encode(prompts, self.max_question_tokens)
        device = self.model.device
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "visual_features": torch.stack([torch.from_numpy(v.features) for v in visuals]).to(
                device
            ),
            "boxes": torch.stack([torch.from_numpy(v.boxes) for v in visuals]).to(device),
        }

    def training_loss(
        self,
        model: Any,
        visuals: Sequence[RegionFeatures],
        questions: Sequence[str],
        answers: Sequence[str],
        scores: Tensor,
    ) -> tuple[Tensor, StackMasks]:
        """(Σ_b score_b · mean-token CE_b / B, valid-token masks of the encoder and decoder)."""
        inputs = self.inputs(visuals, questions)
        labels, label_mask = self._encode(answers, self.max_answer_tokens)
        labels, label_mask = labels.to(self.model.device), label_mask.to(self.model.device)
        labels = labels.masked_fill(label_mask == 0, IGNORED)
        logits = model(**inputs, labels=labels).logits  # (B, L, vocab)
        loss = score_weighted_answer_loss(logits, labels, scores)
        regions = inputs["visual_features"].shape[1]
        masks = {
            "encoder": joint_mask(inputs["attention_mask"], regions).bool(),
            "decoder": label_mask.bool(),
        }
        return loss, masks

    @torch.no_grad()
    def answer(
        self,
        visuals: Sequence[RegionFeatures],
        questions: Sequence[str],
        decoding: Decoding | None = None,
    ) -> list[str]:
        decoding = decoding or Decoding()
        generated = self.model.generate(
            **self.inputs(visuals, questions),
            max_new_tokens=decoding.max_new_tokens,
            num_beams=decoding.num_beams,
        )
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [t.strip() for t in texts]
