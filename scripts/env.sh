#!/usr/bin/env bash
# Create or reuse merr1's virtual environment and install what is missing (issue 16).
#
#   bash scripts/env.sh            # set up only; scripts/run_quickstart.sh and scripts/run_tests.sh call it first
#
# - The environment lives in .venv (override: MERR1_VENV=/path/to/venv), made with `python3 -m venv`
#   (override the interpreter: PYTHON=python3.11; Python 3.10+).
# - Install, in this order: torch==2.13.0 pinned first (a CPU-only machine then takes the small CPU
#   wheel, never the multi-GB CUDA build; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu adds that
#   index where pip has no local CPU wheel), then merr1 itself, editable, with the dev and media extras.
# - A stamp file in the environment records what was installed: a hash of pyproject.toml, the
#   install lines, the Python version, the repo path and TORCH_INDEX_URL. A later run with the same
#   hash installs nothing; any change (a new dependency in pyproject.toml, a moved clone) reinstalls.
#   A failed install leaves no stamp, so the next run tries again. Force a reinstall by deleting
#   .venv/.merr1-install-stamp.
#
# Sourced (`. scripts/env.sh`), it only defines merr1_env; executed, it runs it.

MERR1_TORCH_PIN="torch==2.13.0"
MERR1_EXTRAS=".[dev,media]"

merr1_env() {
    local repo venv python key stamp
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${MERR1_VENV:-$repo/.venv}"
    python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "env.sh: no '$python' interpreter on PATH; install Python 3.10+ or set PYTHON=" >&2
        return 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "env.sh: merr1 needs Python 3.10+, '$python' is $("$python" --version 2>&1)" >&2
        return 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "env.sh: creating the virtual environment $venv"
        "$python" -m venv --clear "$venv" || return 1
    fi
    key="$(
        {
            cat "$repo/pyproject.toml"
            echo "$MERR1_TORCH_PIN $MERR1_EXTRAS ${TORCH_INDEX_URL:-}"
            echo "$repo"
            "$venv/bin/python" -c 'import sys; print(sys.version)'
        } | sha256sum | cut -d' ' -f1
    )" || return 1
    stamp="$venv/.merr1-install-stamp"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        echo "env.sh: $venv is up to date (nothing to install; delete $stamp to force a reinstall)"
        return 0
    fi
    echo "env.sh: installing into $venv"
    rm -f "$stamp"
    (
        cd "$repo" || exit 1
        "$venv/bin/python" -m pip install "$MERR1_TORCH_PIN" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} &&
            "$venv/bin/python" -m pip install -e "$MERR1_EXTRAS"
    ) || {
        echo "env.sh: the install failed (see pip's message above); nothing is recorded, rerun to retry" >&2
        return 1
    }
    echo "$key" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
    echo "env.sh: $venv is ready"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    merr1_env
fi
