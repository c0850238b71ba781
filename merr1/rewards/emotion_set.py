"""Set rewards on level-1 emotion-wheel categories (METHOD section 4): recall, precision, F1.

For a response with answer categories Ŷ_k and ground truth G_k on wheel k (both from
``merr1.components.emotion_wheel``'s official mapping, as sets):

    R_R,k = |Ŷ_k ∩ G_k| / |G_k|     R_P,k = |Ŷ_k ∩ G_k| / |Ŷ_k|     R_F,k = 2 R_R,k R_P,k / (R_R,k + R_P,k)

and each reward is the mean over the wheels k where G_k is non-empty. Choices (documented and
tested):

- A wheel on which the GT maps to nothing is left out of the average (as MER-UniBench skips such
  samples per wheel). If the GT maps to nothing on EVERY wheel (e.g. the empty "neutral" label),
  all rewards are 0 for the whole group: a constant group, so it gets zero advantage.
- A response whose answer maps to nothing on a wheel (no answer tag, empty answer, unknown words
  only) gets 0 on that wheel (|Ŷ_k| = 0: R_P,k = 0 as in METHOD section 3; R_F,k = 0 when
  R_R,k + R_P,k = 0).
- F1 is computed per wheel and then averaged (not the harmonic mean of the averaged R and P).
- ``duplicate_penalty`` (default off; the paper uses sets): precision is multiplied by
  (number of distinct parsed words) / (number of parsed words), so "happy, happy, sad" keeps 2/3
  of its precision (docs/design_notes.md: the demo needs it, otherwise GRPO pads duplicates). F1 uses the
  penalized precision; recall is unchanged.
- ``answer_scheme`` picks the answer: ``"answer"`` (last ``<answer>...</answer>``), ``"boxed"``
  (last ``\\boxed{...}``), ``"boxed_first"``, ``"videoauto_a1"`` / ``"videoauto_a2"`` (VideoAuto-R1's
  official early / final answer); ``answer_fallback`` what a response without the tags
  yields (``"none"``: nothing, ``"full"``: the response without its reasoning blocks); both are
  ``merr1.components.emotion_wheel.extract_answer``'s.

Speed: the per-response work is one answer extraction and one ``EmotionWheels.map_text_packed``
call (parse + map to per-wheel bitmasks; with the duplicate penalty ``parse_emotion_list`` +
``map_packed`` to count words); the set arithmetic is tensor ops on ``[N, 5]`` bitmasks. The ground truth is
cached per label list, and the parsed answers are cached on the ``RewardBatch`` so that
``RecallReward``, ``PrecisionReward`` and ``F1Reward`` used together parse each response once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from merr1.components.emotion_wheel import (
    ANSWER_FALLBACKS,
    ANSWER_SCHEMES,
    BITS_PER_WHEEL,
    EmotionWheels,
    extract_answer,
    parse_emotion_list,
)
from merr1.rewards.base import RewardBatch, RewardOutput


@functools.lru_cache(maxsize=1 << 16)
def ground_truth_packed(labels: tuple[str, ...]) -> int:
    """GT category masks of a parsed label list, packed as in ``EmotionWheels.map_packed`` (cached)."""
    return EmotionWheels.load().map_packed(labels)


def unpack_masks(packed: torch.Tensor) -> torch.Tensor:
    """``map_packed`` ints -> per-wheel bitmasks. # [N] int64 -> [N, K] int64"""
    shifts = torch.arange(EmotionWheels.NUM_WHEELS, dtype=torch.int64) * BITS_PER_WHEEL
    return (packed[:, None] >> shifts) & ((1 << BITS_PER_WHEEL) - 1)


@dataclass
class ParsedAnswers:
    """Answers of N responses mapped to the wheels.

    Attributes:
        pred_masks: per-wheel category bitmask of each answer (0 = nothing). # [N, K] int64
        num_words: number of parsed answer words (duplicates included), if counted. # [N] float32
        num_distinct_words: number of distinct parsed answer words, if counted. # [N] float32
    """

    pred_masks: torch.Tensor
    num_words: torch.Tensor | None = None
    num_distinct_words: torch.Tensor | None = None


def parse_answers(answers: list[str | None], count_words: bool = False) -> ParsedAnswers:
    """Parse and map extracted answers (``None`` = no answer); optionally count their words."""
    wheels = EmotionWheels.load()
    if not count_words:
        map_text = wheels.map_text_packed
        packed = [map_text(answer) if answer else 0 for answer in answers]
        return ParsedAnswers(pred_masks=unpack_masks(torch.tensor(packed, dtype=torch.int64)))
    map_packed = wheels.map_packed
    packed, num_words, num_distinct = [], [], []
    for answer in answers:
        words = parse_emotion_list(answer) if answer else []
        packed.append(map_packed(words))
        num_words.append(len(words))
        num_distinct.append(len(set(words)))
    return ParsedAnswers(
        pred_masks=unpack_masks(torch.tensor(packed, dtype=torch.int64)),
        num_words=torch.tensor(num_words, dtype=torch.float32),
        num_distinct_words=torch.tensor(num_distinct, dtype=torch.float32),
    )


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(1 << BITS_PER_WHEEL)], dtype=torch.int64)


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of int64 values in ``[0, 2**BITS_PER_WHEEL)`` (elementwise table lookup)."""
    return _POPCOUNT.to(x.device)[x]


def set_scores(
    pred_masks: torch.Tensor,
    gt_masks: torch.Tensor,
    duplicate_factor: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Wheel-averaged recall, precision, F1 of predicted vs GT category sets (module docstring).

    Args:
        pred_masks: predicted category bitmasks. # [N, K] int64
        gt_masks: ground-truth category bitmasks of each response's prompt. # [N, K] int64
        duplicate_factor: optional precision multiplier per response (duplicate penalty). # [N]

    Returns:
        ``recall``, ``precision``, ``f1`` (# [N] float32) and ``num_categories`` (mean |Ŷ_k| over
        the wheels with a GT; # [N] float32).
    """
    hits = popcount(pred_masks & gt_masks).float()  # [N, K]
    num_pred = popcount(pred_masks).float()  # [N, K]
    num_gt = popcount(gt_masks).float()  # [N, K]
    valid = num_gt > 0  # [N, K]
    recall = hits / num_gt.clamp_min(1.0)
    precision = hits / num_pred.clamp_min(1.0)
    if duplicate_factor is not None:
        precision = precision * duplicate_factor[:, None]
    denom = recall + precision
    f1 = torch.where(denom > 0, 2 * recall * precision / denom.clamp_min(1e-12), torch.zeros_like(denom))
    num_valid = valid.sum(-1).float()  # [N]

    def wheel_mean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, x, torch.zeros_like(x)).sum(-1) / num_valid.clamp_min(1.0)

    return {
        "recall": wheel_mean(recall),
        "precision": wheel_mean(precision),
        "f1": wheel_mean(f1),
        "num_categories": wheel_mean(num_pred),
    }


def batch_gt_masks(labels: list[list[str]], group_size: int) -> torch.Tensor:
    """GT bitmasks per response (each prompt's repeated G times). # [num_prompts * G, K]"""
    packed = torch.tensor([ground_truth_packed(tuple(words)) for words in labels], dtype=torch.int64)
    return unpack_masks(packed).repeat_interleave(group_size, dim=0)


class _SetReward:
    """Shared implementation of the three set rewards (see the module docstring).

    Args:
        answer_scheme: one of ``emotion_wheel.ANSWER_SCHEMES`` (``"answer"``, ``"boxed"``, ...).
        answer_fallback: ``"none"`` or ``"full"`` (for responses without the answer tags).
        duplicate_penalty: repeated answer words count against precision (demo option).
    """

    outputs: tuple[str, ...] = ()

    def __init__(self, answer_scheme: str = "answer", answer_fallback: str = "none", duplicate_penalty: bool = False):
        if answer_scheme not in ANSWER_SCHEMES:
            raise ValueError(f"answer_scheme must be one of {ANSWER_SCHEMES}, got {answer_scheme!r}")
        if answer_fallback not in ANSWER_FALLBACKS:
            raise ValueError(f"answer_fallback must be one of {ANSWER_FALLBACKS}, got {answer_fallback!r}")
        self.answer_scheme = answer_scheme
        self.answer_fallback = answer_fallback
        self.duplicate_penalty = duplicate_penalty

    def scores(self, batch: RewardBatch) -> dict[str, torch.Tensor]:
        """All set scores of the batch, ``[num_prompts, G]`` each (cached on the batch)."""
        key = ("set_scores", self.answer_scheme, self.answer_fallback, self.duplicate_penalty)
        if key not in batch.memo:
            parsed = self._parsed(batch)
            factor = None
            if self.duplicate_penalty:
                factor = parsed.num_distinct_words / parsed.num_words.clamp_min(1.0)
            flat = set_scores(parsed.pred_masks, batch_gt_masks(batch.labels, batch.group_size), factor)
            flat["answer_mapped"] = (parsed.pred_masks != 0).any(-1).float()
            batch.memo[key] = {k: v.reshape(batch.num_prompts, batch.group_size) for k, v in flat.items()}
        return batch.memo[key]

    def _parsed(self, batch: RewardBatch) -> ParsedAnswers:
        key = ("parsed_answers", self.answer_scheme, self.answer_fallback, self.duplicate_penalty)
        if key not in batch.memo:
            answers = [
                extract_answer(r, scheme=self.answer_scheme, fallback=self.answer_fallback)
                for group in batch.responses
                for r in group
            ]
            batch.memo[key] = parse_answers(answers, count_words=self.duplicate_penalty)
        return batch.memo[key]

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        scores = self.scores(batch)
        return RewardOutput(
            rewards={name: scores[name] for name in self.outputs},
            metrics={"num_categories": scores["num_categories"], "answer_mapped": scores["answer_mapped"]},
        )


class RecallReward(_SetReward):
    """R_R = |Ŷ ∩ G| / |G|, wheel-averaged; output ``recall`` (module docstring for the options)."""

    outputs = ("recall",)


class PrecisionReward(_SetReward):
    """R_P = |Ŷ ∩ G| / |Ŷ|, wheel-averaged; output ``precision`` (module docstring for the options)."""

    outputs = ("precision",)


class F1Reward(_SetReward):
    """R_F = 2 R_R R_P / (R_R + R_P) per wheel, wheel-averaged; output ``f1``."""

    outputs = ("f1",)


class EmotionSetRewards(_SetReward):
    """Recall, precision and F1 from one component; outputs ``recall``, ``precision``, ``f1``."""

    outputs = ("recall", "precision", "f1")
