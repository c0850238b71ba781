"""MER-UniBench scores (METHOD section 3): hand-derived values, float order, NaN cases, CLI."""

import json
import math
import random
import subprocess
import sys
from functools import reduce
from operator import add
from pathlib import Path

import pytest

from merr1.components.emotion_wheel import EmotionWheels, parse_emotion_list
from merr1.score import (
    _numpy_mean,
    _wheel_mean,
    score_basic_f1,
    score_hitrate,
    score_ovmerd,
    score_sentiment,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")


def same(a, b):
    """Bitwise float equality, NaN == NaN."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def per_wheel(result, key):
    return [w[key] for w in result["per_wheel"]]


# ---------------------------------------------------------------------------------------------
# OV-MERD+
# ---------------------------------------------------------------------------------------------


def test_ovmerd_hand_derived():
    # s1: every wheel G = {happy cat}, Ŷ = {happy cat, sad}: P = 1/2, R = 1.
    # s2: Ŷ empty ("neutral" maps to nothing): P = R = 0.  s3: empty GT = neutral: skipped.
    gts = {"s1": "['Happy']", "s2": "['Angry']", "s3": ""}
    preds = {"s1": "happy, sad", "s2": "neutral", "s3": "happy"}
    result = score_ovmerd(preds, gts)
    f = 2 * (0.25 * 0.5) / (0.25 + 0.5)  # F from the averaged P = 0.25 and R = 0.5
    assert per_wheel(result, "precision") == [0.25] * 5
    assert per_wheel(result, "recall") == [0.5] * 5
    assert per_wheel(result, "f1") == [f] * 5
    assert per_wheel(result, "kept") == [2] * 5
    assert per_wheel(result, "wheel") == [1, 2, 3, 4, 5]
    assert result["f1"] == ((((f + f) + f) + f) + f) / 5 == pytest.approx(1 / 3)
    assert result["precision"] == 0.25 and result["recall"] == 0.5 and result["n"] == 3


def test_f_is_computed_from_averaged_precision_and_recall():
    # s1: P = R = 1 (F_1 = 1); s2: P = 1/2, R = 1 (F_2 = 2/3). Mean of per-sample F would be
    # 5/6; the protocol takes F of the means: 2 * 0.75 * 1 / 1.75 = 6/7.
    result = score_ovmerd({"s1": "joy", "s2": "happy, sad"}, {"s1": "happy", "s2": "happy"})
    assert per_wheel(result, "f1") == [2 * (0.75 * 1.0) / 1.75] * 5
    assert result["f1"] == pytest.approx(6 / 7)


def test_ovmerd_wheel_without_kept_sample_is_nan():
    # "surprise" is dropped on W5: no sample is kept there, so W5 and the means are NaN.
    result = score_ovmerd({"a": "surprised", "b": "[Surprised]"}, {"a": "surprise", "b": "Surprise"})
    assert per_wheel(result, "f1")[:4] == [1.0] * 4
    assert per_wheel(result, "kept") == [2, 2, 2, 2, 0]
    assert all(math.isnan(result["per_wheel"][4][key]) for key in ("precision", "recall", "f1"))
    assert all(math.isnan(result[key]) for key in ("f1", "precision", "recall"))


def test_ovmerd_zero_precision_and_recall_give_nan_f():
    # P^k = R^k = 0: F^k = 0/0 = NaN (no zero guard), while P and R means stay 0.
    result = score_ovmerd({"a": "sad"}, {"a": "happy"})
    assert all(math.isnan(f) for f in per_wheel(result, "f1")) and math.isnan(result["f1"])
    assert result["precision"] == 0.0 and result["recall"] == 0.0


def test_ovmerd_all_gt_neutral_is_nan():
    result = score_ovmerd({"a": "happy", "b": "sad"}, {"a": "", "b": "['neutral']"})
    assert per_wheel(result, "kept") == [0] * 5 and math.isnan(result["f1"]) and result["n"] == 2


def test_ovmerd_lists_equal_strings():
    gts = {"a": "['Happy', 'Sad']", "b": "angry"}
    preds = {"a": "joy, grief", "b": "furious; mad"}
    as_lists = score_ovmerd({k: parse_emotion_list(v) for k, v in preds.items()}, {k: parse_emotion_list(v) for k, v in gts.items()})
    assert as_lists == score_ovmerd(preds, gts)


def test_bracket_only_text_is_empty_not_an_error():
    result = score_ovmerd({"a": "["}, {"a": "happy"})  # official code raises IndexError
    assert result["precision"] == 0.0 and per_wheel(result, "kept") == [1] * 5


@pytest.mark.parametrize("scorer", [score_ovmerd, score_hitrate, score_basic_f1])
@pytest.mark.parametrize(
    "preds, gts, match",
    [
        ({}, {}, "empty input"),
        ({"a": "x"}, {"b": "x"}, "names differ"),
        ({"a": "x", "b": "y"}, {"a": "x"}, "names differ"),
        ({"a": "x"}, {"a": "x", "b": "y"}, "names differ"),
        (["a"], {"a": "x"}, "mappings"),
        ({"a": 3}, {"a": "happy"}, "expected a string"),
    ],
)
def test_set_scores_bad_input(scorer, preds, gts, match):
    with pytest.raises(ValueError, match=match):
        scorer(preds, gts)


# ---------------------------------------------------------------------------------------------
# Basic emotions: hit rate and F1
# ---------------------------------------------------------------------------------------------


def test_hitrate_hand_derived():
    # fear -> (scared, happy, joyful, genius, joyful); scared -> (scared, fearful, scared, fear,
    # scared): hit on W1 only. "neutral" GT: skipped on all wheels. "surprise": hit on W1..W4,
    # skipped on W5. Empty prediction: kept, no hit.
    gts = {"s1": "fear", "s2": "neutral", "s3": "surprise", "s4": "happy"}
    preds = {"s1": "scared", "s2": "happy", "s3": "surprised, happy", "s4": ""}
    result = score_hitrate(preds, gts)
    assert per_wheel(result, "kept") == [3, 3, 3, 3, 2]
    assert per_wheel(result, "hit_rate") == [2 / 3, 1 / 3, 1 / 3, 1 / 3, 0.0]
    assert result["hit_rate"] == ((((2 / 3 + 1 / 3) + 1 / 3) + 1 / 3) + 0.0) / 5 == pytest.approx(1 / 3)
    assert result["n"] == 4


def test_hitrate_wheel_without_kept_sample_is_nan():
    result = score_hitrate({"a": "surprised"}, {"a": "surprise"})
    assert per_wheel(result, "hit_rate")[:4] == [1.0] * 4
    assert math.isnan(per_wheel(result, "hit_rate")[4]) and math.isnan(result["hit_rate"])


def test_basic_f1_is_set_f1_with_one_word_gt():
    # GT fear; prediction {scared, happy}: W1 {scared, happy} vs {scared}, W2 {fearful, happy}
    # vs {happy}, W3 {scared, joyful} vs {joyful}: P = 1/2, R = 1; W4 {fear, joy} vs {genius}
    # and W5 {scared, powerful} vs {joyful}: P = R = 0, F = NaN.
    result = score_basic_f1({"a": "scared, happy"}, {"a": "fear"})
    assert per_wheel(result, "precision") == [0.5, 0.5, 0.5, 0.0, 0.0]
    assert per_wheel(result, "recall") == [1.0, 1.0, 1.0, 0.0, 0.0]
    f = per_wheel(result, "f1")
    assert f[:3] == [2 * (0.5 * 1.0) / 1.5] * 3 and math.isnan(f[3]) and math.isnan(f[4])
    assert math.isnan(result["f1"]) and result["precision"] == 0.3
    assert json.dumps(result) == json.dumps(score_ovmerd({"a": "scared, happy"}, {"a": "fear"}))


# ---------------------------------------------------------------------------------------------
# Float order: numpy.mean and the official formulas
# ---------------------------------------------------------------------------------------------


def test_numpy_mean_small_cases():
    assert math.isnan(_numpy_mean([]))
    assert _numpy_mean([0.5]) == 0.5
    assert _numpy_mean([0, 1.0, 0.5]) == 0.5
    assert _wheel_mean([0.1, 0.2, 0.3, 0.4, 0.5]) == ((((0.1 + 0.2) + 0.3) + 0.4) + 0.5) / 5
    assert math.isnan(_wheel_mean([0.1, NAN, 0.3, 0.4, 0.5]))


def test_numpy_mean_is_pairwise_not_naive():
    values = [1 / 3, 0.1, 2 / 3, 0.7, 1 / 7] * 60  # 300 values: recursion + 8-way blocks
    naive = reduce(add, values) / len(values)
    assert _numpy_mean(values) != naive  # the data distinguishes the two summation orders
    np = pytest.importorskip("numpy")
    assert _numpy_mean(values) == float(np.mean(values))


def test_numpy_mean_matches_numpy_bitwise():
    np = pytest.importorskip("numpy")
    rng = random.Random(0)
    fractions = [0, 0.0, 1.0, 0.5, 1 / 3, 2 / 3, 0.25, 0.2, 1 / 7, 0.4]
    for n in list(range(1, 300)) + [1000, 1024, 4097, 9000]:
        values = [rng.choice(fractions) if rng.random() < 0.7 else rng.random() for _ in range(n)]
        assert _numpy_mean(values) == float(np.mean(values)), n


def test_scores_match_numpy_restatement_bitwise():
    # Independent restatement with Python sets and numpy float64, as the official code computes.
    np = pytest.importorskip("numpy")
    wheels = EmotionWheels.load()
    keys = sorted(wheels.table)
    rng = random.Random(3)

    def words(n):
        return [rng.choice(keys) if rng.random() < 0.85 else "unknown" for _ in range(n)]

    gts = {f"s{i}": str([w.title() for w in words(rng.randint(0, 4))]) for i in range(700)}
    preds = {name: ", ".join(words(rng.randint(0, 6))) for name in gts}
    rows, hit_rows = [], []
    for k in range(5):
        precisions, recalls, hits = [], [], []
        for name in gts:
            g = set(wheels.map_words(parse_emotion_list(gts[name]))[k])
            y = set(wheels.map_words(parse_emotion_list(preds[name]))[k])
            if not g:
                continue
            precisions.append(len(g & y) / len(y) if y else 0)
            recalls.append(len(g & y) / len(g) if y else 0)
            hits.append(len(g & y))
        p, r = np.mean(precisions), np.mean(recalls)
        with np.errstate(invalid="ignore"):
            rows.append([2 * (p * r) / (p + r), p, r])
        hit_rows.append([np.mean(hits), 0])
    expected = np.mean(rows, axis=0).tolist()
    result = score_ovmerd(preds, gts)
    assert [result["f1"], result["precision"], result["recall"]] == expected
    for k in range(5):
        assert [float(v) for v in rows[k]] == [result["per_wheel"][k][key] for key in ("f1", "precision", "recall")]
    assert score_hitrate(preds, gts)["hit_rate"] == np.mean(hit_rows, axis=0).tolist()[0]


# ---------------------------------------------------------------------------------------------
# Sentiment
# ---------------------------------------------------------------------------------------------


def test_sentiment_hand_derived():
    # Non-zero samples: (T, T), (F, T), (T, "Positive" -> 0 -> F), (F, F); the 0 sample dropped.
    # Class T: tp 1, predicted 2, true 2 -> F1 = 2/4; class F likewise -> WAF 0.5, accuracy 0.5.
    gts = {"a": 1.2, "b": -0.4, "c": 0, "d": 2.0, "e": -1}
    preds = {"a": "positive", "b": "positive", "c": "negative", "d": "Positive", "e": "negative"}
    assert score_sentiment(preds, gts) == {"waf": 0.5, "accuracy": 0.5, "n_nonzero": 4, "n": 5}


@pytest.mark.parametrize(
    "pred, positive",
    [("positive", True), ("Positive", False), (" positive", False), ("positive ", False),
     ("negative", False), ("neutral", False), ("", False), (None, False), (["positive"], False)],
)
def test_sentiment_exact_match(pred, positive):
    result = score_sentiment({"a": pred}, {"a": 1.0})
    assert result["accuracy"] == (1.0 if positive else 0.0)


def test_sentiment_never_predicted_class_scores_zero():
    # y_true (T, F, F), y_pred all T: F1_T = 2*1/(1+3) = 1/2, F1_F = 0 (never predicted)
    # -> WAF = (0 * 2 + 0.5 * 1) / 3.
    result = score_sentiment({"a": "positive", "b": "positive", "c": "positive"}, {"a": 1, "b": -1, "c": -2})
    assert result["waf"] == (0.0 * 2 + 0.5 * 1) / 3 and result["accuracy"] == 1 / 3


def test_sentiment_f1_formulas_round_differently():
    # Class T: tp 1, true 3, predicted 2 (F from counts 2/5); class F: tp 1, true 2, predicted 3.
    gts = {"a": 1, "b": 1, "c": 1, "d": -1, "e": -1}
    preds = {"a": "positive", "b": "neutral", "c": "negative", "d": "positive", "e": "negative"}
    counts = score_sentiment(preds, gts)["waf"]
    legacy = score_sentiment(preds, gts, f1_formula="precision_recall")["waf"]
    assert counts == ((2 * 1 / 5) * 2 + (2 * 1 / 5) * 3) / 5
    p_t, r_t, p_f, r_f = 1 / 2, 1 / 3, 1 / 3, 1 / 2
    assert legacy == ((2.0 * p_f * r_f / (p_f + r_f)) * 2 + (2.0 * p_t * r_t / (p_t + r_t)) * 3) / 5
    assert counts == pytest.approx(legacy)


@pytest.mark.parametrize(
    "preds, gts, kwargs, match",
    [
        ({"a": "positive"}, {"a": 0}, {}, "non-zero"),
        ({"a": "positive"}, {"a": NAN}, {}, "must be a number"),
        ({"a": "positive"}, {"a": "1.0"}, {}, "must be a number"),
        ({"a": "positive"}, {"a": True}, {}, "must be a number"),
        ({"a": "positive"}, {"a": 1}, {"f1_formula": "macro"}, "f1_formula"),
        ({}, {}, {}, "empty input"),
        ({"a": "positive"}, {"b": 1}, {}, "names differ"),
    ],
)
def test_sentiment_bad_input(preds, gts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        score_sentiment(preds, gts, **kwargs)


def test_sentiment_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    import sklearn

    formula = "counts" if tuple(int(x) for x in sklearn.__version__.split(".")[:2]) >= (1, 4) else "precision_recall"
    rng = random.Random(0)
    for trial in range(200):
        n = rng.randint(1, 60)
        gts = {f"n{i}": rng.choice([0, 1.5, -0.6, 2, -3]) for i in range(n)}
        preds = {name: rng.choice(["positive", "negative", "neutral", "Positive"]) for name in gts}
        y_true = [gts[k] > 0 for k in gts if gts[k] != 0]
        y_pred = [preds[k] == "positive" for k in gts if gts[k] != 0]
        if not y_true:
            continue
        result = score_sentiment(preds, gts, f1_formula=formula)
        assert result["waf"] == sklearn_metrics.f1_score(y_true, y_pred, average="weighted")
        assert result["accuracy"] == sklearn_metrics.accuracy_score(y_true, y_pred)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def run_cli(*args, cwd=REPO_ROOT):
    return subprocess.run(
        [sys.executable, "-m", "merr1.score", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def write_jsonl(path, key, mapping):
    path.write_text("".join(json.dumps({"name": n, key: v}) + "\n" for n, v in mapping.items()))
    return path


def test_cli_ovmerd_jsonl_and_official_csv(tmp_path):
    gts = {"s1": "['Happy']", "s2": "['Angry', 'Sad']", "s3": ""}
    preds = {"s1": "happy, sad", "s2": ["furious"], "s3": "happy"}
    pred_path = write_jsonl(tmp_path / "p.jsonl", "pred", preds)
    gt_path = write_jsonl(tmp_path / "g.jsonl", "label", gts)
    csv_path = tmp_path / "gt.csv"
    csv_path.write_text('name,openset\ns1,"[\'Happy\']"\ns2,"[\'Angry\', \'Sad\']"\ns3,\n')
    expected = json.loads(json.dumps(score_ovmerd(preds, gts)))
    for gt in (gt_path, csv_path):
        proc = run_cli("ovmerd", "--pred", pred_path, "--gt", gt)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("\n") == 1 and json.loads(proc.stdout) == expected


def test_cli_nan_is_null(tmp_path):
    pred_path = write_jsonl(tmp_path / "p.jsonl", "pred", {"a": "sad"})
    gt_path = write_jsonl(tmp_path / "g.jsonl", "label", {"a": "happy"})
    out = json.loads(run_cli("basic-f1", "--pred", pred_path, "--gt", gt_path).stdout)
    assert out["f1"] is None and out["precision"] == 0.0 and out["per_wheel"][0]["f1"] is None


def test_cli_hitrate_and_sentiment(tmp_path):
    pred_path = write_jsonl(tmp_path / "p.jsonl", "pred", {"a": "scared", "b": "happy"})
    gt_path = write_jsonl(tmp_path / "g.jsonl", "label", {"a": "fear", "b": "neutral"})
    out = json.loads(run_cli("hitrate", "--pred", pred_path, "--gt", gt_path).stdout)
    assert out["hit_rate"] == pytest.approx(0.2) and out["n"] == 2
    spred = write_jsonl(tmp_path / "sp.jsonl", "pred", {"a": "positive", "b": "negative", "c": "x"})
    sgt = write_jsonl(tmp_path / "sg.jsonl", "label", {"a": 1.0, "b": -2, "c": 0})
    out = json.loads(run_cli("sentiment", "--pred", spred, "--gt", sgt).stdout)
    assert out == {"waf": 1.0, "accuracy": 1.0, "n_nonzero": 2, "n": 3}
    sgt_csv = tmp_path / "sg.csv"
    sgt_csv.write_text("name,label\na,1.0\nb,-2\nc,0\n")
    proc = run_cli("sentiment", "--pred", spred, "--gt", sgt_csv, "--f1-formula", "precision_recall")
    assert json.loads(proc.stdout) == out


def test_cli_map(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("happy\n\nSurprise\nzzz\n")
    proc = run_cli("map", "--words", words)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines == [
        {"word": "happy", "categories": ["happy", "happy", "joyful", "joy", "powerful"]},
        {"word": "Surprise", "categories": ["surprised", "surprised", "powerful", "fear", None]},
        {"word": "zzz", "categories": [None] * 5},
    ]


@pytest.mark.parametrize(
    "pred_text, gt_text, message",
    [
        ('{"name": "a", "pred": "x"}\n{"name": "b", "pred": \n', '{"name": "a", "label": "x"}\n', "p.jsonl:2: invalid JSON"),
        ('{"name": "a", "prediction": "x"}\n', '{"name": "a", "label": "x"}\n', 'p.jsonl:1: expected an object with "name" and "pred"'),
        ('{"name": "a", "pred": "x"}\n{"name": "a", "pred": "y"}\n', '{"name": "a", "label": "x"}\n', "p.jsonl:2: duplicate name"),
        ('{"name": 1, "pred": "x"}\n', '{"name": "a", "label": "x"}\n', 'p.jsonl:1: "name" must be a string'),
        ('{"name": "a", "pred": "x"}\n', '{"name": "b", "label": "x"}\n', "names differ"),
        ("", "", "empty input"),
    ],
)
def test_cli_bad_files(tmp_path, pred_text, gt_text, message):
    (tmp_path / "p.jsonl").write_text(pred_text)
    (tmp_path / "g.jsonl").write_text(gt_text)
    proc = run_cli("ovmerd", "--pred", tmp_path / "p.jsonl", "--gt", tmp_path / "g.jsonl")
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_cli_missing_file_and_bad_csv(tmp_path):
    proc = run_cli("hitrate", "--pred", tmp_path / "nope.jsonl", "--gt", tmp_path / "nope2.jsonl")
    assert proc.returncode == 2 and "nope.jsonl: file not found" in proc.stderr
    (tmp_path / "p.jsonl").write_text('{"name": "a", "pred": "x"}\n')
    (tmp_path / "g.csv").write_text("id,openset\na,x\n")
    proc = run_cli("ovmerd", "--pred", tmp_path / "p.jsonl", "--gt", tmp_path / "g.csv")
    assert proc.returncode == 2 and "expected CSV columns 'name'" in proc.stderr
    (tmp_path / "s.csv").write_text("name,label\na,high\n")
    proc = run_cli("sentiment", "--pred", tmp_path / "p.jsonl", "--gt", tmp_path / "s.csv")
    assert proc.returncode == 2 and "not a number" in proc.stderr
    proc = run_cli("map", "--words", tmp_path / "missing.txt")
    assert proc.returncode == 2 and "file not found" in proc.stderr
    proc = run_cli("nonsense")
    assert proc.returncode == 2


# ---------------------------------------------------------------------------------------------
# MME-Emotion (python -m merr1.score mme; arithmetic tested in tests/merr1/components/test_mme_emotion.py)
# ---------------------------------------------------------------------------------------------

MME_TASKS = ("ER-Lab", "ER-Wild", "Noise-ER", "FG-ER", "ML-ER", "SA", "FG-SA", "IR")


def judged(score, gt="happy", video_id="v"):
    return {"video_id": video_id, "ground_truth": gt, "model_response": "...", "step": "<step>...</step>",
            "score": score, "input_tokens": 1, "output_tokens": 1}  # fmt: skip


def test_cli_mme_task(tmp_path):
    path = tmp_path / "ER-Lab.json"
    path.write_text(json.dumps([
        judged("<score>Step 1: 1/1, Step 2: 0/1, Step 3: 1/1</score>"),  # rec 1, rea 1/2
        judged("<score>Step 1: 0/1</score>", "sad"),  # rec 0, rea 0
        judged(None),  # judge failure: dropped
    ]))  # fmt: skip
    proc = run_cli("mme", "--task", "ER-Lab", "--judged", path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["recognition"], out["reasoning"], out["cot"]) == (50.0, 25.0, 37.5)
    assert out["reported"] == {"recognition": 50.0, "reasoning": 25.0, "cot": 37.5, "avg_steps": 2.0}
    assert (out["kept"], out["dropped"], out["task"], out["parser"]) == (2, 1, "ER-Lab", "strict")
    assert list(out["categories"]) == ["happy", "sad"]


def test_cli_mme_overall_pools_the_eight_files(tmp_path):
    for i, task in enumerate(MME_TASKS):  # task i: i + 1 samples with recognition 1, one with 0
        records = [judged("<score>Step 1: 1/1</score>")] * (i + 1) + [judged("<score>Step 1: 0/1</score>")]
        (tmp_path / f"{task}.json").write_text(json.dumps(records))
    out = json.loads(run_cli("mme", "--task", "overall", "--judged", tmp_path).stdout)
    assert out["kept"] == 36 + 8 and out["recognition"] == 100 * (36 / 44) and out["reasoning"] == 0.0
    assert out["reported"]["recognition"] == 81.8 and out["tasks"][:3] == ["ER-Lab", "ER-Wild", "ML-ER"]
    alpha = json.loads(run_cli("mme", "--task", "overall", "--judged", tmp_path, "--alpha", "1").stdout)
    assert alpha["cot"] == alpha["recognition"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "SA.json: file not found"),
        ("[{", "SA.json: invalid JSON"),
        ('{"a": 1}', "SA.json: expected a JSON list"),
        ('[{"video_id": "x", "ground_truth": "y"}]', "SA.json: record 0 (video_id 'x'): no \"score\" field"),
        ('[{"score": null}, {"score": "<score>S: 1/1</score>"}]', "SA.json: record 1: no \"ground_truth\" field"),
    ],
)
def test_cli_mme_bad_input_exits_2_naming_file_and_record(tmp_path, content, message):
    path = tmp_path / "SA.json"
    if content is not None:
        path.write_text(content)
    proc = run_cli("mme", "--task", "SA", "--judged", path)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_cli_mme_overall_needs_every_task_file(tmp_path):
    (tmp_path / "ER-Lab.json").write_text("[]")
    proc = run_cli("mme", "--task", "overall", "--judged", tmp_path)
    assert proc.returncode == 2 and "missing task file(s)" in proc.stderr and "IR.json" in proc.stderr
    proc = run_cli("mme", "--task", "overall", "--judged", tmp_path / "ER-Lab.json")
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    proc = run_cli("mme", "--task", "ER-Lab", "--judged", tmp_path / "ER-Lab.json", "--alpha", "2")
    assert proc.returncode == 2 and "alpha" in proc.stderr
    assert run_cli("mme", "--task", "XX", "--judged", tmp_path).returncode == 2
