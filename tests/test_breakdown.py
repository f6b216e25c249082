"""Per-answer-type breakdown of finished runs: accuracy and answer collapse."""

import json

import pytest

from mixphm import cli
from mixphm.data import load_easy_vqa
from mixphm.data.examples import VQAExample
from mixphm.experiments.breakdown import (
    RunBreakdown,
    TypeOutcome,
    breakdown,
    by_answer_type,
    format_breakdown,
)


def example(i: int, answer: str, answer_type: str) -> VQAExample:
    return VQAExample(f"q{i}", f"i{i}", "?", (answer,), {answer: 1.0}, answer_type=answer_type)


def test_a_collapsed_yes_no_type_shows_as_half_right_with_one_answer():
    examples = [example(i, a, "yes/no") for i, a in enumerate(["yes", "no", "yes", "no"])]
    examples += [example(4, "red", "color"), example(5, "blue", "color"), example(6, "x", "")]
    predictions = ["yes"] * 4 + ["red", "green", "x"]
    outcomes = {t.answer_type: t for t in by_answer_type(examples, predictions, "exact")}
    assert list(outcomes) == ["all", "color", "yes/no"]
    assert (outcomes["yes/no"].accuracy, outcomes["yes/no"].top_share) == (50.0, 100.0)
    assert outcomes["yes/no"].top_answer == "yes"
    assert (outcomes["color"].count, outcomes["color"].accuracy) == (2, 50.0)
    assert outcomes["color"].top_share == 50.0
    assert outcomes["all"].accuracy == 100.0


def test_the_table_averages_each_method_and_k_over_seeds():
    def run(seed: int, test: float, yes_no: float, share: float) -> RunBreakdown:
        outcome = TypeOutcome("yes/no", 1, yes_no, "yes", share)
        return RunBreakdown("pretrained", "mixphm", 100, seed, test, (outcome,))

    table = format_breakdown([run(13, 50.0, 40.0, 100.0), run(21, 60.0, 60.0, 50.0)])
    assert table.splitlines()[-1] == "| pretrained | mixphm | 100 | 2 | 55.0 | 50.0 / 75 |"


def test_a_folder_without_finished_runs_is_refused(tmp_path, capsys):
    (tmp_path / "mixphm" / "k16" / "seed13").mkdir(parents=True)  # unfinished: no result.json
    assert cli.main(["breakdown", "--run", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


def finished_run(directory, predictions, test_accuracy, method="lora", seed=13, **adapter_options):
    directory.mkdir(parents=True)
    result = {"backbone": "pretrained", "method": method, "k": 16, "seed": seed}
    result["test_accuracy"] = test_accuracy
    if adapter_options:
        result["adapter_options"] = adapter_options
    (directory / "result.json").write_text(json.dumps(result))
    (directory / "test_predictions.json").write_text(json.dumps(predictions))


def test_runs_under_a_folder_are_read_from_their_test_predictions(tmp_path):
    examples = load_easy_vqa("test").examples[:4]
    predictions = {e.question_id: e.answers[0] for e in examples[:3]}
    predictions[examples[3].question_id] = "no answer of easy-vqa"
    finished_run(tmp_path / "runs" / "lora" / "k16" / "seed13", predictions, 75.0)
    (run,) = breakdown([tmp_path / "runs"])
    assert (run.variant, run.k, run.test_accuracy) == ("lora", 16, 75.0)
    assert sum(t.count for t in run.types) == 4

    finished_run(tmp_path / "other", predictions, 80.0)
    with pytest.raises(ValueError, match="come from different runs"):
        breakdown([tmp_path / "other"])


def test_an_ablation_keeps_its_own_row(tmp_path):
    examples = load_easy_vqa("test").examples[:2]
    predictions = {e.question_id: e.answers[0] for e in examples}
    finished_run(tmp_path / "preset", predictions, 100.0, "mixphm")
    finished_run(tmp_path / "ablation", predictions, 100.0, "mixphm", dropout=0.0, num_experts=1)
    runs = breakdown([tmp_path / "preset", tmp_path / "ablation"])
    rows = format_breakdown(runs).splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == ["mixphm", "mixphm+dropout=0.0+num_experts=1"]


def test_runs_can_be_chosen_by_seed_and_k(tmp_path):
    examples = load_easy_vqa("test").examples[:2]
    predictions = {e.question_id: e.answers[0] for e in examples}
    for seed in (13, 21):
        finished_run(tmp_path / f"seed{seed}", predictions, 100.0, seed=seed)
    (run,) = breakdown([tmp_path], ks=[16], seeds=[21])
    assert (run.k, run.seed) == (16, 21)
    assert len(breakdown([tmp_path], ks=[16])) == 2
    missing = r"no finished run with k in \[16\] and seed in \[42\]"
    with pytest.raises(FileNotFoundError, match=missing):
        breakdown([tmp_path], ks=[16], seeds=[42])
