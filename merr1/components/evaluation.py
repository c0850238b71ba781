"""Evaluation helpers (issue 7): prediction files, scores per data set and mode, the benchmark
means, slow-vs-fast diagnostics per data set, and the printed tables. ``recipes/eval_mer.py``
calls these; everything here is plain Python on records (dicts) and runs on rank 0.

Prediction files, ``{output_dir}/predictions/<dataset>.<mode>.jsonl``: one JSON object per
sample (``name``, ``response``, ``answer``, ...; see the recipe). Appending a batch writes whole
lines, then flushes and fsyncs, so an interrupted run leaves at most one torn last line.
``load_records`` reads a file back for resuming: it keeps the first well-formed record of every
known name and drops (with a warning naming the line and the reason) torn or malformed lines,
records of names the data set no longer has, and duplicates; if anything was dropped, or the last
line has no newline, the file is rewritten atomically with exactly the kept lines first.

Settings, ``{output_dir}/predictions/settings.json``: what the stored answers depend on (the
model and tokenizer configs, ``checkpoint_dir``, dtype, seed, sampling, answer fallback,
diagnostics, and each data set's config except ``strict``). Resuming with other settings would
mix answers of two models or decodings, so ``settings_mismatch`` lists the differences and the
recipe refuses to resume. A re-trained checkpoint written to the SAME path is not detected: use a
new ``output_dir`` (or ``resume: false``) for it.

Metrics (METHOD section 3, via ``merr1.score``), per data set and mode:

- fine-grained (``ovmerd``): official = OV-MERD+ F1 (``score_ovmerd``), with precision/recall;
- basic emotion (``basic``): official = hit rate (``score_hitrate``); ``f1``, ``precision``,
  ``recall`` = the paper's F1 re-evaluation (``score_basic_f1``);
- sentiment (``sentiment``): official = WAF (``score_sentiment`` on the mapped sentiments), with
  accuracy; ``f1`` = the WAF (a weighted F1 already). A set whose GT scores are all 0 has no WAF
  (NaN, with a warning) instead of failing the whole report.

Table 1 (``format_table1``, printed first when the data sets are the official ones read by
``merr1.components.data.mer_unibench_official``, i.e. their reports carry a ``benchmark`` id): each
set's official metric in slow and fast mode, the MER-UniBench mean, the paper's F1 variant of
the four basic-emotion sets and the F1 mean ("R-Mean"), with the paper's MER-R1 and Baseline
numbers (``PAPER_TABLE1``) in side columns. The paper's numbers are for its own run (greedy
slow thinking is the setting they compare with); they are printed for comparison only.

Benchmark means (METHOD section 6): ``mer_unibench_mean`` = the plain mean over the data sets of
this run of their official metric (the paper's "MER-UniBench mean" when the nine sets OV-MERD+,
MER2023, MER2024, MELD, IEMOCAP, MOSI, MOSEI, SIMS, SIMSv2 are all present); ``f1_mean`` = the
same with F1 everywhere (the paper's slow-vs-fast "R-Mean": basic sets by their F1, sentiment by
WAF). A NaN metric makes its mean NaN. Values are fractions in [0, 1]; the tables print percent.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from merr1.components.emotion_wheel import EmotionWheels
from merr1.components.metric_logging import atomic_write_text, fsync_dir
from merr1.score import score_basic_f1, score_hitrate, score_ovmerd, score_sentiment

log = logging.getLogger(__name__)

MODES = ("slow", "fast")
TASKS = ("ovmerd", "basic", "sentiment")
OFFICIAL_METRIC = {"ovmerd": "f1", "basic": "hit_rate", "sentiment": "waf"}

# The paper's numbers (MER-R1, arXiv 2606.27652, Table 1 and the slow-vs-fast comparison), in %,
# keyed by the official data set ids of merr1.components.data.mer_unibench_release.BENCHMARKS. Official
# metrics: OV-MERD+ F1, hit rate for the four basic-emotion sets, WAF for the four sentiment sets.
# "f1_mean" is the paper's R-Mean (F1 everywhere) for slow and fast thinking. The per-set numbers
# of the Baseline and the per-set F1 of the basic-emotion sets are not copied here ("-" in tables).
PAPER_TABLE1: dict[str, dict[str, Any]] = {
    "MER-R1": {
        "sets": {"OVMERDPlus": 70.68, "MER2023": 88.60, "MER2024": 92.96, "MELD": 71.90, "IEMOCAPFour": 78.10,
                 "CMUMOSI": 86.06, "CMUMOSEI": 86.73, "SIMS": 88.04, "SIMSv2": 88.48},
        "mer_unibench_mean": 83.50,
        "f1_mean": {"slow": 61.80, "fast": 60.86},
    },
    "Baseline": {
        "sets": {},
        "mer_unibench_mean": 77.87,
        "f1_mean": {"slow": 58.11, "fast": 58.49},
    },
}  # fmt: skip
NUM_BENCHMARK_SETS = 9
_NAN = float("nan")
_MAX_LOGGED_PROBLEMS = 5


# ---------------------------------------------------------------------------------------------
# Prediction files


def prediction_path(output_dir: str | Path, dataset: str, mode: str, kind: str = "") -> Path:
    """``{output_dir}/predictions/<dataset>.<mode>[.<kind>].jsonl``."""
    suffix = f".{kind}" if kind else ""
    return Path(output_dir) / "predictions" / f"{dataset}.{mode}{suffix}.jsonl"


def load_records(path: Path, known_names: Collection[str], required: Sequence[str] = ("name",)) -> dict[str, dict]:
    """Read a prediction file for resuming (module docstring); missing file -> {}.

    Args:
        path: the JSONL file.
        known_names: names a record may have (the data set's names).
        required: keys every record must have.

    Returns:
        name -> record, in file order (the first well-formed record of each known name).
    """
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    records: dict[str, dict] = {}
    kept_lines: list[str] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"line {lineno}: not valid JSON (torn write?)")
            continue
        if not isinstance(record, dict) or any(key not in record for key in required):
            problems.append(f"line {lineno}: not an object with keys {list(required)}")
        elif record["name"] not in known_names:
            problems.append(f"line {lineno}: name {record['name']!r} is not in the data set")
        elif record["name"] in records:
            problems.append(f"line {lineno}: duplicate name {record['name']!r}")
        else:
            records[record["name"]] = record
            kept_lines.append(line)
    if problems:
        shown = "; ".join(problems[:_MAX_LOGGED_PROBLEMS])
        more = f" (+{len(problems) - _MAX_LOGGED_PROBLEMS} more)" if len(problems) > _MAX_LOGGED_PROBLEMS else ""
        log.warning("%s: dropped %d line(s): %s%s", path, len(problems), shown, more)
    if problems or not text.endswith("\n"):
        atomic_write_text(path, "".join(line + "\n" for line in kept_lines))
    return records


def append_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append records as JSON lines, then flush and fsync (creates the file and its folder)."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())
    if new_file:
        fsync_dir(path.parent)


def write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` by these records (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records))


SETTINGS_FILE = "settings.json"
GENERATION_KEYS = (
    "checkpoint_dir", "tokenizer", "model", "dtype", "seed", "sampling", "answer_fallback", "diagnostics", "early_exit",
)  # fmt: skip


def generation_settings(cfg: Mapping[str, Any], dataset_names: Sequence[str]) -> dict[str, Any]:
    """The settings the answers depend on (module docstring), from the resolved config dict.

    Args:
        cfg: the recipe's config as plain types (``OmegaConf.to_container(cfg, resolve=True)``).
        dataset_names: the data sets' names, in the order of ``cfg["datasets"]``.
    """
    datasets = {
        name: {key: value for key, value in ds.items() if key != "strict"}
        for name, ds in zip(dataset_names, cfg["datasets"])
    }
    return {"generation": {key: cfg[key] for key in GENERATION_KEYS}, "datasets": datasets}


def settings_mismatch(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Differences between stored and current ``generation_settings`` (data sets only present in
    one of them are no difference: adding a data set to a finished run is fine)."""
    problems = [
        f"{key}: {old['generation'].get(key)!r} -> {new['generation'][key]!r}"
        for key in GENERATION_KEYS
        if old["generation"].get(key) != new["generation"][key]
    ]
    problems += [
        f"data set {name}: {old['datasets'][name]!r} -> {ds!r}"
        for name, ds in new["datasets"].items()
        if name in old["datasets"] and old["datasets"][name] != ds
    ]
    return problems


# ---------------------------------------------------------------------------------------------
# Scores


def score_mode(
    task: str,
    labels: Mapping[str, Any],
    answers: Mapping[str, str],
    sentiments: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Scores of one data set in one mode.

    Args:
        task: "ovmerd", "basic" or "sentiment".
        labels: name -> GT (openset cell, basic label, or sentiment score), in data set order.
        answers: name -> extracted answer string ("" when there is none).
        sentiments: name -> mapped sentiment (sentiment sets only).

    Returns:
        ``{"official": ..., "f1": ..., <metric-specific keys>}`` (module docstring).
    """
    if task == "ovmerd":
        s = score_ovmerd(answers, labels)
        return {"official": s["f1"], "f1": s["f1"], "precision": s["precision"], "recall": s["recall"]}
    if task == "basic":
        hit = score_hitrate(answers, labels)
        s = score_basic_f1(answers, labels)
        return {
            "official": hit["hit_rate"], "hit_rate": hit["hit_rate"],
            "f1": s["f1"], "precision": s["precision"], "recall": s["recall"],
        }  # fmt: skip
    if task == "sentiment":
        if sentiments is None:
            raise ValueError("sentiment sets need the mapped sentiments")
        if all(score == 0 for score in labels.values()):
            log.warning("every GT sentiment score is 0: WAF and accuracy are undefined (NaN)")
            return {"official": _NAN, "waf": _NAN, "accuracy": _NAN, "f1": _NAN, "num_nonzero": 0}
        s = score_sentiment(sentiments, labels)
        return {"official": s["waf"], "waf": s["waf"], "accuracy": s["accuracy"], "f1": s["waf"],
                "num_nonzero": s["n_nonzero"]}  # fmt: skip
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def benchmark_means(datasets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """MER-UniBench mean (official metrics) and F1 mean over the data sets, per mode.

    Args:
        datasets: data set name -> its report (with ``{"slow": {...}, "fast": {...}}`` scores).
    """
    out: dict[str, Any] = {"datasets": list(datasets), "num_datasets": len(datasets)}
    for key, field in (("mer_unibench_mean", "official"), ("f1_mean", "f1")):
        out[key] = {
            mode: (sum(d[mode][field] for d in datasets.values()) / len(datasets) if datasets else _NAN)
            for mode in MODES
        }
    return out


# ---------------------------------------------------------------------------------------------
# Diagnostics of one data set (METHOD section 6; definitions in merr1.components.diagnostics)


def slow_fast_diagnostics(
    labels: Mapping[str, Any],
    records: Mapping[str, Mapping[str, Mapping[str, Any]]],
    scores: Mapping[str, Mapping[str, Any]],
    wheels: EmotionWheels | None = None,
    num_hard_negatives: int | None = None,
) -> dict[str, Any]:
    """Recall/precision gaps, predicted-category counts, GT confidence and margin, retained hits.

    Args:
        labels: name -> GT label (data sets with emotion labels: ovmerd, basic).
        records: mode -> name -> prediction record (``answer``, ``answer_start_log_conf``).
        scores: mode -> ``score_mode`` output (precision/recall).
        wheels: default ``EmotionWheels.load()``.
        num_hard_negatives: size of the margin's hard-negative set (default
            ``diagnostics.NUM_HARD_NEGATIVES``, 3).
    """
    # Imported here: torch is only needed for the diagnostics, and the table/report helpers of
    # this module (scripts/quickstart_report.py) then start without it (issue 16).
    import torch

    from merr1.components import diagnostics

    if num_hard_negatives is None:
        num_hard_negatives = diagnostics.NUM_HARD_NEGATIVES
    wheels = wheels or EmotionWheels.load()
    names = list(labels)
    gt = [wheels.map_text_packed(labels[n]) for n in names]
    pred = {mode: [wheels.map_text_packed(records[mode][n]["answer"] or "") for n in names] for mode in MODES}
    out: dict[str, Any] = {}
    for metric in ("recall", "precision"):
        slow, fast = scores["slow"][metric], scores["fast"][metric]
        out[metric] = {"slow": slow, "fast": fast, "gap": slow - fast}  # gap = slow - fast
    out["mean_num_categories"] = {mode: diagnostics.mean_num_categories(gt, pred[mode])["mean"] for mode in MODES}
    out["retained_hit_rate"] = diagnostics.retained_hit_rate(gt, pred["fast"], pred["slow"])["mean"]

    # Confidences on the samples with an answer start in both modes (paired comparison).
    both = [i for i, n in enumerate(names) if all(records[m][n].get("answer_start_log_conf") for m in MODES)]
    num_categories = [len(wheels.categories(k)) for k in range(wheels.NUM_WHEELS)]
    out["num_confidence_samples"] = len(both)
    for key in ("gt_confidence", "confidence_margin"):
        out[key] = {mode: _NAN for mode in MODES}
    if both:
        gt_mask = diagnostics.flat_category_mask([gt[i] for i in both], num_categories)  # [M, C]
        for mode in MODES:
            conf = torch.tensor([records[mode][names[i]]["answer_start_log_conf"] for i in both])  # [M, C]
            summary = diagnostics.confidence_summary(conf, gt_mask, num_categories, num_hard_negatives)
            out["gt_confidence"][mode] = summary["gt_confidence"]
            out["confidence_margin"][mode] = summary["margin"]
    return out


# ---------------------------------------------------------------------------------------------
# Tables


def _pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _num(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _paper(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table1(report: Mapping[str, Any]) -> str:
    """The paper's Table 1 layout (module docstring): official metric per set, the MER-UniBench
    mean, the F1 variant of the basic-emotion sets and the F1 mean, slow and fast, with the
    paper's MER-R1 and Baseline numbers (``PAPER_TABLE1``) beside them."""
    metric_names = {"f1": "F1", "hit_rate": "hit rate", "waf": "WAF"}
    runs = list(PAPER_TABLE1)
    head = f"{'data set':<12} {'metric':<22} {'slow':>7} {'fast':>7} | " + " ".join(f"{r:>12}" for r in runs)

    def row(label: str, metric: str, slow: float, fast: float, paper: Sequence[str]) -> str:
        return f"{label:<12} {metric:<22} {_pct(slow):>7} {_pct(fast):>7} | " + " ".join(f"{p:>12}" for p in paper)

    datasets = report["datasets"]
    official = {name for name, d in datasets.items() if d.get("benchmark")}
    lines = ["MER-UniBench, the paper's Table 1 layout (%): this run (slow, fast) | the paper's numbers", head]
    for name, d in datasets.items():
        metric = metric_names[OFFICIAL_METRIC[d["task"]]]
        paper = [_paper(PAPER_TABLE1[r]["sets"].get(d.get("benchmark"))) for r in runs]
        lines.append(row(name, metric, d["slow"]["official"], d["fast"]["official"], paper))
    means = report["means"]
    num = means["num_datasets"]
    scope = f"{num} sets" + ("" if len(official) == num == NUM_BENCHMARK_SETS else f"; the paper's: {NUM_BENCHMARK_SETS}")
    lines.append(row("mean", f"official ({scope})", means["mer_unibench_mean"]["slow"],
                     means["mer_unibench_mean"]["fast"], [_paper(PAPER_TABLE1[r]["mer_unibench_mean"]) for r in runs]))
    basic = [(name, d) for name, d in datasets.items() if d["task"] == "basic"]
    if basic:
        lines.append("F1 variant of the basic-emotion sets (the paper's re-evaluation with the emotion wheels)")
        for name, d in basic:
            lines.append(row(name, "F1", d["slow"]["f1"], d["fast"]["f1"], ["-"] * len(runs)))
    f1_paper = [f"{_paper(PAPER_TABLE1[r]['f1_mean']['slow'])}/{_paper(PAPER_TABLE1[r]['f1_mean']['fast'])}"
                for r in runs]  # fmt: skip
    lines.append(row("R-Mean", f"F1 everywhere ({scope})", means["f1_mean"]["slow"], means["f1_mean"]["fast"], f1_paper))
    lines.append("(paper R-Mean: slow/fast)")
    return "\n".join(lines)


def format_tables(report: Mapping[str, Any]) -> str:
    """The paper-style tables: Table 1 (when the sets are the official ones), scores (Tables 1
    and 3) and the slow-vs-fast diagnostics."""
    metric_names = {"f1": "F1", "hit_rate": "hit rate", "waf": "WAF"}
    rows = [f"{'data set':<18} {'task':<10} {'metric':<9} {'slow':>7} {'fast':>7} | {'F1 slow':>7} {'F1 fast':>7}"]
    for name, d in report["datasets"].items():
        rows.append(
            f"{name:<18} {d['task']:<10} {metric_names[OFFICIAL_METRIC[d['task']]]:<9} "
            f"{_pct(d['slow']['official']):>7} {_pct(d['fast']['official']):>7} | "
            f"{_pct(d['slow']['f1']):>7} {_pct(d['fast']['f1']):>7}"
        )
    means = report["means"]
    rows.append(
        f"{'mean (' + str(means['num_datasets']) + ' sets)':<18} {'':<10} {'official':<9} "
        f"{_pct(means['mer_unibench_mean']['slow']):>7} {_pct(means['mer_unibench_mean']['fast']):>7} | "
        f"{_pct(means['f1_mean']['slow']):>7} {_pct(means['f1_mean']['fast']):>7}"
    )
    lines = ["MER-UniBench scores (%), greedy slow vs fast thinking", *rows]
    if any(d.get("benchmark") for d in report["datasets"].values()):
        lines = [format_table1(report), "", *lines]
    diag = {name: d["diagnostics"] for name, d in report["datasets"].items() if d.get("diagnostics")}
    if diag:
        lines += ["", "Slow vs fast diagnostics (recall/precision in %, gap = slow - fast; log-confidences in nats)"]
        lines.append(
            f"{'data set':<18} {'R slow':>7} {'R fast':>7} {'gap':>6} {'P slow':>7} {'P fast':>7} {'gap':>6} "
            f"{'#cat s':>6} {'#cat f':>6} {'conf s':>7} {'conf f':>7} {'marg s':>7} {'marg f':>7} {'retain':>7}"
        )
        for name, g in diag.items():
            lines.append(
                f"{name:<18} {_pct(g['recall']['slow']):>7} {_pct(g['recall']['fast']):>7} "
                f"{_pct(g['recall']['gap']):>6} {_pct(g['precision']['slow']):>7} {_pct(g['precision']['fast']):>7} "
                f"{_pct(g['precision']['gap']):>6} {_num(g['mean_num_categories']['slow']):>6} "
                f"{_num(g['mean_num_categories']['fast']):>6} {_num(g['gt_confidence']['slow']):>7} "
                f"{_num(g['gt_confidence']['fast']):>7} {_num(g['confidence_margin']['slow']):>7} "
                f"{_num(g['confidence_margin']['fast']):>7} {_pct(g['retained_hit_rate']):>7}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Comparing runs (the quick start's final table: SFT vs GRPO, slow vs fast)


def training_reward_summary(metrics: Sequence[Mapping[str, Any]], window: int = 10) -> dict[str, dict[str, float]]:
    """Mean of each ``reward/<name>/mean`` over the first and the last ``window`` logged steps.

    Args:
        metrics: the GRPO recipe's ``metrics.jsonl`` rows, in step order.

    Returns:
        reward name -> {"first": ..., "last": ..., "change": last - first}.
    """
    if len(metrics) < 2:
        raise ValueError(f"need at least 2 logged steps to compare, got {len(metrics)}")
    window = min(window, len(metrics) // 2)
    names = sorted(k[len("reward/") : -len("/mean")] for k in metrics[0] if k.startswith("reward/") and k.endswith("/mean"))
    out = {}
    for name in names:
        values = [row[f"reward/{name}/mean"] for row in metrics]
        first, last = sum(values[:window]) / window, sum(values[-window:]) / window
        out[name] = {"first": first, "last": last, "change": last - first}
    return out


def compare_reports(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (data set, metric) with the value of every run and mode.

    Args:
        reports: run name (e.g. "sft", "grpo") -> ``report.json`` of ``recipes/eval_mer.py``.

    Returns:
        rows ``{"data set", "metric", "<run> <mode>": value, ...}`` (values in [0, 1] or NaN):
        each set's official metric, its recall and precision (fine-grained/basic sets), and the
        MER-UniBench mean.
    """
    first = next(iter(reports.values()))
    rows = []
    for name, d in first["datasets"].items():
        metrics = [("official", f"{OFFICIAL_METRIC[d['task']]}")]
        if d["task"] != "sentiment":
            metrics += [("recall", "recall"), ("precision", "precision")]
        for key, label in metrics:
            row: dict[str, Any] = {"data set": name, "metric": label}
            for run, report in reports.items():
                for mode in MODES:
                    row[f"{run} {mode}"] = report["datasets"][name][mode].get(key, _NAN)
            rows.append(row)
    row = {"data set": f"mean ({first['means']['num_datasets']} sets)", "metric": "official"}
    for run, report in reports.items():
        for mode in MODES:
            row[f"{run} {mode}"] = report["means"]["mer_unibench_mean"][mode]
    rows.append(row)
    return rows


def format_comparison(rows: Sequence[Mapping[str, Any]]) -> str:
    """``compare_reports`` rows as a fixed-width table (percentages)."""
    columns = [k for k in rows[0] if k not in ("data set", "metric")]
    lines = [f"{'data set':<16} {'metric':<10} " + " ".join(f"{c:>10}" for c in columns)]
    for row in rows:
        lines.append(f"{row['data set']:<16} {row['metric']:<10} " + " ".join(f"{_pct(row[c]):>10}" for c in columns))
    return "\n".join(lines)
