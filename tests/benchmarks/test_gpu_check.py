"""The GPU check's pieces that run anywhere: the shell script's syntax and time budget, the wheel
list, and the summary table built from hand-made part outputs."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summary = _load("gpu_check_summary")


def test_gpu_check_script_parses_and_its_limits_fit_eight_minutes():
    script = BENCH / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    limits = dict(re.findall(r'"\$\{(LIMIT_\w+):=(\d+)\}"', script.read_text()))
    assert set(limits) == {"LIMIT_INSTALL", "LIMIT_IMPORTS", "LIMIT_TESTS", "LIMIT_DECODE", "LIMIT_GRPO", "LIMIT_TRAIN"}
    assert sum(map(int, limits.values())) <= 480


def test_fetch_wheels_pins_what_merr1_needs():
    text = (BENCH / "fetch_gpu_wheels.sh").read_text()
    for pin in ("transformers==5.23.0", "torchtune==0.6.1", "torchao==0.15.0", "--no-deps", "--python-version 3.12"):
        assert pin in text
    subprocess.run(["bash", "-n", str(BENCH / "fetch_gpu_wheels.sh")], check=True)


def _write_parts(out: Path) -> None:
    (out / "env.json").write_text(json.dumps({"date": "2026-12-04 17:00 UTC", "gpu": "NVIDIA H200", "cuda": "13.0",
                                              "python": "3.12.3", "torch": {"version": "2.11.0", "status": "ok"}}))  # fmt: skip
    (out / "gpu_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="12" failures="1" errors="0" skipped="2"/></testsuites>'
    )
    decode = [dict(rows=64, samples=8, backend="cuda_graph", status="ok", tokens_per_s=6000.0, roofline_tokens_per_s=10000.0),
              dict(rows=64, samples=8, backend="eager", status="failed: OOM", tokens_per_s=float("nan"),
                   roofline_tokens_per_s=10000.0)]  # fmt: skip
    (out / "decode.json").write_text(json.dumps({"results": decode}))
    (out / "grpo.json").write_text(json.dumps({"partial": True, "rollouts_per_step": 64, "step_log": [
        {"step": 1, "warmup": True, "wall": 40.0, "generate": 10.0}]}))  # fmt: skip
    train = [dict(config="bf16", status="ok", tokens_per_s=1000.0, mfu=0.35, peak_memory_gb=70.0),
             dict(config="float8_rowwise", status="ok", tokens_per_s=1250.0, mfu=0.44, peak_memory_gb=68.0)]  # fmt: skip
    (out / "train.json").write_text(json.dumps({"results": train}))
    (out / "parts.tsv").write_text("decode\tok\t80\ngrpo\tstopped at the 120s limit\t120\n")


def test_summary_table_from_part_outputs(tmp_path):
    _write_parts(tmp_path)
    assert summary.main(["--out", str(tmp_path)]) == 0
    table = (tmp_path / "gpu_check.md").read_text().splitlines()
    expected = [
        "| machine | NVIDIA H200, CUDA 13.0, Python 3.12.3 | torch 2.11.0 | 2026-12-04 17:00 UTC |",
        "| gpu tests | passed / failed / errors / skipped | 9 / 1 / 0 / 2 | all pass |",
        "| decode | 64 rows, cuda_graph | 6,000 tok/s, 60% of roofline | >= 50% of roofline |",
        "| decode | 64 rows, eager | failed: OOM |  |",
        "| GRPO 7B (stopped) | step 1 (warm-up) | 1.60 rollouts/s (generate 10.0 s of 40.0 s) | >= 1.5 |",
        "| train 7B | bf16 | 1,000 tok/s, MFU 35.0%, 1.00x bf16, 70 GB |  |",
        "| train 7B | float8_rowwise | 1,250 tok/s, MFU 44.0%, 1.25x bf16, 68 GB | >= 1.2x bf16 |",
        "| time | decode | ok, 80 s |  |",
        "| time | grpo | stopped at the 120s limit, 120 s |  |",
    ]
    assert table[2:] == expected
    assert len(json.loads((tmp_path / "gpu_check.json").read_text())) == len(expected)


def test_summary_of_an_empty_folder_is_an_empty_table(tmp_path):
    assert summary.main(["--out", str(tmp_path)]) == 0
    assert len((tmp_path / "gpu_check.md").read_text().splitlines()) == 2


@pytest.mark.slow  # imports torchtune, datasets and transformers in a fresh process (~20-30 s here)
def test_import_check_here(tmp_path):
    """Everything merr1 needs imports in this environment (the check the GPU machine runs)."""
    result = subprocess.run([sys.executable, str(BENCH / "gpu_check_summary.py"), "--check-imports", "--out", str(tmp_path)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["transformers"] == {"version": "5.23.0", "status": "ok"}
