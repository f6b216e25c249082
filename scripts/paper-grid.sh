#!/usr/bin/env bash
# The paper-recipe grids (experiments.sh steps 6-7), most telling cells first; resumable.
#   bash scripts/paper-grid.sh [--grid G]            run grid G (finished runs are skipped)
#   bash scripts/paper-grid.sh [--grid G] --commit   ... and commit each finished run as it lands
#   bash scripts/paper-grid.sh [--grid G] --carry    commit G's runs in flight now
# Grids: table (default; the paper-v1 table), ablation (MixPHM's parts at k = 64) and lr
# (each method's learning rate, chosen on dev).
# The log goes to stdout: the whole grid's remaining estimate, cell by cell, at the start
# (and, under --commit, after each committed run), and the current cell's after every run.
# Under --commit the table, runs.csv and plots are rebuilt and committed with each run, and
# every hour the checkpoints of the runs in flight are carried (see carry_in_flight).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mixphm=.venv/bin/mixphm
seeds="13 21 42 87 100"
verb=benchmark
grid_name=table
if [ "${1:-}" = "--grid" ]; then
    grid_name=$2
    shift 2
fi
case $grid_name in
table)
    out=results/easy-vqa-paper-v1
    methods="mixphm full houlsby pfeiffer adamix compacter lora bitfit ia3 mixphm-ra"
    table_options="--ks 16 32 64 100 500 1000 --seeds $seeds --methods $methods"
    # A run's checkpoint outlives its machine only if carried (committed), which full
    # fine-tuning's is too large for: MixPHM's k = 500 and 1000 runs come first, as they go
    # on across machines; full fine-tuning's after them, each of which must finish within
    # one machine's hold, so those train one at a time, with both cores (a k = 1000 run
    # alone trains ~27 s per epoch here, two side by side ~42 s each).
    # Each cell: the number of workers, then its benchmark options.
    grid=(
        "2 --ks 64 16 32 100 --seeds $seeds --methods $methods --zero-shot"
        "2 --ks 500 1000 --seeds 13 21 --methods mixphm"
        "1 --ks 500 1000 --seeds 13 21 --methods full"
    )
    ;;
ablation)
    # MixPHM without the regularizer (the reference module) changed one part at a time, at
    # k = 64; seed-major, so that an unfinished grid has every variant on its first seeds.
    # The reference's own runs are the table's (results/easy-vqa-paper-v1).
    out=results/mixphm-ablation-paper-v1
    variants="dropout=0.0 num_experts=1 phm_rank=1 phm_dim=2 rule_per_layer=true"
    variants+=" rule_init_std=0.1 zero_init_up=true weight_decay=false"
    table_options="--ks 64 --seeds $seeds --methods mixphm --variants $variants"
    grid=("2 $table_options")
    ;;
lr)
    # Each method's learning rate chosen on dev at k = 64 with seeds 13, 21 and 42 (its
    # rate grid in configs/methods.toml); the runs at the methods' own rates are the table's.
    out=results/lr-selection-paper-v1
    verb=select-lr
    table_options="--reuse results/easy-vqa-paper-v1"
    grid=("2 $table_options")
    ;;
*)
    echo "unknown grid $grid_name; choose table, ablation or lr" >&2
    exit 2
    ;;
esac

summarize() {
    # shellcheck disable=SC2086
    $mixphm $verb --recipe paper-v1 --out $out --summarize-only $table_options > /dev/null
    if [ "$grid_name" = ablation ]; then
        $mixphm compare --run results/easy-vqa-paper-v1/runs/paper-v1/pretrained/mixphm \
            "$out/runs" --reference mixphm --ks 64 --output $out > /dev/null
    fi
}

estimate_grid() {
    local cells workers options
    echo "the grid's runs left, cell by cell:"
    for cells in "${grid[@]}"; do
        read -r workers options <<<"$cells"
        # shellcheck disable=SC2086
        echo "  ${options%% --seeds*} (${options##*--methods }, $workers at a time): $($mixphm $verb --recipe paper-v1 --out $out --workers $workers $options --estimate-only)"
    done
}

commit_finished() {
    # each result.json not yet in git is one finished run: one commit per run
    local result message
    for result in $(git ls-files --others --exclude-standard "$out/runs" | grep 'result.json$'); do
        message=$(.venv/bin/python - "$result" <<'PY'
import json, sys
from mixphm.training.recipe import record_variant
r = json.load(open(sys.argv[1]))
print(
    f"Results (paper-v1): {record_variant(r)} k = {r['k']} seed {r['seed']}: test "
    f"{r['test_accuracy']:.2f} (last checkpoint {r['last_test_accuracy']:.2f}), dev "
    f"{r['dev_accuracy']:.2f}, best dev at epoch {r['best_epoch'] + 1} of {r['epochs']}, "
    f"{r['train_seconds'] / 60:.0f} min of training"
)
PY
)
        summarize
        shopt -s nullglob
        files=("$(dirname "$result")" "$out"/*.csv "$out"/*.md "$out"/*.png)
        shopt -u nullglob
        flock .git/mixphm-commit.lock sh -c 'message=$1; shift
            git add -- "$@" && git commit -q -m "$message"' _ "$message" "${files[@]}"
        echo "committed: $message"
        estimate_grid
    done
}

carry_in_flight() {
    # Commit the checkpoints of the runs in flight that git can hold, so that the next
    # machine resumes them where they were (a resumed run ends exactly as an uninterrupted
    # one); a run's own result commit removes its checkpoint again.
    local checkpoints message
    checkpoints=$(find $out/runs -name checkpoint.pt -size -${carry_limit_mb}M)
    find $out/runs -name checkpoint.pt -size +$((carry_limit_mb - 1))M \
        -printf "not carried (over $carry_limit_mb MB, lost with this machine): %h\n"
    [ -n "$checkpoints" ] || return 0
    # shellcheck disable=SC2086
    message=$(.venv/bin/python - $checkpoints <<'PY'
import sys
from pathlib import Path
from mixphm.training import checkpoint
from mixphm.training.recipe import run_label
runs = []
for path in sys.argv[1:]:
    saved = checkpoint.load(Path(path), mmap=True)
    if saved is not None:  # None: the run finished since it was listed
        runs.append(f"{run_label(saved['settings'])} at epoch {saved['state']['epoch']}")
print("Checkpoints in flight (paper-v1), carried to the next machine: " + "; ".join(runs))
PY
)
    # shellcheck disable=SC2086
    flock .git/mixphm-commit.lock sh -c 'message=$1; shift
        for checkpoint; do [ -f "$checkpoint" ] && git add -f "$checkpoint"; done
        git diff --cached --quiet || { git commit -q -m "$message" && echo "carried: $message"; }
    ' _ "$message" $checkpoints
}

carry_limit_mb=16  # a parameter-efficient run's checkpoint is 0.5-5 MB, full fine-tuning's ~370
if [ "${1:-}" = "--carry" ]; then
    carry_in_flight
    exit
fi
estimate_grid
if [ "${1:-}" = "--commit" ]; then
    (
        minutes=0
        while sleep 60; do
            commit_finished || echo "commit failed; retrying in a minute"
            minutes=$((minutes + 1))
            if [ $((minutes % 60)) = 0 ]; then
                carry_in_flight || echo "carrying the runs in flight failed; retrying in an hour"
            fi
        done
    ) &
    watcher=$!
    trap 'kill $watcher 2>/dev/null' EXIT
fi
for cells in "${grid[@]}"; do
    read -r workers options <<<"$cells"
    # shellcheck disable=SC2086
    $mixphm $verb --recipe paper-v1 --out $out --workers $workers $options
done
[ "${1:-}" = "--commit" ] && commit_finished
