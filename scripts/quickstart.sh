#!/usr/bin/env bash
# merr1 quick start on CPU, no downloads: tiny SFT -> tiny GRPO MER-R1 -> slow-vs-fast evaluation
# of both models, on the generated sample data. About 6-8 minutes on 2 cores.
#
#   bash scripts/quickstart.sh [OUT_DIR]        (default: outputs/quickstart)
#
# Writes OUT_DIR/sft, OUT_DIR/grpo, OUT_DIR/eval/{sft,grpo}/ and OUT_DIR/eval/report.json.
# Every stage is a plain `tune run` of a debug config: copy a line, change a key, rerun one stage.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-outputs/quickstart}"
mkdir -p "$OUT"
start=$(date +%s)

stage() { echo; echo "=== $1 ($(( $(date +%s) - start )) s) ==="; }

stage "1/4 SFT: tiny Qwen2.5-Omni Thinker on the sample SFT split"
tune run sft_distributed --config debug/sft_tiny output_dir="$OUT/sft" save_every_n_steps=null

stage "2/4 GRPO MER-R1 from the SFT model"
tune run grpo_mer_r1_distributed --config debug/grpo_mer_r1_tiny output_dir="$OUT/grpo" checkpoint_dir="$OUT/sft/hf"

stage "3/4 evaluation of the SFT model (slow vs fast)"
tune run eval_mer --config debug/eval_tiny output_dir="$OUT/eval/sft" checkpoint_dir="$OUT/sft/hf" resume=false

stage "4/4 evaluation of the GRPO model (slow vs fast)"
tune run eval_mer --config debug/eval_tiny output_dir="$OUT/eval/grpo" checkpoint_dir="$OUT/grpo/hf" resume=false

python scripts/quickstart_report.py "$OUT"
echo "quick start finished in $(( $(date +%s) - start )) s"
