"""Experiment tracking next to metrics.jsonl, progress bars and the GRPO postfix (issue 16).

The torchtune loggers are the real ones (DiskLogger always; TensorBoardLogger with the optional
`tensorboard` extra, read back from its event file). These tests import torchtune; merr1 does not.
"""

from __future__ import annotations

import io
import json
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from merr1.components import metric_logging
from merr1.components.metric_logging import (
    MetricLogger,
    backend_scalars,
    check_metric_logger,
    grpo_postfix,
    progress_bar,
    progress_interval_s,
    should_log_samples,
)

STEPS = [
    (1, {"loss": 1.5, "reward/recall/mean": torch.tensor(0.25), "ok": True, "note": "warmup", "lr": 1e-4}),
    (2, {"loss": float("nan"), "reward/recall/mean": torch.tensor([0.5]), "ok": False, "hist": [1, 2], "lr": 1e-4}),
    (3, {"loss": 0.75, "reward/recall/mean": 0.625, "ok": True, "lr": 5e-5}),
]
# What a backend receives per step: numbers only; the NaN as it is; the string and list stay out.
EXPECTED_SCALARS = [
    {"loss": 1.5, "reward/recall/mean": 0.25, "ok": 1, "lr": 1e-4},
    {"loss": float("nan"), "reward/recall/mean": 0.5, "ok": 0, "lr": 1e-4},
    {"loss": 0.75, "reward/recall/mean": 0.625, "ok": 1, "lr": 5e-5},
]


class RecordingLogger:
    """Any object with torchtune's four metric-logger methods."""

    def __init__(self):
        self.calls = []

    def log(self, name, data, step):
        self.calls.append(("log", name, data, step))

    def log_dict(self, payload, step):
        self.calls.append(("log_dict", dict(payload), step))

    def log_config(self, config):
        self.calls.append(("log_config", config))

    def close(self):
        self.calls.append(("close",))


def same(a: dict, b: dict) -> bool:
    """Equal dicts where NaN equals NaN."""
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) if isinstance(a[k], float) and math.isnan(a[k]) else a[k] == b[k]
        for k in a
    )


def log_steps(logger: MetricLogger) -> None:
    for step, metrics in STEPS:
        logger.log(step, metrics)


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_backend_gets_every_step_and_jsonl_is_still_written(tmp_path):
    backend = RecordingLogger()
    logger = MetricLogger(tmp_path, enabled=True, backend=backend)
    config = OmegaConf.create({"output_dir": str(tmp_path), "lr": 1e-4})
    logger.log_config(config)
    log_steps(logger)
    logger.close()
    logger.close()  # idempotent: the backend is closed once
    assert backend.calls[0] == ("log_config", config)
    dicts = [c for c in backend.calls if c[0] == "log_dict"]
    assert [c[2] for c in dicts] == [1, 2, 3]
    for (_, payload, _), expected in zip(dicts, EXPECTED_SCALARS):
        assert same(payload, expected), payload
    assert backend.calls[-1] == ("close",) and backend.calls.count(("close",)) == 1
    rows = jsonl(tmp_path / "metrics.jsonl")  # NaN handling of the JSONL file unchanged
    assert rows[1]["loss"] is None
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["note"] == "warmup" and rows[1]["hist"] == [1, 2]


def test_disabled_logger_never_calls_the_backend(tmp_path):
    backend = RecordingLogger()
    logger = MetricLogger(tmp_path, enabled=False, backend=backend)
    logger.log_config({"a": 1})
    log_steps(logger)
    logger.close()
    assert backend.calls == [("close",)]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_bad_step_reaches_neither_file_nor_backend(tmp_path):
    backend = RecordingLogger()
    logger = MetricLogger(tmp_path, enabled=True, backend=backend)
    logger.log(2, {"loss": 1.0})
    with pytest.raises(ValueError, match="step 2 logged after step 2"):
        logger.log(2, {"loss": 0.5})
    assert len([c for c in backend.calls if c[0] == "log_dict"]) == 1
    logger.close()


@pytest.mark.parametrize(
    ("backend", "missing"),
    [
        (object(), "['log', 'log_dict', 'log_config', 'close']"),
        (type("NoClose", (), {"log": lambda *a: None, "log_dict": lambda *a: None, "log_config": lambda *a: None})(), "['close']"),
        (type("AttrNotMethod", (), {"log": 1, "log_dict": print, "log_config": print, "close": print})(), "['log']"),
    ],
)
def test_backend_without_the_methods_is_refused(tmp_path, backend, missing):
    with pytest.raises(ValueError, match=re.escape(f"has no method(s) {missing}")):
        MetricLogger(tmp_path, enabled=True, backend=backend)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before the file is touched


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"a": 1, "b": 2.5, "c": True}, {"a": 1, "b": 2.5, "c": 1}),
        ({"t0": torch.tensor(3.0), "t1": torch.tensor([4]), "t2": torch.tensor([1.0, 2.0])}, {"t0": 3.0, "t1": 4}),
        ({"s": "x", "n": None, "l": [1.0], "d": {"a": 1}}, {}),
        ({"inf": float("inf")}, {"inf": float("inf")}),
    ],
)
def test_backend_scalars_table(metrics, expected):
    assert backend_scalars(metrics) == expected


def test_check_metric_logger_returns_the_object():
    backend = RecordingLogger()
    assert check_metric_logger(backend) is backend


# ----------------------------------------------------------------------------- torchtune loggers


def test_with_torchtune_disk_logger(tmp_path):
    from torchtune.training.metric_logging import DiskLogger

    backend = DiskLogger(log_dir=str(tmp_path / "logs"), filename="log.txt")
    logger = MetricLogger(tmp_path, enabled=True, backend=backend)
    logger.log_config(OmegaConf.create({"output_dir": str(tmp_path), "seed": 0}))
    log_steps(logger)
    logger.close()
    lines = (tmp_path / "logs" / "log.txt").read_text().splitlines()
    assert lines == [
        "Step 1 | loss:1.5 reward/recall/mean:0.25 ok:1 lr:0.0001 ",
        "Step 2 | loss:nan reward/recall/mean:0.5 ok:0 lr:0.0001 ",
        "Step 3 | loss:0.75 reward/recall/mean:0.625 ok:1 lr:5e-05 ",
    ]
    assert (tmp_path / "torchtune_config.yaml").is_file()  # DiskLogger.log_config saves the config
    assert [r["step"] for r in jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_with_torchtune_tensorboard_logger_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="optional extra `tensorboard`")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util
    from torchtune.training.metric_logging import TensorBoardLogger

    backend = TensorBoardLogger(log_dir=str(tmp_path / "tb"), organize_logs=False)
    logger = MetricLogger(tmp_path, enabled=True, backend=backend)
    log_steps(logger)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    # torchtune writes new-style scalars: tensor summaries, one float32 value per step.
    assert set(events.Tags()["tensors"]) == {"loss", "reward/recall/mean", "ok", "lr"}

    def series(tag):
        return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in events.Tensors(tag)]

    loss = series("loss")
    assert [s for s, _ in loss] == [1, 2, 3]
    assert loss[0][1] == 1.5 and math.isnan(loss[1][1]) and loss[2][1] == 0.75  # exact in float32
    assert series("reward/recall/mean") == [(1, 0.25), (2, 0.5), (3, 0.625)]
    assert series("ok") == [(1, 1.0), (2, 0.0), (3, 1.0)]


def test_metric_logger_config_section_via_torchtune_config(tmp_path):
    """`metric_logger: null` in a YAML, switched on by the README's command-line overrides
    (torchtune's own YAML + CLI merge), then instantiated as the recipe does."""
    from argparse import Namespace

    from torchtune import config
    from torchtune.config._utils import _merge_yaml_and_cli_args

    yaml_args = Namespace(output_dir=str(tmp_path), metric_logger=None)
    overrides = [
        "metric_logger._component_=torchtune.training.metric_logging.DiskLogger",
        f"metric_logger.log_dir={tmp_path}/logs",
        "metric_logger.filename=log.txt",
    ]
    cfg = _merge_yaml_and_cli_args(yaml_args, overrides)
    backend = config.instantiate(cfg.metric_logger)
    with MetricLogger(tmp_path, enabled=True, backend=backend) as logger:
        logger.log_config(cfg)
        logger.log(1, {"loss": 2.0})
    assert (tmp_path / "logs" / "log.txt").read_text() == "Step 1 | loss:2.0 \n"
    assert (tmp_path / "torchtune_config.yaml").is_file()
    assert _merge_yaml_and_cli_args(Namespace(metric_logger=None), []).metric_logger is None  # default: JSONL only


# ----------------------------------------------------------------------------- progress and postfix


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_outside_a_terminal_prints_about_one_line_per_interval(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("tqdm.std.time", clock)
    out = io.StringIO()
    bar = progress_bar(1000, "grpo", file=out, interval_s=30)
    for step in range(1, 1001):
        clock.now += 0.1  # 100 s in all
        bar.update(1)
        bar.set_postfix_str(f"loss={step}")  # never forces a line outside a terminal
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # The first line (0/1000), one at >= 30, 60 and 90 s, and the last one at close.
    assert len(lines) == 5, lines
    assert lines[0].startswith("grpo:   0%") and "1000/1000" in lines[-1] and "loss=1000" in lines[-1]
    assert all(line.isascii() for line in lines)


def test_progress_interval_zero_and_resume_initial(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("tqdm.std.time", clock)
    out = io.StringIO()
    bar = progress_bar(10, "sft", initial=7, file=out, interval_s=0)
    for _ in range(3):
        clock.now += 0.01
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [re.search(r"(\d+)/10", line).group(1) for line in lines] == ["7", "8", "9", "10", "10"]


def test_progress_in_a_terminal_is_plain_tqdm():
    out = Terminal()
    bar = progress_bar(3, "eval", file=out)
    for _ in range(3):
        bar.update(1)
        bar.set_postfix_str("x=1")
    bar.close()
    assert "\r" in out.getvalue()  # live refreshes


def test_progress_disabled_writes_nothing():
    out = io.StringIO()
    bar = progress_bar(3, "grpo", file=out, disable=True)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [(None, None, 30.0), (None, "5", 5.0), (2.5, "5", 2.5), (0, None, 0.0)],
)
def test_progress_interval_s(monkeypatch, value, env, expected):
    if env is None:
        monkeypatch.delenv(metric_logging.PROGRESS_INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(metric_logging.PROGRESS_INTERVAL_ENV, env)
    assert progress_interval_s(value) == expected


@pytest.mark.parametrize(("value", "env"), [(None, "soon"), (-1.0, None), (float("nan"), None)])
def test_progress_interval_s_errors(monkeypatch, value, env):
    monkeypatch.delenv(metric_logging.PROGRESS_INTERVAL_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(metric_logging.PROGRESS_INTERVAL_ENV, env)
    with pytest.raises(ValueError, match="seconds"):
        progress_interval_s(value)


MER_R1_METRICS = {
    "reward/recall/mean": 0.5391, "reward/precision/mean": 0.776, "reward/format/mean": 0.9375,
    "reward/cali_pos/mean": 0.2564, "reward/cali_neg/mean": -0.08664, "reward/f1/mean": 0.617,
    "loss": -1.397e-08, "time/step": 0.6108,
}  # fmt: skip


@pytest.mark.parametrize(
    ("reward_names", "expected"),
    [
        # MER-R1's groups: recall, precision, cali_pos, cali_neg, format
        (["recall", "precision", "cali_pos", "cali_neg", "format"],
         "recall=0.539 precision=0.776 cali_pos=0.256 cali_neg=-0.0866 format=0.938 loss=-1.4e-08 time/step=0.611"),
        # Baseline: one group {f1, format}; recall and precision are still shown first
        (["f1", "format"], "recall=0.539 precision=0.776 f1=0.617 format=0.938 loss=-1.4e-08 time/step=0.611"),
        # B2-style repeated names appear once; a reward that was not logged is skipped
        (["recall", "precision", "recall", "length"], "recall=0.539 precision=0.776 loss=-1.4e-08 time/step=0.611"),
    ],
)  # fmt: skip
def test_grpo_postfix_shows_every_reward_of_the_groups(reward_names, expected):
    assert grpo_postfix(MER_R1_METRICS, reward_names) == expected


def test_grpo_postfix_extra_keys_and_tensors():
    metrics = {"reward/recall/mean": torch.tensor(0.5), "grad_norm": 1.25, "loss": 2}
    assert grpo_postfix(metrics, [], extra=("grad_norm", "loss", "missing")) == "recall=0.5 grad_norm=1.25 loss=2"


@pytest.mark.parametrize(
    ("every", "steps"),
    [(10, [1, 10, 20]), (1, list(range(1, 21))), (50, [1]), (7, [1, 7, 14])],
)
def test_should_log_samples_first_step_then_every_n(every, steps):
    assert [s for s in range(1, 21) if should_log_samples(s, every)] == steps


def test_should_log_samples_rejects_zero():
    with pytest.raises(ValueError, match="log_samples_every_n_steps"):
        should_log_samples(1, 0)
