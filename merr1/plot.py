"""The paper's figures for your own runs: ``python -m merr1.plot RUN_DIR [RUN_DIR ...]`` (issue 16).

A RUN_DIR is a training run's ``output_dir`` (its ``metrics.jsonl``, SFT or GRPO) and/or an
evaluation's ``output_dir`` (``report.json`` of ``recipes/eval_mer.py``). Several runs are drawn
on the same axes, one colour per run, labelled with their names (``--names``; default: the folder
names), like the paper's Baseline vs MER-R1 curves. PNGs written, each only when its data exists:

- ``grpo_rewards.png``: every ``reward/<name>/mean`` per step, one panel per reward, recall and
  precision first (paper Fig. 7: training recall and precision rewards).
- ``grpo_training.png``: loss, policy loss, KL to the reference, clip fractions (low dashed,
  high solid), the fraction of prompts whose final advantage is zero, each advantage group's
  within-prompt reward std (one line style per group), gradient norm.
- ``grpo_response_length.png``: response length (mean solid, max dashed) and predicted categories.
- ``sft_training.png``: loss, gradient norm and learning rate of SFT runs.
- ``eval_scores.png``: each evaluation set's official metric and the MER-UniBench mean, slow
  (solid bars) vs fast (hatched bars).
- ``eval_slow_fast.png``: the slow-vs-fast diagnostics of METHOD section 6 per evaluation set
  (paper Fig. 3: recall and precision fast vs slow, predicted categories, log-confidence on the
  GT categories, margin over the hardest negatives; Fig. 8: retained hit rate).

``--smooth W`` (0 <= W < 1) draws an exponential moving average with weight W over each curve
(TensorBoard's smoothing, debiased at the start), the raw values faint underneath; NaN/null steps
are gaps and do not enter the average. Sizes are fixed (``PANEL_INCHES`` per panel at ``DPI``)
so a figure's pixel size depends only on its number of panels (``figure_size_px``).

matplotlib is the optional extra ``plot`` (``pip install -e ".[plot]"``) and is imported only
when drawing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DPI = 100
PANEL_INCHES = (4.0, 3.0)  # width, height of one panel
MAX_COLUMNS = 3
_NAN = float("nan")


@dataclass
class Run:
    """One RUN_DIR: its name, its metrics.jsonl rows and/or its evaluation report."""

    name: str
    path: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None

    @property
    def is_grpo(self) -> bool:
        return any(key.startswith("reward/") for row in self.metrics for key in row)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key``; a missing or null value is NaN (a gap)."""
        steps = [row["step"] for row in self.metrics]
        values = [_float(row.get(key)) for row in self.metrics]
        return steps, values

    def has(self, key: str) -> bool:
        return any(_float(row.get(key)) == _float(row.get(key)) for row in self.metrics)


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NAN


def load_run(path: str | os.PathLike, name: str) -> Run:
    """Read ``metrics.jsonl`` and/or ``report.json`` of a run directory.

    Raises:
        ValueError: the directory holds neither file, or a metrics line is not a JSON object with
            an int ``step`` (the message names the file and line).
    """
    path = Path(path)
    run = Run(name=name, path=path)
    metrics_path, report_path = path / "metrics.jsonl", path / "report.json"
    if not metrics_path.is_file() and not report_path.is_file():
        raise ValueError(f"{path}: no metrics.jsonl (training run) or report.json (evaluation) to plot")
    if metrics_path.is_file():
        for number, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{metrics_path}, line {number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError(f"{metrics_path}, line {number}: not a JSON object with an int 'step'")
            run.metrics.append(row)
    if report_path.is_file():
        run.report = json.loads(report_path.read_text(encoding="utf-8"))
        if not isinstance(run.report, dict) or "datasets" not in run.report:
            raise ValueError(f"{report_path}: not a report.json of recipes/eval_mer.py (no 'datasets')")
    return run


def default_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Folder names, with the parent folder prepended where two runs share a name."""
    resolved = [Path(p).resolve() for p in paths]
    names = [p.name for p in resolved]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in resolved]


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard-style smoothing: s_t = w s_{t-1} + (1 - w) x_t, divided by (1 - w^n) (debiased,
    n = finite values seen so far). NaN inputs stay NaN and leave the average unchanged.

    Args:
        values: one curve.
        weight: 0 <= weight < 1; 0 returns the values unchanged.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, state, seen = [], 0.0, 0
    for x in values:
        if math.isnan(x):
            out.append(_NAN)
            continue
        state = weight * state + (1.0 - weight) * x
        seen += 1
        out.append(state / (1.0 - weight**seen) if weight > 0 else x)
    return out


def figure_size_px(num_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with ``num_panels`` panels."""
    columns = min(MAX_COLUMNS, num_panels)
    rows = math.ceil(num_panels / columns)
    return round(columns * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI)


# ------------------------------------------------------------------------------- drawing


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            'python -m merr1.plot needs matplotlib, the optional extra `plot`: pip install -e ".[plot]"'
        ) from None
    return Figure


def _figure(num_panels: int, title: str):
    Figure = _matplotlib()
    width, height = figure_size_px(num_panels)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    columns = min(MAX_COLUMNS, num_panels)
    axes = fig.subplots(math.ceil(num_panels / columns), columns, squeeze=False).flatten()
    for ax in axes[num_panels:]:
        ax.set_axis_off()
    fig.suptitle(title)
    return fig, axes[:num_panels]


def _color(index: int) -> str:
    return f"C{index % 10}"


@dataclass(frozen=True)
class Panel:
    """A panel of a training figure: title and its curves (metric key, matplotlib linestyle, label suffix)."""

    title: str
    curves: tuple[tuple[str, Any, str], ...]


def _draw_curves(ax, runs: Sequence[Run], panel: Panel, smooth: float) -> None:
    for index, run in enumerate(runs):
        for key, style, suffix in panel.curves:
            if not run.has(key):
                continue
            steps, values = run.series(key)
            label = f"{run.name}{suffix}" if len(runs) > 1 or suffix else None
            if smooth > 0:
                ax.plot(steps, values, linestyle=style, color=_color(index), alpha=0.25, linewidth=1)
                values = ema(values, smooth)
            ax.plot(steps, values, linestyle=style, color=_color(index), linewidth=1.6, label=label)
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _training_figure(runs: Sequence[Run], panels: Sequence[Panel], title: str, path: Path, smooth: float) -> Path | None:
    panels = [p for p in panels if any(run.has(key) for run in runs for key, _, _ in p.curves)]
    if not panels:
        return None
    fig, axes = _figure(len(panels), title + (f" (EMA {smooth:g}; raw values faint)" if smooth > 0 else ""))
    for ax, panel in zip(axes, panels):
        _draw_curves(ax, runs, panel, smooth)
    fig.savefig(path, dpi=DPI)
    return path


def reward_names(runs: Sequence[Run]) -> list[str]:
    """Reward names logged by any run (``reward/<name>/mean``): recall, precision first, then sorted."""
    names = {k[len("reward/") : -len("/mean")] for run in runs for row in run.metrics for k in row
             if k.startswith("reward/") and k.endswith("/mean")}  # fmt: skip
    first = [n for n in ("recall", "precision") if n in names]
    return first + sorted(names - set(first))


def advantage_groups(runs: Sequence[Run]) -> list[str]:
    """Advantage group names of any run (``adv/<group>/reward_std``), in order of appearance."""
    groups: dict[str, None] = {}
    for run in runs:
        for row in run.metrics[:1]:
            for key in row:
                if key.startswith("adv/") and key.endswith("/reward_std"):
                    groups[key[len("adv/") : -len("/reward_std")]] = None
    return list(groups)


_GROUP_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 4)), (0, (8, 2)))


def plot_grpo(runs: Sequence[Run], out_dir: Path, smooth: float) -> list[Path]:
    """grpo_rewards.png, grpo_training.png, grpo_response_length.png (module docstring)."""
    rewards = [Panel(f"reward: {name}", ((f"reward/{name}/mean", "-", ""),)) for name in reward_names(runs)]
    groups = advantage_groups(runs)
    training = [
        Panel("loss (total -, policy part --)", (("loss", "-", " total"), ("loss/policy", "--", " policy"))),
        Panel("KL to the reference", (("loss/kl", "-", ""),)),
        Panel("clip fraction (low --, high -)", (("loss/clip_frac_low", "--", " low"), ("loss/clip_frac_high", "-", " high"))),
        Panel("advantage: fraction of zero-advantage prompts", (("adv/zero_std_frac", "-", ""),)),
        Panel(
            "advantage groups: reward std within prompts",
            tuple((f"adv/{g}/reward_std", _GROUP_STYLES[i % len(_GROUP_STYLES)], f" {g}") for i, g in enumerate(groups)),
        ),
        Panel("gradient norm", (("grad_norm", "-", ""),)),
    ]  # fmt: skip
    length = [
        Panel("response length (tokens; mean -, max --)", (("response_length/mean", "-", " mean"), ("response_length/max", "--", " max"))),
        Panel("predicted categories per answer", (("num_predicted_categories", "-", ""),)),
    ]  # fmt: skip
    figures = [
        (rewards, "GRPO training rewards (mean over the step's rollouts)", "grpo_rewards.png"),
        (training, "GRPO loss, KL, clipping and advantages", "grpo_training.png"),
        (length, "GRPO responses", "grpo_response_length.png"),
    ]
    written = [_training_figure(runs, panels, title, out_dir / name, smooth) for panels, title, name in figures]
    return [p for p in written if p is not None]


def plot_sft(runs: Sequence[Run], out_dir: Path, smooth: float) -> list[Path]:
    """sft_training.png (module docstring)."""
    panels = [
        Panel("loss (cross-entropy per target token)", (("loss", "-", ""),)),
        Panel("gradient norm", (("grad_norm", "-", ""),)),
        Panel("learning rate", (("lr", "-", ""),)),
    ]
    path = _training_figure(runs, panels, "SFT training", out_dir / "sft_training.png", smooth)
    return [path] if path is not None else []


MODES = ("slow", "fast")


def _bars(ax, runs: Sequence[Run], labels: Sequence[str], value: Callable[[Run, str, str | None], float],
          modes: Sequence[str | None], title: str, ylabel: str, ticks: Sequence[str] | None = None) -> None:  # fmt: skip
    """Grouped bars: one group per label, one bar per (run, mode); slow solid, fast hatched."""
    num_bars = len(runs) * len(modes)
    width = 0.8 / num_bars
    for r, run in enumerate(runs):
        for m, mode in enumerate(modes):
            offset = (r * len(modes) + m - (num_bars - 1) / 2) * width
            heights = [value(run, label, mode) for label in labels]
            name = run.name if mode is None else f"{run.name} {mode}"
            ax.bar([i + offset for i in range(len(labels))], heights, width, color=_color(r),
                   alpha=1.0 if mode != "fast" else 0.55, hatch="//" if mode == "fast" else None,
                   edgecolor="black", linewidth=0.4, label=name)  # fmt: skip
    ax.set_xticks(range(len(labels)), labels if ticks is None else ticks, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)


def _bar_legend(fig, ax) -> None:
    """One legend for the whole figure, below the panels (the runs' colours, slow solid, fast hatched)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=8)


def _diagnostic(run: Run, dataset: str, key: str, mode: str | None) -> float:
    diag = (run.report or {}).get("datasets", {}).get(dataset, {}).get("diagnostics") or {}
    value = diag.get(key)
    if mode is not None:
        value = (value or {}).get(mode)
    return _float(value)


def plot_eval(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """eval_scores.png and eval_slow_fast.png (module docstring)."""
    datasets = list(dict.fromkeys(name for run in runs for name in run.report["datasets"]))
    metric_names = {"f1": "F1", "hit_rate": "hit rate", "waf": "WAF"}

    def official(run: Run, dataset: str | None, mode: str | None) -> float:
        if dataset is None:
            return _float(run.report.get("means", {}).get("mer_unibench_mean", {}).get(mode)) * 100
        return _float(run.report["datasets"].get(dataset, {}).get(mode, {}).get("official")) * 100

    fig, axes = _figure(len(datasets) + 1, "Scores (%), slow vs fast thinking")
    for ax, dataset in zip(axes, [*datasets, None]):
        if dataset is None:
            title, tick = "MER-UniBench mean", "official metrics"
        else:
            entry = next(run.report["datasets"][dataset] for run in runs if dataset in run.report["datasets"])
            tick = metric_names.get(entry.get("official_metric"), str(entry.get("official_metric")))
            task = entry.get("task", "?")
            title = dataset if task == dataset else f"{dataset} ({task})"
        _bars(ax, runs, [dataset], official, MODES, title, "%", ticks=[tick])
    _bar_legend(fig, axes[0])
    written = [out_dir / "eval_scores.png"]
    fig.savefig(written[0], dpi=DPI)

    with_diag = [d for d in datasets if any((run.report["datasets"].get(d) or {}).get("diagnostics") for run in runs)]
    if not with_diag:
        return written
    panels = [
        ("recall", MODES, "recall (%)", 100.0),
        ("precision", MODES, "precision (%)", 100.0),
        ("mean_num_categories", MODES, "predicted categories per answer", 1.0),
        ("gt_confidence", MODES, "log-confidence on GT categories (nats)", 1.0),
        ("confidence_margin", MODES, "margin over the hardest negatives (nats)", 1.0),
        ("retained_hit_rate", (None,), "retained hit rate (%): fast hits kept by slow", 100.0),
    ]
    fig, axes = _figure(len(panels), "Slow vs fast thinking (paper Figs. 3 and 8)")
    for ax, (key, modes, title, scale) in zip(axes, panels):
        _bars(ax, runs, with_diag, lambda run, d, mode, key=key, scale=scale: _diagnostic(run, d, key, mode) * scale,
              modes, title, "")  # fmt: skip
    _bar_legend(fig, axes[0])
    written.append(out_dir / "eval_slow_fast.png")
    fig.savefig(written[-1], dpi=DPI)
    return written


def plot_runs(runs: Sequence[Run], out_dir: str | os.PathLike, smooth: float = 0.0) -> list[Path]:
    """Write every figure the runs have data for into ``out_dir``; return the written paths."""
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"--smooth must be in [0, 1), got {smooth}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grpo = [run for run in runs if run.metrics and run.is_grpo]
    sft = [run for run in runs if run.metrics and not run.is_grpo]
    reports = [run for run in runs if run.report is not None]
    written: list[Path] = []
    if grpo:
        written += plot_grpo(grpo, out_dir, smooth)
    if sft:
        written += plot_sft(sft, out_dir, smooth)
    if reports:
        written += plot_eval(reports, out_dir)
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        prog="python -m merr1.plot",
        description="Plot merr1 runs: training curves from metrics.jsonl, slow-vs-fast diagnostics from report.json.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output_dir of a training run or an evaluation")
    parser.add_argument("--names", nargs="+", help="one label per RUN_DIR (default: folder names)")
    parser.add_argument("--out", help="where to write the PNGs (default: RUN_DIR/plots, or the runs' common parent/plots)")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA weight in [0, 1) for training curves (default 0: raw)")
    args = parser.parse_args(argv)
    names = args.names or default_names(args.run_dirs)
    if len(names) != len(args.run_dirs):
        parser.error(f"--names has {len(names)} names for {len(args.run_dirs)} run directories")
    if args.out is None:
        common = Path(os.path.commonpath([str(Path(p).resolve()) for p in args.run_dirs]))
        args.out = common / "plots"
    try:
        runs = [load_run(path, name) for path, name in zip(args.run_dirs, names)]
        written = plot_runs(runs, args.out, smooth=args.smooth)
    except ValueError as err:
        parser.error(str(err))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
