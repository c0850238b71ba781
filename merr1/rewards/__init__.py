"""Reward components for GRPO (YAML ``_component_`` targets; the contract: docs/rewards.md).

Each is a callable class ``reward(batch: RewardBatch) -> RewardOutput`` with a class attribute
``outputs`` (the reward names it returns, checked by the recipe against the advantage groups
before training), whose outputs are named
``[num_prompts, G]`` tensors: ``recall``, ``precision``, ``f1`` (``emotion_set``), ``format``,
``early_answer``/``final_answer`` (``videoauto``), ``cali_pos``/``cali_neg`` (``calibration``),
``text_recheck``/``modality_recheck`` (``reflective``), ``length`` (``length``: the README's example
reward, DAPO's soft overlong penalty).
"""

from merr1.rewards.base import RewardBatch, RewardOutput, merge_outputs
from merr1.rewards.calibration import CalibrationRewards
from merr1.rewards.emotion_set import EmotionSetRewards, F1Reward, PrecisionReward, RecallReward
from merr1.rewards.format import FormatReward
from merr1.rewards.length import LengthPenalty
from merr1.rewards.reflective import RecheckQuery, ReflectiveRewards
from merr1.rewards.videoauto import VideoAutoAnswerRewards

__all__ = [
    "CalibrationRewards",
    "EmotionSetRewards",
    "F1Reward",
    "FormatReward",
    "LengthPenalty",
    "PrecisionReward",
    "RecallReward",
    "RecheckQuery",
    "ReflectiveRewards",
    "RewardBatch",
    "RewardOutput",
    "VideoAutoAnswerRewards",
    "merge_outputs",
]
