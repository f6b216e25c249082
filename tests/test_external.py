"""``mixphm train`` on data and a backbone the user brings: a VL-T5 checkpoint, a T5
tokenizer folder, VL-T5 split files and an ``*_obj36.h5`` file, all written here tiny."""

import json

import pytest
from test_vlt5 import IMAGES, obj36, released_state, tiny_vlt5  # noqa: F401 (obj36: fixture)
from tiny_processors import tokenizer

from mixphm import cli
from mixphm.backbones.vlt5 import VISUAL_SENTINELS, VLT5

WORDS = ["red", "blue", "yes", "no"]


def split_file(path, questions: int, offset: int = 0):
    entries = [
        {
            "question_id": offset + i,
            "img_id": IMAGES[i % len(IMAGES)],
            "sent": "what color is the shape ?",
            "label": {WORDS[i % 4]: 1.0, WORDS[(i + 1) % 4]: 0.3},
            "answers": [{"answer": WORDS[i % 4]}] * 10,
        }
        for i in range(questions)
    ]
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture
def vlt5_files(tmp_path, obj36):  # noqa: F811
    words = tokenizer("<image>")
    words.save_pretrained(tmp_path / "tokenizer")
    vocab = len(words) + VISUAL_SENTINELS
    torch_path = tmp_path / "Epoch30.pth"
    import torch

    torch.save(released_state(tiny_vlt5(vocab_size=vocab)), torch_path)
    return [
        "--backbone", "vlt5", "--checkpoint", str(torch_path),
        "--tokenizer", str(tmp_path / "tokenizer"), "--dataset", "vqa-v2",
        "--train-file", str(split_file(tmp_path / "train.json", 12)),
        "--test-file", str(split_file(tmp_path / "minival.json", 4, offset=100)),
        "--features", str(obj36.path),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip


def test_vlt5_trains_from_the_command_line_and_beams_reach_generate(
    vlt5_files, tmp_path, capsys, monkeypatch
):
    seen = []
    generate = VLT5.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs["num_beams"])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(VLT5, "generate", spy)
    argv = ["train", *vlt5_files, "--method", "mixphm", "--k", "4", "--max-epochs", "2"]
    assert cli.main([*argv, "--num-beams", "3", "--max-new-tokens", "2"]) == 0
    result = json.loads(
        (tmp_path / "out/runs/paper-v1/vlt5/mixphm/k4/seed13/result.json").read_text()
    )
    assert result["epochs"] == 2 and 0 <= result["test_accuracy"] <= 100
    assert seen and set(seen) == {3}
    assert "Test accuracy (%) on vqa-v2" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "easy-vqa"], "backbone vlt5 does not run on easy-vqa"),
        (["--checkpoint", "missing.pth"], "missing.pth: VL-T5 checkpoint not found"),
        (["--test-file", "nowhere.json"], "nowhere.json: file not found"),
        (["--k", "7"], "k=7 needs 14 questions (k to train, k for dev) but the vqa-v2"),
    ],
)
def test_bad_files_and_combinations_fail_with_one_line(vlt5_files, extra, message, capsys):
    argv = ["train", *vlt5_files, "--method", "mixphm", "--k", "4", *extra]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_an_unknown_backbone_is_rejected_with_usage(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--backbone", "vl-bart", "--method", "mixphm", "--k", "16"])
    assert "unknown backbone 'vl-bart'" in capsys.readouterr().err


def test_two_torchrun_ranks_train_one_run_and_rank_zero_writes_the_table(vlt5_files, tmp_path):
    from two_ranks import torchrun_two_ranks

    argv = ["train", *vlt5_files, "--method", "mixphm", "--k", "4", "--max-epochs", "2"]
    done = torchrun_two_ranks("-m", "mixphm.cli", *argv)
    out = tmp_path / "out"
    result = json.loads((out / "runs/paper-v1/vlt5/mixphm/k4/seed13/result.json").read_text())
    assert result["epochs"] == 2
    assert len((out / "runs.csv").read_text().splitlines()) == 2  # the header and the run
    assert done.stdout.count("Test accuracy (%) on vqa-v2") == 1  # printed by rank 0 only


def test_torchrun_ranks_are_refused_together_and_leave_no_process_group_behind(tmp_path):
    from two_ranks import TESTS, torchrun_two_ranks

    from mixphm.experiments.benchmark import training_lock

    with training_lock(tmp_path):
        torchrun_two_ranks(str(TESTS / "lock_worker.py"), str(tmp_path), timeout=300)
    for rank in (0, 1):  # rank 1 holds no lock file: it learns of the refusal from rank 0
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["outcome"].startswith("another mixphm process is training into")
        assert not record["group_alive"]
