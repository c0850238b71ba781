"""VideoAuto-R1 answer rewards (METHOD section 7): early answer a1 and final answer a2.

Response layout ``\\boxed{a1}<think>...</think>\\boxed{a2}``: a1 is the FIRST ``\\boxed{...}``
and a2 the LAST (``extract_answer`` schemes ``"boxed_first"`` and ``"boxed"``). A response with a
single box scores that box for both (the format reward is what checks the layout); a response
without any box scores 0 for both. Each answer is scored with a set reward (``metric``: ``"f1"``
by default, the accuracy used for the other variants) on the emotion wheels.

Fallback bonus: when the final-answer reward exceeds ``bonus_threshold`` (0.7) and a1 starts with
``fallback_prefix`` ("Let's analyze", i.e. the model declined to answer early), ``bonus``
(0.3/1.1) is added to the final-answer reward, so that after the final-answer weight 1.1 the
total bonus is 0.3. The weights 0.9 (early), 1.1 (final), 1.0 (format) live in the advantage
config: one group ``{early_answer: 0.9, final_answer: 1.1, format: 1.0}``.
"""

from __future__ import annotations

import torch

from merr1.components.emotion_wheel import extract_answer
from merr1.rewards.base import RewardBatch, RewardOutput
from merr1.rewards.emotion_set import batch_gt_masks, parse_answers, set_scores

_METRICS = ("f1", "recall", "precision")


class VideoAutoAnswerRewards:
    """Outputs ``early_answer`` and ``final_answer`` (module docstring).

    Args:
        metric: set reward scoring each answer: ``"f1"``, ``"recall"`` or ``"precision"``.
        bonus: added to the final-answer reward in the fallback case.
        bonus_threshold: the final-answer reward must exceed this for the bonus.
        fallback_prefix: a1 (stripped) must start with this for the bonus (case-sensitive).
        duplicate_penalty: as in ``merr1.rewards.emotion_set``.
    """

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

    def _score(self, answers: list[str | None], gt_masks: torch.Tensor) -> torch.Tensor:
        parsed = parse_answers(answers, count_words=self.duplicate_penalty)
        factor = None
        if self.duplicate_penalty:
            factor = parsed.num_distinct_words / parsed.num_words.clamp_min(1.0)
        return set_scores(parsed.pred_masks, gt_masks, factor)[self.metric]  # [N]

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        flat = [r for group in batch.responses for r in group]
        early = [extract_answer(r, scheme="boxed_first", fallback="none") for r in flat]
        final = [extract_answer(r, scheme="boxed", fallback="none") for r in flat]
        gt = batch_gt_masks(batch.labels, batch.group_size)
        early_reward = self._score(early, gt)
        final_reward = self._score(final, gt)
        declined = torch.tensor(
            [a is not None and a.strip().startswith(self.fallback_prefix) for a in early], dtype=torch.bool
        )
        bonus = declined & (final_reward > self.bonus_threshold)
        final_reward = final_reward + self.bonus * bonus.float()
        shape = (batch.num_prompts, batch.group_size)
        return RewardOutput(
            rewards={"early_answer": early_reward.reshape(shape), "final_answer": final_reward.reshape(shape)},
            metrics={"early_declined": declined.float().reshape(shape), "fallback_bonus": bonus.float().reshape(shape)},
        )
