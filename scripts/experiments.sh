#!/usr/bin/env bash
# The experiments whose results are committed under results/, in the order they were run.
# Every command is resumable: finished runs are skipped, unfinished ones resume.
# Steps 1-5 ran under the short recipe quick-v1 (results/easy-vqa, results/mixphm-ablation);
# steps 6-8 are under the paper's recipe, paper-v1 (results/easy-vqa-paper-v1 is the headline
# table; results/mixphm-ablation-paper-v1 and results/lr-selection-paper-v1 ask why).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mixphm=.venv/bin/mixphm
seeds="13 21 42 87 100"

# 1. Does pretraining help? Zero-shot, MixPHM and full fine-tuning at k = 16, 64 with the
#    pretrained backbone and with the un-pretrained composition of the same encoders.
$mixphm benchmark --recipe quick-v1 --out results/easy-vqa --backbones pretrained unpretrained \
    --methods mixphm full --ks 16 64 --seeds $seeds --zero-shot --workers 2

# 2. The redundancy regularizer: MixPHM with it at k = 64, then CKA(h, h_a) per layer for
#    fresh adapters and for the trained runs with and without it.
$mixphm benchmark --recipe quick-v1 --out results/easy-vqa --methods mixphm-ra --ks 64 --seeds $seeds --workers 2
runs=()
for method in mixphm mixphm-ra; do
    for seed in $seeds; do runs+=("results/easy-vqa/runs/quick-v1/pretrained/$method/k64/seed$seed"); done
done
$mixphm analyze --fresh mixphm --run "${runs[@]}" --samples 512 --output results/redundancy

# 3. The low-resource table: every method at every k. Runs go k by k, seed by seed; k = 500
#    runs train for 7-20 minutes each on a 2-core CPU, so this step spans sessions (an
#    interrupted grid resumes; `--summarize-only` rebuilds the table from finished runs).
$mixphm benchmark --recipe quick-v1 --out results/easy-vqa --ks 16 32 64 100 500 1000 --seeds $seeds --workers 2 \
    --methods full bitfit lora ia3 houlsby pfeiffer compacter adamix mixphm mixphm-ra

# 4. Why MixPHM trails its single-expert relatives (investigated on dev): the merged mixture
#    against each expert alone, then MixPHM without dropout and with one expert (k = 64), and
#    where on the test split each variant gains (against Pfeiffer and full FT, same seeds).
runs=()
for seed in $seeds; do runs+=("results/easy-vqa/runs/quick-v1/pretrained/mixphm/k64/seed$seed"); done
$mixphm experts --run "${runs[@]}" --output results/mixphm-ablation
$mixphm benchmark --recipe quick-v1 --out results/mixphm-ablation/dropout-0 --methods mixphm --ks 64 \
    --seeds 13 21 42 --workers 1 --adapter-option dropout=0.0
$mixphm benchmark --recipe quick-v1 --out results/mixphm-ablation/one-expert --methods mixphm --ks 64 \
    --seeds 13 21 42 --workers 1 --adapter-option num_experts=1
#    The same two at k = 1000 (seeds 13 and 21), where AdaMix's four experts are not behind.
$mixphm benchmark --recipe quick-v1 --out results/mixphm-ablation/dropout-0 --methods mixphm --ks 1000 \
    --seeds 13 21 --workers 2 --adapter-option dropout=0.0
$mixphm benchmark --recipe quick-v1 --out results/mixphm-ablation/one-expert --methods mixphm --ks 1000 \
    --seeds 13 21 --workers 2 --adapter-option num_experts=1
runs=()
for method in mixphm pfeiffer full; do
    for seed in 13 21 42; do runs+=("results/easy-vqa/runs/quick-v1/pretrained/$method/k64/seed$seed"); done
done
for method in mixphm pfeiffer full adamix compacter; do
    runs+=("results/easy-vqa/runs/quick-v1/pretrained/$method/k1000/seed13")
done
runs+=(results/easy-vqa/runs/quick-v1/pretrained/{mixphm,full}/k1000/seed21)
$mixphm breakdown --run "${runs[@]}" results/mixphm-ablation/dropout-0/runs \
    results/mixphm-ablation/one-expert/runs --output results/mixphm-ablation

# 5. Where the gap is: test accuracy per answer type and answer collapse of the finished runs
#    (reads each run's test_predictions.json; computes it from the weights where missing).
$mixphm breakdown --run results/easy-vqa/runs/quick-v1/pretrained --ks 64 100 500 1000 \
    --output results/easy-vqa
#    Seed by seed at k = 1000 (the README's per-seed figures), with the ablations' seeds.
for seed in $seeds; do
    runs=(results/easy-vqa/runs/quick-v1/pretrained)
    case $seed in 13 | 21) runs+=(results/mixphm-ablation/{dropout-0,one-expert}/runs) ;; esac
    $mixphm breakdown --run "${runs[@]}" --ks 1000 --seeds "$seed" \
        --output "results/easy-vqa/k1000-by-seed/seed$seed"
done

# 6. The low-resource table under the paper's recipe (paper-v1): all ten methods at k = 64 (the
#    paper's headline setting) first, then 16, 32 and 100, with all five seeds; then MixPHM and
#    full fine-tuning at k = 500 and 1000 (seeds 13 and 21). Tens of hours on a 2-core CPU:
#    scripts/paper-grid.sh runs this step in the background and commits each finished run.
bash scripts/paper-grid.sh

# 7. Why MixPHM trails the adapters under paper-v1: the reference module (mixphm, no L_Ra)
#    changed one part at a time at k = 64, five seeds, then compared seed by seed with the
#    reference's own runs (the table's). scripts/paper-grid.sh --grid ablation --commit runs
#    it in the background and rebuilds the comparison with every committed run.
bash scripts/paper-grid.sh --grid ablation
$mixphm compare --run results/easy-vqa-paper-v1/runs/paper-v1/pretrained/mixphm \
    results/mixphm-ablation-paper-v1/runs --reference mixphm --ks 64 \
    --output results/mixphm-ablation-paper-v1

# 8. Each method's learning rate, chosen on dev at k = 64 with seeds 13, 21 and 42 (the grids
#    in configs/methods.toml); the runs at the methods' own rates are the table's.
bash scripts/paper-grid.sh --grid lr
