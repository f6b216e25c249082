"""Redundancy analysis: how similar each adapter's output h_a is to the pretrained h it is
added to, per layer (linear CKA over the valid tokens of a data sample)."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mixphm.regularization import ActivationCapture, linear_cka

Batch = tuple[Mapping[str, Any], Mapping[str, Tensor]]


@dataclass(frozen=True)
class LayerRedundancy:
    layer: str
    stack: str
    cka: float
    tokens: int


def redundancy_by_layer(
    model: nn.Module, batches: Iterable[Batch], max_tokens: int = 8192
) -> list[LayerRedundancy]:
    """Linear CKA(h, h_a) per adapter, in module order, with the merged (eval) adapters.

    ``batches`` yields (model inputs, {stack path: (B, L) bool mask}); at most
    ``max_tokens`` valid tokens per layer enter the statistic.
    """
    capture = ActivationCapture(model)
    pretrained: dict[str, list[Tensor]] = defaultdict(list)
    adapted: dict[str, list[Tensor]] = defaultdict(list)
    model.eval()
    with torch.no_grad():
        for inputs, masks in batches:
            with capture.recording():
                model(**inputs)
            for path, layer in capture.layers.items():
                mask = masks[layer.stack]
                pretrained[path].append(layer.h[mask])
                adapted[path].append(layer.h_a[mask])
    rows = []
    for path, stack in capture.stack_of.items():
        if path not in pretrained:
            raise ValueError(f"adapter {path} never ran on the sample")
        h = torch.cat(pretrained[path])[:max_tokens]
        h_a = torch.cat(adapted[path])[:max_tokens]
        rows.append(LayerRedundancy(path, stack, linear_cka(h, h_a).item(), h.shape[0]))
    return rows


def write_report(
    runs: Mapping[str, list[LayerRedundancy]],
    lines: Mapping[str, list[LayerRedundancy]],
    directory: Path,
) -> tuple[Path, Path]:
    """``redundancy.csv`` (one row per run and layer) and ``redundancy.png`` (CKA per layer,
    one line per entry of ``lines``) in ``directory``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    table = directory / "redundancy.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "layer_index", "layer", "stack", "linear_cka", "tokens"])
        for run, rows in runs.items():
            for i, row in enumerate(rows):
                writer.writerow([run, i, row.layer, row.stack, f"{row.cka:.4f}", row.tokens])
    figure, axes = plt.subplots(figsize=(7, 4))
    for run, rows in lines.items():
        axes.plot(range(len(rows)), [r.cka for r in rows], marker="o", label=run)
    axes.set_xlabel("adapter layer (module order)")
    axes.set_ylabel("linear CKA(h, h_a)")
    axes.set_ylim(0, 1)
    axes.set_title("Redundancy between adapter and pretrained representations")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    plot = directory / "redundancy.png"
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    return table, plot


def format_rows(runs: Mapping[str, list[LayerRedundancy]]) -> str:
    names = list(runs)
    first = runs[names[0]]
    header = f"{'layer':<40} " + " ".join(f"{n:>14}" for n in names)
    lines = [header, "-" * len(header)]
    for i, row in enumerate(first):
        values = " ".join(f"{runs[n][i].cka:>14.4f}" for n in names)
        lines.append(f"{row.layer:<40} {values}")
    return "\n".join(lines)


def analyze(
    runs: list[Path],
    fresh: list[str],
    samples: int,
    output: Path,
    command: str = "",
    batch_size: int = 128,
) -> dict[str, list[LayerRedundancy]]:
    """CKA per layer on the offline default backbone over ``samples`` easy-VQA test
    questions (with their images): for finished runs (``runs``) and for fresh presets on
    the pretrained backbone. Runs of one variant (method and adapter options) are averaged
    into one line of the plot."""
    from mixphm.assets import load_minilm
    from mixphm.config import MixPHMConfig
    from mixphm.data import load_easy_vqa
    from mixphm.inject import add_mixphm
    from mixphm.pretraining.recipe import cache_root
    from mixphm.training.data import Candidates, candidate_answers, encode_split, image_features
    from mixphm.training.predict import load_run
    from mixphm.training.recipe import run_label
    from mixphm.training.setup import backbone_factory

    full_test = load_easy_vqa("test")
    sample = full_test.subset([e.question_id for e in full_test.examples[:samples]], "test")
    tokenizer, _ = load_minilm()
    features = image_features(sample, cache_root() / "features")
    candidates = Candidates.from_answers(tokenizer, candidate_answers(sample))
    test = encode_split(sample, tokenizer, candidates, features)
    per_run: dict[str, list[LayerRedundancy]] = {}
    for preset in fresh:
        torch.manual_seed(0)
        model = add_mixphm(backbone_factory("pretrained")(), MixPHMConfig.preset(preset))
        per_run[f"fresh {preset}"] = redundancy_by_layer(
            model, vlm_batches(model, test, batch_size)
        )
    for directory in runs:
        model, _, result = load_run(directory)
        label = run_label(result)
        per_run[label] = redundancy_by_layer(model, vlm_batches(model, test, batch_size))
    if not per_run:
        raise ValueError("nothing to analyze: give --run DIR and/or --fresh PRESET")
    grouped: dict[str, list[list[LayerRedundancy]]] = defaultdict(list)
    for label, rows in per_run.items():
        grouped[label.split(" seed=")[0]].append(rows)
    means = {
        group: [
            LayerRedundancy(
                rows[0][i].layer,
                rows[0][i].stack,
                sum(r[i].cka for r in rows) / len(rows),
                rows[0][i].tokens,
            )
            for i in range(len(rows[0]))
        ]
        for group, rows in grouped.items()
    }
    write_report(per_run, means, output)
    table = format_rows(means)
    described = f"Produced by `{command}`.\n\n" if command else ""
    (output / "redundancy.md").write_text(
        f"{described}Linear CKA(h, h_a) per adapter layer over {samples} easy-VQA test questions "
        "(runs of one method averaged over their seeds):\n\n```\n" + table + "\n```\n"
    )
    print(table)
    return means


def vlm_batches(model: Any, split: Any, batch_size: int) -> Iterable[Batch]:
    """(model inputs, {"text.encoder": joint valid-token mask}) for the offline backbone."""
    answer_ids = torch.arange(1, 3).unsqueeze(0)  # any candidate: only the query is analysed
    for _, (ids, mask, visual, _) in split.batches(batch_size):
        inputs = {"input_ids": ids, "attention_mask": mask, "visual": visual}
        inputs |= {"answer_ids": answer_ids, "answer_mask": torch.ones_like(answer_ids)}
        yield inputs, {"text.encoder": model.encoder_mask(mask)}
