"""`python -m merr1.plot` (issue 16): real PNGs of the expected size with drawn content in every panel.

The runs are written here with the keys the recipes log (metrics.jsonl of SFT and GRPO,
report.json of eval_mer); the figures' look was checked by eye on real tiny runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tune_helpers import REPO_ROOT

from merr1 import plot

NUM_STEPS = 12


def grpo_rows(offset: float, groups: list[str], rewards: list[str]) -> list[dict]:
    rows = []
    for step in range(1, NUM_STEPS + 1):
        t = step / NUM_STEPS
        row = {"step": step, "epoch": 0, "loss": 0.01 * math.sin(step), "loss/policy": 0.01 * math.sin(step),
               "loss/kl": 0.001 * t, "loss/clip_frac_low": 0.02 * t, "loss/clip_frac_high": 0.03 * t,
               "adv/zero_std_frac": 0.3 - 0.1 * t, "grad_norm": 1.0 + t, "lr": 1e-4,
               "response_length/mean": 20 + 5 * t, "response_length/max": 40 + 5 * t,
               "num_predicted_categories": 1.0 + 0.3 * t}  # fmt: skip
        for i, name in enumerate(rewards):
            row[f"reward/{name}/mean"] = offset + 0.3 * t + 0.01 * i
            row[f"reward/{name}/std"] = 0.1
        for group in groups:
            row[f"adv/{group}/reward_std"] = 0.2 + 0.05 * t
            row[f"adv/{group}/reward_mean"] = 0.5
            row[f"adv/{group}/zero_std_frac"] = 0.2
        rows.append(row)
    rows[4]["loss"] = None  # a NaN step written as null: a gap
    return rows


def sft_rows() -> list[dict]:
    return [{"step": s, "loss": 6.0 / s, "lr": 1e-3, "grad_norm": 5.0 / s, "tokens_per_second": 1e4} for s in range(1, NUM_STEPS + 1)]


def report(slow: float, fast: float) -> dict:
    def scores(value):
        return {"official": value, "f1": value, "recall": value, "precision": value}

    diag = {"recall": {"slow": slow, "fast": fast, "gap": slow - fast}, "precision": {"slow": slow, "fast": fast, "gap": slow - fast},
            "mean_num_categories": {"slow": 1.3, "fast": 1.0}, "retained_hit_rate": 0.85, "num_confidence_samples": 8,
            "gt_confidence": {"slow": -2.6, "fast": -2.3}, "confidence_margin": {"slow": 3.3, "fast": 1.1}}  # fmt: skip
    return {
        "datasets": {
            "ovmerd": {"task": "ovmerd", "official_metric": "f1", "slow": scores(slow), "fast": scores(fast), "diagnostics": diag},
            "basic": {"task": "basic", "official_metric": "hit_rate", "slow": scores(slow), "fast": scores(fast), "diagnostics": diag},
            "sentiment": {"task": "sentiment", "official_metric": "waf", "slow": scores(slow), "fast": scores(fast), "diagnostics": None},
        },
        "means": {"num_datasets": 3, "mer_unibench_mean": {"slow": slow, "fast": fast}},
    }


def write_run(path: Path, rows: list[dict] | None = None, rep: dict | None = None) -> Path:
    path.mkdir(parents=True)
    if rows is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if rep is not None:
        (path / "report.json").write_text(json.dumps(rep))
    return path


@pytest.fixture
def runs(tmp_path):
    mer_rewards = ["recall", "precision", "format", "cali_pos", "cali_neg", "f1"]
    return [
        write_run(tmp_path / "sft", sft_rows()),
        write_run(tmp_path / "mer_r1", grpo_rows(0.5, ["recall", "precision", "cali_pos", "cali_neg", "format"], mer_rewards)),
        write_run(tmp_path / "baseline", grpo_rows(0.4, ["base"], ["recall", "precision", "format", "f1"])),
        write_run(tmp_path / "eval_sft", rep=report(0.9, 0.3)),
        write_run(tmp_path / "eval_mer_r1", rep=report(0.95, 0.55)),
    ]


# Figure -> number of panels for the runs above.
EXPECTED_PANELS = {
    "grpo_rewards.png": 6,  # recall, precision, cali_neg, cali_pos, f1, format
    "grpo_training.png": 6,  # loss, KL, clip fraction, zero-advantage fraction, group reward std, grad norm
    "grpo_response_length.png": 2,
    "sft_training.png": 3,
    "eval_scores.png": 4,  # 3 sets + the MER-UniBench mean
    "eval_slow_fast.png": 6,  # recall, precision, categories, GT confidence, margin, retained hit rate
}
RUN_COLORS = {"C0": (0x1F, 0x77, 0xB4), "C1": (0xFF, 0x7F, 0x0E)}


def read_png(path: Path):
    image = pytest.importorskip("matplotlib.image").imread(path)  # [H, W, 4] floats in [0, 1]
    return image[..., :3]


def has_color(image, rgb, tol=0.02) -> bool:
    import numpy as np

    return bool((np.abs(image - np.array(rgb) / 255.0).max(-1) < tol).any())


def test_plots_of_sft_grpo_and_eval_runs(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    names = ["SFT", "MER-R1", "Baseline", "SFT", "MER-R1"]
    written = plot.main([*map(str, runs), "--names", *names, "--out", str(out), "--smooth", "0.6"])
    assert sorted(p.name for p in written) == sorted(EXPECTED_PANELS)
    for path in written:
        image = read_png(path)
        width, height = plot.figure_size_px(EXPECTED_PANELS[path.name])
        assert image.shape[:2] == (height, width), path.name
        # Drawn content in every panel of the grid (not a uniform cell), and many colours overall.
        columns = min(plot.MAX_COLUMNS, EXPECTED_PANELS[path.name])
        panel_w, panel_h = width // columns, height // math.ceil(EXPECTED_PANELS[path.name] / columns)
        for index in range(EXPECTED_PANELS[path.name]):
            row, column = divmod(index, columns)
            cell = image[row * panel_h : (row + 1) * panel_h, column * panel_w : (column + 1) * panel_w]
            assert cell.std() > 0.05 and (cell < 0.9).mean() > 0.01, (path.name, index)
        assert len({tuple(px) for px in (image.reshape(-1, 3) * 255).round().astype(int)[::7]}) > 50, path.name
    # Two runs overlaid: both run colours are drawn in the reward curves and in the eval bars.
    for name in ("grpo_rewards.png", "eval_slow_fast.png"):
        image = read_png(out / name)
        assert all(has_color(image, rgb) for rgb in RUN_COLORS.values()), name


def test_one_run_plots_next_to_it_by_default(runs):
    pytest.importorskip("matplotlib")
    proc = subprocess.run(
        [sys.executable, "-m", "merr1.plot", str(runs[0])], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(runs[0].resolve() / "plots" / "sft_training.png")]
    assert read_png(runs[0] / "plots" / "sft_training.png").shape[:2] == plot.figure_size_px(3)[::-1]


def test_cli_errors_name_the_problem(tmp_path, runs, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, message in [
        ([str(empty)], f"{empty}: no metrics.jsonl"),
        ([str(runs[0]), str(runs[1]), "--names", "only_one"], "--names has 1 names for 2 run directories"),
        ([str(runs[0]), "--smooth", "1.0"], "--smooth must be in [0, 1)"),
    ]:
        with pytest.raises(SystemExit) as exc:
            plot.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


def test_bad_metrics_line_names_file_and_line(tmp_path):
    run = write_run(tmp_path / "run", sft_rows()[:2])
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 3: not a JSON object with an int 'step'"):
        plot.load_run(run, "run")


@pytest.mark.parametrize(
    ("values", "weight", "expected"),
    [
        ([1.0, 3.0], 0.0, [1.0, 3.0]),
        # s1 = 0.5 * 1 = 0.5 -> / (1 - 0.5) = 1; s2 = 0.25 + 1.5 = 1.75 -> / (1 - 0.25) = 7/3
        ([1.0, 3.0], 0.5, [1.0, 7 / 3]),
        ([1.0, float("nan"), 3.0], 0.5, [1.0, float("nan"), 7 / 3]),  # a gap keeps the average
        ([2.0, 2.0, 2.0], 0.9, [2.0, 2.0, 2.0]),  # debiased: a constant stays constant
        ([], 0.5, []),
    ],
)
def test_ema_table(values, weight, expected):
    got = plot.ema(values, weight)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (math.isnan(g) and math.isnan(e)) or abs(g - e) <= 1e-12 * max(1.0, abs(e))


@pytest.mark.parametrize("weight", [-0.1, 1.0, 2.0])
def test_ema_rejects_weights_outside_0_1(weight):
    with pytest.raises(ValueError, match="smoothing weight"):
        plot.ema([1.0], weight)


@pytest.mark.parametrize(
    ("num_panels", "size"), [(1, (400, 300)), (2, (800, 300)), (3, (1200, 300)), (4, (1200, 600)), (7, (1200, 900))]
)
def test_figure_size_px(num_panels, size):
    assert plot.figure_size_px(num_panels) == size


def test_default_names_disambiguate_equal_folder_names(tmp_path):
    paths = [tmp_path / "a" / "sft", tmp_path / "b" / "sft", tmp_path / "c" / "grpo"]
    assert plot.default_names(paths) == ["a/sft", "b/sft", "grpo"]


def test_reward_names_recall_and_precision_first(runs):
    loaded = [plot.load_run(p, p.name) for p in runs[1:3]]
    assert plot.reward_names(loaded) == ["recall", "precision", "cali_neg", "cali_pos", "f1", "format"]
    assert plot.advantage_groups(loaded) == ["recall", "precision", "cali_pos", "cali_neg", "format", "base"]


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match=r'pip install -e "\.\[plot\]"'):
        plot._matplotlib()
