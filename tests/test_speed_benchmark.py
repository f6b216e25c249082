"""The speed benchmark runs end to end and reports every ratio the targets need, each the
median of its interleaved rounds."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "speed.py"
RATIOS = {
    "train_mixphm_over_lora",
    "train_mixphm_over_full",
    "train_mixphm_over_floor",
    "infer_merged_over_adapter",
    "infer_deployed_over_adapter",
    "infer_merged_over_base",
    "infer_deployed_over_base",
    "phm_layer_speedup_over_naive",
    "phm_layer_over_dense",
    "phm_layer_naive_over_dense",
    "optim_expert_over_fused_adamw",
    "peak_memory_mixphm_over_full",
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_speed_benchmark_on_a_tiny_t5(tmp_path, dtype):
    spec = importlib.util.spec_from_file_location("speed", SCRIPT)
    speed = importlib.util.module_from_spec(spec)
    sys.modules["speed"] = speed  # its dataclasses look their module up
    spec.loader.exec_module(speed)
    output = tmp_path / "tiny.json"
    argv = ["--backbone", "tiny", "--device", "cpu", "--dtype", dtype, "--reps", "3"]
    speed.main([*argv, "--output", str(output)])
    report = json.loads(output.read_text())
    assert set(report["ratios"]) >= RATIOS
    assert all(value > 0 for value in report["ratios"].values())
    for name, (low, high) in report["ratio_spread"].items():  # the median of the rounds
        assert low <= report["ratios"][name] <= high, name
    # MixPHM trains 0.4% of the weights: its step holds far less than full fine-tuning's
    assert report["ratios"]["peak_memory_mixphm_over_full"] < 1.0
    assert report["machine"]["device"] == "cpu"
