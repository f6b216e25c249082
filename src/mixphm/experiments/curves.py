"""How finished runs trained, read from their ``history.json`` (dev curve and per-epoch
training loss) and ``result.json``: when each fitted its training set, which dev evaluation
started the patience count that stopped it, which checkpoint it kept, and how the kept
(best-dev) checkpoint scored on test against the last one.

The selection is replayed with the training loop's own rule (``update_selection``) under
the run's recorded recipe, and must land on the checkpoint the run recorded. Dev scores and
training loss only: nothing here feeds back into training or model selection.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from mixphm.experiments.records import finished_runs
from mixphm.experiments.tables import markdown_table
from mixphm.training.recipe import HISTORY_FILE, TrainState, record_variant, update_selection
from mixphm.training.recipes import LEGACY_RECIPE, get_recipe

FIT_LOSS = 0.1
"""Default training loss below which a run counts as having fitted its training set."""


@dataclass(frozen=True)
class RunCurve:
    """One finished run's curves and the selection its recipe made on them."""

    backbone: str
    variant: str
    k: int
    seed: int
    test_accuracy: float
    """Test accuracy of the kept (best-dev) checkpoint."""
    last_test_accuracy: float | None
    """Test accuracy of the last checkpoint (None for runs that predate it)."""
    dev_epochs: tuple[int, ...]
    """The 1-based epochs after which dev was scored."""
    dev_accuracy: tuple[float, ...]
    train_loss: tuple[float, ...]
    """Mean training loss of every epoch, epoch 1 first."""
    kept_epoch: int
    """The 1-based epoch of the kept checkpoint."""
    patience_start: int
    """The 1-based epoch of the last dev evaluation that reset the patience count."""

    @property
    def stopped_epoch(self) -> int:
        return len(self.train_loss)

    @property
    def best_dev(self) -> float:
        return self.dev_accuracy[self.dev_epochs.index(self.kept_epoch)]

    def loss_at(self, epoch: int) -> float:
        return self.train_loss[epoch - 1]

    def fitted_epoch(self, fit_loss: float = FIT_LOSS) -> int | None:
        """The first epoch whose training loss fell below ``fit_loss`` (None: never)."""
        return next((e for e, loss in enumerate(self.train_loss, 1) if loss < fit_loss), None)


def replay_selection(
    dev_epochs: Sequence[int], dev_accuracy: Sequence[float], recipe: str
) -> tuple[int, int]:
    """(kept epoch, patience-start epoch) of a dev curve under ``recipe``'s selection and
    patience rules, both 1-based."""
    rules = get_recipe(recipe)
    state = TrainState()
    patience_start = -1
    for epoch, dev in zip(dev_epochs, dev_accuracy, strict=True):
        update_selection(state, dev, epoch, rules)
        if state.stale == 0:
            patience_start = epoch
    return state.best_epoch, patience_start


def run_curve(directory: Path, result: dict[str, Any]) -> RunCurve:
    """The curves of the finished run in ``directory`` (``result`` is its result.json)."""
    history = json.loads((directory / HISTORY_FILE).read_text())
    dev_epochs = tuple(history["dev_epochs"])
    dev_accuracy = tuple(history["dev_accuracy"])
    train_loss = tuple(history["train_loss"])
    recipe = result.get("recipe", LEGACY_RECIPE)
    kept, patience_start = replay_selection(dev_epochs, dev_accuracy, recipe)
    recorded = result["best_epoch"] + 1
    if kept != recorded:
        raise ValueError(
            f"{directory}: replaying its {HISTORY_FILE} under {recipe} keeps epoch {kept}, but "
            f"its result.json kept epoch {recorded}; the two come from different runs"
        )
    return RunCurve(
        backbone=result["backbone"],
        variant=record_variant(result),
        k=result["k"],
        seed=result["seed"],
        test_accuracy=result["test_accuracy"],
        last_test_accuracy=result.get("last_test_accuracy"),
        dev_epochs=dev_epochs,
        dev_accuracy=dev_accuracy,
        train_loss=train_loss,
        kept_epoch=kept,
        patience_start=patience_start,
    )


def curves(
    paths: Sequence[Path], ks: Sequence[int] | None = None, seeds: Sequence[int] | None = None
) -> tuple[list[RunCurve], list[Path]]:
    """The curves of every trained run in or under ``paths`` (with these ``ks`` and
    ``seeds``), and the finished runs without a ``history.json`` (trained before runs kept
    one). Zero-shot rows train nothing and are left out."""
    found, without_history = [], []
    for directory, result in finished_runs(paths, ks, seeds):
        if result["method"] == "zero-shot":
            continue
        if (directory / HISTORY_FILE).is_file():
            found.append(run_curve(directory, result))
        else:
            without_history.append(directory)
    return found, without_history


def epoch_range(epochs: Sequence[int | None]) -> str:
    """``min–max`` of the epochs that exist, and how many runs have none."""
    known = [e for e in epochs if e is not None]
    never = len(epochs) - len(known)
    parts = []
    if known:
        low, high = min(known), max(known)
        parts.append(str(low) if low == high else f"{low}–{high}")
    if never:
        parts.append(f"never in {never}")
    return ", ".join(parts)


def last_against_best(runs: Sequence[RunCurve]) -> str:
    """Mean test accuracy of the last checkpoint, its difference to the best-dev one, and in
    how many runs it is better / worse."""
    pairs = [
        (r.last_test_accuracy, r.test_accuracy) for r in runs if r.last_test_accuracy is not None
    ]
    if not pairs:
        return "–"
    gain = mean(last - best for last, best in pairs)
    better = sum(last > best for last, best in pairs)
    worse = sum(last < best for last, best in pairs)
    return f"{mean(last for last, _ in pairs):.1f} ({gain:+.1f}; {better} / {worse})"


def summary_row(label: str, runs: Sequence[RunCurve], fit_loss: float) -> list[str]:
    return [
        runs[0].backbone,
        label,
        str(runs[0].k),
        str(len(runs)),
        f"{mean(r.test_accuracy for r in runs):.1f}",
        last_against_best(runs),
        epoch_range([r.fitted_epoch(fit_loss) for r in runs]),
        epoch_range([r.kept_epoch for r in runs]),
        epoch_range([r.patience_start for r in runs]),
        epoch_range([r.stopped_epoch for r in runs]),
    ]


def format_curves(runs: Sequence[RunCurve], fit_loss: float = FIT_LOSS) -> str:
    """Markdown: one row per backbone, method and k (and one for all methods of a k), then
    one row per run."""
    groups: defaultdict[tuple[str, int, str], list[RunCurve]] = defaultdict(list)
    per_k: defaultdict[tuple[str, int], list[RunCurve]] = defaultdict(list)
    for run in runs:
        groups[run.backbone, run.k, run.variant].append(run)
        per_k[run.backbone, run.k].append(run)
    fitted = f"fitted (loss < {fit_loss:g}) at epoch"
    header = [
        "backbone",
        "method",
        "k",
        "runs",
        "test, best-dev",
        "test, last (last − best; better / worse)",
    ]
    header += [fitted, "kept epoch", "patience started at epoch", "stopped at epoch"]
    rows = []
    for backbone, k in sorted(per_k):
        variants = sorted(v for b, kk, v in groups if (b, kk) == (backbone, k))
        rows += [summary_row(v, groups[backbone, k, v], fit_loss) for v in variants]
        rows.append(summary_row("all methods", per_k[backbone, k], fit_loss))
    summary = markdown_table(header, rows, 2)

    header = ["backbone", "method", "k", "seed", "test, best-dev", "test, last", "best dev"]
    header += [
        "kept epoch",
        "patience started at epoch (training loss)",
        fitted,
        "stopped at epoch",
    ]
    rows = []
    for r in sorted(runs, key=lambda r: (r.backbone, r.k, r.variant, r.seed)):
        fitted_at = r.fitted_epoch(fit_loss)
        rows.append(
            [
                r.backbone,
                r.variant,
                str(r.k),
                str(r.seed),
                f"{r.test_accuracy:.1f}",
                "–" if r.last_test_accuracy is None else f"{r.last_test_accuracy:.1f}",
                f"{r.best_dev:.1f}",
                str(r.kept_epoch),
                f"{r.patience_start} ({r.loss_at(r.patience_start):.2f})",
                "never" if fitted_at is None else str(fitted_at),
                str(r.stopped_epoch),
            ]
        )
    return summary + "\n\nPer run:\n\n" + markdown_table(header, rows, 2)


def plot_curves(runs: Sequence[RunCurve], out: Path) -> list[Path]:
    """curves_<backbone>_k<k>.png for every backbone and k: per seed (columns), the
    training loss (top, log scale) and dev accuracy (bottom) of every method against the
    epoch, MixPHM and full fine-tuning bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mixphm.experiments.benchmark import folder_name, line_style

    cells: defaultdict[tuple[str, int], list[RunCurve]] = defaultdict(list)
    for run in runs:
        cells[run.backbone, run.k].append(run)
    written = []
    for (backbone, k), cell in sorted(cells.items()):
        seeds = sorted({r.seed for r in cell})
        width = 3.2 * len(seeds) + 1.6  # inches; the last 1.6 hold the legend
        figure, axes = plt.subplots(2, len(seeds), figsize=(width, 6), sharex="col", squeeze=False)
        for column, seed in enumerate(seeds):
            loss_axes, dev_axes = axes[0][column], axes[1][column]
            for r in sorted((r for r in cell if r.seed == seed), key=lambda r: r.variant):
                style = line_style(r.variant)
                epochs = range(1, len(r.train_loss) + 1)
                loss_axes.plot(epochs, r.train_loss, label=r.variant, **style)
                dev_axes.plot(r.dev_epochs, r.dev_accuracy, **style)
                dev_axes.plot([r.kept_epoch], [r.best_dev], marker="o", color=style["color"])
            loss_axes.set_yscale("log")
            loss_axes.set_title(f"seed {seed}")
            dev_axes.set_xlabel("epoch")
            for panel in (loss_axes, dev_axes):
                panel.grid(alpha=0.3)
        axes[0][0].set_ylabel("training loss")
        axes[1][0].set_ylabel("dev accuracy (%), ● kept")
        legend = {
            label: handle
            for panel in axes[0]
            for handle, label in zip(*panel.get_legend_handles_labels(), strict=True)
        }
        labels = sorted(legend)
        figure.legend([legend[label] for label in labels], labels, loc="center right", fontsize=8)
        figure.suptitle(f"{backbone}, k = {k}")
        figure.tight_layout(rect=(0, 0, 1 - 1.6 / width, 1))
        path = out / f"curves_{folder_name(backbone)}_k{k}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written
