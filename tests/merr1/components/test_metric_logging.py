import json
import math

import numpy as np
import pytest
import torch
import yaml

from merr1.components.metric_logging import (
    MetricLogger,
    SampleLogger,
    format_metrics,
    save_config,
    to_jsonable,
    truncate_jsonl,
)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_json_object_per_step(tmp_path):
    with MetricLogger(tmp_path, enabled=True) as logger:
        logger.log(1, {"loss": 2.5, "lr": 1e-5})
        logger.log(2, {"loss": 2.0, "lr": 2e-5})
        # Written and flushed when logged, before close.
        assert _lines(tmp_path / "metrics.jsonl") == [
            {"step": 1, "loss": 2.5, "lr": 1e-5},
            {"step": 2, "loss": 2.0, "lr": 2e-5},
        ]
    assert logger.last_step == 2


@pytest.mark.parametrize(
    "value, expected, num_nonfinite",
    [
        (1.5, 1.5, 0),
        (3, 3, 0),
        (True, True, 0),
        ("x", "x", 0),
        (None, None, 0),
        (float("nan"), None, 1),
        (float("inf"), None, 1),
        (-math.inf, None, 1),
        (torch.tensor(0.25), 0.25, 0),
        (torch.tensor([7]), [7], 0),
        (torch.tensor([1.0, float("nan")]), [1.0, None], 1),
        (torch.tensor(2.0, requires_grad=True) * 1, 2.0, 0),
        (torch.tensor(0.5, dtype=torch.bfloat16), 0.5, 0),
        (np.float32(0.5), 0.5, 0),
        (np.int64(4), 4, 0),
        (np.array([1, 2]), [1, 2], 0),
        (np.float64("nan"), None, 1),
        ({"a": float("inf"), "b": (1, 2)}, {"a": None, "b": [1, 2]}, 1),
    ],
)
def test_to_jsonable_table(value, expected, num_nonfinite):
    nonfinite = []
    assert to_jsonable(value, "k", nonfinite) == expected
    assert len(nonfinite) == num_nonfinite


def test_to_jsonable_accepts_omegaconf_containers():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"betas": [0.9, 0.95], "model": {"hidden": 64}})
    assert to_jsonable(cfg) == {"betas": [0.9, 0.95], "model": {"hidden": 64}}


def test_to_jsonable_rejects_unknown_type():
    with pytest.raises(ValueError, match="'k' has a value of type object"):
        to_jsonable(object(), "k")


def test_nonfinite_written_as_null_and_counted(tmp_path, caplog):
    with MetricLogger(tmp_path, enabled=True) as logger:
        logger.log(1, {"loss": float("nan"), "grad_norm": torch.tensor(float("inf")), "lr": 0.1})
        logger.log(2, {"loss": float("nan"), "grad_norm": 1.0, "lr": 0.1})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _lines(tmp_path / "metrics.jsonl") == [
        {"step": 1, "loss": None, "grad_norm": None, "lr": 0.1},
        {"step": 2, "loss": None, "grad_norm": 1.0, "lr": 0.1},
    ]
    assert logger.num_nonfinite == 3
    assert logger.nonfinite_counts == {"loss": 2, "grad_norm": 1}
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 2  # once per key, not once per occurrence


def test_steps_must_increase(tmp_path):
    with MetricLogger(tmp_path, enabled=True) as logger:
        logger.log(3, {"loss": 1.0})
        with pytest.raises(ValueError, match="step 3 logged after step 3"):
            logger.log(3, {"loss": 1.0})
        with pytest.raises(ValueError, match="step 2 logged after step 3"):
            logger.log(2, {"loss": 1.0})
        with pytest.raises(ValueError, match="must be an int"):
            logger.log(4.0, {"loss": 1.0})
        with pytest.raises(ValueError, match="'step' is passed as an argument"):
            logger.log(4, {"step": 4})


def test_resume_truncates_steps_after_checkpoint(tmp_path):
    with MetricLogger(tmp_path, enabled=True) as logger:
        for step in range(1, 8):
            logger.log(step, {"loss": float(step)})
    # Checkpoint at step 4; the run died after logging step 7.
    with MetricLogger(tmp_path, resume_step=4, enabled=True) as logger:
        assert [line["step"] for line in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
        with pytest.raises(ValueError, match="step 4 logged after step 4"):
            logger.log(4, {"loss": 0.0})
        for step in range(5, 9):
            logger.log(step, {"loss": 10.0 * step})
    lines = _lines(tmp_path / "metrics.jsonl")
    assert [line["step"] for line in lines] == list(range(1, 9))
    assert [line["loss"] for line in lines] == [1.0, 2.0, 3.0, 4.0, 50.0, 60.0, 70.0, 80.0]


def test_resume_drops_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    assert truncate_jsonl(path, resume_step=5) == 2
    assert _lines(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]


@pytest.mark.parametrize(
    "content, resume_step, expected_last, expected_steps",
    [
        (None, 3, None, []),  # missing file: created empty
        ("", 3, None, []),
        ('{"step": 5}\n', 3, None, []),  # everything after the checkpoint
        ('{"step": 1}\n{"step": 2}\n', 0, None, []),
        ('{"step": 1}\n[1, 2]\n{"nostep": 1}\n{"step": 2}\n', 9, 2, [1, 2]),
    ],
)
def test_truncate_jsonl_edges(tmp_path, content, resume_step, expected_last, expected_steps):
    path = tmp_path / "m.jsonl"
    if content is not None:
        path.write_text(content)
    assert truncate_jsonl(path, resume_step) == expected_last
    assert [line["step"] for line in _lines(path)] == expected_steps


def test_fresh_run_replaces_existing_file(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 9, "loss": 1.0}\n')
    with MetricLogger(tmp_path, enabled=True) as logger:
        logger.log(1, {"loss": 2.0})
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]


def test_disabled_logger_writes_nothing(tmp_path):
    with MetricLogger(tmp_path / "run", enabled=False) as logger:
        logger.log(1, {"loss": 1.0})
    assert not (tmp_path / "run").exists()


def test_rank_zero_writes_by_default(tmp_path):
    with MetricLogger(tmp_path) as logger:  # no process group: rank 0
        logger.log(1, {"loss": 1.0})
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]


def test_sample_logger_many_lines_per_step_and_resume(tmp_path):
    with SampleLogger(tmp_path, enabled=True) as samples:
        samples.log(10, [{"prompt": "p0", "response": "<answer>happy</answer>", "reward": 1.0}, {"prompt": "p1"}])
        samples.log(20, [{"prompt": "p2", "reward": torch.tensor(float("nan"))}])
        with pytest.raises(ValueError, match="step 10 logged after step 20"):
            samples.log(10, [{"prompt": "late"}])
    assert samples.num_nonfinite == 1
    with SampleLogger(tmp_path, resume_step=15, enabled=True) as samples:
        samples.log(20, [{"prompt": "p2 again"}])
    assert _lines(tmp_path / "samples.jsonl") == [
        {"step": 10, "prompt": "p0", "response": "<answer>happy</answer>", "reward": 1.0},
        {"step": 10, "prompt": "p1"},
        {"step": 20, "prompt": "p2 again"},
    ]


@pytest.mark.parametrize(
    "metrics, keys, expected",
    [
        ({"step": 12, "loss": 1.23456, "lr": 2e-5}, None, "step=12 loss=1.235 lr=2e-05"),
        ({"step": 12, "loss": 1.23456, "lr": 2e-5}, ["loss", "missing", "step"], "loss=1.235 step=12"),
        ({"loss": float("nan"), "g": float("inf")}, None, "loss=nan g=inf"),
        ({"loss": torch.tensor(0.5), "n": np.int64(3), "tag": "slow"}, None, "loss=0.5 n=3 tag=slow"),
        ({"tokens_per_second": 123456.7}, None, "tokens_per_second=1.235e+05"),
        ({}, None, ""),
    ],
)
def test_format_metrics_table(metrics, keys, expected):
    assert format_metrics(metrics, keys) == expected


def test_save_config_round_trip(tmp_path):
    cfg = {"model": {"_component_": "merr1.components.models.tiny_thinker", "seed": 0}, "lr": 2e-5, "epochs": 2,
           "betas": [0.9, 0.95], "output_dir": "/tmp/x", "resume_from_checkpoint": False, "none": None}
    path = save_config(cfg, tmp_path / "checkpoints" / "config.yaml")
    assert yaml.safe_load(path.read_text()) == cfg
    assert list(yaml.safe_load(path.read_text())) == list(cfg)  # key order kept


def test_save_config_errors(tmp_path):
    with pytest.raises(ValueError, match="expects a dict"):
        save_config(["not", "a", "dict"], tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="cannot write"):
        save_config({"model": object()}, tmp_path / "c.yaml")
    assert not (tmp_path / "c.yaml").exists()
