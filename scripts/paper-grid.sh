#!/usr/bin/env bash
# The paper-recipe grid (experiments.sh step 6), most telling cells first; resumable.
#   bash scripts/paper-grid.sh            run it (finished runs are skipped)
#   bash scripts/paper-grid.sh --commit   run it and commit each finished run as it lands
# The log goes to stdout: the whole grid's remaining estimate, cell by cell, at the start
# (and, under --commit, after each committed run), and the current cell's after every run.
# Under --commit the table, runs.csv and plots are rebuilt and committed with each run.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mixphm=.venv/bin/mixphm
out=results/easy-vqa-paper-v1
seeds="13 21 42 87 100"
methods="mixphm full houlsby pfeiffer adamix compacter lora bitfit ia3 mixphm-ra"
# Every machine starts the grid afresh, and a run's checkpoint does not outlive its machine,
# so the order at k = 500 and 1000 puts the longest runs that can finish within one machine's
# hold first: MixPHM, k = 1000 before 500; full fine-tuning after it, whose k = 1000 runs the
# estimate puts beyond one hold.
grid=(
    "--ks 64 16 32 100 --seeds $seeds --methods $methods --zero-shot"
    "--ks 1000 500 --seeds 13 21 --methods mixphm"
    "--ks 500 1000 --seeds 13 21 --methods full"
)

summarize() {
    $mixphm benchmark --recipe paper-v1 --out $out --summarize-only \
        --ks 16 32 64 100 500 1000 --seeds $seeds --methods $methods > /dev/null
}

estimate_grid() {
    local cells
    echo "the grid's runs left, cell by cell:"
    for cells in "${grid[@]}"; do
        # shellcheck disable=SC2086
        echo "  ${cells%% --seeds*} (${cells##*--methods }): $($mixphm benchmark --recipe paper-v1 --out $out $cells --estimate-only)"
    done
}

commit_finished() {
    # each result.json not yet in git is one finished run: one commit per run
    local result message
    for result in $(git ls-files --others --exclude-standard "$out/runs" | grep 'result.json$'); do
        message=$(.venv/bin/python - "$result" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
options = "".join(f"+{k}={v}" for k, v in sorted(r.get("adapter_options", {}).items()))
print(
    f"Results (paper-v1): {r['method']}{options} k = {r['k']} seed {r['seed']}: test "
    f"{r['test_accuracy']:.2f} (last checkpoint {r['last_test_accuracy']:.2f}), dev "
    f"{r['dev_accuracy']:.2f}, best dev at epoch {r['best_epoch'] + 1} of {r['epochs']}, "
    f"{r['train_seconds'] / 60:.0f} min of training"
)
PY
)
        summarize
        flock .git/mixphm-commit.lock sh -c "git add '$(dirname "$result")' $out/*.csv \
            $out/*.md $out/*.png && git commit -q -m \"\$1\"" _ "$message"
        echo "committed: $message"
        estimate_grid
    done
}

estimate_grid
if [ "${1:-}" = "--commit" ]; then
    ( while sleep 60; do commit_finished || echo "commit failed; retrying in a minute"; done ) &
    watcher=$!
    trap 'kill $watcher 2>/dev/null' EXIT
fi
for cells in "${grid[@]}"; do
    # shellcheck disable=SC2086
    $mixphm benchmark --recipe paper-v1 --out $out --workers 2 $cells
done
[ "${1:-}" = "--commit" ] && commit_finished
