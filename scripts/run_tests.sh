#!/usr/bin/env bash
# The test suite from a fresh clone, in one command: set up (or reuse) .venv, then pytest.
#
#   bash scripts/run_tests.sh [PYTEST_ARGS...]     # e.g. -m slow, or tests/merr1/rewards
#
# Exits with pytest's status (5 = no tests collected). .ci/run calls exactly `bash scripts/run_tests.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
merr1_env
# shellcheck disable=SC1091
. "${MERR1_VENV:-$PWD/.venv}/bin/activate"
python -c 'import torch, transformers, torchao, torchtune; print(f"torch {torch.__version__}, transformers {transformers.__version__}, torchao {torchao.__version__}, torchtune {torchtune.__version__}")'
exec python -m pytest "$@"
