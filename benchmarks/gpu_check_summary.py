"""Import check and one summary table for ``benchmarks/gpu_check.sh`` (issue 17).

    python benchmarks/gpu_check_summary.py --check-imports --out DIR   # versions -> DIR/env.json
    python benchmarks/gpu_check_summary.py --out DIR                   # DIR/*.json -> one table

The summary reads what the parts left in DIR (``env.json``, ``parts.tsv``, ``gpu_tests.xml``,
``decode.json``, ``grpo.json``, ``train.json``; a part stopped at its time limit leaves what it
finished) and prints ONE markdown table, also written as ``gpu_check.md`` and ``gpu_check.json``.
Targets (issues 5, 6, 17): decode with CUDA graphs >= 50% of the HBM roofline at 64 rows; GRPO
>= 1.5 rollouts/s/GPU; training MFU >= 40% (bf16 + compile) and float8 >= 1.2x bf16.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# (module, why merr1 needs it); versions are read from the imported modules.
IMPORTS = (
    ("torch", "the image's (never replaced)"),
    ("transformers", "carried 5.23.0 (the image has 5.17)"),
    ("torchao.float8", "carried 0.15.0 (float8 training)"),
    ("torchtune.config", "carried 0.6.1 (recipes)"),
    ("datasets", "carried (imported by torchtune)"),
    ("omegaconf", "carried (torchtune.config)"),
    ("tokenizers", "the image's"),
    ("merr1.components.generation", "this checkout"),
    ("recipes.grpo_mer_r1_distributed", "this checkout (the GRPO benchmark runs it)"),
)
EXPECTED_VERSIONS = {"transformers": "5.23.0", "torchao": "0.15.0", "torchtune": "0.6.1"}


def check_imports(out: Path) -> int:
    """Import everything merr1 needs; print and save versions. Returns the number of failures."""
    sys.path.insert(0, str(REPO_ROOT))
    env: dict = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    failures = 0
    for module, why in IMPORTS:
        try:
            imported = importlib.import_module(module)
            top = importlib.import_module(module.split(".")[0])
            version = getattr(top, "__version__", "-")
            where = str(Path(getattr(imported, "__file__", "") or "").parent)
            status = "ok"
            expected = EXPECTED_VERSIONS.get(module.split(".")[0])
            if expected and not str(version).startswith(expected):
                status, failures = f"version {version}, expected {expected}", failures + 1
        except Exception as error:  # report every failure, not only the first
            version, where, status = "-", "-", f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
            failures += 1
        env[module] = {"version": str(version), "status": status}
        print(f"{module:36s} {str(version):24s} {status:10s} {why}; {where}")
    import torch

    env["cuda"] = torch.version.cuda
    env["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    env["python"] = sys.version.split()[0]
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
    return failures


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _num(value, fmt: str = "{:,.0f}") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def summary_rows(out: Path) -> list[dict]:
    """One row per measurement: part, what, result, target."""
    rows = []
    env = _load(out / "env.json") or {}
    if env:
        versions = ", ".join(f"{m.split('.')[0]} {env[m]['version']}" for m, _ in IMPORTS[:6] if m in env)
        rows.append(dict(part="machine", what=f"{env.get('gpu')}, CUDA {env.get('cuda')}, Python {env.get('python')}",
                         result=versions, target=env.get("date", "")))  # fmt: skip
    tests = out / "gpu_tests.xml"
    if tests.exists():
        suite = ElementTree.parse(tests).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        rows.append(dict(part="gpu tests", what="passed / failed / errors / skipped",
                         result=f"{passed} / {counts['failures']} / {counts['errors']} / {counts['skipped']}",
                         target="all pass"))  # fmt: skip
    decode = _load(out / "decode.json")
    for r in (decode or {}).get("results", []):
        fraction = r["tokens_per_s"] / r["roofline_tokens_per_s"] if r.get("roofline_tokens_per_s") else None
        result = f"{_num(r['tokens_per_s'])} tok/s, " + (f"{100 * fraction:.0f}% of roofline" if fraction else "no roofline")
        target = ">= 50% of roofline" if r["rows"] == 64 and r["backend"] == "cuda_graph" else ""
        rows.append(dict(part="decode", what=f"{r['rows']} rows, {r['backend']}",
                         result=result if r["status"] == "ok" else r["status"], target=target))  # fmt: skip
    grpo = _load(out / "grpo.json")
    if grpo and not grpo.get("partial"):
        rows.append(dict(part="GRPO 7B", what=f"rollouts/s/GPU (step of {grpo['rollouts_per_step']})",
                         result=f"{grpo['rollouts_per_s']:.2f}", target=">= 1.5"))  # fmt: skip
        split = grpo["split_s"]
        rows.append(dict(part="GRPO 7B", what="rollout phase rollouts/s; split generate / calibrate / score / train (s)",
                         result=f"{grpo['rollouts_per_step'] / split['generate']:.2f}; "
                                + " / ".join(f"{split[k]:.2f}" for k in ("generate", "calibrate", "score", "train")),
                         target=f"peak {grpo['peak_memory_gb']:.1f} GB"))  # fmt: skip
    elif grpo:
        for step in grpo.get("step_log", []):
            rows.append(dict(part="GRPO 7B (stopped)", what=f"step {step['step']}{' (warm-up)' if step['warmup'] else ''}",
                             result=f"{grpo['rollouts_per_step'] / step['wall']:.2f} rollouts/s "
                                    f"(generate {step['generate']:.1f} s of {step['wall']:.1f} s)", target=">= 1.5"))  # fmt: skip
    train = _load(out / "train.json")
    results = (train or {}).get("results", [])
    by_config = {r["config"]: r for r in results}
    for r in results:
        base = by_config.get("bf16+compile" if r["config"].endswith("+compile") else "bf16")
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base and base["status"] == "ok" and r["status"] == "ok" else None
        target = "MFU >= 40%" if r["config"] == "bf16+compile" else (">= 1.2x bf16" if "float8" in r["config"] else "")
        result = (f"{_num(r['tokens_per_s'])} tok/s, MFU {_num(100 * r['mfu'], '{:.1f}%')}, "
                  f"{_num(ratio, '{:.2f}')}x bf16, {_num(r['peak_memory_gb'], '{:.0f}')} GB")  # fmt: skip
        rows.append(dict(part="train 7B", what=r["config"], result=result if r["status"] == "ok" else r["status"],
                         target=target))  # fmt: skip
    parts = out / "parts.tsv"
    if parts.exists():
        for line in parts.read_text().splitlines():
            name, status, seconds = line.split("\t")
            rows.append(dict(part="time", what=name, result=f"{status}, {seconds} s", target=""))
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| part | what | result | target / note |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['what']} | {r['result']} | {r['target']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="gpu_check.sh's output folder")
    parser.add_argument("--check-imports", action="store_true", help="import check only (writes env.json)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.check_imports:
        return 1 if check_imports(args.out) else 0
    rows = summary_rows(args.out)
    table = format_table(rows)
    print(table)
    (args.out / "gpu_check.md").write_text(table + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
