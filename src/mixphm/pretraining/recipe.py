"""``mixphm pretrain``: vision-language pretraining of the offline default backbone.

Starts from MiniLM (packaged) and fresh visual layers, and trains everything but the word
embedding matrix on the generated corpus (``corpus.py``): fill a masked concept of a
caption, and tell matching from corrupted captions, both by scoring the corpus vocabulary
through the text side. Deterministic for a seed on a given machine.

The checkpoint (bfloat16, 45 MB) is looked up in ``checkpoints/`` of the source checkout
(the repository ships the one its results were made with), then under ``$MIXPHM_CACHE``
(default ``~/.cache/mixphm``); if neither has it, it is built there and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mixphm.assets import load_minilm
from mixphm.backbones.offline_vlm import OfflineVLM
from mixphm.backbones.text import encode_candidates, encode_prompts
from mixphm.backbones.vision import GridFeatureExtractor
from mixphm.pretraining.corpus import VOCABULARY, generate
from mixphm.schedule import linear_warmup_decay

RECIPE_VERSION = 1
"""Bump when the corpus or the recipe changes, so cached checkpoints are rebuilt."""


@dataclass(frozen=True)
class PretrainConfig:
    scenes: int = 5000
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-4
    visual_lr: float = 1e-3
    warmup: float = 0.05
    seed: int = 0

    def key(self) -> str:
        described = json.dumps({**asdict(self), "version": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(described.encode()).hexdigest()[:12]


def cache_root() -> Path:
    return Path(os.environ.get("MIXPHM_CACHE", Path.home() / ".cache" / "mixphm"))


SHIPPED = Path(__file__).resolve().parents[3] / "checkpoints"


def checkpoint_dir(config: PretrainConfig) -> Path:
    """Where the checkpoint of ``config`` is: shipped with the checkout, else in the cache."""
    name = f"offline-vlm-{config.key()}"
    shipped = SHIPPED / name
    return (
        shipped if (shipped / "pretrain_log.json").is_file() else cache_root() / "pretrained" / name
    )


def pretrain(config: PretrainConfig, output: Path | None = None) -> tuple[OfflineVLM, list[float]]:
    """Run the recipe; returns the model and the loss of every step."""
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, _ = load_minilm()
    model = OfflineVLM.from_packages(seed=config.seed).to(device)
    model.text.embeddings.word_embeddings.requires_grad_(False)  # saves most optimizer work
    images, examples = generate(config.scenes, config.seed)
    visual = GridFeatureExtractor()(images).to(device)  # (scenes, 16, 1280)
    candidates = [t.to(device) for t in encode_candidates(tokenizer, list(VOCABULARY))]
    visual_params = [p for n, p in model.named_parameters() if not n.startswith("text.")]
    text_params = [
        p for n, p in model.named_parameters() if n.startswith("text.") and p.requires_grad
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": text_params, "lr": config.lr},
            {"params": visual_params, "lr": config.visual_lr},
        ],
        weight_decay=0.01,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_warmup_decay(step, config.steps, config.warmup)
    )
    order = torch.Generator().manual_seed(config.seed)
    permutation = torch.randperm(len(examples), generator=order)
    losses = []
    model.train()
    progress = tqdm(range(config.steps), desc="pretraining", unit="step", mininterval=2.0)
    for step in progress:
        start = (step * config.batch_size) % len(examples)
        if start + config.batch_size > len(examples):
            permutation = torch.randperm(len(examples), generator=order)
            start = 0
        batch = [examples[int(i)] for i in permutation[start : start + config.batch_size]]
        ids, mask = (t.to(device) for t in encode_prompts(tokenizer, [e.text for e in batch]))
        scenes = torch.tensor([e.scene for e in batch], device=device)
        target = torch.tensor([VOCABULARY.index(e.answer) for e in batch], device=device)
        logits = model(ids, mask, visual[scenes], *candidates)
        loss = F.cross_entropy(logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    if output is not None:
        model.cpu().save_pretrained(output, dtype=torch.bfloat16)
        log = {"config": asdict(config), "losses": losses}
        (output / "pretrain_log.json").write_text(json.dumps(log) + "\n")
    return model, losses


def pretrained_backbone(config: PretrainConfig | None = None) -> OfflineVLM:
    """The cached pretrained backbone, built on first use (a few minutes on a CPU)."""
    config = config or PretrainConfig()
    directory = checkpoint_dir(config)
    if not (directory / "pretrain_log.json").is_file():
        print(f"pretraining the offline backbone once; cached in {directory}")
        started = time.perf_counter()
        temporary = directory.with_name(directory.name + ".partial")
        pretrain(config, temporary)
        if directory.exists():
            raise FileExistsError(f"{directory} appeared while pretraining; remove one of them")
        temporary.replace(directory)
        print(f"pretraining took {time.perf_counter() - started:.0f} s")
    return OfflineVLM.from_pretrained(directory)
