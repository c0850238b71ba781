"""Emotion-wheel mapping (METHOD section 2): parsing, answer extraction, the official table."""

import json
import random
import re

import pytest

from merr1.components.emotion_wheel import (
    ASSET_DIR,
    NUM_WHEELS,
    EmotionWheels,
    build_wheel_map,
    build_word_table,
    extract_answer,
    parse_emotion_list,
    read_wheel_rows,
)


@pytest.fixture(scope="module")
def wheels():
    return EmotionWheels.load()


@pytest.fixture(scope="module")
def raw_maps():
    format_map = json.loads((ASSET_DIR / "format_map.json").read_text(encoding="utf-8"))
    synonym_map = json.loads((ASSET_DIR / "synonym_map.json").read_text(encoding="utf-8"))
    return format_map, synonym_map


# ---------------------------------------------------------------------------------------------
# parse_emotion_list: official split rule (step 1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("['Silly', 'Mad']", ["silly", "mad"]),  # an OV-MERD+ label cell
        ('["Happy", "Sad"]', ["happy", "sad"]),
        ("happy, very sad", ["happy", "very sad"]),
        ("HAPPY", ["happy"]),
        ("  Happy  ,, ,sad ", ["happy", "sad"]),
        ("happy and sad", ["happy and sad"]),  # no split on "and"
        ("happy; sad", ["happy; sad"]),  # no split on ";"
        ("don't know", ["don", "t know"]),  # an apostrophe splits
        ("[happy]", ["happy"]),
        ("[[happy]]", ["[happy]"]),  # only one bracket on each side is dropped
        (" [happy]", ["[happy"]),  # no strip before the bracket check
        ("[happy] ", ["happy]"]),
        ("happy]", ["happy"]),
        ("", []),
        ("   ", []),
        ("[]", []),
        ("]", []),
        ("[", []),  # deviation: the official code raises IndexError here
        ("''", []),
        (None, []),
        (float("nan"), []),
        (["Happy ", " ", "sad, angry"], ["happy", "sad, angry"]),  # lists are not split
        (("Joy",), ["joy"]),
        ([], []),
        ("Émotion, ΣΑΣ", ["émotion", "σας"]),  # non-ASCII: per item, Greek final sigma
    ],
)
def test_parse_emotion_list(text, expected):
    assert parse_emotion_list(text) == expected


@pytest.mark.parametrize("bad", [3, 1.5, {"a": 1}, [1, "a"], ["a", None]])
def test_parse_emotion_list_rejects_other_types(bad):
    with pytest.raises(ValueError):
        parse_emotion_list(bad)


def _official_split(text):
    # Literal restatement of the official rule (string_to_list + caller's lower().strip()).
    if text[0] == "[":
        text = text[1:]
    if text[-1] == "]":
        text = text[:-1]
    items = [item.strip() for item in re.split("['\",]", text) if item.strip() not in ["", ","]]
    return [item.lower().strip() for item in items]


def test_parse_emotion_list_matches_official_rule_on_random_strings():
    rng = random.Random(0)
    alphabet = "abcXYZ  ,,'\"[]-;\tÉσΣ"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        if text == "[":
            continue  # documented deviation
        assert parse_emotion_list(text) == _official_split(text), text


# ---------------------------------------------------------------------------------------------
# extract_answer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "response, scheme, fallback, expected",
    [
        ("<think>hmm</think><answer>happy, sad</answer>", "answer", "none", "happy, sad"),
        ("<think>x</think><answer> happy </answer>", "answer", "none", "happy"),
        ("<answer>a</answer> then <answer>b</answer>", "answer", "none", "b"),  # last pair
        ("<answer>a <answer>b</answer>", "answer", "none", "b"),  # nested: innermost opening
        ("<answer>a <answer>b</answer> c</answer>", "answer", "none", "b"),
        ("<answer>a</answer> more <answer>hap", "answer", "none", "a"),  # unclosed final ignored
        ("<think>x</think><answer>hap", "answer", "none", None),  # truncated: no answer
        ("<think>x</think><answer>hap", "answer", "full", "hap"),
        ("happy, sad</answer>", "answer", "none", None),  # closing tag alone: no answer
        ("<answer></answer>", "answer", "none", ""),
        ("<ANSWER>happy</ANSWER>", "answer", "none", None),  # tags are case-sensitive
        ("no tags at all", "answer", "none", None),
        ("no tags at all", "answer", "full", "no tags at all"),
        ("<think>reasoning</think> happy, sad", "answer", "full", "happy, sad"),
        ("<think>never closed happy", "answer", "full", ""),
        (
            "<step1>a</step1><step2>b</step2><step3>c</step3> joyful",
            "answer",
            "full",
            "joyful",
        ),
        ("<step1>a</step1><step2>b</step2><step3>c</step3><answer>calm</answer>", "answer", "none", "calm"),
        ("\\boxed{happy}<think>x</think>\\boxed{sad}", "boxed", "none", "sad"),
        ("\\boxed{happy}<think>x</think>\\boxed{sad}", "boxed_first", "none", "happy"),
        ("\\boxed{\\text{happy}, sad}", "boxed", "none", "\\text{happy}, sad"),  # balanced braces
        ("\\boxed{happy}<think>x</think>\\boxed{sa", "boxed", "none", "happy"),  # unclosed skipped
        ("\\boxed{happy", "boxed_first", "none", None),
        ("\\boxed{happy", "boxed_first", "full", "\\boxed{happy"),
        ("<answer>happy</answer>", "boxed", "none", None),
        ("<think>x</think>\\boxed{ calm }", "boxed_first", "none", "calm"),
        # VideoAuto-R1's official segments: exactly one box (one nesting level) per segment
        ("\\boxed{ happy }<think>x \\boxed{y}</think>\\boxed{sad}", "videoauto_a1", "none", "happy"),
        ("\\boxed{ happy }<think>x \\boxed{y}</think>\\boxed{sad}", "videoauto_a2", "none", "sad"),
        ("\\boxed{happy}<think>x</think>\\boxed{sad}\\boxed{calm}", "videoauto_a2", "none", None),
        ("\\boxed{happy}<think>x</think>\\boxed{sad}\\boxed{calm}", "boxed", "none", "calm"),
        ("\\boxed{a{b{c}}}<think>x</think>\\boxed{d}", "videoauto_a1", "none", None),
        ("\\boxed{a{b{c}}}<think>x</think>\\boxed{d}", "boxed_first", "none", "a{b{c}}"),
        ("\\boxed{happy}", "videoauto_a2", "none", "happy"),  # no tags: the whole response
        ("\\boxed{happy}<think>x", "videoauto_a1", "none", "happy"),  # a fast response that went on
        ("\\boxed{happy}<think>x", "videoauto_a2", "none", "happy"),  # no </think>: the whole response
        ("<think>x</think>", "videoauto_a2", "full", ""),
    ],
)
def test_extract_answer(response, scheme, fallback, expected):
    assert extract_answer(response, scheme, fallback) == expected


@pytest.mark.parametrize(
    "kwargs", [{"scheme": "last"}, {"fallback": "raw"}, {"response": None}, {"response": 3}]
)
def test_extract_answer_rejects_bad_arguments(kwargs):
    args = {"response": "<answer>x</answer>", **kwargs}
    with pytest.raises(ValueError):
        extract_answer(**args)


# ---------------------------------------------------------------------------------------------
# The official wheels
# ---------------------------------------------------------------------------------------------

CATEGORIES = [
    ("mad", "disgusted", "sad", "happy", "surprised", "scared"),
    ("fearful", "angry", "disgusted", "sad", "surprised", "happy", "bad"),
    ("mad", "scared", "joyful", "powerful", "peaceful", "sad"),
    ("joy", "genius", "anger", "sad", "fear", "disgust"),
    ("mad", "scared", "sad", "peaceful", "powerful", "joyful"),
]


@pytest.mark.parametrize("k", range(NUM_WHEELS))
def test_categories_match_method_table(wheels, k):
    assert wheels.categories(k) == CATEGORIES[k]


# Hand-derived from the raw maps (see test_quirk_derivations for the chains).
@pytest.mark.parametrize(
    "word, expected",
    [
        ("happy", ("happy", "happy", "joyful", "joy", "powerful")),  # W5 via "cheerful"
        ("joyful", ("happy", "happy", "joyful", "joy", "powerful")),  # a W5 category, yet powerful
        ("fear", ("scared", "happy", "joyful", "genius", "joyful")),  # W2 via "fearless"
        ("surprise", ("surprised", "surprised", "powerful", "fear", None)),  # dropped on W5
        ("sad", ("sad", "sad", "sad", "sad", "sad")),
        ("sadness", ("sad", "sad", "sad", "sad", "sad")),
        ("angry", ("mad", "angry", "mad", "anger", "mad")),
        ("worried", ("scared", "fearful", "scared", "fear", "scared")),
        ("scared", ("scared", "fearful", "scared", "fear", "scared")),
        ("disgust", ("disgusted", "disgusted", None, "disgust", None)),
        ("contempt", (None, "angry", None, None, None)),
        ("calm", ("happy", "happy", "peaceful", "joy", "peaceful")),
        ("overwhelmed", ("surprised", "bad", "scared", "sad", None)),
        ("inferior", ("scared", "bad", "sad", "disgust", "sad")),  # W2: "bad" sorts before it
        ("embarrassed", ("sad", "sad", "sad", "disgust", "sad")),
        ("disappointed", ("sad", "sad", "scared", "sad", "scared")),
        # dropped everywhere: not a format-map key
        ("neutral", (None,) * 5),
        ("happy and sad", (None,) * 5),
        ("zzzz", (None,) * 5),
        ("", (None,) * 5),
        # normalisation
        ("  HAPPY ", ("happy", "happy", "joyful", "joy", "powerful")),
        ("Fear", ("scared", "happy", "joyful", "genius", "joyful")),
    ],
)
def test_map_word(wheels, word, expected):
    assert wheels.map_word(word) == expected


# W2 words under two level-1 categories take the last assignment: words whose first W2
# candidate is such a word (flooded -> overwhelmed, diminished -> inferior, fluster ->
# embarrassed, disappointed) get the later category, not the earlier one.
@pytest.mark.parametrize(
    "word, candidate, first, last",
    [
        ("flooded", "overwhelmed", "fearful", "bad"),
        ("diminished", "inferior", "fearful", "sad"),
        ("fluster", "embarrassed", "disgusted", "sad"),
        ("disappointed", "disappointed", "disgusted", "sad"),
    ],
)
def test_w2_double_category_last_wins(wheels, raw_maps, word, candidate, first, last):
    format_map, synonym_map = raw_maps
    w2 = build_wheel_map(read_wheel_rows()[1])
    candidates = sorted({w for name in format_map[word] for w in synonym_map[name]})
    assert [w for w in candidates if w in w2][0] == candidate
    owners = [row[0] for row in read_wheel_rows()[1] if candidate in row]
    assert owners[0] == first and owners[-1] == last and len(set(owners)) == 2
    assert wheels.map_word(word)[1] == last


def test_quirk_derivations(raw_maps):
    # The chains behind the METHOD quirks, on the raw merged maps and the wheel rows.
    format_map, synonym_map = raw_maps
    wheel_maps = [build_wheel_map(rows) for rows in read_wheel_rows()]

    def candidates(word):
        return sorted({w for name in format_map[word] for w in synonym_map[name]})

    # "happy" -> W5 "powerful": "cheerful" sorts first and sits under "powerful" on W5.
    assert candidates("happy") == ["cheerful", "content", "happy", "joy", "joyful", "satisfied"]
    assert wheel_maps[4]["cheerful"] == "powerful" and wheel_maps[4]["joyful"] == "joyful"
    # "fear" -> W2 "happy": its format names include "fearless", whose synonyms bring
    # "courageous", the first candidate present on W2 (tie-break beats fearful/scared).
    assert format_map["fear"] == ["fear", "fearful", "fearless"]
    assert "courageous" in synonym_map["fearless"]
    assert [w for w in candidates("fear") if w in wheel_maps[1]] == ["courageous", "fearful", "scared"]
    assert wheel_maps[1]["courageous"] == "happy" and wheel_maps[1]["fearful"] == "fearful"
    # "surprise" is dropped on W5: none of its candidates is a W5 word.
    assert candidates("surprise") == ["amazed", "astonished", "shocked", "startled", "surprised"]
    assert not any(w in wheel_maps[4] for w in candidates("surprise"))
    # "neutral" is in no map.
    assert "neutral" not in format_map and "neutral" not in synonym_map


def test_build_wheel_map_official_iteration_order():
    # Last assignment wins, in the official order: level-1 blocks in first-appearance order.
    assert build_wheel_map([("a", "x", "w"), ("b", "y", "w")])["w"] == "b"
    # "v" is last under "a" in file order, but the "b" block is visited after the "a" block.
    rows = [("a", "x", "w"), ("b", "y", "v"), ("a", "z", "v")]
    assert build_wheel_map(rows) == {"a": "a", "x": "a", "w": "a", "z": "a", "v": "b", "b": "b", "y": "b"}


def test_build_word_table_tie_break_and_drop():
    rows = [[("joy", "glad", "cheerful"), ("sad", "down", "blue")]] * NUM_WHEELS
    format_map = {"happy": ["happy"], "gloomy": ["gloomy"], "odd": ["odd"]}
    # "blue" < "cheerful": the alphabetically first candidate present in the wheel wins.
    synonym_map = {"happy": ["cheerful", "glad"], "gloomy": ["cheerful", "blue"], "odd": ["nothing"]}
    table = build_word_table(format_map, synonym_map, rows)
    assert table == {"happy": ("joy",) * 5, "gloomy": ("sad",) * 5, "odd": (None,) * 5}
    with pytest.raises(ValueError, match="missing from the synonym map"):
        build_word_table({"x": ["unknown"]}, synonym_map, rows)


def test_shipped_table_equals_rebuilt_from_raw_maps(wheels):
    rebuilt = EmotionWheels.from_raw_maps()
    assert rebuilt.table == wheels.table
    assert len(wheels.table) == 7386  # format-map keys, as the official code reports


def test_load_is_cached():
    assert EmotionWheels.load() is EmotionWheels.load()


def test_map_words_and_masks(wheels):
    words = ["happy", "Sad ", "joy", "neutral", "surprise"]
    sets = wheels.map_words(words)
    assert sets == (
        frozenset({"happy", "sad", "surprised"}),
        frozenset({"happy", "sad", "surprised"}),
        frozenset({"joyful", "sad", "powerful"}),
        frozenset({"joy", "sad", "fear"}),
        frozenset({"powerful", "sad"}),
    )
    masks = wheels.map_masks(words)
    # W1 categories: mad, disgusted, sad(2), happy(3), surprised(4), scared
    assert masks[0] == 0b11100
    for k in range(NUM_WHEELS):
        assert {c for j, c in enumerate(wheels.categories(k)) if masks[k] >> j & 1} == sets[k]
    assert wheels.map_masks([]) == (0,) * 5
    assert wheels.map_words(["zzz"]) == (frozenset(),) * 5


def test_map_packed_rejects_a_string(wheels):
    with pytest.raises(ValueError, match="parse_emotion_list"):
        wheels.map_masks("happy, sad")


@pytest.mark.parametrize("bad", [None, 3, ["happy"]])
def test_non_string_words_are_rejected(wheels, bad):
    with pytest.raises(ValueError, match="expected an emotion word"):
        wheels.map_word(bad)
    with pytest.raises(ValueError, match="expected an emotion word"):
        wheels.map_masks([bad])
    with pytest.raises(ValueError, match="expected an emotion word"):
        wheels.map_many(["happy", bad])


def test_bulk_paths_agree_with_map_word(wheels):
    rng = random.Random(1)
    keys = sorted(wheels.table)
    words = [rng.choice(keys) for _ in range(500)] + ["  Happy", "ZZZ", "", "Neutral", "SAD "]
    assert wheels.map_many(words) == [wheels.map_word(w) for w in words]
    assert wheels.map_many(iter(words)) == wheels.map_many(words)
    texts = [
        "['Happy', 'Sad']", "joy, fear", "[", "", None, float("nan"), "Émotion, sad",
        ["Happy", "calm"], " [happy]", "happy]",
    ] + [", ".join(rng.choice(keys).upper() for _ in range(3)) for _ in range(200)]
    for text in texts:
        expected = wheels.map_packed(parse_emotion_list(text))
        assert wheels.map_text_packed(text) == expected
        assert wheels.map_packed_normalized(parse_emotion_list(text)) == expected


@pytest.mark.parametrize("k", range(NUM_WHEELS))
def test_category_words_partition_the_wheel(wheels, k):
    groups = wheels.category_words(k)
    assert tuple(groups) == wheels.categories(k)
    words = [w for ws in groups.values() for w in ws]
    wheel_words = {w for row in read_wheel_rows()[k] for w in row}
    assert len(words) == len(set(words)) and set(words) == wheel_words
    for cat, ws in groups.items():
        assert cat in ws and list(ws) == sorted(ws)
        assert all(build_wheel_map(read_wheel_rows()[k])[w] == cat for w in ws)


def test_category_words_w2_duplicates(wheels):
    groups = wheels.category_words(1)
    assert "overwhelmed" in groups["bad"] and "overwhelmed" not in groups["fearful"]
    assert "embarrassed" in groups["sad"] and "embarrassed" not in groups["disgusted"]
    assert "disappointed" in groups["sad"] and "disappointed" not in groups["disgusted"]


@pytest.mark.parametrize("k", [-1, 5, 1.0, "0"])
def test_bad_wheel_index(wheels, k):
    with pytest.raises(ValueError):
        wheels.categories(k)
    with pytest.raises(ValueError):
        wheels.category_words(k)


def test_constructor_validates_table():
    rows = [[("joy", "glad", "cheerful")]] * NUM_WHEELS
    with pytest.raises(ValueError, match="not a level-1 category"):
        EmotionWheels(rows, {"x": ("sad",) * 5})
    with pytest.raises(ValueError, match="expected 5"):
        EmotionWheels(rows, {"x": ("joy",) * 4})
    with pytest.raises(ValueError, match="expected 5 wheels"):
        EmotionWheels(rows[:4], {})
    wheels = EmotionWheels(rows, {"x": ("joy", None, None, None, "joy")})
    assert wheels.map_masks(["x"]) == (1, 0, 0, 0, 1)
    assert wheels.table == {"x": ("joy", None, None, None, "joy")}


def test_only_four_w2_words_have_two_categories():
    for k, rows in enumerate(read_wheel_rows()):
        owners = {}
        for row in rows:
            for word in row:
                owners.setdefault(word, set()).add(row[0])
        doubles = sorted(w for w, cats in owners.items() if len(cats) > 1)
        assert doubles == (["disappointed", "embarrassed", "inferior", "overwhelmed"] if k == 1 else [])


def test_remembered_words_are_bounded_and_do_not_change_results():
    rows = [[("joy", "glad", "cheerful")]] * NUM_WHEELS
    wheels = EmotionWheels(rows, {"glad": ("joy",) * 5}, max_remembered=2)
    words = ["Glad", " glad", "GLAD ", "unknown", "Glad"]
    assert wheels.map_many(words) == [("joy",) * 5] * 3 + [(None,) * 5, ("joy",) * 5]
    assert wheels.map_packed(words) == sum(1 << (8 * k) for k in range(5))
    assert len(wheels._lookup) == 1 + 2 and wheels.table == {"glad": ("joy",) * 5}
    assert [wheels.map_word(w) for w in words] == wheels.map_many(words)
