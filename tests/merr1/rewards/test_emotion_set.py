"""Set rewards. Hand derivations use the official mapping of these words (emotion_wheel tests):

    word       W1        W2        W3        W4       W5
    happy      happy     happy     joyful    joy      powerful
    calm       happy     happy     peaceful  joy      peaceful
    sad        sad       sad       sad       sad      sad
    angry      mad       angry     mad       anger    mad
    surprised  surprised surprised powerful  fear     -        (dropped on W5)
    worried    scared    fearful   scared    fear     scared   (anxious: the same)
    xyz        -         -         -         -        -
"""

import pytest
import torch

from merr1.components.emotion_wheel import EmotionWheels
from merr1.rewards import EmotionSetRewards, F1Reward, PrecisionReward, RecallReward, RewardBatch, merge_outputs
from merr1.rewards.base import RewardOutput


def test_mapping_assumed_by_the_tables():
    wheels = EmotionWheels.load()
    assert wheels.map_word("happy") == ("happy", "happy", "joyful", "joy", "powerful")
    assert wheels.map_word("calm") == ("happy", "happy", "peaceful", "joy", "peaceful")
    assert wheels.map_word("surprised") == ("surprised", "surprised", "powerful", "fear", None)
    assert wheels.map_word("anxious") == wheels.map_word("worried") == ("scared", "fearful", "scared", "fear", "scared")
    assert wheels.map_word("xyz") == (None,) * 5


def tagged(answer: str) -> str:
    return f"<think>reasoning</think><answer>{answer}</answer>"


SET_TABLE = [
    # labels, response, recall, precision, f1
    (["happy"], tagged("happy"), 1.0, 1.0, 1.0),
    (["happy"], tagged("sad"), 0.0, 0.0, 0.0),
    # W1-W4: R = P = 1/2; W5: G = {powerful}, R = 1, P = 1/2, F = 2/3
    (["happy", "surprised"], tagged("happy, sad"), 0.6, 0.5, (4 * 0.5 + 2 / 3) / 5),
    # GT maps to nothing on W5: averaged over 4 wheels (1.0, not 0.8)
    (["surprised"], tagged("surprised"), 1.0, 1.0, 1.0),
    (["surprised"], tagged("happy, surprised"), 1.0, 0.5, 2 / 3),
    # W1, W2, W4: R 1/2, P 1, F 2/3; W3, W5: peaceful misses -> 0
    (["happy", "sad"], tagged("calm"), 0.3, 0.6, 0.4),
    # every wheel: G = {fear-like, anger-like}, Y adds sad -> R 1, P 2/3, F 0.8
    (["worried", "angry"], tagged("anxious, angry, sad"), 1.0, 2 / 3, 0.8),
    (["happy"], tagged("happy, xyz"), 1.0, 1.0, 1.0),  # unknown words are dropped (protocol)
    (["happy"], tagged("xyz"), 0.0, 0.0, 0.0),  # unknown words only
    (["happy"], tagged(""), 0.0, 0.0, 0.0),  # empty answer
    (["happy"], "happy", 0.0, 0.0, 0.0),  # no tags (fallback "none")
    (["happy"], "<answer>happy", 0.0, 0.0, 0.0),  # unclosed tag (truncated)
    (["happy"], tagged("sad") + "<answer>happy</answer>", 1.0, 1.0, 1.0),  # last answer wins
    ([], tagged("happy"), 0.0, 0.0, 0.0),  # neutral GT maps to nothing: 0
    (["xyz"], tagged("happy"), 0.0, 0.0, 0.0),
    (["Happy "], tagged(" HAPPY "), 1.0, 1.0, 1.0),
    (["happy"], tagged("happy, happy, sad"), 1.0, 0.5, 2 / 3),  # sets: duplicates vanish
]


@pytest.mark.parametrize("labels, response, recall, precision, f1", SET_TABLE)
def test_set_rewards_table(labels, response, recall, precision, f1):
    batch = RewardBatch(responses=[[response]], labels=[labels])
    out = EmotionSetRewards()(batch).rewards
    assert out["recall"].item() == pytest.approx(recall, abs=1e-6)
    assert out["precision"].item() == pytest.approx(precision, abs=1e-6)
    assert out["f1"].item() == pytest.approx(f1, abs=1e-6)


@pytest.mark.parametrize(
    "labels, answer, precision, f1",
    [
        (["happy"], "happy, happy, sad", 0.5 * 2 / 3, 0.5),  # 2 distinct of 3 words: P 1/2 -> 1/3
        (["happy"], "Happy, HAPPY", 0.5, 2 / 3),  # case-folded duplicates
        # synonyms are not duplicates: W1, W2, W4 P 1; W3, W5 (peaceful) P 1/2, F 2/3
        (["happy"], "happy, calm", 0.8, (3 * 1.0 + 2 * 2 / 3) / 5),
        (["happy"], "happy", 1.0, 1.0),
        (["happy"], "xyz, xyz, happy", 1.0 * 2 / 3, 0.8),  # unknown duplicates count too
    ],
)
def test_duplicate_penalty(labels, answer, precision, f1):
    batch = RewardBatch(responses=[[tagged(answer)]], labels=[labels])
    out = EmotionSetRewards(duplicate_penalty=True)(batch).rewards
    assert out["precision"].item() == pytest.approx(precision, abs=1e-6)
    assert out["f1"].item() == pytest.approx(f1, abs=1e-6)
    assert out["recall"].item() == pytest.approx(EmotionSetRewards()(batch).rewards["recall"].item())


BOXED = r"\boxed{happy}<think>because</think>\boxed{sad}"


@pytest.mark.parametrize(
    "response, scheme, fallback, expected",
    [
        (BOXED, "boxed", "none", 0.0),  # last box: sad
        (BOXED, "boxed_first", "none", 1.0),  # first box: happy
        (BOXED, "answer", "none", 0.0),  # no answer tags
        ("<think>sad</think>happy", "answer", "full", 1.0),  # reasoning removed: "happy"
        ("<think>sad</think>happy", "answer", "none", 0.0),
    ],
)
def test_answer_schemes(response, scheme, fallback, expected):
    batch = RewardBatch(responses=[[response]], labels=[["happy"]])
    assert RecallReward(answer_scheme=scheme, answer_fallback=fallback)(batch).rewards["recall"].item() == expected


def test_single_rewards_and_shapes():
    responses = [[tagged("happy"), tagged("sad"), "junk"], [tagged("angry")] * 3]
    batch = RewardBatch(responses=responses, labels=[["happy"], ["angry"]])
    outs = [RecallReward()(batch), PrecisionReward()(batch), F1Reward()(batch)]
    merged = merge_outputs(outs)
    assert set(merged.rewards) == {"recall", "precision", "f1"}
    for value in merged.rewards.values():
        assert value.shape == (2, 3) and value.dtype == torch.float32
    torch.testing.assert_close(merged.rewards["recall"], torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    torch.testing.assert_close(merged.metrics["answer_mapped"], torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    # the three components shared one parse of the batch
    assert sum(1 for key in batch.memo if key[0] == "parsed_answers") == 1


def test_all_equal_groups_and_group_size_one_are_finite():
    batch = RewardBatch(responses=[[tagged("happy")] * 4, ["no tags"] * 4], labels=[["happy"], ["sad"]])
    out = EmotionSetRewards()(batch).rewards
    assert torch.equal(out["f1"], torch.tensor([[1.0] * 4, [0.0] * 4]))
    single = EmotionSetRewards()(RewardBatch(responses=[[tagged("sad")]], labels=[[]])).rewards
    assert all(torch.isfinite(v).all() and v.shape == (1, 1) for v in single.values())


def test_empty_batch():
    out = EmotionSetRewards()(RewardBatch(responses=[], labels=[])).rewards
    assert out["f1"].shape == (0, 0)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(answer_scheme="last"), "answer_scheme"), (dict(answer_fallback="all"), "answer_fallback")],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F1Reward(**kwargs)


def test_batch_validation():
    with pytest.raises(ValueError, match="labels"):
        RewardBatch(responses=[["a"]], labels=[])
    with pytest.raises(ValueError, match="same number of responses"):
        RewardBatch(responses=[["a"], ["a", "b"]], labels=[[], []])


def test_merge_rejects_duplicate_rewards():
    out = RewardOutput(rewards={"f1": torch.zeros(1, 1)}, metrics={"m": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="f1"):
        merge_outputs([out, out])
    other = RewardOutput(rewards={}, metrics={"m": torch.ones(1, 1)})
    with pytest.raises(ValueError, match="metric 'm'"):
        merge_outputs([out, other])
