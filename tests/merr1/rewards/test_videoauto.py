"""VideoAuto-R1 answers and rewards (issue 13): the official parser's rules, as tables."""

import pytest
import torch

from merr1.rewards import FormatReward, RewardBatch, VideoAutoAnswerRewards
from merr1.rewards.videoauto import split_answers

BONUS = 0.3 / 1.1


def box(a1: str | None, a2: str | None) -> str:
    head = "" if a1 is None else rf"\boxed{{{a1}}}"
    tail = "" if a2 is None else rf"\boxed{{{a2}}}"
    return f"{head}<think>reasoning</think>{tail}"


SPLIT = [
    # response, (a1, a2): a1 from the text before the first <think>, a2 after the last </think>,
    # exactly one box (one nesting level) per segment, else ""; contents are not stripped.
    (r"\boxed{happy}<think>r</think>\boxed{sad}", ("happy", "sad")),
    (r" \boxed{ happy } <think>r</think> \boxed{ sad }", (" happy ", " sad ")),
    ("\u3000\\boxed{happy\u00a0}\n<think>r</think>\\boxed{sad}\u2003", ("happy\u00a0", "sad")),
    (r"\boxed{happy}", ("happy", "happy")),  # no tags: the whole response is both segments
    ("happy", ("", "")),  # no box
    (r"\boxed{}<think>r</think>\boxed{}", ("", "")),  # empty boxes
    (r"\boxed{a}\boxed{b}<think>r</think>\boxed{c}", ("", "c")),  # two boxes in a1's segment
    (r"\boxed{a}<think>r</think>\boxed{b}\boxed{c}", ("a", "")),  # two boxes in a2's segment
    (r"\boxed{a}<think>r \boxed{x}</think>\boxed{b}", ("a", "b")),  # boxes inside think are not read
    (r"<think>\boxed{x}</think>\boxed{b}", ("", "b")),
    (r"\boxed{a}<think>r \boxed{b}", ("a", "")),  # no </think>: a2's segment is the whole response
    (r"\boxed{a}</think>\boxed{b}", ("", "b")),  # no <think>: a1's segment is the whole response
    (r"\boxed{a}<think>r</think>\boxed{b}<think>s</think>\boxed{c}", ("a", "c")),  # first <think>, last </think>
    (r"\boxed{a}<THINK>r</THINK>\boxed{b}", ("", "")),  # tags are case-sensitive
    (r"\boxed{\text{happy}}<think>r</think>\boxed{a{b}c}", (r"\text{happy}", "a{b}c")),  # one nesting level
    (r"\boxed{a{b{c}}}<think>r</think>\boxed{d}", ("", "d")),  # two levels: no box
    (r"\boxed{\boxed{a}}", (r"\boxed{a}", r"\boxed{a}")),  # the outer box, whose content is a box
    (r"\boxed{a}<think>r</think>\boxed{b", ("a", "")),  # truncated final box
    (r"\boxed{a}}<think>r</think>\boxed {b}", ("a", "")),  # a stray brace is text; "\boxed {" is no box
]


@pytest.mark.parametrize("response, expected", SPLIT)
def test_split_answers(response, expected):
    assert split_answers(response) == expected


def test_split_answers_rejects_non_strings():
    with pytest.raises(ValueError, match="string"):
        split_answers(None)


REWARDS = [
    # response, early, final (labels ["happy"]; F1 on the wheels)
    (box("happy", "happy"), 1.0, 1.0),
    (box("sad", "happy"), 0.0, 1.0),
    (box("happy", "sad"), 1.0, 0.0),
    (box("Let's analyze", "happy"), 0.0, 1.0 + BONUS),  # declined early answer, good final
    (box("  Let's analyze the clip first", "happy"), 0.0, 1.0 + BONUS),
    (box("\u3000Let's analyze", "happy"), 0.0, 1.0 + BONUS),  # unicode whitespace is stripped
    (box("Let's analyzed", "happy"), 0.0, 1.0 + BONUS),  # a prefix test
    (box("Let\u2019s analyze", "happy"), 0.0, 1.0),  # curly apostrophe: no bonus
    (box("let's analyze", "happy"), 0.0, 1.0),  # case-sensitive
    (box("LET'S ANALYZE", "happy"), 0.0, 1.0),
    (box("Let's  analyze", "happy"), 0.0, 1.0),  # two spaces
    (box("\u200bLet's analyze", "happy"), 0.0, 1.0),  # a zero-width space is not whitespace
    (box("Let's analyze", "happy, sad"), 0.0, 2 / 3),  # final F1 2/3 <= 0.7: no bonus
    (box("Let's analyze", "sad"), 0.0, 0.0),
    # the bonus does not need the format (two <think>: format 0)
    (box("Let's analyze", "happy") + "<think>", 0.0, 1.0 + BONUS),
    # a1 by the segment rule: two boxes before <think> give a1 = "", so no bonus
    (r"\boxed{Let's analyze}\boxed{x}<think>r</think>\boxed{happy}", 0.0, 1.0),
    (box(None, "happy"), 0.0, 1.0),  # nothing before <think>: a1 = ""
    (r"\boxed{happy}", 1.0, 1.0),  # no tags: the one box is both answers
    (r"\boxed{happy}\boxed{happy}", 0.0, 0.0),  # two boxes in each segment
    (r"\boxed{happy}<think>\boxed{happy}", 1.0, 0.0),  # no </think>: a2's segment holds two boxes
    ("happy", 0.0, 0.0),  # no box at all
    (box("", ""), 0.0, 0.0),
]


@pytest.mark.parametrize("response, early, final", REWARDS)
def test_videoauto_table(response, early, final):
    out = VideoAutoAnswerRewards()(RewardBatch(responses=[[response]], labels=[["happy"]]))
    assert out.rewards["early_answer"].item() == pytest.approx(early, abs=1e-6)
    assert out.rewards["final_answer"].item() == pytest.approx(final, abs=1e-6)


def test_bonus_is_independent_of_the_format():
    response = box("Let's analyze", "happy") + "<think>"
    batch = RewardBatch(responses=[[response]], labels=[["happy"]])
    assert FormatReward("answer_think_answer")(batch).rewards["format"].item() == 0.0
    assert VideoAutoAnswerRewards()(batch).metrics["fallback_bonus"].item() == 1.0


def test_metric_and_threshold_options():
    batch = RewardBatch(responses=[[box("Let's analyze", "happy, sad")]], labels=[["happy"]])
    # recall of "happy, sad" is 1 > 0.7: the bonus applies
    assert VideoAutoAnswerRewards(metric="recall")(batch).rewards["final_answer"].item() == pytest.approx(1 + BONUS)
    # the threshold is strict
    perfect = RewardBatch(responses=[[box("Let's analyze", "happy")]], labels=[["happy"]])
    strict = VideoAutoAnswerRewards(bonus_threshold=1.0)(perfect)
    assert strict.rewards["final_answer"].item() == 1.0
    with pytest.raises(ValueError, match="metric"):
        VideoAutoAnswerRewards(metric="accuracy")


def test_shapes_and_metrics():
    batch = RewardBatch(responses=[[box("happy", "happy"), box("Let's analyze", "happy")]] * 2, labels=[["happy"], []])
    out = VideoAutoAnswerRewards()(batch)
    assert out.rewards["early_answer"].shape == (2, 2)
    torch.testing.assert_close(out.metrics["early_declined"], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    # neutral GT: everything 0, no bonus
    torch.testing.assert_close(out.rewards["final_answer"][1], torch.zeros(2))
