import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from merr1.components.models import qwen2_5_omni_thinker_random

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_train_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# Hand-derived: N = 28 layers x 233,057,792 + lm_head 152064 x 3584; attention 12*L*H*d_head*S.
@pytest.mark.parametrize(
    "seq_len, expected_n, expected_flops",
    [
        (4096, 28 * 233_057_792 + 152_064 * 3584, 6 * (28 * 233_057_792 + 152_064 * 3584) + 12 * 28 * 28 * 128 * 4096),
        (1024, 28 * 233_057_792 + 152_064 * 3584, 6 * (28 * 233_057_792 + 152_064 * 3584) + 12 * 28 * 28 * 128 * 1024),
    ],
)
def test_flops_per_token_7b(seq_len, expected_n, expected_flops):
    flops, num_params = bench.flops_per_token(qwen2_5_omni_thinker_random("7B", device="meta"), seq_len)
    assert num_params == expected_n
    assert flops == expected_flops


@pytest.mark.parametrize("override, expected", [(100.0, 100e12), (None, None)])
def test_peak_flops_on_cpu(override, expected):
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectation")
    assert bench.peak_bf16_flops(override) == expected


def test_format_table_speedup_is_relative_to_bf16_with_the_same_compile_setting():
    results = [
        bench.Result("bf16", "ok", tokens_per_s=100.0),
        bench.Result("bf16+compile", "ok", tokens_per_s=200.0),
        bench.Result("float8_tensorwise+compile", "ok", tokens_per_s=250.0),
        bench.Result("float8_rowwise", "failed: OutOfMemoryError"),
    ]
    rows = bench.format_table(results).splitlines()[2:]
    assert "| 1.25x |" in rows[2]
    assert "| nanx |" in rows[3] and "failed: OutOfMemoryError" in rows[3]


def test_unknown_config_is_rejected():
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--configs", "fp4"])


def test_tiny_smoke_run_on_cpu():
    results = bench.main(["--tiny", "--configs", "bf16,float8_tensorwise,float8_rowwise,bf16+compile"])
    assert [r.config for r in results] == ["bf16", "float8_tensorwise", "float8_rowwise", "bf16+compile"]
    for r in results:
        assert r.status == "ok", r
        assert r.tokens_per_s > 0 and math.isfinite(r.loss)


@pytest.mark.slow
def test_tiny_command_all_configs(tmp_path):
    out = tmp_path / "results.json"
    subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out)], check=True)
    assert [r["status"] for r in json.loads(out.read_text())["results"]] == ["ok"] * len(bench.CONFIGS)


@pytest.mark.gpu
def test_gpu_7b_bf16_and_float8(tmp_path):
    out = tmp_path / "results.json"
    configs = "bf16+compile,float8_tensorwise+compile"
    subprocess.run([sys.executable, str(SCRIPT), "--configs", configs, "--steps", "3", "--json", str(out)], check=True)
    results = json.loads(out.read_text())["results"]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert all(0 < r["mfu"] < 1 for r in results)
