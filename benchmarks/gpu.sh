#!/usr/bin/env bash
# The GPU side of benchmarks/README.md in one call of the lent device, whose python3 already
# has torch, transformers and peft: run `bash benchmarks/gpu.sh` there (about 5 minutes);
# the JSON files land under $OUT. Extra arguments reach every speed.py call
# (`bash benchmarks/gpu.sh --backbone tiny --device cpu` is a quick smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-benchmarks/results}"
speed() { python3 benchmarks/speed.py --reps 20 --warmup 5 "$@"; }
speed --dtype bfloat16 --output "$out/h200.json" "$@"
speed --dtype float32 --output "$out/h200-fp32.json" "$@"
speed --dtype bfloat16 --compile --output "$out/h200-compiled.json" "$@"
