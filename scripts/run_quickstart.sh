#!/usr/bin/env bash
# The main job from a fresh clone, in one command: set up (or reuse) .venv, then the quick start.
#
#   bash scripts/run_quickstart.sh [OUT_DIR]      # default OUT_DIR: outputs/quickstart
#
# scripts/env.sh creates the environment and installs only what changed; scripts/quickstart.sh is
# the job itself (tiny SFT -> tiny GRPO MER-R1 -> slow-vs-fast evaluation, CPU, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
merr1_env
# shellcheck disable=SC1091
. "${MERR1_VENV:-$PWD/.venv}/bin/activate"
exec bash scripts/quickstart.sh "$@"
