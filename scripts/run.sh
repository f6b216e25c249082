#!/usr/bin/env bash
# Sets up .venv, then runs the main job on the embedded offline default: a small benchmark
# (the paper's MixPHM, i.e. mixphm-ra; Pfeiffer; LoRA; full fine-tuning; k = 100; seed 13) on
# easy-VQA, under the short quick-v1 recipe (the paper's, paper-v1, takes hours on a 2-core
# CPU), then says in one sentence what the table shows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out=results/quick
.venv/bin/mixphm benchmark --recipe quick-v1 --out $out --ks 100 \
    --methods mixphm-ra pfeiffer lora full --seeds 13 "$@"
.venv/bin/python - "$out/runs.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["method"] != "zero-shot"]
best = max(rows, key=lambda r: float(r["test_accuracy"]))
paper = {r["k"]: float(r["test_accuracy"]) for r in rows if r["method"] == "mixphm-ra"}
shown = ", ".join(f"{paper[k]:.1f} at k = {k}" for k in sorted(paper, key=int))
print(
    f"In short: {best['method']} scores best ({float(best['test_accuracy']):.1f} at k = "
    f"{best['k']}, one seed, the short quick-v1 recipe); the paper's MixPHM scores {shown}. "
    "The paper-recipe table over five seeds is results/easy-vqa-paper-v1/summary.md "
    "(README, Results)."
)
PY
