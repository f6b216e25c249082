"""Each method's learning rate, chosen on dev only.

Every method trains at each rate of its grid (``lr_grid`` in ``configs/methods.toml``) at
one k with a few seeds; a method's rate is the one with the highest mean best-dev score
over those seeds. On a tie the method's own rate stays; a tie without it goes to the rate
nearest it (on a log scale), then to the lower one. A method is chosen only once every
rate has every seed. The choice reads ``dev_accuracy`` and nothing else of a run: no test
score enters it or the files it writes.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mixphm.experiments.tables import markdown_table
from mixphm.training.methods import method_settings
from mixphm.training.recipe import RunResult, RunSpec

TIE = 1e-9
"""Mean dev scores closer than this (percentage points) are equal."""


@dataclass(frozen=True)
class DevScores:
    """One method's best-dev scores at each candidate rate: rate → seed → dev accuracy."""

    method: str
    own_rate: float
    by_rate: Mapping[float, Mapping[int, float]]


def selection_specs(
    methods: Sequence[str], k: int, seeds: Sequence[int], recipe: str
) -> list[RunSpec]:
    """One run per method, candidate rate and seed, seed-major (an unfinished selection has
    every method's rates on its first seeds)."""
    return [
        RunSpec(method, k, seed, recipe=recipe, lr=rate)
        for seed in seeds
        for method in methods
        for rate in method_settings(method).lr_grid
    ]


def dev_scores(results: Iterable[RunResult], methods: Sequence[str]) -> list[DevScores]:
    """The dev scores of ``methods``' runs at their grid's rates (other runs are ignored)."""
    found: dict[str, dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in results:
        candidate = r.method in methods and not r.adapter_options and r.lr is not None
        if candidate and r.lr in method_settings(r.method).lr_grid:
            found[r.method][r.lr][r.seed] = r.dev_accuracy
    return [
        DevScores(method, method_settings(method).lr, dict(found[method])) for method in methods
    ]


def choose_rate(mean_dev: Mapping[float, float], own_rate: float) -> float:
    """The rate with the highest mean dev score; ties keep ``own_rate``, else go to the
    rate nearest it on a log scale, then to the lower rate."""
    best = max(mean_dev.values())
    tied = [rate for rate, score in mean_dev.items() if score >= best - TIE]
    if own_rate in tied:
        return own_rate
    return min(tied, key=lambda rate: (abs(math.log(rate / own_rate)), rate))


def chosen_rate(scores: DevScores, seeds: Sequence[int]) -> float | None:
    """The chosen rate, or None while a candidate rate lacks one of ``seeds``."""
    grid = method_settings(scores.method).lr_grid
    if any(seed not in scores.by_rate.get(rate, {}) for rate in grid for seed in seeds):
        return None
    mean_dev = {rate: statistics.fmean(scores.by_rate[rate][s] for s in seeds) for rate in grid}
    return choose_rate(mean_dev, scores.own_rate)


def write_selection(
    all_scores: Sequence[DevScores], seeds: Sequence[int], k: int, out: Path, command: str
) -> tuple[Path, Path]:
    """``lr-selection.csv`` (one row per method, rate and seed, with the choice) and
    ``lr-selection.md`` (one row per method and rate: the seeds' dev scores, their mean, and
    the choice). Dev scores only."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "lr-selection.csv", out / "lr-selection.md"
    rows = []
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "lr", "own_lr", "chosen_lr", "k", "seed", "dev_accuracy"])
        for scores in all_scores:
            chosen = chosen_rate(scores, seeds)
            for rate in method_settings(scores.method).lr_grid:
                dev = scores.by_rate.get(rate, {})
                for seed in seeds:
                    writer.writerow(
                        [scores.method, rate, scores.own_rate, chosen, k, seed, dev.get(seed, "")]
                    )
                cells = [f"{dev[s]:.1f}" if s in dev else "–" for s in seeds]
                complete = all(s in dev for s in seeds)
                mean = f"{statistics.fmean(dev[s] for s in seeds):.2f}" if complete else "–"
                marks = [
                    "own" if rate == scores.own_rate else "",
                    "**chosen**" if rate == chosen else "",
                ]
                rows.append(
                    [scores.method, f"{rate:g}", *cells, mean, " ".join(m for m in marks if m)]
                )
    header = ["method", "lr", *(f"seed {s}" for s in seeds), "mean", ""]
    pending = [s.method for s in all_scores if chosen_rate(s, seeds) is None]
    waiting = f"\n\nNot chosen yet (runs missing): {', '.join(pending)}." if pending else ""
    md_path.write_text(
        f"Produced by `{command}`. Best-dev accuracy (%) at k = {k} on each seed's D_dev; a "
        "method's rate is the one with the highest mean over the seeds (ties keep its own "
        "rate). No test score is read.\n\n"
        f"{markdown_table(header, rows, 2)}{waiting}\n"
    )
    return csv_path, md_path
