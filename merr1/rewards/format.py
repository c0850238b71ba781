"""Format reward R_fmt (METHOD section 4 and 7): 1 if the response has the variant's tag layout.

Tag schemes (``scheme``):

- ``"think_answer"`` (MER-R1, AffectGPT-R1): ``<think>...</think><answer>...</answer>``
- ``"answer_think_answer"`` (VideoAuto-R1): ``\\boxed{a1}<think>...</think>\\boxed{a2}``
- ``"emo_r3_steps"`` (EMO-R3): ``<step1>..</step1><step2>..</step2><step3>..</step3><answer>..</answer>``

Whitespace is allowed between consecutive blocks; block contents may be empty.

``strict=False`` (lenient, the paper's regex style): the layout must appear at the start of the
response (leading whitespace allowed); anything may follow it.
``strict=True``: the WHOLE response must be exactly the layout: nothing before the first tag,
nothing (not even whitespace) after the closing tag, and no tag of the scheme inside any block
content. DESIGN.md ("The CPU quick start can honestly learn") measured why the demo needs it:
with the lenient check a small policy learned to loop ``</think> <answer>`` fragments to the
token cap and still collect the format reward. Responses are decoded with special tokens
stripped, so an EOS after ``</answer>`` does not count as trailing text; a response cut at the
token cap does not end with the closing tag and fails the strict check.
"""

from __future__ import annotations

import re

from merr1.rewards.base import RewardBatch, RewardOutput, to_grid

# Each scheme: the blocks as (opening, closing, content) regexes, and the literal tags that a
# strict response holds exactly once each (the boxed opening twice). Counting tags with str.count
# and matching lazily is much faster than a per-character "no tag inside" lookahead, and equivalent.
_SCHEMES: dict[str, tuple[list[tuple[str, str, str]], dict[str, int]]] = {
    "think_answer": (
        [(r"<think>", r"</think>", r".*?"), (r"<answer>", r"</answer>", r".*?")],
        {"<think>": 1, "</think>": 1, "<answer>": 1, "</answer>": 1},
    ),
    "answer_think_answer": (
        [(r"\\boxed\{", r"\}", r"[^{}]*"), (r"<think>", r"</think>", r".*?"), (r"\\boxed\{", r"\}", r"[^{}]*")],
        {"\\boxed{": 2, "<think>": 1, "</think>": 1},
    ),
    "emo_r3_steps": (
        [
            (r"<step1>", r"</step1>", r".*?"),
            (r"<step2>", r"</step2>", r".*?"),
            (r"<step3>", r"</step3>", r".*?"),
            (r"<answer>", r"</answer>", r".*?"),
        ],
        dict.fromkeys(("<step1>", "</step1>", "<step2>", "</step2>", "<step3>", "</step3>", "<answer>", "</answer>"), 1),
    ),
}

FORMAT_SCHEMES = tuple(_SCHEMES)


def format_pattern(scheme: str) -> re.Pattern[str]:
    """The compiled layout regex of ``scheme`` (blocks separated by optional whitespace)."""
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown format scheme {scheme!r}; choose one of {FORMAT_SCHEMES}")
    blocks, _ = _SCHEMES[scheme]
    return re.compile(r"\s*".join(opening + content + closing for opening, closing, content in blocks), re.DOTALL)


class FormatReward:
    """R_fmt in {0, 1} per response, output name ``format``.

    Args:
        scheme: ``"think_answer"``, ``"answer_think_answer"`` or ``"emo_r3_steps"``.
        strict: whole-response exact match (module docstring); default False (paper).
    """

    def __init__(self, scheme: str = "think_answer", strict: bool = False) -> None:
        self.scheme = scheme
        self.strict = strict
        self._pattern = format_pattern(scheme)
        self._tag_counts = tuple(_SCHEMES[scheme][1].items())

    def score(self, response: str) -> float:
        """1.0 if ``response`` has the layout, else 0.0."""
        if not self.strict:
            return 1.0 if self._pattern.match(response.lstrip()) is not None else 0.0
        if any(response.count(tag) != n for tag, n in self._tag_counts):
            return 0.0
        return 1.0 if self._pattern.fullmatch(response) is not None else 0.0

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        values = [self.score(r) for group in batch.responses for r in group]
        return RewardOutput(rewards={"format": to_grid(values, batch.num_prompts, batch.group_size)})
