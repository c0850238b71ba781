"""The two-command setup (issue 16): scripts/env.sh, run_quickstart.sh, run_tests.sh and .ci/run.

Cheap: the scripts run in a copy of the repo's script files with a FAKE interpreter on PATH.
``python3 -m venv DIR`` makes a fake environment whose ``python`` logs every ``-m pip`` /
``-m pytest`` call to a file instead of installing or testing anything (exit status from
FAKE_PIP_STATUS / FAKE_PYTEST_STATUS), so the install order, the stamp (no reinstall when nothing
changed, a reinstall when pyproject.toml changes, a retry after a failed install) and the exit
statuses are checked in about a second. The real install is what CI runs (`.ci/run`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tune_helpers import REPO_ROOT

# The fake interpreter: `-m venv DIR` builds a fake environment; anything else runs the real Python.
FAKE_PYTHON3 = r"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    dir="${@: -1}"
    mkdir -p "$dir/bin"
    cp "$FAKE_VENV_PYTHON" "$dir/bin/python"
    chmod +x "$dir/bin/python"
    printf 'export PATH="%s/bin:$PATH"\n' "$dir" > "$dir/bin/activate"
    echo "venv $dir" >> "$FAKE_LOG"
    exit 0
fi
exec "$REAL_PYTHON" "$@"
"""
# The fake environment's python: logs pip/pytest calls; `-c` code importing torch prints a line.
FAKE_VENV_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    shift 2; echo "pip $*" >> "$FAKE_LOG"; exit "${FAKE_PIP_STATUS:-0}"
fi
if [ "$1" = "-m" ] && [ "$2" = "pytest" ]; then
    shift 2; echo "pytest $*" >> "$FAKE_LOG"; exit "${FAKE_PYTEST_STATUS:-0}"
fi
if [ "$1" = "-c" ] && [[ "$2" == *"import torch"* ]]; then
    echo "fake versions"; exit 0
fi
exec "$REAL_PYTHON" "$@"
"""

INSTALL = ["pip install torch==2.13.0", 'pip install -e .[dev,media]']


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the setup scripts, pyproject.toml and .ci/run, with the fake interpreter on PATH."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / ".ci").mkdir()
    for name in ("env.sh", "run_quickstart.sh", "run_tests.sh"):
        shutil.copy(REPO_ROOT / "scripts" / name, repo / "scripts" / name)
    shutil.copy(REPO_ROOT / ".ci" / "run", repo / ".ci" / "run")
    shutil.copy(REPO_ROOT / "pyproject.toml", repo / "pyproject.toml")
    # The quick start itself is replaced by a script that records its arguments and its python.
    (repo / "scripts" / "quickstart.sh").write_text('echo "quickstart $* $(command -v python)" >> "$FAKE_LOG"\n')
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    (bin_dir / "python3").chmod(0o755)
    (tmp_path / "venv_python").write_text(FAKE_VENV_PYTHON)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_VENV_PYTHON": str(tmp_path / "venv_python"),
        "REAL_PYTHON": sys.executable,
    }
    return repo, env, log


def run(repo: Path, env: dict, script: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", script, *args], cwd=repo, env={**env, **extra_env}, capture_output=True, text=True, timeout=60
    )


def calls(log: Path) -> list[str]:
    """The logged calls since the last look (the log is emptied)."""
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return lines


def test_env_installs_once_in_order_and_again_when_pyproject_changes(fake_repo):
    repo, env, log = fake_repo
    venv = repo / ".venv"
    first = run(repo, env, "scripts/env.sh")
    assert first.returncode == 0, first.stderr
    assert calls(log) == [f"venv {venv}", *INSTALL]  # torch pinned first, then merr1 with its extras
    assert (venv / ".merr1-install-stamp").is_file()

    second = run(repo, env, "scripts/env.sh")
    assert second.returncode == 0, second.stderr
    assert calls(log) == []  # nothing changed: no venv, no pip
    assert "up to date" in second.stdout

    with (repo / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency\n")
    third = run(repo, env, "scripts/env.sh")
    assert third.returncode == 0, third.stderr
    assert calls(log) == INSTALL  # the environment is reused, the install runs again


def test_env_failed_install_records_nothing_and_retries(fake_repo):
    repo, env, log = fake_repo
    failed = run(repo, env, "scripts/env.sh", FAKE_PIP_STATUS="1")
    assert failed.returncode != 0
    assert "install failed" in failed.stderr
    assert calls(log)[1:] == INSTALL[:1]  # stopped after the failing torch install
    assert not (repo / ".venv" / ".merr1-install-stamp").exists()
    retried = run(repo, env, "scripts/env.sh")
    assert retried.returncode == 0, retried.stderr
    assert calls(log) == INSTALL


def test_env_options_venv_location_and_torch_index(fake_repo, tmp_path):
    repo, env, log = fake_repo
    venv = tmp_path / "elsewhere"
    proc = run(repo, env, "scripts/env.sh", MERR1_VENV=str(venv), TORCH_INDEX_URL="https://download.pytorch.org/whl/cpu")
    assert proc.returncode == 0, proc.stderr
    assert calls(log) == [
        f"venv {venv}",
        "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
        INSTALL[1],
    ]
    assert not (repo / ".venv").exists()
    # Another index is another install (the stamp includes it).
    proc = run(repo, env, "scripts/env.sh", MERR1_VENV=str(venv))
    assert proc.returncode == 0 and calls(log) == INSTALL


def test_env_refuses_old_python(fake_repo, tmp_path):
    repo, env, _ = fake_repo
    old = tmp_path / "bin" / "python_old"
    old.write_text('#!/usr/bin/env bash\nif [ "$1" = "--version" ]; then echo "Python 3.8.0"; fi\nexit 1\n')
    old.chmod(0o755)
    proc = run(repo, env, "scripts/env.sh", PYTHON=str(old))
    assert proc.returncode != 0 and "Python 3.10+" in proc.stderr


def test_run_quickstart_sets_up_then_runs_the_quick_start_in_the_venv(fake_repo):
    repo, env, log = fake_repo
    proc = run(repo, env, "scripts/run_quickstart.sh", "/tmp/out")
    assert proc.returncode == 0, proc.stderr
    assert calls(log) == [f"venv {repo / '.venv'}", *INSTALL, f"quickstart /tmp/out {repo / '.venv' / 'bin' / 'python'}"]
    proc = run(repo, env, "scripts/run_quickstart.sh")
    assert proc.returncode == 0 and calls(log) == [f"quickstart  {repo / '.venv' / 'bin' / 'python'}"]


@pytest.mark.parametrize(("pytest_status", "ci_status"), [(0, 0), (1, 1), (5, 1)])  # 5: no tests collected
def test_ci_runs_the_test_command_and_fails_on_failures_and_on_no_tests(fake_repo, pytest_status, ci_status):
    repo, env, log = fake_repo
    proc = run(repo, env, ".ci/run", FAKE_PYTEST_STATUS=str(pytest_status))
    assert proc.returncode == ci_status, proc.stdout + proc.stderr
    assert calls(log) == [f"venv {repo / '.venv'}", *INSTALL, "pytest "]
    if pytest_status == 5:
        assert "collected no tests" in proc.stderr


def test_run_tests_passes_arguments_and_status(fake_repo):
    repo, env, log = fake_repo
    proc = run(repo, env, "scripts/run_tests.sh", "-m", "slow", FAKE_PYTEST_STATUS="3")
    assert proc.returncode == 3
    assert calls(log)[-1] == "pytest -m slow"
    assert "fake versions" in proc.stdout
