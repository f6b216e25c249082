"""Paired comparisons of finished runs: each variant against a reference on the seeds both
have, per k. The seeds fix the same D_train, D_dev and data order for every method, so the
per-seed difference removes the split's luck that dominates the spread between seeds; its
mean comes with a 95% Student-t interval over the seeds."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mixphm.experiments.curves import FIT_LOSS
from mixphm.experiments.records import finished_runs
from mixphm.experiments.tables import markdown_table
from mixphm.training.recipe import HISTORY_FILE, record_variant

T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""The 97.5% quantile of Student's t with 1-10 degrees of freedom."""


def t_quantile_975(degrees: int) -> float:
    """The 97.5% quantile of Student's t: tabulated up to 10 degrees of freedom, beyond
    that the Cornish-Fisher expansion around the normal quantile (within 0.002 there)."""
    if degrees < 1:
        raise ValueError(f"a t interval needs at least one degree of freedom, got {degrees}")
    if degrees <= len(T_975):
        return T_975[degrees - 1]
    z = statistics.NormalDist().inv_cdf(0.975)
    return z + (z**3 + z) / (4 * degrees) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * degrees**2)


@dataclass(frozen=True)
class Paired:
    """A variant minus the reference, seed by seed, on the seeds both have."""

    differences: Mapping[int, float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences.values())

    def interval(self) -> tuple[float, float] | None:
        """The 95% t interval of the mean difference (None with fewer than two seeds)."""
        n = len(self.differences)
        if n < 2:
            return None
        half = t_quantile_975(n - 1) * statistics.stdev(self.differences.values()) / math.sqrt(n)
        return self.mean - half, self.mean + half


def paired(variant: Mapping[int, float], reference: Mapping[int, float]) -> Paired:
    """``variant`` − ``reference`` (seed → score) on their common seeds."""
    return Paired({s: variant[s] - reference[s] for s in sorted(set(variant) & set(reference))})


@dataclass(frozen=True)
class Scores:
    """One finished run's scores, and its training loss per epoch when it kept it."""

    variant: str
    k: int
    seed: int
    test: float
    dev: float
    train_loss: tuple[float, ...] | None

    def fitted_epoch(self, fit_loss: float) -> str:
        """The first epoch whose training loss fell below ``fit_loss``, "never", or "–"
        for a run that kept no training loss."""
        if self.train_loss is None:
            return "–"
        fitted = (e for e, loss in enumerate(self.train_loss, 1) if loss < fit_loss)
        return str(next(fitted, "never"))


def load_scores(
    paths: Sequence[Path], ks: Sequence[int] | None = None, seeds: Sequence[int] | None = None
) -> list[Scores]:
    """The scores of every finished run in or under ``paths`` (with these ``ks`` and
    ``seeds``), with the training loss of those that kept a ``history.json``."""
    found = []
    for directory, result in finished_runs(paths, ks, seeds):
        if result["method"] == "zero-shot":
            continue
        history = directory / HISTORY_FILE
        loss = json.loads(history.read_text())["train_loss"] if history.is_file() else None
        found.append(
            Scores(
                record_variant(result),
                result["k"],
                result["seed"],
                result["test_accuracy"],
                result["dev_accuracy"],
                None if loss is None else tuple(loss),
            )
        )
    return found


def mean_std(values: Sequence[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ± {spread:.1f}"


def difference_cell(pair: Paired) -> str:
    """``+1.2 [−0.4, +2.8]``: the mean difference and its 95% interval."""
    if not pair.differences:
        return "–"
    interval = pair.interval()
    bounds = "" if interval is None else f" [{interval[0]:+.1f}, {interval[1]:+.1f}]"
    return f"{pair.mean:+.1f}{bounds}"


def format_comparison(runs: Sequence[Scores], reference: str, fit_loss: float = FIT_LOSS) -> str:
    """Markdown, per k: every variant's test and dev mean ± std, its paired test and dev
    differences against ``reference`` with 95% intervals, the per-seed test differences,
    and the first epoch its training loss fell below ``fit_loss`` (per seed)."""
    cells: dict[tuple[int, str], dict[int, Scores]] = defaultdict(dict)
    for r in runs:
        cells[r.k, r.variant][r.seed] = r
    header = [
        "variant",
        "k",
        "seeds",
        "test",
        "dev",
        f"test − {reference} [95% CI]",
        f"dev − {reference} [95% CI]",
        "test − reference, per seed",
        f"fitted (loss < {fit_loss:g}) at epoch, per seed",
    ]
    rows = []
    for k, variant in sorted(cells, key=lambda key: (key[0], key[1] != reference, key[1])):
        cell = cells[k, variant]
        base = cells.get((k, reference), {})
        test = paired({s: r.test for s, r in cell.items()}, {s: r.test for s, r in base.items()})
        dev = paired({s: r.dev for s, r in cell.items()}, {s: r.dev for s, r in base.items()})
        same = variant == reference
        per_seed = ", ".join(f"{s}: {d:+.1f}" for s, d in test.differences.items())
        fitted = ", ".join(f"{s}: {r.fitted_epoch(fit_loss)}" for s, r in sorted(cell.items()))
        rows.append(
            [
                variant,
                str(k),
                str(len(cell)),
                mean_std([r.test for r in cell.values()]),
                mean_std([r.dev for r in cell.values()]),
                "reference" if same else difference_cell(test),
                "reference" if same else difference_cell(dev),
                "" if same else per_seed,
                fitted,
            ]
        )
    return markdown_table(header, rows, 1)


def plot_mean_loss(runs: Sequence[Scores], reference: str, out: Path) -> list[Path]:
    """loss_<k>.png per k: each variant's training loss against the epoch, the mean over
    its seeds with a kept loss (while all of them still train), the reference bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[int, dict[str, list[tuple[float, ...]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.train_loss is not None:
            curves[r.k][r.variant].append(r.train_loss)
    written = []
    for k, by_variant in sorted(curves.items()):
        figure, axes = plt.subplots(figsize=(8, 4.8))
        for variant, losses in sorted(by_variant.items()):
            epochs = min(len(loss) for loss in losses)
            mean = [statistics.fmean(loss[e] for loss in losses) for e in range(epochs)]
            bold = variant == reference
            axes.plot(
                range(1, epochs + 1),
                mean,
                label=f"{variant} ({len(losses)})",
                linewidth=2.5 if bold else 1.2,
                color="black" if bold else None,
                zorder=3 if bold else 2,
            )
        axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.set_ylabel("training loss, mean over seeds")
        axes.set_title(f"k = {k}: training loss (seeds in brackets)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        path = out / f"loss_k{k}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
