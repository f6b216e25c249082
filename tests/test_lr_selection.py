"""Learning-rate selection on dev: the rule, that no test score reaches it, and reuse."""

import csv
import json

import pytest

from mixphm import cli
from mixphm.experiments import benchmark
from mixphm.experiments.lr_selection import choose_rate, selection_specs
from mixphm.training.methods import method_settings
from mixphm.training.recipe import RunSpec

PFEIFFER_GRID = method_settings("pfeiffer").lr_grid  # 3e-4, 1e-3 (its own), 3e-3, 1e-2
SEEDS = (13, 21, 42)


def finish(spec, out, dev, test):
    record = {
        "method": spec.method, "k": spec.k, "seed": spec.seed, "backbone": spec.backbone,
        "dev_accuracy": dev, "test_accuracy": test, "trainable_parameters": 10,
        "total_parameters": 1000, "train_seconds": 60.0, "epochs": 30, "best_epoch": 9,
        "recipe": spec.recipe, "last_test_accuracy": test, "test_questions": 9673,
        "lr": spec.learning_rate, "max_epochs": spec.max_epochs,
    }  # fmt: skip
    path = benchmark.run_dir(out, spec) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_the_highest_mean_wins_and_ties_keep_the_own_rate():
    assert choose_rate({1e-3: 50.0, 3e-3: 52.0, 1e-2: 51.0}, own_rate=1e-3) == 3e-3
    assert choose_rate({1e-3: 52.0, 3e-3: 52.0, 1e-2: 51.0}, own_rate=1e-3) == 1e-3
    # a tie without the own rate goes to the rate nearest it on a log scale
    assert choose_rate({3e-4: 52.0, 1e-3: 50.0, 1e-2: 52.0}, own_rate=1e-3) == 3e-4
    assert choose_rate({3e-4: 52.0, 1e-3: 50.0, 3e-3: 52.0}, own_rate=1e-3) == 3e-3


def test_the_selection_grid_is_every_rate_of_every_method_seed_major():
    specs = selection_specs(["pfeiffer", "full"], 64, [13, 21], "paper-v1")
    assert [(s.seed, s.method, s.learning_rate) for s in specs[:7]] == [
        (13, "pfeiffer", rate) for rate in PFEIFFER_GRID
    ] + [(13, "full", rate) for rate in method_settings("full").lr_grid]
    assert len(specs) == 2 * (len(PFEIFFER_GRID) + len(method_settings("full").lr_grid))
    assert sum(s.lr is None for s in specs) == 4  # the own rates are the methods' own runs


def selection(tmp_path, test_score, capsys):
    """Writes pfeiffer's runs, dev favouring 3e-3, and returns the selection's files."""
    dev = {3e-4: 40.0, 1e-3: 50.0, 3e-3: 55.0, 1e-2: 45.0}
    for rate in PFEIFFER_GRID:
        for seed in SEEDS:
            spec = RunSpec("pfeiffer", 64, seed, lr=rate)
            finish(spec, tmp_path, dev[rate] + seed / 100, test_score(rate, seed))
    argv = ["select-lr", "--methods", "pfeiffer", "--out", str(tmp_path), "--summarize-only"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    return {name: (tmp_path / name).read_text() for name in ("lr-selection.csv", "lr-selection.md")}


def test_the_choice_reads_dev_only(tmp_path, capsys):
    files = selection(tmp_path, lambda rate, seed: 60.0, capsys)
    with (tmp_path / "lr-selection.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {float(r["chosen_lr"]) for r in rows} == {3e-3}
    assert len(rows) == len(PFEIFFER_GRID) * len(SEEDS)
    assert "test" not in rows[0]
    assert (
        "| pfeiffer | 0.003 | 55.1 | 55.2 | 55.4 | 55.25 | **chosen** |" in files["lr-selection.md"]
    )
    # test scores that favour another rate, by far, change nothing the selection writes
    adversarial = selection(tmp_path, lambda rate, seed: 99.0 if rate == 1e-2 else 1.0, capsys)
    assert adversarial == files


def test_a_method_is_chosen_only_with_every_rate_and_seed(tmp_path, capsys):
    for seed in SEEDS:
        finish(RunSpec("pfeiffer", 64, seed), tmp_path, 50.0, 50.0)
    argv = ["select-lr", "--methods", "pfeiffer", "--out", str(tmp_path), "--summarize-only"]
    assert cli.main(argv) == 0
    assert "Not chosen yet (runs missing): pfeiffer." in capsys.readouterr().out


def test_finished_runs_of_another_folder_are_reused_not_retrained(tmp_path):
    table, selection_out = tmp_path / "table", tmp_path / "selection"
    for seed in SEEDS:
        finish(RunSpec("pfeiffer", 64, seed), table, 50.0, 50.0)
    specs = selection_specs(["pfeiffer"], 64, list(SEEDS), "paper-v1")
    todo = benchmark.pending(specs, selection_out, say=False, reuse=[table])
    assert len(todo) == len(specs) - len(SEEDS)
    assert all(spec.lr is not None for spec in todo)
    reused = benchmark.reused_results(specs, selection_out, [table])
    assert sorted(r.seed for r in reused) == list(SEEDS)
    finish(RunSpec("pfeiffer", 64, 13, lr=3e-4, max_epochs=5), table, 1.0, 1.0)
    with pytest.raises(ValueError, match="max_epochs=5"):  # same folder, other settings
        benchmark.pending([RunSpec("pfeiffer", 64, 13, lr=3e-4)], selection_out, reuse=[table])
