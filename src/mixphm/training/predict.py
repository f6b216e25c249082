"""``mixphm predict``: answer a question about an image file with a finished run's weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file

from mixphm.assets import load_minilm
from mixphm.backbones.offline_vlm import prompt
from mixphm.backbones.text import encode_candidates, encode_prompts
from mixphm.backbones.vision import GridFeatureExtractor
from mixphm.training.methods import apply_method
from mixphm.training.recipe import BEST_FILE
from mixphm.training.recipes import LEGACY_RECIPE, get_recipe
from mixphm.training.setup import backbone_factory


def check_finished(run_dir: Path) -> None:
    """Raise FileNotFoundError unless ``run_dir`` holds a finished run's files."""
    for name in ("result.json", "answers.json", BEST_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} not found: {run_dir} is not a finished run")


def load_run(run_dir: Path) -> tuple[Any, list[str], dict[str, Any]]:
    """(model with the run's best-dev weights, in eval mode; its candidate answers; its
    result record) of a finished run."""
    check_finished(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    answers = json.loads((run_dir / "answers.json").read_text())
    options = result.get("adapter_options", {})
    activation = get_recipe(result.get("recipe", LEGACY_RECIPE)).adapter_activation
    backbone = backbone_factory(result["backbone"])()
    model = apply_method(backbone, result["method"], result["seed"], options, activation)
    model.load_state_dict(load_file(str(run_dir / BEST_FILE)), strict=False)
    return model.eval(), answers, result


def answer(run_dir: Path, image_path: Path, question: str, top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` answers with their probabilities, best first."""
    model, answers, _ = load_run(run_dir)
    try:
        image = Image.open(image_path).convert("RGB")
    except OSError as error:
        raise ValueError(f"{image_path}: unreadable image ({error})") from None
    tokenizer, _ = load_minilm()
    ids, mask = encode_prompts(tokenizer, [prompt(question)])
    visual = GridFeatureExtractor()([image])
    with torch.no_grad():
        logits = model(ids, mask, visual, *encode_candidates(tokenizer, answers))
    probabilities = logits.softmax(-1)[0]
    best = probabilities.topk(min(top, len(answers)))
    return [
        (answers[i], p) for p, i in zip(best.values.tolist(), best.indices.tolist(), strict=True)
    ]
