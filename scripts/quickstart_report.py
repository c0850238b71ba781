"""The quick start's final table: GRPO training rewards, and SFT vs GRPO, slow vs fast thinking.

Reads ``OUT/grpo/metrics.jsonl`` and ``OUT/eval/{sft,grpo}/report.json`` (written by
``scripts/quickstart.sh``), writes ``OUT/eval/report.json`` and prints the tables.

Usage: ``python scripts/quickstart_report.py OUT_DIR``
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from merr1.components.evaluation import compare_reports, format_comparison, training_reward_summary


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: did every stage of scripts/quickstart.sh finish?")
    return json.loads(path.read_text())


def _null_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _null_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_null_nan(v) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    out = parser.parse_args().out_dir
    metrics_path = out / "grpo" / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing: did the GRPO stage finish?")
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    reports = {run: _read_json(out / "eval" / run / "report.json") for run in ("sft", "grpo")}
    training = training_reward_summary(metrics)
    rows = compare_reports(reports)
    summary = {
        "grpo_steps": len(metrics),
        "grpo_training_rewards": training,
        "evaluation": rows,
        "reports": {run: str(out / "eval" / run / "report.json") for run in reports},
    }
    (out / "eval" / "report.json").write_text(json.dumps(_null_nan(summary), indent=2) + "\n")

    print(f"\nGRPO training rewards ({len(metrics)} steps): mean of the first vs the last 10 steps")
    print(f"{'reward':<12} {'first':>8} {'last':>8} {'change':>8}")
    for name, values in training.items():
        print(f"{name:<12} {values['first']:>8.3f} {values['last']:>8.3f} {values['change']:>+8.3f}")
    print("\nHeld-out sample evaluation sets (%), greedy; slow = think then answer, fast = empty think prefilled")
    print(format_comparison(rows))
    print(f"\nwritten: {out / 'eval' / 'report.json'}")


if __name__ == "__main__":
    main()
