"""LengthPenalty (DAPO's soft overlong punishment, issue 16): hand-derived tables."""

import pytest
import torch

from merr1.rewards import LengthPenalty, RewardBatch
from merr1.rewards.length import soft_overlong_penalty


# max_length 10, buffer 4: no penalty up to 6, then -1/4 per unit, -1 from 10 on.
@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (5, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (9, -0.75), (10, -1.0), (11, -1.0), (1000, -1.0)],
)
def test_soft_overlong_penalty_table(length, expected):
    assert soft_overlong_penalty(length, max_length=10, buffer=4) == expected


@pytest.mark.parametrize(
    ("max_length", "buffer", "length", "expected"),
    [(4, 4, 0, 0.0), (4, 4, 1, -0.25), (4, 4, 4, -1.0), (4, 1, 3, 0.0), (4, 1, 4, -1.0), (4, 1, 5, -1.0)],
)
def test_soft_overlong_penalty_edges(max_length, buffer, length, expected):
    # buffer = max_length: the ramp starts at 0; buffer = 1: a step from 0 to -1 at max_length.
    assert soft_overlong_penalty(length, max_length, buffer) == expected


def test_words_and_chars_on_a_batch():
    responses = [
        ["<think>a b</think><answer>happy</answer>", "one two three four five six seven eight nine"],
        ["", "  spaced   out \n words  "],
    ]
    batch = RewardBatch(responses=responses, labels=[["happy"], []])
    # words: 2 ("<think>a", "b</think><answer>happy</answer>"), 9, 0, 3 -> 0, -0.75, 0, 0
    words = LengthPenalty(max_length=10, buffer=4, unit="words")(batch)
    assert set(words.rewards) == {"length"}
    torch.testing.assert_close(words.rewards["length"], torch.tensor([[0.0, -0.75], [0.0, 0.0]]), rtol=0, atol=0)
    # chars: 7+3+8+8+5+9 = 40, 9 words + 8 spaces = 44, 0, 24; max 50, buffer 20 (ramp from 30):
    # (30-40)/20 = -0.5, (30-44)/20 = -0.7, 0, 0
    chars = LengthPenalty(max_length=50, buffer=20, unit="chars")(batch)
    assert [len(r) for g in responses for r in g] == [40, 44, 0, 24]
    # both sides are the float32 rounding of the same Python floats: exact
    torch.testing.assert_close(chars.rewards["length"], torch.tensor([[-0.5, -0.7], [0.0, 0.0]]), rtol=0, atol=0)
    assert chars.rewards["length"].dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_length": 0, "buffer": 1}, "max_length must be a positive integer"),
        ({"max_length": 10, "buffer": 0}, r"buffer must be an integer in \[1, max_length=10\]"),
        ({"max_length": 10, "buffer": 11}, r"buffer must be an integer in \[1, max_length=10\]"),
        ({"max_length": 10.5, "buffer": 2}, "max_length must be a positive integer"),
        ({"max_length": 10, "buffer": 2, "unit": "tokens"}, r"unit must be one of \('words', 'chars'\)"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LengthPenalty(**kwargs)
