"""Slow-vs-fast diagnostics (merr1.components.diagnostics): hand-derived tables."""

import math

import pytest
import torch

from merr1.components.tokenizer import TokenBytes
from merr1.components.diagnostics import (
    answer_start,
    confidence_summary,
    flat_category_mask,
    mean_num_categories,
    retained_hit_rate,
)
from merr1.components.data.prompts import encode_pieces
from merr1.components.tokenizer import tiny_tokenizer

NAN = float("nan")


def packed(*wheel_masks: int) -> int:
    """Pack per-wheel masks (wheel k's mask in bits [8k, 8k + 8))."""
    return sum(m << (8 * k) for k, m in enumerate(wheel_masks))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


ALL = packed(1, 1, 1, 1, 1)  # GT category 0 on every wheel


@pytest.mark.parametrize(
    "gt, pred, per_wheel",
    [
        # one sample, GT on every wheel: |Ŷ_k| = 2, 1, 0, 0, 3
        ([ALL], [packed(0b11, 0b1, 0, 0, 0b111)], [2, 1, 0, 0, 3]),
        # the second sample has no GT anywhere: not counted
        ([ALL, 0], [packed(0b11, 0b11, 0b11, 0b11, 0b11), packed(0b111, 0b111, 0b111, 0b111, 0b111)], [2] * 5),
        # GT only on wheel 0 for the second sample: wheel 0 averages (1 + 3) / 2
        ([ALL, packed(0b10)], [packed(1, 1, 1, 1, 1), packed(0b111)], [2, 1, 1, 1, 1]),
        # nobody has a GT: NaN everywhere
        ([0, 0], [ALL, ALL], [NAN] * 5),
        ([], [], [NAN] * 5),
    ],
)
def test_mean_num_categories(gt, pred, per_wheel):
    out = mean_num_categories(gt, pred)
    assert all(same(a, b) for a, b in zip(out["per_wheel"], per_wheel))
    expected_mean = sum(per_wheel) / 5
    assert same(out["mean"], expected_mean)


@pytest.mark.parametrize(
    "gt, fast, slow, per_wheel, hits",
    [
        # fast hits the GT category, slow keeps it: 1
        ([ALL], [ALL], [ALL], [1.0] * 5, [1] * 5),
        # fast hits 2 GT categories on wheel 0, slow keeps one of them; other wheels: no fast hit
        ([packed(0b11)], [packed(0b111)], [packed(0b101)], [0.5] + [NAN] * 4, [2, 0, 0, 0, 0]),
        # pooled over samples: (1 + 0) / (1 + 2) on wheel 0; slow's extra hit (not hit by fast) is ignored
        ([packed(0b1), packed(0b11)], [packed(0b1), packed(0b11)], [packed(0b1), packed(0b100)], [1 / 3] + [NAN] * 4,
         [3, 0, 0, 0, 0]),
        # fast misses everything: undefined
        ([ALL], [0], [ALL], [NAN] * 5, [0] * 5),
    ],
)
def test_retained_hit_rate(gt, fast, slow, per_wheel, hits):
    out = retained_hit_rate(gt, fast, slow)
    assert all(same(a, b) for a, b in zip(out["per_wheel"], per_wheel))
    assert out["num_fast_hits"] == hits
    assert same(out["mean"], sum(per_wheel) / 5)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same length"):
        retained_hit_rate([ALL], [ALL, ALL], [ALL])


def test_flat_category_mask_follows_the_calibration_layout():
    # wheel 0 has 2 categories, wheel 1 has 3: columns (0,0) (0,1) (1,0) (1,1) (1,2)
    mask = flat_category_mask([packed(0b10, 0b101), 0], [2, 3])
    assert mask.tolist() == [[False, True, True, False, True], [False] * 5]
    assert flat_category_mask([], [2, 3]).shape == (0, 5)


def test_confidence_summary_hand_derived():
    # Two "wheels" with 4 and 2 categories.
    conf = torch.tensor(
        [
            [-1.0, -2.0, -3.0, -4.0, -0.5, -1.5],  # GT: wheel A {0}, wheel B {1}
            [-9.0, -9.0, -9.0, -9.0, -1.0, -3.0],  # GT: none on A, both on B
        ]
    )
    gt = torch.tensor([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    out = confidence_summary(conf, gt, [4, 2])
    a, b = out["per_wheel"]
    # A: only sample 0; GT conf -1, hard negatives -2, -3, -4 -> mean -3, margin 2
    assert a == {"gt_confidence": -1.0, "margin": 2.0, "num_samples": 1, "num_margin_samples": 1}
    # B: GT conf -1.5 and mean(-1, -3) = -2; margin only for sample 0 (one negative: -0.5) -> -1
    assert b == {"gt_confidence": -1.75, "margin": -1.0, "num_samples": 2, "num_margin_samples": 1}
    assert out["gt_confidence"] == pytest.approx((-1.0 - 1.75) / 2)
    assert out["margin"] == pytest.approx((2.0 - 1.0) / 2)


@pytest.mark.parametrize("num_hard_negatives, margin", [(1, 1.0), (2, 1.5), (3, 2.0), (9, 2.0)])
def test_confidence_margin_uses_the_top_negatives(num_hard_negatives, margin):
    conf = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    gt = torch.tensor([[True, False, False, False]])
    assert confidence_summary(conf, gt, [4], num_hard_negatives)["margin"] == pytest.approx(margin)


def test_confidence_summary_without_samples_is_nan():
    out = confidence_summary(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool), [3])
    assert math.isnan(out["gt_confidence"]) and math.isnan(out["margin"])
    with pytest.raises(ValueError, match="must both be"):
        confidence_summary(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool), [2])


# Toy tokens: id -> bytes (id 9 is a special token with no text).
TOY = {0: b"<think>", 1: b"hm", 2: b"</think>", 3: b"<answer>", 4: b"happy", 5: b"</answer>", 6: b">happy",
       7: b"<answer", 8: b", sad", 9: b""}  # fmt: skip


def toy_bytes(ids):
    return [TOY[i] for i in ids]


@pytest.mark.parametrize(
    "ids, expected",
    [
        ([0, 1, 2, 3, 4, 5], (4, "")),  # tag ends on a token boundary
        ([0, 2, 7, 6, 8, 5], (3, ">")),  # '>happy': the tag's '>' is glued to the word
        ([3, 4, 5, 3, 4, 8, 5], (4, "")),  # the LAST tag counts
        ([0, 2, 3], (3, "")),  # the response ends with the tag (truncated)
        ([0, 2, 3, 9], (3, "")),  # only a special token after the tag
        ([0, 2, 3, 9, 4], (3, "")),  # a special token right after the tag belongs to the answer side
        ([0, 1, 2], None),  # no answer tag
        ([], None),
    ],
)
def test_answer_start(ids, expected):
    assert answer_start(ids, toy_bytes) == expected


def test_answer_start_with_the_tiny_tokenizer():
    tok = tiny_tokenizer()
    ids = encode_pieces(tok, ["<think>", "They won.", "</think><answer>", "happy, excited", "</answer>"])
    t, glue = answer_start(ids, TokenBytes(tok))
    assert glue == ""
    assert tok.decode(ids[t:]).startswith("happy, excited")
    # A merged tokenization: encode the joined string; whatever the merge, context + glue + answer match.
    ids = tok("<think>x</think><answer>happy</answer>", add_special_tokens=False)["input_ids"]
    t, glue = answer_start(ids, TokenBytes(tok))
    assert tok.decode(ids[:t]) + glue == "<think>x</think><answer>"
    assert tok.decode(ids[t:]).startswith(glue + "happy")
