#!/usr/bin/env bash
# The one GPU check of merr1 (issue 17): install, verify imports, then the `gpu` tests, the decode
# benchmark, the GRPO rollouts/s benchmark and the training benchmark, each under its own time
# limit, then ONE table (stdout, and gpu_check.md / gpu_check.json in $OUT if set).
#
# Made for the device tool's machine (one H100/H200; image with Python 3.12, torch 2.11,
# transformers 5.17; no network). Prepare the wheels here first, then run it there:
#
#     bash benchmarks/fetch_gpu_wheels.sh                      # -> .whl/ (~21 MiB, git-ignored)
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# It installs .whl/*.whl with --no-deps into /tmp/merr1_site (put first on PYTHONPATH; the image's
# torch is never replaced) and says what it installed. Time limits (seconds; override by
# environment): LIMIT_INSTALL 30, LIMIT_IMPORTS 40, LIMIT_TESTS 90, LIMIT_DECODE 95, LIMIT_GRPO 120,
# LIMIT_TRAIN 105: 480 s (8 minutes) at most, plus a second for the summary; install and imports
# usually take ~15 s of their 70. A part that hits its limit is stopped; what it measured by then
# (its JSON is written row by row / step by step) still goes into the table.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT_DIR=${OUT:-/tmp/merr1_gpu_check}
mkdir -p "$OUT_DIR"
LOG=$OUT_DIR/gpu_check.log
SITE=/tmp/merr1_site
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
: "${LIMIT_INSTALL:=30}" "${LIMIT_IMPORTS:=40}" "${LIMIT_TESTS:=90}" "${LIMIT_DECODE:=95}" "${LIMIT_GRPO:=120}"
: "${LIMIT_TRAIN:=105}"
START=$(date +%s)
exec > >(tee -a "$LOG") 2>&1

part() {  # part NAME LIMIT COMMAND...: run with a time limit, record its status and seconds
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit}s): $*"
    local t0=$(date +%s)
    timeout --kill-after=15 "$limit" "$@"
    local rc=$?
    local status=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="stopped at the ${limit}s limit"
    [ $rc -ne 0 ] && [ "$status" = ok ] && status="failed (exit $rc)"
    echo "$name	$status	$(( $(date +%s) - t0 ))" >> "$OUT_DIR/parts.tsv"
    echo "== $name: $status after $(( $(date +%s) - t0 ))s"
}

rm -f "$OUT_DIR/parts.tsv"
echo "== merr1 gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== installing (pip --no-deps --target $SITE):"
ls -1 .whl/*.whl 2>/dev/null || { echo "no .whl/*.whl: run benchmarks/fetch_gpu_wheels.sh here and carry .whl"; exit 2; }
part install "$LIMIT_INSTALL" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
export PYTHONPATH=$SITE:$REPO

part imports "$LIMIT_IMPORTS" "$PY" benchmarks/gpu_check_summary.py --check-imports --out "$OUT_DIR"

part gpu_tests "$LIMIT_TESTS" "$PY" -m pytest -m gpu tests/merr1 -q -p no:cacheprovider -rfEs \
    --junitxml="$OUT_DIR/gpu_tests.xml"

part decode "$LIMIT_DECODE" "$PY" benchmarks/bench_generation_gpu.py --batches 8 32 64 --samples 8 \
    --prompt-len 512 --new-tokens 128 --repeats 2 --backends eager,cuda_graph,transformers \
    --json "$OUT_DIR/decode.json"

part grpo "$LIMIT_GRPO" "$PY" benchmarks/bench_grpo_gpu.py --steps 2 --warmup 1 --json "$OUT_DIR/grpo.json"

part train "$LIMIT_TRAIN" "$PY" benchmarks/bench_train_gpu.py --steps 4 --warmup 2 \
    --configs bf16,float8_tensorwise,float8_rowwise,bf16+compile,float8_tensorwise+compile,float8_rowwise+compile \
    --json "$OUT_DIR/train.json"

echo
echo "== summary ($(( $(date +%s) - START ))s so far)"
"$PY" benchmarks/gpu_check_summary.py --out "$OUT_DIR"
