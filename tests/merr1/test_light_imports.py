"""Modules that scripts import for tables, scores, logs and plots start without torch (issue 16).

`import torch` takes 1-5 s on the 2-core sandbox; scripts/quickstart_report.py, `python -m
merr1.score`, `python -m merr1.plot` and the metric/JSONL helpers need none of it, so it is
imported inside the functions that do (measured: quickstart_report.py 6.4-7.0 s -> 0.38 s, busy
2-core sandbox).
"""

import subprocess
import sys

import pytest
from tune_helpers import REPO_ROOT

LIGHT = [
    "merr1.score",
    "merr1.plot",
    "merr1.components.evaluation",
    "merr1.components.metric_logging",
    "merr1.components.emotion_wheel",
    "merr1.components.sentiment",
]


@pytest.mark.parametrize("module", LIGHT)
def test_module_imports_neither_torch_nor_matplotlib(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'torchtune', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
