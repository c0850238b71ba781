"""Length penalty R_len: DAPO's soft overlong punishment on the response length (issue 16).

Not part of MER-R1; the README's worked example of a new reward. With L the response length,
L_max = ``max_length`` and L_cache = ``buffer`` (DAPO, Yu et al. 2025, Eq. 13):

    R_len = 0                               if L <= L_max - L_cache
    R_len = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
    R_len = -1                              if L > L_max

so the penalty grows linearly from 0 to -1 over the last ``buffer`` units before ``max_length``.
Deviation from DAPO: L is counted on the decoded text (whitespace-separated words, or characters),
because rewards see text, not tokens; DAPO counts tokens. Use it in its own advantage group with a
small weight, e.g. ``{name: length, weight: 0.1, rewards: {length: 1.0}}``.
"""

from __future__ import annotations

from merr1.rewards.base import RewardBatch, RewardOutput, to_grid

LENGTH_UNITS = ("words", "chars")


def soft_overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO Eq. 13 for one response of ``length`` units (module docstring); in [-1, 0]."""
    threshold = max_length - buffer
    if length <= threshold:
        return 0.0
    if length <= max_length:
        return (threshold - length) / buffer
    return -1.0


class LengthPenalty:
    """R_len per response, output name ``length``.

    Args:
        max_length: L_max, the length from which the penalty is -1 (> 0).
        buffer: L_cache, the width of the linear ramp before ``max_length`` (1 .. max_length).
        unit: ``"words"`` (whitespace-separated) or ``"chars"``.
    """

    outputs = ("length",)

    def __init__(self, max_length: int, buffer: int, unit: str = "words") -> None:
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"LengthPenalty: max_length must be a positive integer, got {max_length!r}")
        if not isinstance(buffer, int) or not 1 <= buffer <= max_length:
            raise ValueError(f"LengthPenalty: buffer must be an integer in [1, max_length={max_length}], got {buffer!r}")
        if unit not in LENGTH_UNITS:
            raise ValueError(f"LengthPenalty: unit must be one of {LENGTH_UNITS}, got {unit!r}")
        self.max_length = max_length
        self.buffer = buffer
        self.unit = unit

    def length(self, response: str) -> int:
        """Length of one response in ``unit``."""
        return len(response.split()) if self.unit == "words" else len(response)

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        values = [
            soft_overlong_penalty(self.length(r), self.max_length, self.buffer) for group in batch.responses for r in group
        ]
        return RewardOutput(rewards={"length": to_grid(values, batch.num_prompts, batch.group_size)})
