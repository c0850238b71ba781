#!/usr/bin/env bash
# Download the wheels merr1 needs on the lent GPU machine beyond its image into .whl/ (git-ignored),
# for benchmarks/gpu_check.sh: pass `carry: [".whl"]` to the device tool's `run`.
#
# The image (KINDS.md of the device tool) has Python 3.12 (x86-64), torch 2.11, transformers 5.17,
# tokenizers, safetensors, huggingface_hub, sentencepiece, pyyaml, tqdm, pandas, pyarrow, xxhash,
# fsspec, requests; it lacks torchtune, torchao, omegaconf and HF datasets (which `import torchtune`
# pulls in) and their small pure-Python dependencies dill, multiprocess and torchdata. Every wheel
# is installed there with --no-deps (the image's torch must not be replaced): the list below is
# complete on purpose, and gpu_check.sh verifies the imports.
#
#     bash benchmarks/fetch_gpu_wheels.sh          # ~23 MB, must stay far below the 64 MiB carry limit
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl
MAX_BYTES=$((40 * 1024 * 1024))
WHEELS=(
    transformers==5.23.0     # merr1's tested version (the image has 5.17)
    torchtune==0.6.1         # recipes: torchtune.config and the tune CLI
    torchao==0.15.0          # float8 training (>= 0.16 breaks torchtune 0.6.1, docs/design_notes.md)
    torchdata==0.11.0        # pinned by torchtune 0.6.1
    datasets==5.2.0          # imported by `import torchtune`
    dill==0.4.1              # datasets
    multiprocess==0.70.19    # datasets
    omegaconf==2.4.0         # torchtune.config
)
rm -rf "$DEST"
mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "${WHEELS[@]}"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
ls -l "$DEST"
echo "total: $((total / 1024 / 1024)) MiB in $(ls "$DEST"/*.whl | wc -l) wheels"
if [ "$total" -gt "$MAX_BYTES" ]; then
    echo "error: the wheels exceed $((MAX_BYTES / 1024 / 1024)) MiB (the device tool carries 64 MiB in all)" >&2
    exit 1
fi
