"""VideoAuto-R1 answer rewards (METHOD section 7): early answer a1 and final answer a2.

Response layout ``\\boxed{a1}<think>...</think>\\boxed{a2}``. The answers are read exactly as the
public VideoAuto-R1 reward code reads them (IVUL-KAUST/VideoAuto-R1 at f7d91a3,
``videoauto_r1/reward/reward.py``; issue 13), quirks included (``split_answers``):

- a1 comes from the text before the FIRST ``<think>``, a2 from the text after the LAST
  ``</think>``; a response without that tag is its own segment (so a box-only response
  ``\\boxed{x}`` gives a1 = a2 = ``x``);
- a segment must hold exactly one ``\\boxed{...}`` (boxes found left to right without overlap; one
  level of nested braces allowed inside a box), otherwise its answer is ``""``; boxes inside the
  think block are never read when both tags are there;
- ``""`` is still scored (it names no emotion: 0 on every wheel), and so is a1 when the layout is
  broken: the format reward is a separate, independent output.

Each answer is scored with a set reward on the emotion wheels (``metric``: ``"f1"`` by default,
the per-answer score of the other variants) in place of the official code's task graders (exact
match, math, IoU): that substitution is the port's purpose, not a deviation.

Fallback bonus (official rule): when the final-answer reward exceeds ``bonus_threshold`` (0.7)
and a1, stripped, starts with ``fallback_prefix`` (``"Let's analyze"``, case- and
spacing-sensitive, ASCII apostrophe: the model declined to answer early), ``bonus`` (0.3/1.1) is
added to the final-answer reward, so that after the final-answer weight 1.1 the total bonus is
0.3. It does not depend on the format reward. The weights 0.9 (early), 1.1 (final), 1.0 (format)
live in the advantage config: one group ``{early_answer: 0.9, final_answer: 1.1, format: 1.0}``.
"""

from __future__ import annotations

import torch

from merr1.components.emotion_wheel import videoauto_box, videoauto_segment
from merr1.rewards.base import RewardBatch, RewardOutput
from merr1.rewards.emotion_set import batch_gt_masks, parse_answers, set_scores

_METRICS = ("f1", "recall", "precision")


def split_answers(response: str) -> tuple[str, str]:
    """``(a1, a2)`` of a response as VideoAuto-R1's official parser returns them (module docstring).

    Each is the raw content of the only ``\\boxed{...}`` of its segment (not stripped: the
    official rewards strip it, and emotion-word parsing strips every item anyway), or ``""`` when
    the segment holds no box or several.
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    a1 = videoauto_box(videoauto_segment(response, 0))
    a2 = videoauto_box(videoauto_segment(response, 1))
    return ("" if a1 is None else a1), ("" if a2 is None else a2)


def declines_early_answer(a1: str, prefix: str = "Let's analyze") -> bool:
    """Whether the early answer is the official "decline" (``a1`` stripped starts with ``prefix``)."""
    return a1.strip().startswith(prefix)


class VideoAutoAnswerRewards:
    """Outputs ``early_answer`` and ``final_answer`` (module docstring).

    Args:
        metric: set reward scoring each answer: ``"f1"``, ``"recall"`` or ``"precision"``.
        bonus: added to the final-answer reward in the fallback case.
        bonus_threshold: the final-answer reward must exceed this (strictly) for the bonus.
        fallback_prefix: a1 (stripped) must start with this for the bonus (case-sensitive).
        duplicate_penalty: as in ``merr1.rewards.emotion_set``.
    """

    outputs = ("early_answer", "final_answer")

    def __init__(
        self,
        metric: str = "f1",
        bonus: float = 0.3 / 1.1,
        bonus_threshold: float = 0.7,
        fallback_prefix: str = "Let's analyze",
        duplicate_penalty: bool = False,
    ) -> None:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        self.metric = metric
        self.bonus = bonus
        self.bonus_threshold = bonus_threshold
        self.fallback_prefix = fallback_prefix
        self.duplicate_penalty = duplicate_penalty

    def _score(self, answers: list[str], gt_masks: torch.Tensor) -> torch.Tensor:
        parsed = parse_answers(answers, count_words=self.duplicate_penalty)
        factor = None
        if self.duplicate_penalty:
            factor = parsed.num_distinct_words / parsed.num_words.clamp_min(1.0)
        return set_scores(parsed.pred_masks, gt_masks, factor)[self.metric]  # [N]

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        pairs = [split_answers(r) for group in batch.responses for r in group]
        early = [a1 for a1, _ in pairs]
        final = [a2 for _, a2 in pairs]
        gt = batch_gt_masks(batch.labels, batch.group_size)
        early_reward = self._score(early, gt)
        final_reward = self._score(final, gt)
        declined = torch.tensor([declines_early_answer(a, self.fallback_prefix) for a in early], dtype=torch.bool)
        bonus = declined & (final_reward > self.bonus_threshold)
        final_reward = final_reward + self.bonus * bonus.float()
        shape = (batch.num_prompts, batch.group_size)
        return RewardOutput(
            rewards={"early_answer": early_reward.reshape(shape), "final_answer": final_reward.reshape(shape)},
            metrics={"early_declined": declined.float().reshape(shape), "fallback_bonus": bonus.float().reshape(shape)},
        )
