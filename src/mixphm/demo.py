"""The smallest real job: every adapter preset on the packaged MiniLM, end to end.

For each preset it attaches the adapters, trains them for a few steps on a reconstruction
objective over real sentences, measures the objective with the merged (eval-mode) adapter
before and after, and round-trips the adapter through save/load. One table row per preset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mixphm.assets import load_minilm
from mixphm.config import PRESETS, MixPHMConfig
from mixphm.inject import add_mixphm, mixphm_adapters, parameter_counts
from mixphm.optim import adamw
from mixphm.serialization import load_adapter, save_adapter

SENTENCES = [
    "what color is the circle?",
    "is there a blue triangle in the image?",
    "what shape is in the picture?",
    "does the image contain a red rectangle?",
]
STEPS = 60


@dataclass(frozen=True)
class DemoRow:
    preset: str
    adapters: int
    trainable: int
    total: int
    loss_before: float
    loss_after: float
    round_trip_max_diff: float
    train_step_ms: float


def run_preset(preset: str, output_dir: Path, seed: int = 0) -> DemoRow:
    """Adapt MiniLM with ``preset`` to denoising: from sentences with every third word
    piece masked, recover the frozen model's states of the clean sentences."""
    torch.manual_seed(seed)
    # Base dropout off, so the objective measured in training and in eval mode is the same.
    tokenizer, model = load_minilm(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    clean = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        target = model(**clean).last_hidden_state
    positions = torch.arange(clean["input_ids"].shape[1])
    masked = (positions % 3 == 1) & (clean["attention_mask"] == 1)
    batch = {**clean, "input_ids": clean["input_ids"].masked_fill(masked, tokenizer.mask_token_id)}
    add_mixphm(model, MixPHMConfig.preset(preset, routing_seed=seed))
    trainable, total = parameter_counts(model)

    def merged_loss() -> tuple[float, torch.Tensor]:
        model.eval()
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        return torch.nn.functional.mse_loss(hidden, target).item(), hidden

    loss_before, _ = merged_loss()
    optimizer = adamw(model, lr=3e-3, weight_decay=0.0)
    model.train()
    start = time.perf_counter()
    for _ in range(STEPS):
        loss = torch.nn.functional.mse_loss(model(**batch).last_hidden_state, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    step_ms = (time.perf_counter() - start) / STEPS * 1000
    loss_after, merged = merged_loss()
    save_adapter(model, output_dir / preset)
    reloaded = load_adapter(load_minilm()[1], output_dir / preset).eval()
    with torch.no_grad():
        diff = (reloaded(**batch).last_hidden_state - merged).abs().max().item()
    adapters = len(list(mixphm_adapters(model)))
    return DemoRow(preset, adapters, trainable, total, loss_before, loss_after, diff, step_ms)


def format_table(rows: list[DemoRow]) -> str:
    header = (
        f"{'preset':<10} {'adapters':>8} {'trainable':>10} {'% of total':>10} "
        f"{'loss before':>11} {'loss after':>10} {'reload Δ':>9} {'ms/step':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        share = 100 * r.trainable / r.total
        lines.append(
            f"{r.preset:<10} {r.adapters:>8} {r.trainable:>10,} {share:>9.3f}% "
            f"{r.loss_before:>11.4f} {r.loss_after:>10.4f} {r.round_trip_max_diff:>9.1e} "
            f"{r.train_step_ms:>8.1f}"
        )
    return "\n".join(lines)


def run(output_dir: Path, presets: tuple[str, ...] = PRESETS) -> list[DemoRow]:
    rows = [run_preset(p, output_dir) for p in tqdm(presets, desc="presets", unit="preset")]
    table = format_table(rows)
    (output_dir / "table.txt").write_text(table + "\n")
    print(table)
    print(f"table written to {output_dir / 'table.txt'}; adapters under {output_dir}/<preset>/")
    return rows
