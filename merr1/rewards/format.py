"""Format reward R_fmt (METHOD section 4 and 7): 1 if the response has the variant's tag layout.

Tag schemes (``scheme``):

- ``"think_answer"`` (MER-R1, AffectGPT-R1): ``<think>...</think><answer>...</answer>``
- ``"answer_think_answer"`` (VideoAuto-R1): ``\\boxed{a1}<think>...</think>\\boxed{a2}``
- ``"emo_r3_steps"`` (EMO-R3): ``<step1>..</step1><step2>..</step2><step3>..</step3><answer>..</answer>``

Whitespace is allowed between consecutive blocks; block contents may be empty.

``strict=False`` (default): the reference rule of the scheme.

- ``think_answer`` and ``emo_r3_steps`` (the paper's regex style): the layout must appear at the
  start of the response (leading whitespace allowed); anything may follow it.
- ``answer_think_answer``: VideoAuto-R1's official format reward (its public reward code,
  IVUL-KAUST/VideoAuto-R1 at f7d91a3; issue 13), ``videoauto_format_ok``: the WHOLE response is
  whitespace, a box, whitespace, ``<think>``, anything, ``</think>``, whitespace, a box,
  whitespace, and ``<think>`` and ``</think>`` each occur at most once in it. A box is
  ``\\boxed{...}`` with at most one level of nested braces inside. Whitespace is Unicode
  whitespace (Python's ``\\s`` = ``str.isspace``). The think block may be empty or blank (the
  official pattern's "not empty" lookahead is always satisfied by the ``</think>`` after it), and
  may hold boxes.

``strict=True``: the WHOLE response must be exactly the layout: nothing before the first tag,
nothing (not even whitespace) after the closing tag, and no tag of the scheme inside any block
content (boxes: no braces at all). docs/design_notes.md ("The CPU quick start can honestly learn") measured
why the demo needs it: with the lenient check a small policy learned to loop
``</think> <answer>`` fragments to the token cap and still collect the format reward. Responses
are decoded with special tokens stripped, so an EOS after ``</answer>`` does not count as
trailing text; a response cut at the token cap does not end with the closing tag and fails the
strict check.
"""

from __future__ import annotations

import re

from merr1.rewards.base import RewardBatch, RewardOutput, to_grid

# Each scheme: its blocks as (opening tag, closing tag) literals; a block content is free text
# (boxes: no braces). In strict mode a content may not hold any tag of the scheme.
_SCHEMES: dict[str, list[tuple[str, str]]] = {
    "think_answer": [("<think>", "</think>"), ("<answer>", "</answer>")],
    "answer_think_answer": [("\\boxed{", "}"), ("<think>", "</think>"), ("\\boxed{", "}")],
    "emo_r3_steps": [
        ("<step1>", "</step1>"),
        ("<step2>", "</step2>"),
        ("<step3>", "</step3>"),
        ("<answer>", "</answer>"),
    ],
}

FORMAT_SCHEMES = tuple(_SCHEMES)

# VideoAuto-R1's answer box, one level of nested braces (as ``emotion_wheel.videoauto_box``),
# alone between optional whitespace.
_VIDEOAUTO_BOX_ALONE = re.compile(r"\s*\\boxed\{(?:[^{}]++|\{[^{}]*+\})*+\}\s*")


def videoauto_format_ok(response: str) -> bool:
    """VideoAuto-R1's official format check (module docstring), written as string splits.

    Equivalent to the official single regex: with ``<think>`` and ``</think>`` at most once each,
    the layout needs both, ``<think>`` first; the text before ``<think>`` and the text after
    ``</think>`` must each be one box between optional whitespace.
    """
    head, think_open, rest = response.partition("<think>")
    if not think_open or "<think>" in rest or response.count("</think>") != 1:
        return False
    _, think_close, tail = rest.partition("</think>")
    return (
        bool(think_close)
        and _VIDEOAUTO_BOX_ALONE.fullmatch(head) is not None
        and _VIDEOAUTO_BOX_ALONE.fullmatch(tail) is not None
    )


def _text_without(tags: list[str]) -> str:
    """Regex for text holding none of ``tags`` ("tempered" form: a lookahead only at the tags'
    first characters, so long contents are scanned by a fast character-class loop)."""
    firsts = sorted({t[0] for t in tags})
    chars = "".join(re.escape(c) for c in firsts)
    guards = "|".join(
        re.escape(c) + "(?!" + "|".join(re.escape(t[1:]) for t in tags if t[0] == c) + ")" for c in firsts
    )
    return f"[^{chars}]*(?:(?:{guards})[^{chars}]*)*"


def format_patterns(scheme: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """``(strict, lazy)`` layout regexes of ``scheme``; blocks separated by optional whitespace.

    ``strict``: block contents hold no tag of the scheme (use with ``fullmatch``). ``lazy``: the
    paper-style ``<think>.*?</think>\\s*<answer>.*?</answer>`` (use with ``match``).
    """
    if scheme not in _SCHEMES:
        raise ValueError(f"unknown format scheme {scheme!r}; choose one of {FORMAT_SCHEMES}")
    blocks = _SCHEMES[scheme]
    tags = sorted({t for block in blocks for t in block if t != "}"})
    strict, lazy = [], []
    for opening, closing in blocks:
        if closing == "}":  # a box: brace-free content
            content = lazy_content = "[^{}]*"
        else:
            content, lazy_content = _text_without(tags), ".*?"
        strict.append(re.escape(opening) + content + re.escape(closing))
        lazy.append(re.escape(opening) + lazy_content + re.escape(closing))
    return re.compile(r"\s*".join(strict), re.DOTALL), re.compile(r"\s*".join(lazy), re.DOTALL)


class FormatReward:
    """R_fmt in {0, 1} per response, output name ``format``.

    Args:
        scheme: ``"think_answer"``, ``"answer_think_answer"`` or ``"emo_r3_steps"``.
        strict: whole-response exact match (module docstring); default False: the scheme's
            reference rule (paper regex; VideoAuto-R1's official check for ``answer_think_answer``).
    """

    outputs = ("format",)

    def __init__(self, scheme: str = "think_answer", strict: bool = False) -> None:
        self.scheme = scheme
        self.strict = strict
        self._strict, self._lazy = format_patterns(scheme)

    def score(self, response: str) -> float:
        """1.0 if ``response`` has the layout, else 0.0."""
        if self.strict:
            return 1.0 if self._strict.fullmatch(response) is not None else 0.0
        if self.scheme == "answer_think_answer":
            return 1.0 if videoauto_format_ok(response) else 0.0
        # A well-formed prefix matches the fast strict pattern; only malformed ones need the lazy scan.
        head = response.lstrip()
        return 1.0 if self._strict.match(head) is not None or self._lazy.match(head) is not None else 0.0

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        values = [self.score(r) for group in batch.responses for r in group]
        return RewardOutput(rewards={"format": to_grid(values, batch.num_prompts, batch.group_size)})
