"""The offline default backbone: a small VLM in the VL-T5 mould built from packaged weights.

Text side: all-MiniLM-L6-v2 (6-layer BERT, d = 384). Vision side: frozen EfficientNet-Lite0
grid features (16 tokens × 1280), projected to d, layer-normed and given a learned
position per grid cell; they enter the encoder right after [CLS] with token type 1:

    [CLS] v_1 … v_16 question tokens … [MASK] [SEP]

Answers are not predicted by a new head: the final state of the [MASK] token is scored
against the sentence embedding (mean-pooled, the way MiniLM was trained) of every candidate
answer string, encoded by the same text encoder:

    logits (B, C) = s · normalize(h_[MASK]) · normalize(e_answers)ᵀ

with one learned scale s. Adapting to a new dataset adds nothing but the tuning method's
parameters; the candidate set is just the dataset's answer strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mixphm.backbones.vision import FEATURE_DIM, GRID_TOKENS

CONFIG_FILE = "vlm_config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class OfflineVLMConfig:
    visual_dim: int = FEATURE_DIM
    visual_tokens: int = GRID_TOKENS
    initial_logit_scale: float = 20.0
    mask_token_id: int = 103
    """[MASK] in the MiniLM vocabulary."""


def prompt(text: str) -> str:
    """The query for every task: the answer fills the [MASK] at the end."""
    return f"{text} [MASK]"


class OfflineVLM(nn.Module):
    def __init__(self, text: Any, config: OfflineVLMConfig) -> None:
        super().__init__()
        self.config = config
        self.text: Any = text  # a transformers BertModel
        width = text.config.hidden_size
        self.visual_projection = nn.Linear(config.visual_dim, width)
        self.visual_norm = nn.LayerNorm(width)
        self.visual_position = nn.Parameter(torch.randn(config.visual_tokens, width) * 0.02)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.initial_logit_scale)))

    @classmethod
    def from_packages(cls, seed: int = 0) -> OfflineVLM:
        """MiniLM from its package and freshly initialised visual layers (no VL pretraining)."""
        from mixphm.assets import load_minilm

        _, text = load_minilm()
        torch.manual_seed(seed)
        return cls(text, OfflineVLMConfig())

    def encoder_mask(self, attention_mask: Tensor) -> Tensor:
        """Valid-token mask (B, 1 + V + T − 1) of the joint sequence: text padding False,
        visual tokens True. This is the mask of the ``text.encoder`` stack."""
        visual = attention_mask.new_ones(attention_mask.shape[0], self.config.visual_tokens)
        return torch.cat([attention_mask[:, :1], visual, attention_mask[:, 1:]], 1).bool()

    def encode_answers(self, answer_ids: Tensor, answer_mask: Tensor) -> Tensor:
        """Candidate answers (C, A) token ids → (C, d) unit sentence embeddings."""
        hidden = self.text(input_ids=answer_ids, attention_mask=answer_mask).last_hidden_state
        weights = answer_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def encode_query(self, input_ids: Tensor, attention_mask: Tensor, visual: Tensor) -> Tensor:
        """Prompt ids (B, T) with one [MASK], grid features (B, V, D_v) → (B, d) unit vectors."""
        words = self.text.embeddings.word_embeddings(input_ids)  # (B, T, d)
        regions = self.visual_norm(self.visual_projection(visual.to(words.dtype)))
        regions = regions + self.visual_position  # (B, V, d)
        embeds = torch.cat([words[:, :1], regions, words[:, 1:]], 1)  # (B, 1 + V + T − 1, d)
        token_types = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        token_types[:, :1] = 0
        token_types[:, 1 + self.config.visual_tokens :] = 0
        hidden = self.text(
            inputs_embeds=embeds,
            attention_mask=self.encoder_mask(attention_mask).long(),
            token_type_ids=token_types,
        ).last_hidden_state
        is_mask = input_ids == self.config.mask_token_id
        # checked eagerly only: under torch.compile the host read would break the graph
        if not torch.compiler.is_compiling() and not bool(is_mask.any(1).all()):
            raise ValueError("every prompt needs a [MASK] token for the answer")
        position = is_mask.long().argmax(1) + self.config.visual_tokens  # (B,)
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), position]
        return F.normalize(state, dim=-1)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual: Tensor,
        answer_ids: Tensor | None = None,
        answer_mask: Tensor | None = None,
        answer_embeddings: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, C) over the candidate answers. Give the candidates as token ids, or as
        embeddings from ``encode_answers`` (computed once for evaluation). The candidates are
        encoded before the query, so hooks that keep the last call see the query."""
        if answer_embeddings is None:
            if answer_ids is None or answer_mask is None:
                raise ValueError("give answer_ids and answer_mask, or answer_embeddings")
            answer_embeddings = self.encode_answers(answer_ids, answer_mask)
        query = self.encode_query(input_ids, attention_mask, visual)
        return self.log_logit_scale.exp() * query @ answer_embeddings.T

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Config and weights (stored as ``dtype``; bfloat16 halves the file)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"vlm": asdict(self.config), "text": self.text.config.to_dict()}
        tensors = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OfflineVLM:
        from transformers import BertConfig, BertModel

        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a saved OfflineVLM")
        meta: dict[str, Any] = json.loads((directory / CONFIG_FILE).read_text())
        text = BertModel(BertConfig.from_dict(meta["text"]))
        model = cls(text, OfflineVLMConfig(**meta["vlm"]))
        state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_FILE)).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} does not fit OfflineVLM: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return model.eval()
