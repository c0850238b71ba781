"""Reward base types (the contract, with an example: docs/rewards.md).

Every reward is a small callable class (a YAML ``_component_``: torchtune's ``instantiate`` calls
the class with the YAML keys, so constructors take plain values) used as
``reward(batch: RewardBatch) -> RewardOutput``. The recipe merges the ``rewards`` dicts of all its
reward components and hands them to ``merr1.components.advantages.AdvantageGroups``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RewardBatch:
    """The decoded rollouts of a batch of GRPO groups and their ground truth.

    Attributes:
        responses: ``[num_prompts][G]`` decoded responses (special tokens stripped).
        labels: ``[num_prompts]`` ground-truth emotion words (parsed openset; ``[]`` = neutral).
        extras: recipe-supplied inputs, e.g. ``"calibration"``
            (``merr1.components.calibration.CalibrationInputs``) or ``"reflective_generate"``
            (``merr1.rewards.reflective``).
        memo: per-batch cache shared by reward components (e.g. the parsed answers that recall,
            precision and F1 all need); not an input, never compared or printed.
    """

    responses: list[list[str]]
    labels: list[list[str]]
    extras: dict[str, Any] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.responses) != len(self.labels):
            raise ValueError(
                f"RewardBatch: {len(self.responses)} response groups but {len(self.labels)} labels"
            )
        sizes = {len(group) for group in self.responses}
        if len(sizes) > 1:
            raise ValueError(
                f"RewardBatch: every prompt needs the same number of responses G, got sizes {sorted(sizes)}"
            )

    @property
    def num_prompts(self) -> int:
        return len(self.responses)

    @property
    def group_size(self) -> int:
        """G (0 for an empty batch)."""
        return len(self.responses[0]) if self.responses else 0


@dataclass
class RewardOutput:
    """What a reward component returns.

    Attributes:
        rewards: reward name -> ``[num_prompts, G]`` float32 (names used by advantage groups).
        metrics: extra named sub-values for logging, ``[num_prompts, G]``.
    """

    rewards: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def merge_outputs(outputs: list[RewardOutput]) -> RewardOutput:
    """Merge the outputs of several reward components.

    A reward name may appear only once; a metric name twice only with equal values (e.g. the
    ``num_categories`` that every set reward logs).
    """
    rewards: dict[str, torch.Tensor] = {}
    metrics: dict[str, torch.Tensor] = {}
    for out in outputs:
        for name, value in out.rewards.items():
            if name in rewards:
                raise ValueError(f"reward {name!r} is produced by two reward components")
            rewards[name] = value
        for name, value in out.metrics.items():
            if name in metrics and not torch.equal(metrics[name], value):
                raise ValueError(f"metric {name!r} is produced by two reward components with different values")
            metrics[name] = value
    return RewardOutput(rewards=rewards, metrics=metrics)


def to_grid(values: list[float], num_prompts: int, group_size: int) -> torch.Tensor:
    """Flat per-response values (row-major, response b*G+g) -> ``[num_prompts, G]`` float32."""
    return torch.tensor(values, dtype=torch.float32).reshape(num_prompts, group_size)
