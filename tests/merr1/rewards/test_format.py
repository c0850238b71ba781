import pytest
import torch

from merr1.rewards import FormatReward, RewardBatch

OK = "<think>r</think><answer>a</answer>"

THINK_ANSWER = [
    # response, lenient, strict
    (OK, 1.0, 1.0),
    ("<think>r</think>\n<answer>a</answer>", 1.0, 1.0),
    ("<think></think><answer></answer>", 1.0, 1.0),  # empty blocks are a format, not a content, matter
    ("<think>multi\nline</think><answer>a, b</answer>", 1.0, 1.0),
    (OK + "\n", 1.0, 0.0),  # strict: nothing after the closing tag
    (OK + " extra", 1.0, 0.0),
    ("  " + OK, 1.0, 0.0),  # strict: nothing before the first tag
    (OK + "</think> <answer>", 1.0, 0.0),  # the demo's reward hack: looping tag fragments
    (OK + "<answer>b</answer>", 1.0, 0.0),
    ("<think>r<answer>x</answer></think><answer>a</answer>", 1.0, 0.0),  # tags inside a block
    ("<answer>a</answer>", 0.0, 0.0),
    ("<think>r</think>", 0.0, 0.0),
    ("<think>r</think><answer>a", 0.0, 0.0),  # truncated
    ("<answer>a</answer><think>r</think>", 0.0, 0.0),
    ("text <think>r</think><answer>a</answer>", 0.0, 0.0),
    ("", 0.0, 0.0),
]

BOX = r"\boxed{happy}<think>r</think>\boxed{sad}"
# lenient = VideoAuto-R1's official check (the whole response; <think> and </think> at most once
# each; one nesting level inside a box; Unicode whitespace around the blocks).
ANSWER_THINK_ANSWER = [
    (BOX, 1.0, 1.0),
    (r"\boxed{Let's analyze}<think>r</think>" + "\n" + r"\boxed{sad, calm}", 1.0, 1.0),
    (r"\boxed{a} " + "\n" + r"<think>r</think> \boxed{b}", 1.0, 1.0),  # whitespace between blocks
    (BOX + "\n", 1.0, 0.0),  # trailing whitespace: official yes, strict no
    ("  \n" + BOX, 1.0, 0.0),  # leading whitespace
    ("\u3000" + BOX + "\u2003\u00a0", 1.0, 0.0),  # Unicode whitespace counts as whitespace
    ("\u200b" + BOX, 0.0, 0.0),  # a zero-width space does not
    (r"\boxed{a}<think></think>\boxed{b}", 1.0, 1.0),  # empty think block
    (r"\boxed{a}<think> " + "\n" + r" </think>\boxed{b}", 1.0, 1.0),  # blank think block passes too
    (r"\boxed{}<think>r</think>\boxed{}", 1.0, 1.0),  # empty boxes
    (BOX + " more", 0.0, 0.0),  # text after the final box
    (r"x\boxed{a}<think>r</think>\boxed{b}", 0.0, 0.0),  # text before the first box
    (r"\boxed{a}<think>r</think>text\boxed{b}", 0.0, 0.0),
    (r"\boxed{a}<think>r \boxed{x}</think>\boxed{b}", 1.0, 0.0),  # a box inside the reasoning
    (r"\boxed{a{b}}<think>r</think>\boxed{\text{c}}", 1.0, 0.0),  # one nesting level: official yes
    (r"\boxed{a{b{c}}}<think>r</think>\boxed{d}", 0.0, 0.0),  # two levels: no box
    (r"\boxed{a}<think>r<think>s</think>\boxed{b}", 0.0, 0.0),  # <think> twice
    (r"\boxed{a}<think>r</think>\boxed{b}</think>", 0.0, 0.0),  # </think> twice
    (r"\boxed{a}</think><think>r\boxed{b}", 0.0, 0.0),  # tags in the wrong order
    (r"\boxed{a<think>}r</think>\boxed{b}", 0.0, 0.0),  # the only <think> is inside the first box
    (r"<think>r</think>\boxed{sad}", 0.0, 0.0),
    (r"\boxed{a}\boxed{x}<think>r</think>\boxed{b}", 0.0, 0.0),
    (r"\boxed{a}<think>r</think>\boxed{b}\boxed{c}", 0.0, 0.0),
    (r"\boxed{a}<think>r</think>", 0.0, 0.0),
    (r"\boxed{a}<think>r</think>\boxed{b", 0.0, 0.0),  # truncated
    (r"\boxed{a}<think>r</think>\boxed{b}}", 0.0, 0.0),
    (r"\boxed{a}\boxed{b}", 0.0, 0.0),  # no think block
    ("<think>r</think><answer>a</answer>", 0.0, 0.0),
    ("", 0.0, 0.0),
]

STEPS = "<step1>cues</step1><step2>feel</step2><step3>valence</step3><answer>happy</answer>"
EMO_R3_STEPS = [
    (STEPS, 1.0, 1.0),
    (STEPS.replace("><", ">\n<"), 1.0, 1.0),
    (STEPS + " ok", 1.0, 0.0),
    ("<step1>a</step1><step2>b</step2><answer>c</answer>", 0.0, 0.0),  # step 3 missing
    ("<step2>b</step2><step1>a</step1><step3>c</step3><answer>d</answer>", 0.0, 0.0),
    ("<step1>a <step2>x</step2></step1><step2>b</step2><step3>c</step3><answer>d</answer>", 1.0, 0.0),
    ("<think>r</think><answer>a</answer>", 0.0, 0.0),
]


@pytest.mark.parametrize(
    "scheme, response, lenient, strict",
    [("think_answer", *row) for row in THINK_ANSWER]
    + [("answer_think_answer", *row) for row in ANSWER_THINK_ANSWER]
    + [("emo_r3_steps", *row) for row in EMO_R3_STEPS],
)
def test_format_table(scheme, response, lenient, strict):
    """lenient = the scheme's reference rule (the default), strict = the whole-response exact layout."""
    assert FormatReward(scheme, strict=False).score(response) == lenient
    assert FormatReward(scheme, strict=True).score(response) == strict


def test_batch_output():
    batch = RewardBatch(responses=[[OK, "x"], ["", OK + "!"]], labels=[[], []])
    out = FormatReward(strict=True)(batch)
    assert torch.equal(out.rewards["format"], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown format scheme"):
        FormatReward("xml")
