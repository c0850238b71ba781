"""R+ / R- from per-word gaps. Category masks per wheel (bit j of categories(k)), from the wheels:
happy/joyful (8, 32, 4, 1, 16), calm (8, 32, 16, 1, 8), sad (4, 8, 32, 8, 4),
surprised (16, 16, 8, 16, 0), unknown (0, 0, 0, 0, 0)."""

import pytest
import torch

from merr1.components.calibration import CalibrationInputs
from merr1.components.emotion_wheel import EmotionWheels
from merr1.rewards import CalibrationRewards, RewardBatch


def masks(word: str) -> list[int]:
    return list(EmotionWheels.load().map_masks([word]))


def inputs(words: list[tuple[int, str, list[float]]], num_responses: int) -> CalibrationInputs:
    return CalibrationInputs(
        response_index=torch.tensor([r for r, _, _ in words], dtype=torch.int64),
        category_mask=torch.tensor([masks(w) for _, w, _ in words], dtype=torch.int64).reshape(-1, 5),
        gap=torch.tensor([g for _, _, g in words], dtype=torch.float32).reshape(-1, 5),
        num_responses=num_responses,
    )


def test_masks_assumed_by_the_table():
    assert masks("happy") == masks("joyful") == [8, 32, 4, 1, 16]
    assert masks("calm") == [8, 32, 16, 1, 8]
    assert masks("surprised") == [16, 16, 8, 16, 0]


CALI_TABLE = [
    # labels, words (word, per-wheel gap), R+, R-
    (["happy"], [("happy", [0.5] * 5), ("sad", [-1.0] * 5)], 0.5, 1.0),
    # surprised correct on W1-4 (unmapped on W5); happy incorrect on W1-4; W5 has no GT -> skipped
    (["surprised"], [("surprised", [1, 2, 3, 4, 9]), ("happy", [0.1, 0.2, 0.3, 0.4, 9])], 2.5, -0.25),
    # calm vs GT happy: correct on W1, W2, W4; incorrect on W3 (peaceful), W5 (peaceful)
    (["happy"], [("calm", [1, 2, 3, 4, 5])], 7 / 3, -4.0),
    # mean over words per wheel, then over wheels: W1, W2, W4 mean(1, 3) = 2; W3, W5 only happy: 1
    (["happy"], [("happy", [1.0] * 5), ("calm", [3.0] * 5)], (2 + 2 + 1 + 2 + 1) / 5, -3.0),
    (["happy"], [("happy", [1.0] * 5), ("joyful", [3.0] * 5)], 2.0, 0.0),  # no incorrect word -> R- = 0
    (["happy"], [("sad", [2.0] * 5)], 0.0, -2.0),  # no correct word -> R+ = 0
    (["happy"], [("xyz", [5.0] * 5)], 0.0, 0.0),  # unknown words only
    (["happy"], [], 0.0, 0.0),  # no words (empty answer, no tags)
    ([], [("happy", [5.0] * 5), ("sad", [1.0] * 5)], 0.0, 0.0),  # GT maps to nothing
]


@pytest.mark.parametrize("labels, words, cali_pos, cali_neg", CALI_TABLE)
def test_calibration_table(labels, words, cali_pos, cali_neg):
    extras = {"calibration": inputs([(0, w, g) for w, g in words], 1)}
    batch = RewardBatch(responses=[["..."]], labels=[labels], extras=extras)
    out = CalibrationRewards()(batch)
    assert out.rewards["cali_pos"].item() == pytest.approx(cali_pos, abs=1e-6)
    assert out.rewards["cali_neg"].item() == pytest.approx(cali_neg, abs=1e-6)


def test_words_go_to_their_response():
    words = [(0, "happy", [1.0] * 5), (3, "happy", [2.0] * 5), (3, "sad", [1.0] * 5), (5, "sad", [4.0] * 5)]
    extras = {"calibration": inputs(words, 6)}
    batch = RewardBatch(responses=[["."] * 3, ["."] * 3], labels=[["happy"], ["happy"]], extras=extras)
    out = CalibrationRewards()(batch)
    torch.testing.assert_close(out.rewards["cali_pos"], torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.rewards["cali_neg"], torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.0, -4.0]]))
    torch.testing.assert_close(out.metrics["cali_num_correct"], torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]))


@pytest.mark.parametrize(
    "extras, match",
    [
        ({}, "CalibrationInputs"),
        ({"calibration": inputs([], 3)}, "responses"),
        ({"calibration": inputs([(7, "happy", [1.0] * 5)], 2)}, "out of range"),
        ({"calibration": inputs([(0, "happy", [float("nan")] * 5)], 2)}, "finite"),
    ],
)
def test_bad_inputs(extras, match):
    with pytest.raises(ValueError, match=match):
        CalibrationRewards()(RewardBatch(responses=[[".", "."]], labels=[["happy"]], extras=extras))
