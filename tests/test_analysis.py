"""The redundancy analysis: CKA per adapter layer, its CSV and PNG, and its command."""

import csv

import torch
from tiny_models import t5

from mixphm import MixPHMConfig, add_mixphm, cli, mixphm_adapters
from mixphm.analysis import redundancy_by_layer, write_report


def test_cka_per_layer_on_a_tiny_t5(tmp_path):
    torch.manual_seed(0)
    built = t5()
    model = add_mixphm(built.model, MixPHMConfig(reduction_factor=4, phm_dim=2, phm_rank=2))
    masks = {
        "encoder": torch.ones_like(built.batch["input_ids"], dtype=torch.bool),
        "decoder": torch.ones_like(built.batch["labels"], dtype=torch.bool),
    }
    rows = redundancy_by_layer(model, [(built.batch, masks)])
    assert [r.layer for r in rows] == [p for p, _ in mixphm_adapters(model)]
    assert {r.stack for r in rows} == {"encoder", "decoder"}
    assert all(0.0 <= r.cka <= 1.0 + 1e-9 for r in rows)
    assert rows[0].tokens == 10 and rows[-1].tokens == 6
    table, plot = write_report({"fresh": rows}, {"fresh": rows}, tmp_path)
    with table.open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert plot.stat().st_size > 1000


def test_analyze_needs_something_to_analyze(capsys):
    assert cli.main(["analyze", "--samples", "4", "--output", "unused"]) == 2
    assert "nothing to analyze" in capsys.readouterr().err


def test_analyze_rejects_a_bad_sample_count(capsys):
    assert cli.main(["analyze", "--fresh", "mixphm", "--samples", "0"]) == 2
    assert "--samples must be ≥ 1" in capsys.readouterr().err


def test_analyze_command_on_the_default_backbone(tmp_path, capsys):
    args = ["analyze", "--fresh", "mixphm", "--samples", "8", "--output", str(tmp_path)]
    assert cli.main(args) == 0
    assert "fresh mixphm" in capsys.readouterr().out
    assert (tmp_path / "redundancy.png").is_file()
    assert "Produced by `mixphm analyze --fresh mixphm" in (tmp_path / "redundancy.md").read_text()
