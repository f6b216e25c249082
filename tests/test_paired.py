"""Paired comparisons: the t quantile, the interval, and the compare command's table."""

import json
import statistics

import pytest

from mixphm import cli
from mixphm.experiments.paired import paired, t_quantile_975


def test_the_t_quantile_matches_the_tables():
    assert t_quantile_975(4) == 2.776
    for degrees, tabulated in ((15, 2.131), (30, 2.042), (120, 1.980)):
        assert t_quantile_975(degrees) == pytest.approx(tabulated, abs=0.002)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile_975(0)


def test_differences_pair_by_seed_and_carry_a_t_interval():
    variant = {13: 60.0, 21: 70.0, 42: 65.0, 87: 50.0}
    reference = {13: 58.0, 21: 69.0, 42: 61.0, 100: 10.0}
    pair = paired(variant, reference)
    assert pair.differences == {13: 2.0, 21: 1.0, 42: 4.0}  # seeds 87 and 100 are unpaired
    half = 4.303 * statistics.stdev([2.0, 1.0, 4.0]) / 3**0.5
    assert pair.interval() == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert paired({13: 1.0}, {13: 0.0}).interval() is None


def finished(root, variant_folder, method, seed, test, dev, loss=None, **options):
    run = root / variant_folder / "k64" / f"seed{seed}"
    run.mkdir(parents=True)
    record = {
        "method": method, "k": 64, "seed": seed, "backbone": "pretrained",
        "dev_accuracy": dev, "test_accuracy": test, "trainable_parameters": 10,
        "total_parameters": 1000, "train_seconds": 1.0, "epochs": 3, "best_epoch": 1,
        "recipe": "paper-v1", "adapter_options": options,
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(record))
    if loss is not None:
        history = {"dev_epochs": [3], "dev_accuracy": [dev], "train_loss": loss}
        (run / "history.json").write_text(json.dumps(history))


def test_compare_writes_paired_differences_fit_epochs_and_a_loss_plot(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, test, dev in ((13, 60.0, 62.0), (21, 50.0, 55.0)):
        finished(runs, "mixphm", "mixphm", seed, test, dev, loss=[1.0, 0.5, 0.2])
    finished(runs, "v", "mixphm", 13, 64.0, 61.0, loss=[1.0, 0.05, 0.01], dropout=0.0)
    finished(runs, "v", "mixphm", 21, 56.0, 57.0, dropout=0.0)
    argv = ["compare", "--run", str(runs), "--reference", "mixphm", "--output", str(tmp_path)]
    assert cli.main(argv) == 0
    table = (tmp_path / "compare.md").read_text()
    half = 12.706 * statistics.stdev([4.0, 6.0]) / 2**0.5
    assert "| mixphm | 64 | 2 | 55.0 ± 7.1 | 58.5 ± 4.9 | reference | reference |" in table
    assert (
        f"| mixphm+dropout=0.0 | 64 | 2 | 60.0 ± 5.7 | 59.0 ± 2.8 | +5.0 [{5 - half:+.1f}, "
        f"{5 + half:+.1f}] | +0.5 [-18.6, +19.6] | 13: +4.0, 21: +6.0 | 13: 2, 21: – |"
    ) in table
    assert "| 13: never, 21: never |" in table
    assert (tmp_path / "loss_k64.png").is_file()
    capsys.readouterr()
    assert cli.main([*argv[:-4], "--reference", "lora", "--output", str(tmp_path)]) == 2
    assert "no finished run of the reference 'lora'" in capsys.readouterr().err
