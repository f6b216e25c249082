"""How the merged mixture compares with its experts: dev accuracy of finished runs when the
up-projection experts are merged by averaging the factors (the reference, what runs report),
by averaging the products, or replaced by each single expert. Dev split only: this is a
diagnosis, not model selection on the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mixphm.inject import mixphm_adapters
from mixphm.training.objectives import CandidateScoring
from mixphm.training.predict import load_run
from mixphm.training.recipe import accuracy, run_label, trainable_state
from mixphm.training.setup import OfflineSetup


@dataclass(frozen=True)
class ExpertDiagnosis:
    run: str
    variant: str
    dev_accuracy: float


def single_expert(model: torch.nn.Module, expert: int) -> None:
    """Make every up-projection expert a copy of ``expert`` (the merge is then that expert)."""
    with torch.no_grad():
        for _, adapter in mixphm_adapters(model):
            for factor in (*adapter.up.factors(), adapter.up.bias):
                factor.copy_(factor[expert].clone().expand_as(factor))


def diagnose(runs: list[Path], test_limit: int = 2000) -> list[ExpertDiagnosis]:
    """Dev accuracy of every variant of every run (runs of the offline default)."""
    setup = OfflineSetup.build(test_limit=test_limit)
    objective = CandidateScoring(setup.candidates)
    rows = []
    for directory in runs:
        model, _, result = load_run(directory)
        adapters = [a for _, a in mixphm_adapters(model)]
        if not adapters or adapters[0].up.num_experts < 2:
            raise ValueError(f"{directory}: not a run with a mixture of experts")
        dev = setup.splits(result["k"], result["seed"])[1]
        label = run_label(result)
        variants = ["merge factors", "merge products"]
        variants += [f"expert {e}" for e in range(adapters[0].up.num_experts)]
        trained = trainable_state(model)
        for variant in variants:
            model.load_state_dict(trained, strict=False)
            if variant.startswith("expert"):
                single_expert(model, int(variant.split()[1]))
            for _, adapter in mixphm_adapters(model):
                adapter.merge_mode = "products" if variant == "merge products" else "factors"
            rows.append(ExpertDiagnosis(label, variant, accuracy(objective, model, dev)))
    return rows


def format_diagnosis(rows: list[ExpertDiagnosis]) -> str:
    """One line per run, one column per variant, and the mean over runs."""
    variants = list(dict.fromkeys(r.variant for r in rows))
    runs = list(dict.fromkeys(r.run for r in rows))
    table = {(r.run, r.variant): r.dev_accuracy for r in rows}
    width = max(len(r) for r in [*runs, "mean"])
    lines = [f"{'run':<{width}} " + " ".join(f"{v:>15}" for v in variants)]
    for run in runs:
        lines.append(f"{run:<{width}} " + " ".join(f"{table[run, v]:>15.1f}" for v in variants))
    means = [sum(table[run, v] for run in runs) / len(runs) for v in variants]
    lines.append(f"{'mean':<{width}} " + " ".join(f"{m:>15.1f}" for m in means))
    return "\n".join(lines)
