import pytest
import torch

from merr1.rewards import RecheckQuery, ReflectiveRewards, RewardBatch
from merr1.rewards.reflective import MODALITY_RECHECK_QUESTION, TEXT_RECHECK_QUESTION, yes_no_score


def steps(s1="a smile", s2="she would feel joy", s3="positive, high", answer="happy") -> str:
    return f"<step1>{s1}</step1><step2>{s2}</step2><step3>{s3}</step3><answer>{answer}</answer>"


class FakePolicy:
    """Replies by looking up the step-1 text (the only thing both queries contain)."""

    def __init__(self, text_replies: dict[str, str], modality_replies: dict[str, str]) -> None:
        self.text_replies, self.modality_replies = text_replies, modality_replies
        self.calls: list[list[RecheckQuery]] = []

    def __call__(self, queries: list[RecheckQuery]) -> list[str]:
        self.calls.append(queries)
        out = []
        for q in queries:
            step1 = q.text.split("\n")[0]
            table = self.text_replies if q.kind == "text" else self.modality_replies
            out.append(table[step1])
        return out


@pytest.mark.parametrize(
    "text_reply, modality_reply, text_score, modality_score",
    [
        ("happy", "Yes.", 1.0, 1.0),
        ("sad", "no", 0.0, 0.0),
        ("", "maybe", 0.5, 0.5),  # empty reply -> 0.5; neither yes nor no -> 0.5
        ("<think>hmm</think><answer>joyful</answer>", " YES, it does", 1.0, 1.0),  # policy format
        ("xyz", "Nope", 0.0, 0.5),  # a reply whose words map to nothing is a miss, not empty
        ("calm", "no.", 0.6, 0.0),  # calm hits happy on W1, W2, W4, not on W3, W5
    ],
)
def test_reflective_table(text_reply, modality_reply, text_score, modality_score):
    fake = FakePolicy({"a smile": text_reply}, {"a smile": modality_reply})
    batch = RewardBatch(responses=[[steps()]], labels=[["happy"]], extras={"reflective_generate": fake})
    out = ReflectiveRewards()(batch)
    assert out.rewards["text_recheck"].item() == pytest.approx(text_score)
    assert out.rewards["modality_recheck"].item() == pytest.approx(modality_score)


def test_queries_and_missing_steps():
    responses = [[steps(s1="cue A"), "<step1>cue B</step1><answer>happy</answer>"], ["no steps", steps(s1="cue C")]]
    fake = FakePolicy({"cue A": "happy", "cue C": "sad"}, {"cue A": "yes", "cue B": "yes", "cue C": "no"})
    batch = RewardBatch(responses=responses, labels=[["happy"], ["sad"]], extras={"reflective_generate": fake})
    out = ReflectiveRewards()(batch)
    assert len(fake.calls) == 1  # one batched call for the whole batch
    queries = fake.calls[0]
    assert [(q.kind, q.prompt_index, q.response_index, q.use_media) for q in queries] == [
        ("text", 0, 0, False),
        ("modality", 0, 0, True),
        ("modality", 0, 1, True),
        ("text", 1, 3, False),
        ("modality", 1, 3, True),
    ]
    assert queries[0].text == f"cue A\nshe would feel joy\n{TEXT_RECHECK_QUESTION}"
    assert queries[1].text == f"cue A\n{MODALITY_RECHECK_QUESTION}"
    # response 1 lacks step 2: no text query -> 0; response 2 has no steps -> 0 for both
    torch.testing.assert_close(out.rewards["text_recheck"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(out.rewards["modality_recheck"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_neutral_gt_scores_zero_and_no_queries_no_call():
    fake = FakePolicy({"a smile": ""}, {"a smile": "yes"})
    out = ReflectiveRewards()(RewardBatch(responses=[[steps()]], labels=[[]], extras={"reflective_generate": fake}))
    assert out.rewards["text_recheck"].item() == 0.0
    fake = FakePolicy({}, {})
    ReflectiveRewards()(RewardBatch(responses=[["none"]], labels=[["happy"]], extras={"reflective_generate": fake}))
    assert fake.calls == []


@pytest.mark.parametrize(
    "reply, score",
    [("yes", 1.0), ("Yes, clearly", 1.0), ("**No**", 0.0), ("yesterday", 0.5), ("", 0.5), ("I think yes", 0.5)],
)
def test_yes_no(reply, score):
    assert yes_no_score(reply) == score


def test_bad_callback():
    with pytest.raises(ValueError, match="reflective_generate"):
        ReflectiveRewards()(RewardBatch(responses=[[steps()]], labels=[["happy"]]))
    bad = RewardBatch(responses=[[steps()]], labels=[["happy"]], extras={"reflective_generate": lambda qs: []})
    with pytest.raises(ValueError, match="replies"):
        ReflectiveRewards()(bad)
