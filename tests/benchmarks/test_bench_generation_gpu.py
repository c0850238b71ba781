import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_generation_gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_generation_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# Hand-derived: 8 rows x (512 + 128) mean context x 1,000 B = 5.12 MB of KV + 10 MB of weights per
# step; 8 rows per step at 1 TB/s -> 8e12 / 15.12e6 tokens/s.
@pytest.mark.parametrize(
    "rows, weights, kv, bandwidth, expected",
    [(8, 10_000_000, 1_000, 1e12, 8e12 / 15.12e6), (64, 0, 2, 2e12, 2e12 / (2 * 640)), (8, 1, 1, None, None)],
)
def test_roofline_tokens_per_s(rows, weights, kv, bandwidth, expected):
    got = bench.roofline_tokens_per_s(rows, weights, kv, 512, 256, bandwidth)
    assert got == expected if expected is None else math.isclose(got, expected, rel_tol=1e-12)


def test_format_table_fraction_and_speedup_against_eager():
    results = [
        dict(rows=8, samples=4, backend="eager", status="ok", tokens_per_s=100.0, roofline_tokens_per_s=1000.0),
        dict(rows=8, samples=4, backend="cuda_graph", status="ok", tokens_per_s=550.0, roofline_tokens_per_s=1000.0),
        dict(rows=8, samples=4, backend="transformers", status="failed: OOM", tokens_per_s=float("nan"),
             roofline_tokens_per_s=1000.0),  # fmt: skip
    ]
    rows = bench.format_table(results).splitlines()[2:]
    assert "| 10% | 1.00x |" in rows[0]
    assert "| 8 (2 x 4) | cuda_graph | 550 | 55% | 5.50x | ok |" == rows[1]
    assert "| n/a | n/a | failed: OOM |" in rows[2]


def test_unknown_backend_is_rejected():
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--backends", "vllm"])


def test_tiny_smoke_run_on_cpu(tmp_path):
    out = tmp_path / "decode.json"
    results = bench.main(["--tiny", "--json", str(out)])
    assert [(r["rows"], r["backend"]) for r in results] == [(2, "eager"), (2, "static"), (4, "eager"), (4, "static")]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in results)
    assert json.loads(out.read_text())["results"] == results


@pytest.mark.gpu
def test_gpu_7b_decode_cuda_graphs_beat_eager(tmp_path):
    out = tmp_path / "decode.json"
    command = [sys.executable, str(SCRIPT), "--batches", "8", "--new-tokens", "32", "--repeats", "1",
               "--backends", "eager,cuda_graph", "--json", str(out)]  # fmt: skip
    subprocess.run(command, check=True)
    eager, graphs = json.loads(out.read_text())["results"]
    assert eager["status"] == graphs["status"] == "ok"
    assert graphs["tokens_per_s"] > eager["tokens_per_s"]
