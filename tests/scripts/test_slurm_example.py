"""scripts/slurm/grpo_mer_r1_multinode.sbatch (issue 16): the launch line and the requeue logic.

Cheap: fake `srun`, `scontrol` and `tune` on PATH and the SLURM variables of a 2-node job; the
fake run finishes, is preempted (a new checkpoint, torchrun's non-zero exit after SIGTERM) or
crashes (no new checkpoint). The literal recipe and config names are checked against the registry.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest
from tune_helpers import REPO_ROOT

import tune_cli_ext

SBATCH = REPO_ROOT / "scripts" / "slurm" / "grpo_mer_r1_multinode.sbatch"

FAKE_SRUN = """#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_LOG"
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-node-07\\ngpu-node-08\\n'; fi
"""
# The run: writes checkpoints/latest and hf/ like the recipe, per FAKE_MODE.
FAKE_TUNE = """#!/usr/bin/env bash
echo "tune $*" >> "$FAKE_LOG"
for arg in "$@"; do case "$arg" in output_dir=*) out="${arg#output_dir=}" ;; esac; done
mkdir -p "$out/checkpoints"
case "$FAKE_MODE" in
    finish) echo step_30 > "$out/checkpoints/latest"; mkdir -p "$out/hf"; echo '{}' > "$out/hf/config.json"; exit 0 ;;
    preempt) echo step_20 > "$out/checkpoints/latest"; exit 1 ;;  # torchrun exits 1 after SIGTERM
    crash) exit 3 ;;
esac
"""


@pytest.fixture
def cluster(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("tune", FAKE_TUNE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        SLURM_SUBMIT_DIR=str(tmp_path),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-node-[07-08]",
        SLURM_NNODES="2",
        MERR1_VENV=str(venv),
        OUTPUT_DIR=str(tmp_path / "out"),
        FAKE_LOG=str(tmp_path / "calls.log"),
    )
    return env, tmp_path


def submit(env, mode: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = env["FAKE_LOG"]
    open(log, "w").close()
    proc = subprocess.run(["bash", str(SBATCH), *args], env=dict(env, FAKE_MODE=mode), capture_output=True, text=True, timeout=60)
    return proc, open(log).read().splitlines()


def test_sbatch_header_asks_for_the_early_signal_and_requeue():
    directives = re.findall(r"^#SBATCH (\S+)", SBATCH.read_text(), re.M)
    assert "--signal=TERM@300" in directives and "--requeue" in directives
    assert "--ntasks-per-node=1" in directives  # one torchrun per node
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0


def test_launch_line_is_one_torchrun_per_node_with_c10d_rendezvous(cluster):
    env, tmp_path = cluster
    proc, calls = submit(env, "finish", "checkpoint_dir=/ckpt/sft/hf")
    assert proc.returncode == 0, proc.stderr
    (srun,) = [c for c in calls if c.startswith("srun ")]
    assert srun.startswith("srun --kill-on-bad-exit=1 tune run ")
    (tune,) = [c for c in calls if c.startswith("tune ")]
    words = shlex.split(tune)
    flags = dict(zip(words[2:12:2], words[3:12:2]))
    assert flags == {"--nnodes": "2", "--nproc_per_node": "8", "--rdzv_backend": "c10d",
                     "--rdzv_endpoint": "gpu-node-07:29500", "--rdzv_id": "4242"}  # fmt: skip
    recipe, config = words[12], words[14]
    assert words[13] == "--config"
    registry = {r.name: {name for name, _ in r.configs} for r in tune_cli_ext.discover()}
    assert recipe in registry and config in registry[recipe]
    assert words[15:] == [f"output_dir={tmp_path / 'out'}", "resume_from_checkpoint=false", "checkpoint_dir=/ckpt/sft/hf"]
    assert not any(c.startswith("scontrol requeue") for c in calls)
    assert "finished" in proc.stdout


def test_preempted_run_requeues_and_the_next_start_resumes(cluster):
    env, _ = cluster
    proc, calls = submit(env, "preempt")
    assert proc.returncode == 0, proc.stderr
    assert "scontrol requeue 4242" in calls and "resume_from_checkpoint=false" in calls[-3]
    # The requeued job starts from the checkpoint, then finishes.
    proc, calls = submit(env, "finish")
    assert proc.returncode == 0 and "resume_from_checkpoint=true" in [c for c in calls if c.startswith("tune ")][0]
    assert not any(c.startswith("scontrol requeue") for c in calls)


def test_crash_without_a_new_checkpoint_is_not_requeued(cluster):
    env, _ = cluster
    proc, calls = submit(env, "crash")
    assert proc.returncode == 3
    assert not any(c.startswith("scontrol requeue") for c in calls)
    assert "not requeued" in proc.stderr
    # Also after a preemption: the restart crashes before saving anything new -> stop.
    submit(env, "preempt")
    proc, calls = submit(env, "crash")
    assert proc.returncode == 3 and not any(c.startswith("scontrol requeue") for c in calls)
