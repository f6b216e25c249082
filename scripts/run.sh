#!/usr/bin/env bash
# Sets up .venv, then runs the main job on the embedded offline default: a small benchmark
# (MixPHM, Pfeiffer, LoRA, full fine-tuning; k = 16, 64; seed 13) on easy-VQA, under the
# short quick-v1 recipe (the paper's, paper-v1, would take hours on a 2-core CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/mixphm benchmark --recipe quick-v1 --out results/quick "$@"
