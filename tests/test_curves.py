"""How finished runs trained: the selection replayed from history.json, fitting epochs,
kept against last checkpoint."""

import json
from pathlib import Path

import pytest

from mixphm import cli
from mixphm.experiments.curves import RunCurve, curves, format_curves, replay_selection

PAPER_RUNS = Path(__file__).parents[1] / "results/easy-vqa-paper-v1/runs/paper-v1/pretrained"


def test_the_paper_rule_keeps_the_later_tie_and_counts_patience_from_real_improvements():
    epochs, dev = [10, 20, 30, 40, 50], [50.0, 50.005, 60.0, 60.0, 59.0]
    assert replay_selection(epochs, dev, "paper-v1") == (40, 30)
    assert replay_selection(epochs, dev, "quick-v1") == (30, 30)


def curve(variant="mixphm", seed=13, test=50.0, last=None, loss=(1.0, 0.5, 0.09, 0.2)):
    return RunCurve("pretrained", variant, 16, seed, test, last, (2, 4), (40.0, 45.0), loss, 4, 4)


def test_a_run_is_fitted_at_the_first_epoch_below_the_threshold():
    assert curve().fitted_epoch() == 3
    assert curve().fitted_epoch(0.05) is None
    assert (curve().best_dev, curve().stopped_epoch, curve().loss_at(2)) == (45.0, 4, 0.5)


def test_the_table_compares_last_with_best_dev_per_method_and_over_all_methods():
    runs = [
        curve(test=50.0, last=55.0),
        curve(seed=21, test=60.0, last=58.0, loss=(1.0, 1.0, 1.0, 1.0)),
        curve("full", test=40.0, last=40.0, loss=(0.05, 0.01, 0.01, 0.01)),
    ]
    lines = format_curves(runs).splitlines()
    assert lines[2] == "| pretrained | full | 16 | 1 | 40.0 | 40.0 (+0.0; 0 / 0) | 1 | 4 | 4 | 4 |"
    assert lines[3] == (
        "| pretrained | mixphm | 16 | 2 | 55.0 | 56.5 (+1.5; 1 / 1) | 3, never in 1 | 4 | 4 | 4 |"
    )
    assert lines[4].startswith("| pretrained | all methods | 16 | 3 | 50.0 | 51.0 (+1.0; 1 / 1) |")
    assert (
        lines[-1]
        == "| pretrained | mixphm | 16 | 21 | 60.0 | 58.0 | 45.0 | 4 | 4 (1.00) | never | 4 |"
    )


def finished_run(directory, best_epoch, method="lora", history=True, **fields):
    directory.mkdir(parents=True)
    result = {"backbone": "pretrained", "method": method, "k": 16, "seed": 13}
    result |= {"test_accuracy": 50.0, "best_epoch": best_epoch, "recipe": "paper-v1", **fields}
    (directory / "result.json").write_text(json.dumps(result))
    if history:
        curves = {"dev_epochs": [10, 20], "dev_accuracy": [60.0, 60.0], "train_loss": [0.5] * 20}
        (directory / "history.json").write_text(json.dumps(curves))


def test_runs_are_read_with_their_recorded_selection_and_older_runs_are_listed(tmp_path):
    finished_run(tmp_path / "lora", best_epoch=19, last_test_accuracy=52.0)
    finished_run(tmp_path / "old", best_epoch=19, history=False)
    finished_run(tmp_path / "zero", best_epoch=-1, method="zero-shot", history=False)
    (run,), without_history = curves([tmp_path])
    assert (run.kept_epoch, run.patience_start, run.last_test_accuracy) == (20, 10, 52.0)
    assert without_history == [tmp_path / "old"]

    finished_run(tmp_path / "other" / "run", best_epoch=9)  # ties keep the later: epoch 20
    with pytest.raises(ValueError, match="come from different runs"):
        curves([tmp_path / "other"])


def test_the_command_writes_the_table_and_a_plot_and_refuses_runs_without_curves(tmp_path, capsys):
    finished_run(tmp_path / "runs" / "lora", best_epoch=19)
    out = tmp_path / "curves"
    assert cli.main(["curves", "--run", str(tmp_path / "runs"), "--output", str(out)]) == 0
    written = (out / "curves.md").read_text()
    assert written.startswith("Produced by `mixphm curves --run ")
    assert (
        "| pretrained | lora | 16 | 13 | 50.0 | – | 60.0 | 20 | 10 (0.50) | never | 20 |" in written
    )
    assert (out / "curves_pretrained_k16.png").stat().st_size > 0

    finished_run(tmp_path / "old", best_epoch=19, history=False)
    assert cli.main(["curves", "--run", str(tmp_path / "old"), "--output", str(out)]) == 2
    assert "has a history.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["curves", "--run", str(tmp_path), "--fit-loss", "0"])


@pytest.mark.skipif(not PAPER_RUNS.is_dir(), reason="the committed paper-v1 runs")
def test_the_committed_k32_runs_replay_to_their_recorded_checkpoints():
    runs, without_history = curves([PAPER_RUNS], ks=[32])
    assert (len(runs), without_history) == (50, [])
    everything = next(line for line in format_curves(runs).splitlines() if "all methods" in line)
    assert "| 50 | 55.5 | 56.9 (+1.3; 27 / 20) |" in everything
