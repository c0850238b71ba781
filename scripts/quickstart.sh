#!/usr/bin/env bash
# merr1 quick start on CPU, no downloads: tiny SFT -> tiny GRPO MER-R1 -> slow-vs-fast evaluation
# of both models, on the generated sample data. 6 minutes (idle) to 32 minutes (busy) on 2 cores.
#
#   bash scripts/quickstart.sh [OUT_DIR]        (default: outputs/quickstart)
#
# Writes OUT_DIR/sft, OUT_DIR/grpo, OUT_DIR/eval/{sft,grpo}/, OUT_DIR/eval/report.json and the
# plots OUT_DIR/plots/*.png (needs matplotlib, the `plot` extra; skipped with a note without it),
# then prints the next commands with this OUT_DIR filled in.
# Every stage is a plain `tune run` of a debug config: copy a line, change a key, rerun one stage.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-outputs/quickstart}"
mkdir -p "$OUT"
start=$(date +%s)

stage() { echo; echo "=== $1 ($(( $(date +%s) - start )) s) ==="; }

next_commands() {
    local out
    out="$(printf '%q' "$1")"  # shell-quoted: the lines can be pasted as they are
    cat <<NEXT

Next (copy and paste; OUT_DIR = $out):
  # a paper variant from the same SFT model, e.g. the Baseline (F1 + format), then its evaluation:
  tune run grpo_mer_r1_distributed --config debug/variants/grpo_baseline_tiny checkpoint_dir=$out/sft/hf output_dir=$out/baseline
  tune run eval_mer --config debug/eval_tiny checkpoint_dir=$out/baseline/hf output_dir=$out/eval/baseline
  # Baseline vs MER-R1, curves and slow-vs-fast diagnostics overlaid:
  python -m merr1.plot $out/grpo $out/baseline $out/eval/grpo $out/eval/baseline --names mer_r1 baseline mer_r1 baseline --out $out/plots_vs_baseline
NEXT
}

stage "1/4 SFT: tiny Qwen2.5-Omni Thinker on the sample SFT split"
tune run sft_distributed --config debug/sft_tiny output_dir="$OUT/sft" save_every_n_steps=null

stage "2/4 GRPO MER-R1 from the SFT model"
tune run grpo_mer_r1_distributed --config debug/grpo_mer_r1_tiny output_dir="$OUT/grpo" checkpoint_dir="$OUT/sft/hf"

stage "3/4 evaluation of the SFT model (slow vs fast)"
tune run eval_mer --config debug/eval_tiny output_dir="$OUT/eval/sft" checkpoint_dir="$OUT/sft/hf" resume=false

stage "4/4 evaluation of the GRPO model (slow vs fast)"
tune run eval_mer --config debug/eval_tiny output_dir="$OUT/eval/grpo" checkpoint_dir="$OUT/grpo/hf" resume=false

python scripts/quickstart_report.py "$OUT"

echo
if python -c "import matplotlib" 2>/dev/null; then
    echo "plots (GRPO training curves; SFT vs GRPO, slow vs fast thinking):"
    python -m merr1.plot "$OUT/sft" "$OUT/grpo" "$OUT/eval/sft" "$OUT/eval/grpo" \
        --names sft grpo sft grpo --out "$OUT/plots" --smooth 0.6
else
    echo "plots skipped: matplotlib is missing (pip install -e \".[plot]\")"
fi
echo "quick start finished in $(( $(date +%s) - start )) s"
next_commands "$OUT"
