"""The ``mixphm`` command: the demo job end to end on the packaged MiniLM, and bad arguments."""

import subprocess
import sys

import pytest

from mixphm import cli
from mixphm.demo import run_preset


def test_demo_prints_a_row_per_preset_and_saves_adapters(tmp_path, capsys):
    assert cli.main(["demo", "--output", str(tmp_path), "--presets", "pfeiffer", "compacter"]) == 0
    out = capsys.readouterr().out
    assert "pfeiffer" in out and "compacter" in out and "mixphm " not in out
    for preset in ("pfeiffer", "compacter"):
        assert (tmp_path / preset / "adapter_model.safetensors").is_file()


def test_demo_training_lowers_the_merged_loss_and_reloads_exactly(tmp_path):
    row = run_preset("mixphm", tmp_path)
    assert row.adapters == 6
    # MiniLM: d = 384, bottleneck 32, n = 4, rank 8; per layer a down (3,360) and four
    # up experts (3,712 each), plus the shared 4 × 4 × 4 rule
    down = 4 * 96 * 8 + 4 * 8 * 8 + 32
    up = 4 * 8 * 8 + 4 * 8 * 96 + 384
    assert row.trainable == 6 * (down + 4 * up) + 64 == 109_312
    assert row.loss_after < 0.5 * row.loss_before
    assert row.round_trip_max_diff == 0.0


def test_unknown_preset_is_rejected_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--presets", "lora"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'lora'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--method", "prompt-tuning", "--k", "16"], "invalid choice: 'prompt-tuning'"),
        (
            ["train", "--method", "mixphm", "--k", "16", "--dataset", "coco"],
            "invalid choice: 'coco'",
        ),
        (["train", "--method", "mixphm", "--k", "0"], "must be a positive integer, got 0"),
        (["benchmark", "--methods", "mixphm", "lorax"], "invalid choice: 'lorax'"),
        (
            ["train", "--method", "mixphm", "--k", "16", "--adapter-option", "experts=2"],
            "expected name=value with a MixPHMConfig field",
        ),
    ],
)
def test_bad_training_arguments_are_rejected_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["num_experts=abc"], "num_experts must be int, got 'abc'"),
        (["dropout=2"], "dropout must be in [0, 1), got 2"),
        (["merge=sum"], "merge must be Literal['factors', 'products'], got 'sum'"),
    ],
)
def test_bad_adapter_options_are_reported_before_any_work(options, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_offline", None)  # reaching the data would fail differently
    argv = ["train", "--method", "mixphm", "--k", "16"]
    assert cli.main(argv + [f"--adapter-option={o}" for o in options]) == 2
    assert f"mixphm train: error: {message}" in capsys.readouterr().err


def test_a_distributed_launch_of_the_offline_benchmark_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it in every rank
    monkeypatch.setattr(cli, "load_easy_vqa", None)  # reaching the data would fail differently
    assert cli.main(["benchmark", "--methods", "mixphm", "--ks", "16"]) == 2
    assert "without torchrun or accelerate launch" in capsys.readouterr().err


def test_a_test_sample_is_refused_under_the_paper_recipe(capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_easy_vqa", None)  # reaching the data would fail differently
    assert cli.main(["train", "--method", "mixphm", "--k", "16", "--test-limit", "500"]) == 2
    assert "paper-v1 recipe tests on the whole test split" in capsys.readouterr().err


def test_k_larger_than_the_pool_is_reported_before_any_work(capsys):
    assert cli.main(["train", "--method", "mixphm", "--k", "30000"]) == 2
    error = capsys.readouterr().err
    assert "k=30000 needs 60000 questions" in error and "has only 38575" in error


def test_predict_needs_a_finished_run(tmp_path, capsys):
    image = tmp_path / "x.png"
    args = ["predict", "--run", str(tmp_path), "--image", str(image), "--question", "what?"]
    assert cli.main(args) == 2
    assert "result.json not found" in capsys.readouterr().err


def test_predict_refuses_an_empty_question(tmp_path, capsys):
    args = ["predict", "--run", str(tmp_path), "--image", "x.png", "--question", "  "]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert "--question: the question is empty" in capsys.readouterr().err


def test_train_then_predict_on_an_image_file(tmp_path, capsys):
    from mixphm.assets import load_minilm
    from mixphm.backbones.offline_vlm import OfflineVLM
    from mixphm.backbones.vision import cached_grid_features
    from mixphm.data import load_easy_vqa
    from mixphm.training.data import Candidates, candidate_answers, encode_split
    from mixphm.training.objectives import CandidateScoring
    from mixphm.training.recipe import RunSpec, train

    pool = load_easy_vqa("test")
    sample = pool.subset([e.question_id for e in pool.examples[:12]], "sample")
    tokenizer, _ = load_minilm()
    ids = [e.image_id for e in sample.examples]
    features = cached_grid_features(ids, sample.visual.load, tmp_path / "features")
    candidates = Candidates.from_answers(tokenizer, candidate_answers(pool))
    split = encode_split(sample, tokenizer, candidates, features)
    run_dir = tmp_path / "run"
    spec = RunSpec("pfeiffer", 12, 13, "unpretrained", max_epochs=1)
    objective = CandidateScoring(candidates)
    train(spec, OfflineVLM.from_packages, (split, split, split), objective, run_dir)

    image = sample.visual.paths[sample.examples[0].image_id]
    args = [
        "predict",
        "--run",
        str(run_dir),
        "--image",
        str(image),
        "--question",
        "what shape is it?",
    ]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert all(line.split()[-1] in candidates.answers for line in lines)


def test_summarize_only_rebuilds_the_table_from_finished_runs(tmp_path, capsys):
    import csv
    import json

    for seed, accuracy, options in ((13, 50.0, {}), (21, 60.0, {}), (13, 70.0, {"dropout": 0.0})):
        variant = "mixphm+dropout=0.0" if options else "mixphm"
        run = tmp_path / "runs" / "quick-v1" / "pretrained" / variant / "k16" / f"seed{seed}"
        run.mkdir(parents=True)
        record = {
            "method": "mixphm", "k": 16, "seed": seed, "backbone": "pretrained",
            "dev_accuracy": 40.0, "test_accuracy": accuracy, "trainable_parameters": 10,
            "total_parameters": 1000, "train_seconds": 1.0, "epochs": 3, "best_epoch": 1,
            "adapter_options": options,
        }  # fmt: skip
        (run / "result.json").write_text(json.dumps(record))
    argv = ["benchmark", "--out", str(tmp_path), "--methods", "mixphm", "--summarize-only"]
    assert cli.main(argv) == 2  # records without a recipe are quick-v1's, the default is paper-v1
    assert "holds runs made under the recipe quick-v1" in capsys.readouterr().err
    assert not (tmp_path / "summary.md").exists()
    assert cli.main([*argv, "--recipe", "quick-v1"]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "Training recipe: quick-v1 (not the paper's recipe" in summary
    assert "not comparable to the paper's" in capsys.readouterr().out
    assert "| mixphm | 1.000 | 55.0 ± 7.1 (2) |" in summary
    assert "| mixphm+dropout=0.0 | 1.000 | **70.0 ± 0.0 (1)** |" in summary
    with (tmp_path / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [json.loads(r["adapter_options"]) for r in rows] == [{}, {}, {"dropout": 0.0}]
    assert [float(r["lr"]) for r in rows] == [5e-3] * 3  # older records: the method's own rate
    assert (tmp_path / "accuracy_vs_k_pretrained.png").is_file()


def test_estimate_only_prints_what_is_left_and_writes_nothing(tmp_path, capsys):
    import json

    from mixphm.experiments.benchmark import run_dir
    from mixphm.training.recipe import RunSpec

    run = run_dir(tmp_path, RunSpec("mixphm", 64, 13))
    run.mkdir(parents=True)
    record = {
        "method": "mixphm", "k": 64, "seed": 13, "backbone": "pretrained", "recipe": "paper-v1",
        "dev_accuracy": 40.0, "test_accuracy": 50.0, "trainable_parameters": 10,
        "total_parameters": 1000, "train_seconds": 1200.0, "epochs": 300, "best_epoch": 99,
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(record))
    before = sorted(tmp_path.rglob("*"))
    grid = ["--methods", "mixphm", "full", "--ks", "64", "128", "--seeds", "13", "21"]
    argv = ["benchmark", "--out", str(tmp_path), *grid, "--estimate-only"]
    assert cli.main(argv) == 0
    # seven runs left: three at k = 64 (1,200 s each, from the finished one), four at
    # k = 128 (scaled by k: 2,400 s each); 13,200 s over two workers
    assert capsys.readouterr().out == (
        "7 runs to go: about 1.8 h of training with 2 workers; the longest, mixphm k = 128 "
        "seed 13, about 40 min alone\n"
    )
    assert sorted(tmp_path.rglob("*")) == before
    assert cli.main([*argv, "--recipe", "quick-v1"]) == 2
    assert "holds runs made under the recipe paper-v1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv, "--summarize-only"])
    assert "not allowed with argument --estimate-only" in capsys.readouterr().err


def test_argument_errors_answer_without_loading_torch():
    """The package's public names load lazily, so the parser never needs torch."""
    code = (
        "import sys, mixphm.cli\n"
        "try:\n"
        "    mixphm.cli.main(['train', '--method', 'lorax', '--k', '16'])\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "False"]
    assert "invalid choice: 'lorax'" in done.stderr


def test_the_package_names_load_on_first_use():
    import mixphm

    assert mixphm.MixPHMConfig().num_experts == 4
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        mixphm.missing  # noqa: B018


def test_variants_are_a_grid_axis_on_top_of_the_adapter_options(tmp_path, monkeypatch):
    from mixphm.experiments import benchmark

    seen = []
    monkeypatch.setattr(benchmark, "grid_estimate", lambda specs, *_: seen.extend(specs) or "")
    argv = ["benchmark", "--out", str(tmp_path), "--methods", "mixphm", "--ks", "64"]
    argv += ["--seeds", "13", "21", "--adapter-option", "merge=products", "--estimate-only"]
    assert cli.main([*argv, "--variants", "preset", "dropout=0.0+num_experts=1"]) == 0
    assert [(s.seed, s.variant) for s in seen] == [
        (13, "mixphm+merge=products"),
        (13, "mixphm+dropout=0.0+merge=products+num_experts=1"),
        (21, "mixphm+merge=products"),
        (21, "mixphm+dropout=0.0+merge=products+num_experts=1"),
    ]
