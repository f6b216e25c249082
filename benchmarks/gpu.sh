#!/usr/bin/env bash
# The GPU side of benchmarks/README.md in one call of the lent device, whose python3 already
# has torch, transformers and peft: run `bash benchmarks/gpu.sh` there (under 8 minutes is
# the aim; give the call a timeout that leaves a rerun). T5-base shapes, bfloat16, batch
# 16 × 56 tokens, in three modes: eager (h200.json), torch.compile (h200-compiled.json) and
# CUDA graphs, torch.compile's "reduce-overhead" (h200-graphs.json); the JSON files land
# under $OUT. Inductor's on-disk cache lets the third mode reuse the second one's kernels.
# Extra arguments reach every speed.py call (`bash benchmarks/gpu.sh --backbone tiny
# --device cpu` is a quick smoke test).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-benchmarks/results}"
speed() { python3 benchmarks/speed.py --dtype bfloat16 --reps 20 --warmup 5 "$@"; }
if python3 -c "import pytest, torch; assert torch.cuda.is_available()" 2>/dev/null; then
    # a captured CUDA graph reads each step's expert choices (skipped on CPU-only machines)
    python3 -m pytest -q -p no:cacheprovider tests/test_compile.py -k captured_cuda_graph
fi
speed --output "$out/h200.json" "$@"
speed --compile --output "$out/h200-compiled.json" "$@"
speed --cuda-graphs --output "$out/h200-graphs.json" "$@"
