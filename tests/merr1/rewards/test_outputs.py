"""Every reward declares the names it returns (`outputs`); the recipe relies on it."""

import pytest
import torch

from merr1.components.calibration import CalibrationInputs
from merr1.rewards import (
    CalibrationRewards,
    EmotionSetRewards,
    F1Reward,
    FormatReward,
    LengthPenalty,
    PrecisionReward,
    RecallReward,
    ReflectiveRewards,
    RewardBatch,
    VideoAutoAnswerRewards,
)

RESPONSES = [["<think>x</think><answer>happy</answer>", "\\boxed{sad}<think>y</think>\\boxed{sad}"]]
CALIBRATION = CalibrationInputs(
    response_index=torch.zeros(0, dtype=torch.long),
    category_mask=torch.zeros(0, 5, dtype=torch.long),
    gap=torch.zeros(0, 5),
    num_responses=2,
)


@pytest.mark.parametrize(
    "reward",
    [RecallReward(), PrecisionReward(), F1Reward(), EmotionSetRewards(), FormatReward(), VideoAutoAnswerRewards(),
     CalibrationRewards(), ReflectiveRewards(), LengthPenalty(max_length=8, buffer=4)],
    ids=lambda r: type(r).__name__,
)
def test_returned_names_are_the_declared_outputs(reward):
    batch = RewardBatch(
        responses=RESPONSES,
        labels=[["happy"]],
        extras={"calibration": CALIBRATION, "reflective_generate": lambda queries: ["happy"] * len(queries)},
    )
    out = reward(batch)
    assert set(out.rewards) == set(type(reward).outputs)
    assert all(v.shape == (1, 2) for v in out.rewards.values())
