"""Evaluation helpers (merr1.components.evaluation): resumable prediction files, scores, means, tables."""

import json
import math

import pytest

from merr1.components.evaluation import (
    append_records,
    benchmark_means,
    format_tables,
    generation_settings,
    load_records,
    prediction_path,
    score_mode,
    settings_mismatch,
    slow_fast_diagnostics,
)

NAN = float("nan")


def test_prediction_path(tmp_path):
    assert prediction_path(tmp_path, "MER2023", "slow") == tmp_path / "predictions" / "MER2023.slow.jsonl"
    expected = tmp_path / "predictions" / "MOSI.fast.sentiment.jsonl"
    assert prediction_path(tmp_path, "MOSI", "fast", "sentiment") == expected


def test_append_then_load_round_trip(tmp_path):
    path = tmp_path / "p" / "x.slow.jsonl"
    append_records(path, [{"name": "a", "answer": "happy"}, {"name": "b", "answer": None}])
    append_records(path, [{"name": "c", "answer": "sad, ünïcode"}])
    append_records(path, [])
    records = load_records(path, {"a", "b", "c"}, ("name", "answer"))
    assert list(records) == ["a", "b", "c"]
    assert records["c"]["answer"] == "sad, ünïcode"
    assert load_records(tmp_path / "missing.jsonl", {"a"}) == {}


def test_load_drops_bad_lines_and_rewrites_the_file(tmp_path, caplog):
    path = tmp_path / "x.jsonl"
    lines = [
        json.dumps({"name": "a", "answer": "happy"}),
        json.dumps({"name": "ghost", "answer": "sad"}),  # not in the data set
        "[1, 2]",  # not an object
        json.dumps({"name": "b"}),  # lacks "answer"
        json.dumps({"name": "a", "answer": "other"}),  # duplicate: the first one wins
        json.dumps({"name": "c", "answer": "sad"}),
        '{"name": "d", "answ',  # torn last line
    ]
    path.write_text("\n".join(lines))
    with caplog.at_level("WARNING"):
        records = load_records(path, {"a", "b", "c", "d"}, ("name", "answer"))
    assert {n: r["answer"] for n, r in records.items()} == {"a": "happy", "c": "sad"}
    assert "dropped 5 line(s)" in caplog.text
    assert "line 7: not valid JSON" in caplog.text and "duplicate name 'a'" in caplog.text
    assert path.read_text() == lines[0] + "\n" + lines[5] + "\n"  # appending after this is safe
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert load_records(path, {"a", "b", "c", "d"}, ("name", "answer")) == records
    assert caplog.text == ""


def test_load_adds_a_missing_final_newline(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"name": "a"}))
    assert list(load_records(path, {"a"})) == ["a"]
    assert path.read_text().endswith("}\n")


def test_score_mode_per_task():
    labels = {"s1": "['happy', 'sad']", "s2": "['angry']"}
    answers = {"s1": "happy, sad", "s2": "angry"}
    out = score_mode("ovmerd", labels, answers)
    assert out["official"] == out["f1"] == 1.0 and out["precision"] == out["recall"] == 1.0
    out = score_mode("basic", {"s1": "happy", "s2": "sad"}, {"s1": "happy, angry", "s2": "worried"})
    assert out["official"] == out["hit_rate"] == 0.5
    # Basic F1: P = mean(1/2, 0) = 0.25, R = mean(1, 0) = 0.5 on every wheel.
    assert out["f1"] == pytest.approx(2 * 0.25 * 0.5 / 0.75)
    sentiments = {"s1": "positive", "s2": "neutral", "s3": "x"}
    out = score_mode("sentiment", {"s1": 1.0, "s2": -2.0, "s3": 0.0}, {}, sentiments)
    assert out["official"] == out["waf"] == out["f1"] == 1.0 and out["num_nonzero"] == 2
    out = score_mode("sentiment", {"s1": 0.0}, {}, {"s1": "positive"})
    assert math.isnan(out["waf"])
    with pytest.raises(ValueError, match="unknown task"):
        score_mode("regression", labels, answers)


def test_benchmark_means():
    datasets = {
        "a": {"slow": {"official": 0.5, "f1": 0.4}, "fast": {"official": 0.7, "f1": 0.6}},
        "b": {"slow": {"official": 1.0, "f1": 0.8}, "fast": {"official": NAN, "f1": 0.2}},
    }
    out = benchmark_means(datasets)
    assert out["mer_unibench_mean"]["slow"] == 0.75 and math.isnan(out["mer_unibench_mean"]["fast"])
    assert out["f1_mean"] == {"slow": pytest.approx(0.6), "fast": pytest.approx(0.4)}
    assert out["datasets"] == ["a", "b"] and out["num_datasets"] == 2


def test_slow_fast_diagnostics_and_tables():
    # Sample words map to one category per wheel, distinct per concept (the sample data's design).
    labels = {"s1": "['happy', 'angry']", "s2": "['sad']"}
    conf = [-1.0] * 31
    def rec(answer, log_conf):
        return {"answer": answer, "answer_start_log_conf": log_conf}

    records = {
        "slow": {"s1": rec("happy", conf), "s2": rec("sad", None)},
        "fast": {"s1": rec("happy, angry", conf), "s2": rec(None, conf)},
    }
    scores = {
        mode: score_mode("ovmerd", labels, {n: r["answer"] or "" for n, r in records[mode].items()}) for mode in records
    }
    out = slow_fast_diagnostics(labels, records, scores)
    assert out["recall"]["slow"] == pytest.approx(0.75)  # (1/2 + 1) / 2 on every wheel
    assert out["recall"]["fast"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert out["recall"]["gap"] == pytest.approx(0.25)
    assert out["mean_num_categories"] == {"slow": 1.0, "fast": 1.0}  # (1 + 1) / 2 and (2 + 0) / 2
    assert out["retained_hit_rate"] == pytest.approx(0.5)  # fast hits 2 on s1, slow keeps 1
    assert out["num_confidence_samples"] == 1  # s2 has no slow answer start
    assert out["gt_confidence"] == {"slow": -1.0, "fast": -1.0}
    assert out["confidence_margin"] == {"slow": 0.0, "fast": 0.0}

    senti = {"slow": {"official": NAN, "f1": NAN}, "fast": {"official": 0.5, "f1": 0.5}}
    report = {
        "datasets": {
            "ov": {"task": "ovmerd", **scores, "diagnostics": out},
            "senti": {"task": "sentiment", **senti, "diagnostics": None},
        },
        "means": benchmark_means({"ov": scores, "senti": senti}),
    }
    text = format_tables(report)
    assert "ov " in text and "WAF" in text and "mean (2 sets)" in text
    assert "75.00" in text  # slow recall in percent
    assert text.count("\n") == 8  # 2 header lines + 2 data sets + mean, blank, 2 header lines + 1 row


def test_settings_mismatch():
    cfg = {
        "checkpoint_dir": "a/hf", "tokenizer": {"x": 1}, "model": {"m": 1}, "dtype": "bf16", "seed": 0,
        "sampling": {"temperature": 0.0}, "answer_fallback": "none", "diagnostics": {"enabled": True}, "early_exit": {"enabled": False},
        "datasets": [{"_component_": "d", "data_dir": "p", "strict": False}], "batch_size": 8,
    }  # fmt: skip
    old = generation_settings(cfg, ["ov"])
    assert old["datasets"] == {"ov": {"_component_": "d", "data_dir": "p"}}  # strict does not change answers
    same = dict(cfg, batch_size=1, datasets=[dict(cfg["datasets"][0], strict=True), {"_component_": "e"}])
    assert settings_mismatch(old, generation_settings(same, ["ov", "new"])) == []  # a data set may be added
    other = dict(cfg, checkpoint_dir="b/hf", sampling={"temperature": 1.0}, datasets=[{"_component_": "d", "data_dir": "q"}])
    problems = settings_mismatch(old, generation_settings(other, ["ov"]))
    assert len(problems) == 3
    assert problems[0] == "checkpoint_dir: 'a/hf' -> 'b/hf'" and problems[2].startswith("data set ov:")


def _report(ovmerd_slow, ovmerd_fast, mean_slow, mean_fast):
    def scores(value):
        return {"official": value, "f1": value, "recall": value, "precision": 1.0}

    return {
        "datasets": {
            "ovmerd": {"task": "ovmerd", "slow": scores(ovmerd_slow), "fast": scores(ovmerd_fast)},
            "sentiment": {"task": "sentiment", "slow": {"official": 0.9, "f1": 0.9}, "fast": {"official": 0.5, "f1": 0.5}},
        },
        "means": {"num_datasets": 2, "mer_unibench_mean": {"slow": mean_slow, "fast": mean_fast}},
    }


def test_compare_reports_rows_and_table():
    from merr1.components.evaluation import compare_reports, format_comparison

    rows = compare_reports({"sft": _report(0.5, 0.25, 0.7, 0.375), "grpo": _report(0.75, 0.5, 0.825, 0.5)})
    assert [(r["data set"], r["metric"]) for r in rows] == [
        ("ovmerd", "f1"), ("ovmerd", "recall"), ("ovmerd", "precision"), ("sentiment", "waf"), ("mean (2 sets)", "official"),
    ]
    assert rows[0] == {"data set": "ovmerd", "metric": "f1", "sft slow": 0.5, "sft fast": 0.25, "grpo slow": 0.75, "grpo fast": 0.5}
    assert rows[-1]["grpo slow"] == 0.825
    table = format_comparison(rows)
    assert "sft slow" in table.splitlines()[0] and "82.50" in table.splitlines()[-1]


def test_training_reward_summary_first_and_last_window():
    from merr1.components.evaluation import training_reward_summary

    rows = [{"step": i, "reward/recall/mean": i / 10, "reward/format/mean": 1.0, "loss": 0.0} for i in range(1, 11)]
    summary = training_reward_summary(rows, window=3)
    assert summary["recall"]["first"] == pytest.approx(0.2) and summary["recall"]["last"] == pytest.approx(0.9)
    assert summary["recall"]["change"] == pytest.approx(0.7)
    assert summary["format"] == {"first": 1.0, "last": 1.0, "change": 0.0}
    assert set(summary) == {"recall", "format"}
    assert training_reward_summary(rows[:4], window=10)["recall"]["first"] == pytest.approx(0.15)  # window halves
    with pytest.raises(ValueError, match="at least 2"):
        training_reward_summary(rows[:1])


def _table1_report(benchmarks):
    """Three sets (OV-MERD+, MER2023, SIMS) with hand-picked scores."""

    def scores(official, f1):
        return {"slow": {"official": official, "f1": f1}, "fast": {"official": official / 2, "f1": f1 / 2}}

    ids = dict(zip(("OV-MERD+", "MER2023", "SIMS"), benchmarks))
    return {
        "datasets": {
            "OV-MERD+": {"task": "ovmerd", "benchmark": ids["OV-MERD+"], **scores(0.5, 0.5)},
            "MER2023": {"task": "basic", "benchmark": ids["MER2023"], **scores(0.8, 0.25)},
            "SIMS": {"task": "sentiment", "benchmark": ids["SIMS"], **scores(0.6, 0.6)},
        },
        "means": {"num_datasets": 3, "mer_unibench_mean": {"slow": 0.6, "fast": 0.3},
                  "f1_mean": {"slow": 0.45, "fast": float("nan")}},
    }  # fmt: skip


def test_table1_layout_with_the_papers_numbers():
    from merr1.components.evaluation import PAPER_TABLE1, format_table1, format_tables

    lines = format_table1(_table1_report(("OVMERDPlus", "MER2023", "SIMS"))).splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if not line.startswith(("F1 variant", "(paper"))}
    assert rows["OV-MERD+"] == ["OV-MERD+", "F1", "50.00", "25.00", "|", "70.68", "-"]
    assert rows["SIMS"] == ["SIMS", "WAF", "60.00", "30.00", "|", "88.04", "-"]
    assert rows["mean"][-4:] == ["30.00", "|", "83.50", "77.87"] and "the paper's: 9" in lines[5]
    assert rows["R-Mean"][-4:] == ["-", "|", "61.80/60.86", "58.11/58.49"]  # a NaN mean prints as "-"
    # the F1 variant: basic-emotion sets only (a second MER2023 row, under its header)
    f1_rows = lines[lines.index(next(l for l in lines if l.startswith("F1 variant"))) + 1 :]
    assert f1_rows[0].split() == ["MER2023", "F1", "25.00", "12.50", "|", "-", "-"]
    assert PAPER_TABLE1["MER-R1"]["sets"]["MER2023"] == 88.60
    # merr1's own layout (no benchmark id): no Table 1 block and no paper numbers
    assert "Table 1 layout" not in format_tables(_table1_report((None, None, None)))
    assert format_tables(_table1_report(("OVMERDPlus", "MER2023", "SIMS"))).startswith("MER-UniBench, the paper's Table 1")


def test_table1_paper_numbers_average_to_the_papers_mean():
    """The copied per-set numbers reproduce the paper's MER-UniBench mean (83.50) within its rounding."""
    from merr1.components.evaluation import PAPER_TABLE1

    sets = PAPER_TABLE1["MER-R1"]["sets"]
    assert len(sets) == 9 and abs(sum(sets.values()) / 9 - PAPER_TABLE1["MER-R1"]["mer_unibench_mean"]) < 0.01
