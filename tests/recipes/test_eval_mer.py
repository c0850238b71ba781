"""recipes/eval_mer.py through the literal `tune run` commands on the tiny config (issue 7).

A randomly initialised tiny Thinker answers 4 samples of each sample evaluation set (plus a copy
of the basic set with bad rows) in slow and fast mode, 12 new tokens each, batch size 1 (so one
rank and two ranks compute exactly the same thing).
"""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from tune_helpers import REPO_ROOT, tune_run

from merr1.components.emotion_wheel import parse_emotion_list

CONFIG = REPO_ROOT / "recipes" / "configs" / "debug" / "eval_tiny.yaml"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
FAST_PREFIX = "<think></think><answer>"
COMMON = ["max_samples=4", "batch_size=1", "sampling.max_new_tokens=12"]
DATASETS = ("ovmerd", "basic", "sentiment", "basic_bad")
NUM_CATEGORIES = 31  # 6 + 7 + 6 + 6 + 6 level-1 categories over the five wheels


def eval_run(config_path, args, *, nproc=None, check=True):
    return tune_run("recipes/eval_mer.py", config_path, args, nproc=nproc, check=check)


def read_csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def first_names(folder, n=4):
    return [row[0] for row in read_csv_rows(Path(folder) / "labels.csv")[1 : n + 1]]


@pytest.fixture(scope="module")
def sample_info():
    from merr1.components.data.sample import ensure_sample_data

    return ensure_sample_data(SAMPLE_DIR)


def write_config(path, bad_dir, strict=False):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["datasets"].append(
        {"_component_": "merr1.components.data.mer_unibench", "name": "basic_bad", "data_dir": str(bad_dir),
         "strict": strict}  # fmt: skip
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def configs(sample_info, tmp_path_factory):
    """(config with a basic set holding 3 bad rows, the same with strict=true)."""
    root = tmp_path_factory.mktemp("eval_cfg")
    basic = SAMPLE_DIR / sample_info["eval_sets"]["basic"]
    bad = root / "basic_bad"
    bad.mkdir()
    rows = read_csv_rows(basic / "labels.csv")
    header, good = rows[0], rows[1:6]
    bad_rows = [["nolabel", ""], ["ghost", "happy"], [good[1][0], "sad"]]  # empty label, no subtitle, duplicate
    with open(bad / "labels.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *good[:3], *bad_rows, *good[3:]])
    shutil.copy(basic / "subtitle.csv", bad / "subtitle.csv")
    (bad / "media_cache").symlink_to(basic / "media_cache")
    return write_config(root / "eval.yaml", bad), write_config(root / "eval_strict.yaml", bad, strict=True)


@pytest.fixture(scope="module")
def one_rank(configs, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_one")
    proc = eval_run(configs[0], [f"output_dir={out}", *COMMON])
    return out, proc


def in_unit_range(value):
    return value is None or 0.0 <= value <= 1.0


def test_report_keys_ranges_and_predictions(one_rank, sample_info):
    out, proc = one_rank
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"datasets", "means", "sentiment_mapper", "sentiment_mapper_config", "sampling",
                           "answer_fallback", "early_exit", "runtime"}  # fmt: skip
    assert report["early_exit"] is None  # VideoAuto-R1 inference is off by default
    assert report["sentiment_mapper"] == "lexicon"
    assert list(report["datasets"]) == list(DATASETS)
    assert report["means"]["datasets"] == list(DATASETS) and report["means"]["num_datasets"] == 4
    for mean in ("mer_unibench_mean", "f1_mean"):
        assert set(report["means"][mean]) == {"slow", "fast"}
        assert all(map(in_unit_range, report["means"][mean].values()))
    expected_metric = {"ovmerd": "f1", "basic": "hit_rate", "sentiment": "waf", "basic_bad": "hit_rate"}
    for name, d in report["datasets"].items():
        assert d["official_metric"] == expected_metric[name] and d["num_samples"] == 4
        for mode in ("slow", "fast"):
            scores = d[mode]
            assert {"official", "f1", "num_answered", "num_finished"} <= set(scores)
            assert all(in_unit_range(scores[k]) for k in ("official", "f1", "precision", "recall", "hit_rate", "waf",
                                                          "accuracy") if k in scores)  # fmt: skip
            assert 0 <= scores["num_answered"] <= 4 and 0 <= scores["num_finished"] <= 4
        if d["task"] == "sentiment":
            assert d["diagnostics"] is None
            continue
        g = d["diagnostics"]
        for key in ("recall", "precision"):
            assert in_unit_range(g[key]["slow"]) and in_unit_range(g[key]["fast"])
            assert g[key]["gap"] == pytest.approx(g[key]["slow"] - g[key]["fast"])
        assert all(0 <= v <= 7 for v in g["mean_num_categories"].values())
        assert in_unit_range(g["retained_hit_rate"])
        assert all(v is None or v <= 1e-5 for k in ("gt_confidence",) for v in g[k].values())
    assert report["datasets"]["basic_bad"]["num_bad_rows"] == 3
    assert report["datasets"]["basic_bad"]["bad_rows_by_kind"] == {"empty label": 1, "missing subtitle": 1,
                                                                    "duplicate name": 1}  # fmt: skip
    assert "MER-UniBench scores (%)" in proc.stdout and "Slow vs fast diagnostics" in proc.stdout

    for name in DATASETS:
        source = "basic" if name == "basic_bad" else name  # the bad rows sit after the first 3 good ones
        for mode in ("slow", "fast"):
            records = read_jsonl(out / "predictions" / f"{name}.{mode}.jsonl")
            names = [r["name"] for r in records]
            assert names == first_names(SAMPLE_DIR / sample_info["eval_sets"][source])
            for r in records:
                assert r["words"] == parse_emotion_list(r["answer"])
                conf = r["answer_start_log_conf"]
                if name == "sentiment":
                    assert conf is None
                elif mode == "fast":  # the prefilled prompt always ends at the answer start
                    assert len(conf) == NUM_CATEGORIES and all(c <= 1e-5 for c in conf)
                if mode == "fast":  # no reasoning: the prefill, then the generated continuation only
                    assert r["response"].startswith(FAST_PREFIX)
                    assert all(block == "" for block in re.findall(r"<think>(.*?)</think>", r["response"], re.S))
                else:
                    assert not r["response"].startswith(FAST_PREFIX)
            if name == "sentiment":
                mapped = read_jsonl(out / "predictions" / f"sentiment.{mode}.sentiment.jsonl")
                assert [m["name"] for m in mapped] == names
                assert all(m["sentiment"] in ("positive", "negative", "neutral") for m in mapped)


def test_bad_rows_are_named_and_counted_in_the_log(one_rank):
    _, proc = one_rank
    assert "nolabel: empty label" in proc.stderr
    assert "ghost: missing subtitle" in proc.stderr
    assert re.search(r"basic_\d+: duplicate name", proc.stderr)
    assert "skipped 3 bad rows (duplicate name: 1, empty label: 1, missing subtitle: 1)" in proc.stderr


def test_strict_bad_rows_fail_before_the_model_is_built(configs, tmp_path):
    proc = eval_run(configs[1], [f"output_dir={tmp_path}", *COMMON], check=False)
    assert proc.returncode != 0
    assert "bad row(s) (strict=True)" in proc.stderr
    assert not (tmp_path / "predictions").exists()


def test_two_ranks_give_the_same_report(one_rank, configs, tmp_path):
    out, _ = one_rank
    eval_run(configs[0], [f"output_dir={tmp_path}", *COMMON], nproc=2)
    one, two = (json.loads((d / "report.json").read_text()) for d in (out, tmp_path))
    assert two["runtime"]["num_ranks"] == 2
    one.pop("runtime"), two.pop("runtime")
    assert one == two
    for name in DATASETS:
        for mode in ("slow", "fast"):
            rows_one = read_jsonl(out / "predictions" / f"{name}.{mode}.jsonl")
            rows_two = read_jsonl(tmp_path / "predictions" / f"{name}.{mode}.jsonl")
            assert sorted(rows_one, key=lambda r: r["name"]) == sorted(rows_two, key=lambda r: r["name"])


def handmade(name, answer, conf=None):
    return {"name": name, "response": f"<think>hand-written</think><answer>{answer}</answer>", "answer": answer,
            "words": parse_emotion_list(answer), "finished": True, "num_response_tokens": 0,
            "answer_start_log_conf": conf}  # fmt: skip


def test_resume_generates_only_missing_names_and_scores_the_files(configs, sample_info, tmp_path):
    pred = tmp_path / "predictions"
    pred.mkdir()
    # OV-MERD+: complete hand-written answers. Fast lists every GT word, slow only the first one.
    ov_dir = SAMPLE_DIR / sample_info["eval_sets"]["ovmerd"]
    gt = {row[0]: parse_emotion_list(row[1]) for row in read_csv_rows(ov_dir / "labels.csv")[1:5]}
    slow = [json.dumps(handmade(n, words[0])) for n, words in gt.items()]
    fast = [json.dumps(handmade(n, ", ".join(words))) for n, words in gt.items()]
    (pred / "ovmerd.slow.jsonl").write_text("\n".join(slow) + "\n")
    (pred / "ovmerd.fast.jsonl").write_text("\n".join(fast) + "\n")
    ov_before = {m: (pred / f"ovmerd.{m}.jsonl").read_text() for m in ("slow", "fast")}
    # Basic, slow: two answers, then a line torn by an interrupted write.
    basic_names = first_names(SAMPLE_DIR / sample_info["eval_sets"]["basic"])
    kept = [json.dumps(handmade(n, "PRESET")) for n in basic_names[:2]]
    (pred / "basic.slow.jsonl").write_text("\n".join(kept) + '\n{"name": "' + basic_names[2] + '", "resp')

    proc = eval_run(configs[0], [f"output_dir={tmp_path}", *COMMON])

    assert {m: (pred / f"ovmerd.{m}.jsonl").read_text() for m in ("slow", "fast")} == ov_before  # nothing generated
    assert "ovmerd slow: 4 of 4 answers found" in proc.stderr
    assert "basic slow: 2 of 4 answers found" in proc.stderr and "generating 2" in proc.stderr
    assert "dropped 1 line(s): line 3: not valid JSON" in proc.stderr
    lines = (pred / "basic.slow.jsonl").read_text().splitlines()
    assert lines[:2] == kept
    assert [json.loads(line)["name"] for line in lines] == basic_names  # complete, unique, in order (1 rank)
    assert all(json.loads(line)["answer"] != "PRESET" for line in lines[2:])  # generated

    # Scores of the hand-written OV-MERD+ answers. Each sample word maps to one category per wheel,
    # distinct per concept (the sample data's design), so on every wheel: slow P = 1,
    # R = mean(1 / |G_i|); fast P = R = 1; slow keeps 1 of the |G_i| categories fast hits.
    report = json.loads((tmp_path / "report.json").read_text())["datasets"]["ovmerd"]
    sizes = [len(w) for w in gt.values()]
    recall = sum(1 / s for s in sizes) / 4
    assert report["fast"]["f1"] == pytest.approx(1.0) and report["fast"]["recall"] == pytest.approx(1.0)
    assert report["slow"]["precision"] == pytest.approx(1.0) and report["slow"]["recall"] == pytest.approx(recall)
    assert report["slow"]["f1"] == pytest.approx(2 * recall / (1 + recall))
    g = report["diagnostics"]
    assert g["recall"]["gap"] == pytest.approx(recall - 1.0) and g["precision"]["gap"] == pytest.approx(0.0)
    assert g["mean_num_categories"]["slow"] == pytest.approx(1.0)
    assert g["mean_num_categories"]["fast"] == pytest.approx(sum(sizes) / 4)
    assert g["retained_hit_rate"] == pytest.approx(4 / sum(sizes))
    assert g["num_confidence_samples"] == 0 and g["gt_confidence"] == {"slow": None, "fast": None}
    assert report["slow"]["num_answered"] == report["fast"]["num_finished"] == 4


def test_7b_config_has_the_tiny_configs_keys():
    """The 7B config reads the same keys as the tiny one (which the runs above exercise)."""
    tiny = yaml.safe_load(CONFIG.read_text())
    big = yaml.safe_load((REPO_ROOT / "recipes" / "configs" / "qwen2_5_omni" / "7B_eval.yaml").read_text())
    assert set(big) == set(tiny)
    for block in ("sampling", "diagnostics"):
        assert set(big[block]) == set(tiny[block])
    paper_sets = ["OV-MERD+", "MER2023", "MER2024", "MELD", "IEMOCAP", "MOSI", "MOSEI", "SIMS", "SIMSv2"]
    assert [d["name"] for d in big["datasets"]] == paper_sets
    assert big["sentiment_mapper"]["_component_"] == "merr1.components.sentiment.LLMSentimentMapper"


def test_videoauto_early_exit_mode_reports_a1_a2_and_the_chosen_answer(tmp_path):
    """early_exit.enabled on a VideoAuto-R1-format set: slow answers come from early_exit_generate
    (a random tiny model never writes a confident box: nothing exits, a2 is decoded for all), the
    records keep a1/a2/confidence/tokens and the report gives the early-exit summary."""
    out = tmp_path / "early_exit"
    eval_run(CONFIG, [f"output_dir={out}", "max_samples=3", "batch_size=2", "sampling.max_new_tokens=16",
                      "datasets.0.response_format=videoauto_r1", "~datasets.2", "~datasets.1",
                      "early_exit.enabled=true", "early_exit.answer_max_new_tokens=6"])  # fmt: skip
    records = read_jsonl(out / "predictions" / "ovmerd.slow.jsonl")
    assert len(records) == 3
    for record in records:
        ee = record["early_exit"]
        assert set(ee) >= {"a1", "a2", "answer", "exited", "confidence", "num_tokens", "num_tokens_saved"}
        assert ee["exited"] is False and ee["num_tokens"] == record["num_response_tokens"] <= 16
        assert record["answer"] == (ee["answer"] or None)
    fast = read_jsonl(out / "predictions" / "ovmerd.fast.jsonl")
    assert all("early_exit" not in r for r in fast)  # fast mode is unchanged
    report = json.loads((out / "report.json").read_text())
    summary = report["datasets"]["ovmerd"]["diagnostics"]["early_exit"]
    assert summary["num_samples"] == 3 and summary["early_exit_rate"] == 0.0 and summary["num_a2"] == 3
    assert {"a1/f1", "a2/f1", "answer/f1", "tokens_saved", "mean_tokens"} <= set(summary)
    assert report["early_exit"]["threshold"] == 0.97
