import pytest
import torch

from merr1.rewards import RewardBatch, VideoAutoAnswerRewards

BONUS = 0.3 / 1.1


def box(a1: str | None, a2: str | None) -> str:
    head = "" if a1 is None else rf"\boxed{{{a1}}}"
    tail = "" if a2 is None else rf"\boxed{{{a2}}}"
    return f"{head}<think>reasoning</think>{tail}"


@pytest.mark.parametrize(
    "response, early, final",
    [
        (box("happy", "happy"), 1.0, 1.0),
        (box("sad", "happy"), 0.0, 1.0),
        (box("happy", "sad"), 1.0, 0.0),
        (box("Let's analyze", "happy"), 0.0, 1.0 + BONUS),  # declined early answer, good final
        (box("  Let's analyze the clip first", "happy"), 0.0, 1.0 + BONUS),
        (box("Let's analyze", "happy, sad"), 0.0, 2 / 3),  # final F1 2/3 <= 0.7: no bonus
        (box("let's analyze", "happy"), 0.0, 1.0),  # prefix is case-sensitive
        (box("Let's analyze", "sad"), 0.0, 0.0),
        (box(None, "happy"), 1.0, 1.0),  # one box: it is both the first and the last
        ("happy", 0.0, 0.0),  # no box at all
        (box("", ""), 0.0, 0.0),
    ],
)
def test_videoauto_table(response, early, final):
    out = VideoAutoAnswerRewards()(RewardBatch(responses=[[response]], labels=[["happy"]]))
    assert out.rewards["early_answer"].item() == pytest.approx(early, abs=1e-6)
    assert out.rewards["final_answer"].item() == pytest.approx(final, abs=1e-6)


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
