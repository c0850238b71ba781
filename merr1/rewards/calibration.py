"""SFCC calibration rewards R+ and R- (METHOD section 4): outputs ``cali_pos`` and ``cali_neg``.

Inputs: ``batch.extras["calibration"]``, a ``merr1.components.calibration.CalibrationInputs``
holding, per located answer word e, its response, its category bitmask on each wheel and its
slow-fast gap Delta_k(e) (category confidence, or the word-level variant A1: the rewards do not
care which).

How the 5 wheels combine (documented choice, tested):

- per wheel k with a non-empty GT set G_k: a word mapped on wheel k is correct if its category is
  in G_k, incorrect otherwise; words unmapped on wheel k are ignored there;
  R+_k = mean of Delta_k over the correct words, R-_k = mean of -Delta_k over the incorrect words;
- R+ = mean of R+_k over the wheels where it is defined (at least one correct word), likewise R-;
- a response with no correct (incorrect) word on any wheel gets R+ = 0 (R- = 0), as does every
  response of a prompt whose GT maps to nothing (all wheels skipped, as in the set rewards);
- every located occurrence of a word counts (a repeated word is averaged in again).

Ablation A2 (no precision calibration) is the advantage config without the ``cali_neg`` group.
"""

from __future__ import annotations

import torch

from merr1.components.calibration import CalibrationInputs
from merr1.rewards.base import RewardBatch, RewardOutput
from merr1.rewards.emotion_set import batch_gt_masks


def calibration_rewards(inputs: CalibrationInputs, gt_masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """R+ and R- per response (module docstring).

    Args:
        inputs: per-word gaps and categories.
        gt_masks: GT bitmasks of each response's prompt. # [N, K] int64

    Returns:
        ``cali_pos``, ``cali_neg`` and the counts ``cali_num_correct``, ``cali_num_incorrect``
        (per response, summed over wheels). # [N] float32 each
    """
    num_responses, num_wheels = gt_masks.shape
    if inputs.num_responses != num_responses:
        raise ValueError(f"calibration inputs are for {inputs.num_responses} responses, the batch has {num_responses}")
    index = inputs.response_index.long()  # [W]
    if index.numel() and (index.min() < 0 or index.max() >= num_responses):
        raise ValueError(f"calibration response_index out of range [0, {num_responses})")
    gap = inputs.gap.float()  # [W, K]
    if not torch.isfinite(gap).all():
        raise ValueError("calibration gaps must be finite")
    word_gt = gt_masks[index]  # [W, K]
    considered = (inputs.category_mask != 0) & (word_gt != 0)  # [W, K]
    correct = considered & ((inputs.category_mask & word_gt) != 0)
    incorrect = considered & ~correct

    def per_wheel_mean(values: torch.Tensor, select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sums = torch.zeros(num_responses, num_wheels).index_add_(0, index, torch.where(select, values, 0.0))
        counts = torch.zeros(num_responses, num_wheels).index_add_(0, index, select.float())
        defined = counts > 0  # [N, K]
        means = torch.where(defined, sums / counts.clamp_min(1.0), 0.0)
        num_defined = defined.sum(-1)  # [N]
        return means.sum(-1) / num_defined.clamp_min(1), counts.sum(-1)

    cali_pos, num_correct = per_wheel_mean(gap, correct)
    cali_neg, num_incorrect = per_wheel_mean(-gap, incorrect)
    return {
        "cali_pos": cali_pos,
        "cali_neg": cali_neg,
        "cali_num_correct": num_correct,
        "cali_num_incorrect": num_incorrect,
    }


class CalibrationRewards:
    """R+ (``cali_pos``) and R- (``cali_neg``) from ``batch.extras[extras_key]``.

    Args:
        extras_key: where the recipe puts the ``CalibrationInputs``.
    """

    def __init__(self, extras_key: str = "calibration") -> None:
        self.extras_key = extras_key

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        inputs = batch.extras.get(self.extras_key)
        if not isinstance(inputs, CalibrationInputs):
            raise ValueError(
                f"CalibrationRewards needs batch.extras[{self.extras_key!r}] = CalibrationInputs "
                f"(see merr1.components.calibration), got {type(inputs).__name__}"
            )
        values = calibration_rewards(inputs, batch_gt_masks(batch.labels, batch.group_size))
        shape = (batch.num_prompts, batch.group_size)
        grid = {name: value.reshape(shape) for name, value in values.items()}
        return RewardOutput(
            rewards={"cali_pos": grid["cali_pos"], "cali_neg": grid["cali_neg"]},
            metrics={"cali_num_correct": grid["cali_num_correct"], "cali_num_incorrect": grid["cali_num_incorrect"]},
        )
