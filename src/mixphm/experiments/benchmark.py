"""Grids of runs (methods × k × seeds), resumable, and their tables and plots.

Each run lives in ``<out>/runs/<recipe>/<backbone>/<variant>/k<k>/seed<seed>/`` (the variant
is the method with any adapter options, ``RunSpec.variant``); a finished run has a
``result.json`` and is skipped next time, an unfinished one resumes from its checkpoint.
Either refuses a spec whose other settings (recipe, epoch cap, precision) differ from the
ones it was made with. An output folder holds the runs of one recipe only, so its
``runs.csv``, ``summary.md`` and plots, rebuilt from all its finished runs after every
grid, never mix recipes.
"""

from __future__ import annotations

import csv
import fcntl
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mixphm.experiments.cores import CoreShare
from mixphm.experiments.tables import markdown_table
from mixphm.experiments.workers import map_in_workers
from mixphm.training import checkpoint
from mixphm.training.objectives import CandidateScoring
from mixphm.training.recipe import (
    CHECKPOINT_FILE,
    RunResult,
    RunSpec,
    check_same_run,
    prediction_accuracy,
    train,
    write_json_atomic,
    write_predictions,
)
from mixphm.training.recipes import LEGACY_RECIPE
from mixphm.training.setup import OfflineSetup, backbone_factory

_setup: OfflineSetup | None = None
_share: CoreShare | None = None


def folder_name(backbone: str) -> str:
    """``hf:org/model`` → ``hf-org--model``; other backbone names stay as they are."""
    return backbone.replace(":", "-").replace("/", "--")


def run_dir(out: Path, spec: RunSpec) -> Path:
    backbone = folder_name(spec.backbone)
    runs = out / "runs" / spec.recipe / backbone
    return runs / spec.variant / f"k{spec.k}" / f"seed{spec.seed}"


def recipes_in(out: Path) -> set[str]:
    """The recipes of the finished runs under ``out``."""
    return {
        json.loads(path.read_text()).get("recipe", LEGACY_RECIPE)
        for path in (out / "runs").glob("**/result.json")
    }


def check_one_recipe(out: Path, recipe: str) -> None:
    """Raise ValueError if ``out`` holds finished runs of another recipe than ``recipe``: a
    table mixing recipes would compare training budgets, not methods."""
    others = sorted(recipes_in(out) - {recipe})
    if others:
        raise ValueError(
            f"{out} holds runs made under the recipe {', '.join(others)}; runs under {recipe} "
            "cannot share its table: use another --out (or --recipe "
            f"{others[0]} to add to or summarize those runs)"
        )


def _worker_init(test_limit: int | None, share: CoreShare) -> None:
    global _setup, _share
    _share = share
    share.apply()
    _setup = OfflineSetup.build(test_limit=test_limit)


def _run_one(out: Path, spec: RunSpec) -> RunResult:
    assert _setup is not None and _share is not None
    data = _setup.splits(spec.k, spec.seed)
    directory = run_dir(out, spec)
    objective = CandidateScoring(_setup.candidates)
    try:
        result = train(
            spec,
            backbone_factory(spec.backbone),
            data,
            objective,
            directory,
            before_epoch=_share.apply,
        )
    finally:
        _share.finished_one()
    (directory / CHECKPOINT_FILE).unlink()  # finished: best.safetensors and result.json remain
    return result


def zero_shot(backbone: str, out: Path, test_limit: int | None, recipe: str) -> RunResult:
    """Accuracy of the backbone as it is (k = 0): answers by scoring alone, on the test
    split of ``recipe``'s runs (whose table it joins)."""
    spec = RunSpec("zero-shot", 0, 0, backbone, recipe=recipe)
    path = run_dir(out, spec) / "result.json"
    if path.is_file():
        return RunResult.from_record(json.loads(path.read_text()))
    setup = _setup or OfflineSetup.build(test_limit=test_limit)
    model = backbone_factory(backbone)()
    total = sum(p.numel() for p in model.parameters())
    predicted = CandidateScoring(setup.candidates).predict(model, setup.test)
    test_accuracy = prediction_accuracy(setup.test, predicted)
    write_predictions(setup.test, predicted, path.parent)
    result = RunResult(
        "zero-shot", 0, 0, backbone, float("nan"), test_accuracy, 0, total, 0.0, 0, -1,
        recipe, test_accuracy, len(setup.test),
    )  # fmt: skip
    write_json_atomic(asdict(result), path)
    return result


def finished_record(spec: RunSpec, folders: Sequence[Path]) -> Path | None:
    """The ``result.json`` of ``spec``'s finished run in the first of ``folders`` that has
    one (checked to be ``spec``'s very settings), or None."""
    for folder in folders:
        path = run_dir(folder, spec) / "result.json"
        if path.is_file():
            check_same_run(spec, json.loads(path.read_text()), path)
            return path
    return None


def pending(
    specs: Sequence[RunSpec], out: Path, say: bool = True, reuse: Sequence[Path] = ()
) -> list[RunSpec]:
    """The specs without a finished run (``result.json``) under ``out`` or under a folder
    in ``reuse``, said aloud if ``say``."""
    todo = [spec for spec in specs if finished_record(spec, [out, *reuse]) is None]
    if say:
        print(f"{len(specs) - len(todo)} of {len(specs)} runs already finished; {len(todo)} to go")
    return todo


def reused_results(specs: Sequence[RunSpec], out: Path, reuse: Sequence[Path]) -> list[RunResult]:
    """The finished runs of ``specs`` that ``out`` lacks and a ``reuse`` folder has."""
    found = []
    for spec in specs:
        if reuse and finished_record(spec, [out]) is None:
            path = finished_record(spec, reuse)
            if path is not None:
                found.append(RunResult.from_record(json.loads(path.read_text())))
    return found


def report(result: RunResult) -> None:
    print(
        f"{result.variant} k={result.k} seed={result.seed} ({result.backbone}): "
        f"dev {result.dev_accuracy:.1f}, test {result.test_accuracy:.1f}"
    )


def run_grid(
    specs: Sequence[RunSpec],
    out: Path,
    test_limit: int | None = 2000,
    workers: int = 1,
    reuse: Sequence[Path] = (),
) -> list[RunResult]:
    """Train every spec without a result yet (all under one recipe) into ``out``;
    ``workers`` processes share the cores. A spec finished in a ``reuse`` folder (read,
    never written) is not trained again, and its result joins ``out``'s. After each
    finished run, prints an estimate of the time left."""
    recipe = one_recipe(specs)
    check_one_recipe(out, recipe)
    for folder in reuse:
        check_one_recipe(folder, recipe)
    with training_lock(out):
        train_pending(specs, out, recipe, test_limit, workers, reuse)
    return collect(out, recipe, reused_results(specs, out, reuse))


TRAINING_LOCK = ".training.lock"


@contextmanager
def training_lock(out: Path) -> Iterator[None]:
    """Holds ``out``'s training lock: a second grid on the same folder would train the same
    runs and overwrite each other's checkpoints, so it is refused instead."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / TRAINING_LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another mixphm process is training into {out}; wait for it to finish or stop "
                "it (its finished runs are kept and unfinished ones resume), then rerun"
            ) from None
        yield


def train_pending(
    specs: Sequence[RunSpec],
    out: Path,
    recipe: str,
    test_limit: int | None,
    workers: int,
    reuse: Sequence[Path] = (),
) -> None:
    """Trains the specs without a result yet, printing the time left after each."""
    todo = pending(specs, out, reuse=reuse)
    for backbone in sorted({s.backbone for s in todo}):
        backbone_factory(backbone)  # build shared artefacts once, before the workers start
    if todo:
        processes = min(workers, len(todo))
        setup = (test_limit, CoreShare.create(torch.get_num_threads(), processes, len(todo)))
        left, started = list(todo), time.monotonic()
        for result in map_in_workers(partial(_run_one, out), todo, processes, _worker_init, setup):
            report(result)
            left = [s for s in left if (s.variant, s.k, s.seed, s.backbone) != result_key(result)]
            finished = len(todo) - len(left)
            trained = trained_so_far(out, left)
            print(remaining_estimate(collect(out, recipe), left, processes, trained))
            print(f"  ({finished} finished in {duration(time.monotonic() - started)})")


def one_recipe(specs: Sequence[RunSpec]) -> str:
    recipes = sorted({spec.recipe for spec in specs})
    if len(recipes) != 1:
        raise ValueError(f"a grid runs under one recipe, not {', '.join(recipes)}")
    return recipes[0]


def result_key(result: RunResult) -> tuple[str, int, int, str]:
    return result.variant, result.k, result.seed, result.backbone


def duration(seconds: float) -> str:
    """Minutes under an hour ("40 min"), hours from one hour on ("2.5 h")."""
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun with an s unless the count is one: "1 run", "2 runs"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def remaining_estimate(
    finished: Sequence[RunResult],
    left: Sequence[RunSpec],
    workers: int,
    trained: Mapping[RunSpec, float] | None = None,
) -> str:
    """The training time ``left`` needs, from the finished runs' train seconds: the mean of
    the same variant and k; else that of the other variants at that k times the variant's
    relative cost (full fine-tuning trains about twice as long as an adapter at the same k);
    else the variant's nearest k scaled by k; less the seconds a run in flight has
    ``trained`` already (by its checkpoint). Dev and test evaluations come on top. The
    longest single run is named: an interrupted run resumes only from a checkpoint the next
    machine has, so a run longer than a machine's hold finishes only if its checkpoint is
    carried over (committed, as ``scripts/paper-grid.sh`` does with those small enough for
    git)."""
    trained = trained or {}
    seconds: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in finished:
        if r.method != "zero-shot":
            seconds[(r.variant, r.k)].append(r.train_seconds)
    if not left:
        return "grid finished"
    if not seconds:
        return f"{plural(len(left), 'run')} to go (no finished run to estimate from yet)"

    def others_at(variant: str, k: int) -> list[float]:
        return [t for (v, at), times in seconds.items() if at == k and v != variant for t in times]

    def relative_cost(variant: str) -> float:
        """The geometric mean, over the ks where ``variant`` and others have finished runs,
        of its mean train seconds over theirs; 1 where there is no such k."""
        ratios = [
            statistics.fmean(times) / statistics.fmean(others)
            for (v, k), times in seconds.items()
            if v == variant and (others := others_at(variant, k))
        ]
        return statistics.geometric_mean(ratios) if ratios else 1.0

    def estimate(spec: RunSpec) -> float:
        same = seconds.get((spec.variant, spec.k))
        if same:
            return statistics.fmean(same)
        at_k = others_at(spec.variant, spec.k)
        if at_k:
            return statistics.fmean(at_k) * relative_cost(spec.variant)
        variant, k = min(seconds, key=lambda key: (key[0] != spec.variant, abs(key[1] - spec.k)))
        return statistics.fmean(seconds[(variant, k)]) * spec.k / k

    estimates = [(max(0.0, estimate(spec) - trained.get(spec, 0.0)), spec) for spec in left]
    total = sum(seconds for seconds, _ in estimates) / workers
    longest_seconds, longest = max(estimates, key=lambda pair: pair[0])
    resuming = sum(spec in trained for spec in left)
    in_flight = f" ({resuming} already under way)" if resuming else ""
    return (
        f"{plural(len(left), 'run')} to go{in_flight}: about {duration(total)} of training with "
        f"{plural(workers, 'worker')}; the longest, {longest.variant} k = {longest.k} seed "
        f"{longest.seed}, about {duration(longest_seconds)} alone"
    )


def collect(
    out: Path, recipe: str | None = None, reused: Sequence[RunResult] = ()
) -> list[RunResult]:
    """Every finished run under ``out`` (which must all be ``recipe``'s, when given) and the
    ``reused`` ones of other folders; rewrites ``runs.csv`` from them (adapter options as
    JSON)."""
    found = recipes_in(out)
    if recipe is not None:
        check_one_recipe(out, recipe)
    elif len(found) > 1:
        raise ValueError(
            f"{out} holds runs of several recipes ({', '.join(sorted(found))}); one table "
            "must not mix them: move each recipe's runs to an output folder of its own"
        )
    results = [*finished_results(out), *reused]
    names = [f.name for f in fields(RunResult)]
    with (out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in sorted(results, key=lambda r: (r.backbone, r.variant, r.k, r.seed)):
            writer.writerow({**asdict(r), "adapter_options": json.dumps(r.adapter_options)})
    return results


def finished_results(out: Path) -> list[RunResult]:
    """Every run under ``out`` with a ``result.json``, whatever its recipe."""
    return [
        RunResult.from_record(json.loads(p.read_text()))
        for p in sorted((out / "runs").glob("**/result.json"))
    ]


def grid_estimate(
    specs: Sequence[RunSpec], out: Path, workers: int, reuse: Sequence[Path] = ()
) -> str:
    """How many of ``specs`` are still to run under ``out`` (not finished there nor in a
    ``reuse`` folder) and the training time they need with ``workers`` processes,
    estimated from the finished runs; trains and writes nothing."""
    check_one_recipe(out, one_recipe(specs))
    todo = pending(specs, out, say=False, reuse=reuse)
    workers = max(1, min(workers, len(todo)))
    return remaining_estimate(finished_results(out), todo, workers, trained_so_far(out, todo))


def trained_so_far(out: Path, specs: Iterable[RunSpec]) -> dict[RunSpec, float]:
    """The training seconds of each spec with a checkpoint under ``out`` (a run in flight)."""
    trained = {}
    for spec in specs:
        seconds = checkpoint.trained_seconds(run_dir(out, spec) / CHECKPOINT_FILE)
        if seconds is not None:
            trained[spec] = seconds
    return trained


def recipe_note(recipes: Sequence[str]) -> str:
    if recipes == ["paper-v1"]:
        return "the MixPHM reference recipe, mixphm/training/recipes.py"
    return "not the paper's recipe: a short one for quick runs, mixphm/training/recipes.py"


def test_note(results: Sequence[RunResult]) -> str:
    sizes = sorted({r.test_questions for r in results if r.test_questions is not None})
    if not sizes:
        return "test questions not recorded"
    return " / ".join(f"{n:,}" for n in sizes) + " test questions"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary_table(results: Iterable[RunResult], backbone: str) -> str:
    """Markdown: test accuracy mean ± std (n seeds) per method and k; best per k in bold."""
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    params: dict[str, float] = {}
    for r in results:
        if r.backbone == backbone:
            cells[(r.variant, r.k)].append(r.test_accuracy)
            params[r.variant] = 100 * r.trainable_parameters / r.total_parameters
    methods = sorted({m for m, _ in cells}, key=lambda m: (m != "zero-shot", m))
    ks = sorted({k for _, k in cells})
    best = {k: max(mean_std(v)[0] for (m, kk), v in cells.items() if kk == k) for k in ks}
    header = ["method", "% trainable", *(f"k={k}" for k in ks)]
    rows = []
    for method in methods:
        row = [method, f"{params[method]:.3f}"]
        for k in ks:
            values = cells.get((method, k))
            if not values:
                row.append("")
                continue
            mean, std = mean_std(values)
            text = f"{mean:.1f} ± {std:.1f} ({len(values)})"
            row.append(f"**{text}**" if mean == best[k] else text)
        rows.append(row)
    return markdown_table(header, rows, 1)


def write_summary(
    results: list[RunResult], out: Path, command: str, dataset: str = "easy-VQA"
) -> Path:
    backbones = sorted({r.backbone for r in results})
    recipes = sorted({r.recipe for r in results})
    parts = [
        f"Produced by `{command}` (finished runs already in the folder are included).",
        f"Training recipe: {', '.join(recipes)} ({recipe_note(recipes)}).",
        f"Test accuracy (%) on {dataset} ({test_note(results)}), best-dev checkpoint, mean ± "
        "std over seeds (number of seeds in brackets); the best mean per column is bold.",
    ]
    for backbone in backbones:
        parts += ["", f"### Backbone: {backbone}", "", summary_table(results, backbone)]
    path = out / "summary.md"
    path.write_text("\n".join(parts) + "\n")
    return path


HIGHLIGHTED = {"mixphm-ra": "tab:red", "full": "tab:blue"}
"""The two methods the paper's claim compares, the paper's MixPHM (with its regularizer) and
full fine-tuning, drawn bold among the baselines."""
MUTED = {
    "adamix": "#aed581",
    "bitfit": "#a1887f",
    "compacter": "#f48fb1",
    "houlsby": "#80cbc4",
    "ia3": "#bdbdbd",
    "lora": "#ffcc80",
    "mixphm": "#ef9a9a",
    "pfeiffer": "#9fa8da",
}
"""Pale colours for the baselines (variants and unknown names: grey)."""


LABELS = {"mixphm-ra": "mixphm-ra (the paper's MixPHM)", "mixphm": "mixphm (no L_Ra)"}
"""Legend labels that say which MixPHM preset is the paper's."""


def line_style(method: str) -> dict[str, Any]:
    """Bold and coloured for the paper's MixPHM and full fine-tuning, thin and pale for the
    others."""
    if method in HIGHLIGHTED:
        return {"color": HIGHLIGHTED[method], "linewidth": 2.5, "zorder": 3}
    return {"color": MUTED.get(method, "0.6"), "linewidth": 1.0, "zorder": 2}


def plot(
    results: list[RunResult],
    out: Path,
    backbone: str,
    k_for_params: int = 64,
    dataset: str = "easy-VQA",
) -> list[Path]:
    """accuracy_vs_k_<backbone>.png and accuracy_vs_params_<backbone>.png (at
    ``k_for_params``, the paper's Figure 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    share: dict[str, float] = {}
    for r in results:
        if r.backbone == backbone and r.method != "zero-shot":
            by_method[r.variant][r.k].append(r.test_accuracy)
            share[r.variant] = 100 * r.trainable_parameters / r.total_parameters
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method, per_k in sorted(by_method.items()):
        ks = sorted(per_k)
        stats = [mean_std(per_k[k]) for k in ks]
        axes.errorbar(
            ks,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            label=LABELS.get(method, method),
            **line_style(method),
        )
    axes.set_xscale("log")
    all_ks = sorted({k for per_k in by_method.values() for k in per_k})
    axes.set_xticks(all_ks, [str(k) for k in all_ks])
    axes.minorticks_off()
    axes.set_xlabel("k (training questions)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{dataset}, {backbone} backbone: accuracy versus k")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    name = folder_name(backbone)
    versus_k = out / f"accuracy_vs_k_{name}.png"
    figure.savefig(versus_k, dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method, per_k in sorted(by_method.items()):
        if k_for_params in per_k:
            mean, std = mean_std(per_k[k_for_params])
            style = line_style(method)
            axes.errorbar(
                [share[method]],
                [mean],
                yerr=[std],
                marker="o",
                capsize=3,
                label=LABELS.get(method, method),
                **style,
            )
            if method in HIGHLIGHTED:
                axes.annotate(
                    method,
                    (share[method], mean),
                    textcoords="offset points",
                    xytext=(6, -12),
                    color=style["color"],
                    fontweight="bold",
                )
    axes.set_xscale("log")
    if axes.has_data():  # empty when no method has a run at k_for_params
        axes.legend(fontsize=8, ncol=2)
    axes.set_xlabel("trainable parameters (% of the model)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{dataset}, {backbone} backbone, k = {k_for_params}")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    versus_params = out / f"accuracy_vs_params_{name}.png"
    figure.savefig(versus_params, dpi=120)
    plt.close(figure)
    return [versus_k, versus_params]
