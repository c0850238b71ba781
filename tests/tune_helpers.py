"""The literal `tune` commands, run from the repo root as subprocesses (recipe and CLI tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TUNE = str(Path(sys.executable).parent / "tune")


def tune_env() -> dict[str, str]:
    """The environment of every `tune` the tests start: one OpenMP thread per process (2 ranks share
    the 2 test cores; and runs compared bit for bit must use the same thread count), and
    PYTHONPATH = this checkout, so `tune` registers THIS checkout's recipes and configs even if the
    editable install points at another one (e.g. a git worktree)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))


def tune(args, *, check=True, timeout=900) -> subprocess.CompletedProcess:
    """``tune <args>`` from the repo root with ``tune_env()``."""
    proc = subprocess.run([TUNE, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=tune_env())
    if check:
        assert proc.returncode == 0, (
            f"tune {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def tune_run(recipe, config, args=(), *, nproc=None, check=True, timeout=900) -> subprocess.CompletedProcess:
    """``tune run [--nproc_per_node N] <recipe> --config <config> <args>``."""
    launcher = ["run"] + (["--nproc_per_node", str(nproc)] if nproc else [])
    return tune([*launcher, str(recipe), "--config", str(config), *map(str, args)], check=check, timeout=timeout)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
