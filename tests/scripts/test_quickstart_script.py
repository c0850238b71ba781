"""scripts/quickstart.sh's ending (issue 16): the report, the plots, and the next commands with OUT_DIR.

Cheap: a FAKE `tune` on PATH writes each stage's outputs (metrics.jsonl / report.json shaped like
the recipes'), so the real quickstart_report.py and `python -m merr1.plot` run on them in seconds.
The next commands it prints are checked against the registered configs and the plot command is
run. The real quick start end to end is tests/test_quickstart.py (slow).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from tune_helpers import REPO_ROOT

import tune_cli_ext

sys.path.insert(0, str(REPO_ROOT / "tests" / "merr1"))
from test_plot import grpo_rows, report, sft_rows  # noqa: E402

# `tune run RECIPE --config CFG key=value ...`: copies $FAKE_OUTPUTS/RECIPE/ into output_dir.
FAKE_TUNE = r"""#!/usr/bin/env bash
recipe="$2"
for arg in "$@"; do
    case "$arg" in output_dir=*) out="${arg#output_dir=}" ;; esac
done
echo "tune $*" >> "$FAKE_LOG"
mkdir -p "$out/hf"
cp -r "$FAKE_OUTPUTS/$recipe/." "$out/"
"""


@pytest.fixture
def fake_env(tmp_path):
    outputs = tmp_path / "fake_outputs"
    for recipe, files in {
        "sft_distributed": {"metrics.jsonl": "".join(json.dumps(r) + "\n" for r in sft_rows())},
        "grpo_mer_r1_distributed": {
            "metrics.jsonl": "".join(json.dumps(r) + "\n" for r in grpo_rows(0.5, ["recall", "precision"], ["recall", "precision", "format"]))
        },
        "eval_mer": {"report.json": json.dumps(report(0.9, 0.4))},
    }.items():
        (outputs / recipe).mkdir(parents=True)
        for name, text in files.items():
            (outputs / recipe / name).write_text(text)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tune").write_text(FAKE_TUNE)
    (bin_dir / "tune").chmod(0o755)
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nexec "{sys.executable}" "$@"\n')  # this venv's python
    (bin_dir / "python").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=str(REPO_ROOT),
        FAKE_OUTPUTS=str(outputs),
        FAKE_LOG=str(tmp_path / "tune.log"),
    )
    return env, tmp_path


def test_quickstart_writes_plots_and_prints_next_commands_with_its_out_dir(fake_env):
    pytest.importorskip("matplotlib")
    env, tmp_path = fake_env
    out = tmp_path / "my out"  # a space: every printed path must survive shell quoting
    proc = subprocess.run(
        ["bash", "scripts/quickstart.sh", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = (tmp_path / "tune.log").read_text().splitlines()
    assert [line.split()[2] for line in stages] == ["sft_distributed", "grpo_mer_r1_distributed", "eval_mer", "eval_mer"]
    # The plots are written and their file names printed.
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["eval_scores.png", "eval_slow_fast.png", "grpo_response_length.png", "grpo_rewards.png",
                     "grpo_training.png", "sft_training.png"]  # fmt: skip
    for name in plots:
        assert str(out / "plots" / name) in proc.stdout
    # The next commands name this OUT_DIR (quoted), registered configs, and run as printed.
    next_block = proc.stdout.split("Next (copy and paste")[1]
    commands = [line.strip() for line in next_block.splitlines() if line.strip() and not line.strip().startswith("#")][1:]
    assert len(commands) == 3, commands
    configs = {name for recipe in tune_cli_ext.discover() for name, _ in recipe.configs}
    for command in commands:
        words = shlex.split(command)
        assert any(str(out) in w for w in words), command
        if words[:2] == ["tune", "run"]:
            assert words[3] == "--config" and words[4] in configs, command
    plot_words = shlex.split(commands[2])
    assert plot_words[:3] == ["python", "-m", "merr1.plot"]
    # The Baseline outputs the first two commands would write, then the printed plot command itself.
    for recipe, dest in (("grpo_mer_r1_distributed", out / "baseline"), ("eval_mer", out / "eval" / "baseline")):
        subprocess.run(["bash", str(tmp_path / "bin" / "tune"), "run", recipe, f"output_dir={dest}"], env=env, check=True)
    proc = subprocess.run(plot_words, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "plots_vs_baseline").glob("*.png"))) == 5


def test_quickstart_next_commands_without_matplotlib_say_how_to_get_plots(fake_env, tmp_path):
    env, _ = fake_env
    blocker = tmp_path / "no_matplotlib"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('blocked for this test')\n")
    env = dict(env, PYTHONPATH=f"{blocker}{os.pathsep}{REPO_ROOT}")
    out = tmp_path / "qs"
    proc = subprocess.run(
        ["bash", "scripts/quickstart.sh", str(out)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'plots skipped: matplotlib is missing (pip install -e ".[plot]")' in proc.stdout
    assert re.search(rf"checkpoint_dir={re.escape(str(out))}/sft/hf", proc.stdout)
