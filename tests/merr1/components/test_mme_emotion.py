"""merr1.components.mme_emotion: the official prompts, score parsers and metric arithmetic on
hand-derived cases (every expected value below is worked out by hand from the official
``cal_metrics.py`` rules quoted in the module docstring)."""

import json

import pytest

from merr1.components import mme_emotion as M


def rec(score, ground_truth="happy", video_id="v"):
    return {"video_id": video_id, "ground_truth": ground_truth, "score": score}


# ---------------------------------------------------------------------------------------------
# Prompts


def test_prompt_files_are_the_official_texts_with_their_quirks():
    p = M.load_prompts()
    assert p["system"] == ("You are an expert in affective computing and very good at handling tasks related to "
                           "emotion recognition.")  # fmt: skip
    judge = p["judge"]
    assert judge["ER-Lab"] == judge["ER-Wild"] == judge["Noise-ER"]
    for task, text in judge.items():
        lines = [line for line in text.split("\n") if line]
        assert all(line.startswith(" " * 24) for line in lines), task  # the f-string's indentation
        assert "\n\n" in text and "Example Output: \n" in text  # a trailing space after "Example Output:"
        assert text.count("{audio_clue}") == text.count("{ground_truth}") == text.count("{step}") == 1
    assert judge["ER-Lab"].startswith(" " * 24 + "I will first give you some ground truth information about the "
                                      "emotion in a video: " + " " * 24 + "visual clue")  # backslash continuation
    assert "matches the the number of emotion label(s)" in judge["FG-ER"]
    assert ("Example 2: The predicted sentiment is positive and the sentiment label is strong positive, then the "
            "rating should be 0/1.") in judge["FG-SA"]  # fmt: skip
    assert ("Example 3: The predicted sentiment is positive and the sentiment label is strong positive, then the "
            "rating should be 1/1.") in judge["FG-SA"]  # fmt: skip
    ml_er_end = "<score>Step 1: 1/1, Step 2: 0/1, Step 3: 2/3</score> or <score>Step 1: 0/2 </score> "
    assert judge["ML-ER"].endswith(ml_er_end)
    steps = p["extract_step"]
    assert steps["FG-ER"] == steps["ML-ER"] and steps["ER-Lab"] == steps["ER-Wild"]
    assert "</step>Example 3:\nanswer: I cannot provide" in steps["Noise-ER"]  # no newline between examples
    assert steps["IR"].startswith("Given the following answer about the emotion conveyed in a video")
    assert "showcase the predicted intent" in steps["IR"] and "neutral emotion" in steps["IR"]
    assert "about the fine-grained sentiment conveyed" in steps["FG-SA"]
    assert steps["ER-Lab"].count("{model_response}") == 1 and "answer: '{model_response}'\n" in steps["ER-Lab"]


def test_licence_and_provenance_ship_with_the_prompts():
    licence = (M.ASSET_DIR / "LICENSE").read_text()
    assert licence.startswith("MIT License\n\nCopyright (c) 2025 Fan Zhang")
    provenance = (M.ASSET_DIR / "PROVENANCE.md").read_text()
    assert "FunAudioLLM/MME-Emotion" in provenance and "0c265d840dedac7f76c28822652e48575ab262ee" in provenance
    assert "eval_cot/FG-SA/code/eval_cot_gpt4o.py` | L71-96" in provenance
    assert set(M.load_questions()) == set(M.TASKS)


@pytest.mark.parametrize(
    "template, values, expected",
    [
        ("a '{x}' b", {"x": "y"}, "a 'y' b"),
        ("'{a}' '{b}'", {"a": "{b}", "b": "B"}, "'{b}' 'B'"),  # one pass: inserted text is not re-filled
        ("{x}", {"x": None}, "None"),  # str(value), as the f-strings
    ],
)
def test_render_template(template, values, expected):
    assert M.render_template(template, values) == expected


def test_render_template_names_a_missing_value():
    with pytest.raises(ValueError, match="step"):
        M.render_template("{step}", {})


def test_extraction_and_judge_messages():
    messages = M.extraction_messages("SA", "It is positive.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "answer: 'It is positive.'\nExample 1:" in messages[1]["content"]
    judge = M.judge_messages("FG-ER", "soft voice", "Fear;Peace", "Error: timed out", ["data:image/png;base64,AA"])
    text, image = judge[1]["content"]
    assert text["type"] == "text" and image == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    assert "- Audio clue: 'soft voice'" in text["text"] and "- Emotion label(s): 'Fear;Peace'" in text["text"]
    assert "- Model prediction: 'Error: timed out'" in text["text"]  # a failed extraction is judged as is
    assert judge[0] == {"role": "system", "content": M.load_prompts()["system"]}


def test_official_retry_rules():
    assert M.JUDGE_RETRY["ER-Lab"] == M.RetryPolicy(20, 3.0, None)
    assert M.JUDGE_RETRY["ER-Wild"] == M.RetryPolicy(20, 2.0, None)
    assert M.JUDGE_RETRY["FG-ER"] == M.JUDGE_RETRY["ML-ER"] == M.RetryPolicy(5, 2.0, 120.0)
    assert M.JUDGE_RETRY["SA"] == M.RetryPolicy(20, 2.0, 120.0)
    assert M.EXTRACTION_RETRY["ER-Wild"] == M.RetryPolicy(5, 2.0, 120.0)
    assert M.EXTRACTION_RETRY["ER-Lab"] == M.EXTRACTION_RETRY["FG-ER"] == M.RetryPolicy(10, 2.0, None)
    assert M.EXTRACTION_RETRY["IR"] == M.RetryPolicy(10, 2.0, 120.0)
    assert M.JUDGE_PARAMS == {"n": 1, "temperature": 0.0} and M.EXTRACTION_PARAMS == {"temperature": 0.0}


# ---------------------------------------------------------------------------------------------
# Parsers


@pytest.mark.parametrize(
    "score, strict, fraction",
    [
        ("<score>Step 1: 1/1, Step 2: 0/1, Step 3: 1/1</score>", [1, 0, 1], [1.0, 0.0, 1.0]),
        ("<score>Step 1: 1/1, Step 2: 2/3</score>", [1], [1.0, 2 / 3]),  # strict: only d/1
        ("<score>Step 1:1/1, Step 2:  0/1</score>", [], [1.0, 0.0]),  # strict: exactly one space
        ("<score>Step 1: 1/10</score>", [1], [0.1]),  # strict reads the "1/1" prefix of 1/10
        ("<score>Step 1: 12/1</score>", [], [12.0]),  # strict: one digit only
        ("<score>Step 1: 7/3</score>", [], [7 / 3]),  # fraction: not clipped
        ("<score>Step 1: 1/0</score>", [], [0.0]),  # fraction: zero denominator -> 0.0
        ("<score>Step 1: \u0663/1</score>", [3], [3.0]),  # \d is Unicode: Arabic-Indic three
        ("<score></score>", [], []),
        ("<score>Step 1: 1/1", None, None),  # no closing tag
        ("<score>Step 1: 1/1\n</score>", None, None),  # tags on two lines: no span
        ("<score>\n</score> <score>Step 1: 0/1</score>", [0], [0.0]),  # the first single-line span
        ("<score>Step 1: 0/1</score><score>Step 1: 1/1</score>", [0], [0.0]),  # only the first span
        (None, None, None),  # a failed judge call: str(None) = "None"
        (["<score>Step 1: 1/1</score>"], [1], [1.0]),  # str() of a list shows its text
    ],
)
def test_parse_scores(score, strict, fraction):
    assert M.parse_scores(score, "strict") == strict
    assert M.parse_scores(score, "fraction") == fraction


def test_parse_scores_types():
    assert type(M.parse_scores("<score>S: 1/1</score>", "strict")[0]) is int
    assert type(M.parse_scores("<score>S: 1/1</score>", "fraction")[0]) is float


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([1, 0, 1], (1, 0.5, 3)),
        ([0], (0, 0.0, 1)),  # one step: reasoning 0, the sample is kept
        ([1.0, 1.0, 0.5], (0.5, 1.0, 3)),
    ],
)
def test_sample_metrics(scores, expected):
    assert M.sample_metrics(scores) == expected


# ---------------------------------------------------------------------------------------------
# Per-task metrics


def test_single_label_task_hand_derived():
    records = [
        rec("<score>Step 1: 1/1, Step 2: 0/1, Step 3: 1/1</score>", "Anger"),  # rec 1, rea 1/2
        rec("<score>Step 1: 0/1</score>", "Neutral"),  # single step: rec 0, rea 0
        rec(None, "Anger"),  # judge failure: dropped
        rec("I cannot rate this.", "Anger"),  # unparseable: dropped
        rec("<score>Step 1: 1/1, Step 2: 2/3</score>", "Anger"),  # strict: [1] -> rec 1, rea 0
    ]
    out = M.score_task(records, "ER-Lab")
    assert out["recognition"] == 100 * (2 / 3) and out["reasoning"] == 100 * (0.5 / 3)
    assert out["cot"] == 100 * (0.5 * (2 / 3) + 0.5 * (0.5 / 3))
    assert out["reported"] == {"recognition": 66.7, "reasoning": 16.7, "cot": 41.7, "avg_steps": 1.7}
    assert out["avg_steps"] == 5 / 3
    assert (out["kept"], out["dropped"], out["num_records"], out["parser"]) == (3, 2, 5, "strict")
    assert list(out["categories"]) == ["Anger", "Neutral"]
    anger = out["categories"]["Anger"]
    assert (anger["recognition"], anger["reasoning"], anger["kept"]) == (100.0, 25.0, 2)


def test_fraction_task_partial_credit_hand_derived():
    records = [
        rec("<score>Step 1: 1/1, Step 2: 0/1, Step 3: 2/3</score>", "Fear;Peace;Sadness"),  # rec 2/3, rea 1/2
        rec("<score>Step 1: 7/3</score>", "Fear"),  # over-prediction not penalised, not clipped: rec 7/3
        rec("<score>Step 1: 1/1, Step 2: 1/0</score>", "Fear;Peace"),  # 1/0 -> 0.0: rec 0, rea 1
    ]
    out = M.score_task(records, "FG-ER")
    assert out["recognition"] == 100 * ((2 / 3 + 7 / 3) + 0.0) / 3 == 100.0
    assert out["reasoning"] == 100 * (1.5 / 3) == 50.0 and out["cot"] == 75.0
    assert out["parser"] == "fraction" and "categories" not in out


def test_the_same_judge_output_reads_differently_per_task():
    # ":1/1" (no space) and "2/4" only count for the fraction parser (FG-ER, ML-ER, Overall).
    records = [rec("<score>Step 1: 1/1, Step 2:1/1, Step 3: 2/4</score>")]
    single = M.score_task(records, "SA")
    multi = M.score_task(records, "ML-ER")
    assert (single["recognition"], single["reasoning"], single["avg_steps"]) == (100.0, 0.0, 1.0)
    assert (multi["recognition"], multi["reasoning"], multi["avg_steps"]) == (50.0, 100.0, 3.0)


def test_er_wild_merges_label_synonyms_in_its_category_table_only():
    records = [rec("<score>Step 1: 1/1</score>", "angry"), rec("<score>Step 1: 0/1</score>", "anger"),
               rec("<score>Step 1: 1/1</score>", "joy"), rec("<score>Step 1: 1/1</score>", "happy")]  # fmt: skip
    wild = M.score_task(records, "ER-Wild")["categories"]
    assert list(wild) == ["anger", "happiness", "joy"] and wild["anger"]["recognition"] == 50.0
    assert list(M.score_task(records, "ER-Lab")["categories"]) == ["anger", "angry", "happy", "joy"]


def test_no_kept_sample_scores_zero_like_the_official_script():
    out = M.score_task([rec(None), rec("nothing")], "IR")
    assert (out["recognition"], out["reasoning"], out["cot"], out["kept"], out["dropped"]) == (0.0, 0.0, 0.0, 0, 2)


def test_alpha_weights_recognition():
    records = [rec("<score>Step 1: 1/1, Step 2: 0/1</score>")]  # rec 0 (last step), rea 1
    assert M.score_task(records, "SA", alpha=0.3)["cot"] == 100 * (0.3 * 0 + (1 - 0.3) * 1.0)
    with pytest.raises(ValueError, match="alpha"):
        M.score_task(records, "SA", alpha=1.5)


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"video_id": "a", "ground_truth": "x"}], r"record 0 \(video_id 'a'\): no \"score\""),
        ([rec(None), "oops"], "record 1: not a JSON object"),
        ([{"score": "<score>S: 1/1</score>"}], 'record 0: no "ground_truth"'),
        ([rec("<score>S: 1/1</score>", ["a", "b"])], "is not a label"),
    ],
)
def test_bad_records_are_named(records, message):
    with pytest.raises(ValueError, match=message):
        M.score_task(records, "ER-Lab", source="f.json")


def test_a_dropped_record_needs_no_ground_truth():
    assert M.score_task([{"score": None}], "ER-Lab")["dropped"] == 1


# ---------------------------------------------------------------------------------------------
# Overall


def test_overall_pools_samples_not_task_means():
    by_task = {
        "ER-Lab": [rec("<score>Step 1: 1/1</score>")] * 3,  # 3 samples, rec 1
        "SA": [rec("<score>Step 1: 0/1, Step 2: 0/1</score>")],  # 1 sample, rec 0, rea 0
    }
    out = M.score_overall(by_task)
    assert out["recognition"] == 75.0 and out["reasoning"] == 0.0 and out["kept"] == 4
    mean = M.task_mean({t: M.score_task(r, t) for t, r in by_task.items()})
    assert mean["recognition"] == 50.0 and mean["num_tasks"] == 2
    assert out["tasks"] == ["ER-Lab", "SA"] and len(out["missing_tasks"]) == 6


def test_overall_reads_every_task_with_the_fraction_parser():
    out = M.score_overall({"ER-Lab": [rec("<score>Step 1: 1/1, Step 2: 2/3</score>")]})
    assert out["recognition"] == 100 * (2 / 3) and out["reasoning"] == 100.0  # per task: 100 and 0


def test_overall_sums_in_the_official_file_order():
    # With V = 2**53 (float spacing 2 there): 1 + 1 + V = V + 2 exactly, but 1 + V + 1 = V.
    # Official order: ..., IR, SA, FG-SA; the paper's order would be SA, FG-SA, IR.
    big = f"<score>Step 1: {2**53}/1</score>"
    one = rec("<score>Step 1: 1/1</score>")
    by_task = {"SA": [one], "FG-SA": [rec(big)], "IR": [one]}
    official = 100 * ((((0.0 + 1.0) + 1.0) + 2.0**53) / 3)  # running sum from 0.0, mean, then percent
    assert M.score_overall(by_task)["recognition"] == official
    assert official != 100 * ((((0.0 + 1.0) + 2.0**53) + 1.0) / 3)


def test_overall_error_names_the_task_source():
    with pytest.raises(ValueError, match="SA.json: record 0"):
        M.score_overall({"SA": [{"ground_truth": "x"}]}, sources={"SA": "SA.json"})
    with pytest.raises(ValueError, match="unknown MME-Emotion task"):
        M.score_overall({"XX": []})


def test_format_report_mirrors_table_2():
    records = [rec("<score>Step 1: 1/1</score>")]
    task = {**M.score_task(records, "SA"), "num_samples": 1}
    slow = {"tasks": {"SA": task}, "overall": M.score_overall({"SA": records}), "task_mean": M.task_mean({"SA": task})}
    report = {"judge_name": "openai gpt-4o", "extractor_name": "openai gpt-4.1", "modes": {"slow": slow}}
    text = M.format_report(report)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("mode"))
    assert header.split() == ["mode", "SA", "Rec", "Rea", "CoT", "CoT", "mean"]
    row = next(line for line in lines if line.startswith("slow "))
    assert row.split() == ["slow", "50.0", "100.0", "0.0", "50.0", "50.0"]
    assert "not comparable" in text
    json.dumps(report, allow_nan=False)
