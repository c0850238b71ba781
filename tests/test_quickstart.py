"""`bash scripts/quickstart.sh OUT` end to end (issue 6 item 4): minutes, so marked slow."""

import json
import subprocess

import pytest
from tune_helpers import REPO_ROOT


@pytest.mark.slow
def test_quickstart_learns_and_reports(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        ["bash", "scripts/quickstart.sh", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "sft slow" in proc.stdout and "grpo fast" in proc.stdout  # the final table
    report = json.loads((out / "eval" / "report.json").read_text())
    rewards = report["grpo_training_rewards"]
    # GRPO visibly learns with the default seed: recall + precision rise over the run.
    before = rewards["recall"]["first"] + rewards["precision"]["first"]
    after = rewards["recall"]["last"] + rewards["precision"]["last"]
    assert after > before + 0.05, rewards
    rows = {(r["data set"], r["metric"]): r for r in report["evaluation"]}
    f1 = rows[("ovmerd", "f1")]
    assert f1["grpo slow"] > f1["sft slow"], f1  # held-out OV-MERD+ F1 improves too
    for stage in ("sft", "grpo"):
        assert (out / stage / "hf" / "config.json").is_file()
        assert (out / "eval" / stage / "report.json").is_file()
