"""Emotion-wheel mapping of free-form emotion words (METHOD section 2, MER-UniBench protocol).

Every reward and metric of merr1 compares emotion words through this mapping. It reproduces the
official AffectGPT evaluation exactly, quirks included:

1. ``parse_emotion_list``: drop one leading ``[`` and one trailing ``]``, split on ``'``, ``"``
   and ``,``, strip, drop empty items, lower-case and strip each item (no split on "and"/";").
2. Format lookup: the item must be an exact key of the format map (surface form -> its
   ``format.csv`` names, each name -> itself); otherwise it is dropped.
3. Synonym lookup: every name -> all wheel words it is a synonym of, merged over the 8 runs of
   ``synonym.xlsx`` (each wheel word also maps to itself).
4. Tie-break: the collected wheel words are sorted alphabetically; the first one present anywhere
   in wheel k (level1/level2/level3) gives its level-1 category; none present -> dropped.
   Within a wheel a word listed under two level-1 categories takes the last assignment in the
   official iteration order (level-1 blocks in first-appearance order, then level-2 blocks, each
   level-1 word before its level-2 word before its level-3 words), which for the shipped files is
   plain file order (W2: overwhelmed -> bad; inferior, embarrassed, disappointed -> sad).
5. The categories of one sample form a set.

Steps 2-4 depend only on the word, so they are precomputed into one table (word -> 5 categories)
shipped in ``merr1/assets/emotion_wheel/word_table.json`` next to the raw merged maps it is
built from; ``EmotionWheels.from_raw_maps`` rebuilds it (a test checks both agree). Mapping is a
dict lookup: ``map_word``/``map_many`` give category names, ``map_words`` per-wheel sets, and
``map_masks``/``map_packed``/``map_text_packed`` bitmasks (the fast path of rewards and scores).

Deviations from the official code (deliberate, documented in METHOD section 2):
- the text ``"["`` parses to ``[]`` (the official code raises ``IndexError``);
- list input: items must be strings (the official code fails later on non-strings); empty items
  are dropped (the official code keeps them, they never map to anything, so scores agree).
"""

from __future__ import annotations

import json
import math
import re
from itertools import compress, repeat
from operator import is_
from pathlib import Path
from typing import Iterable, Mapping, Sequence

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "emotion_wheel"

NUM_WHEELS = 5
# map_packed: wheel k's category mask sits in bits [8k, 8k + 8) (at most 8 categories per wheel).
BITS_PER_WHEEL = 8
_WHEEL_FIELD = (1 << BITS_PER_WHEEL) - 1

ANSWER_SCHEMES = ("answer", "boxed", "boxed_first", "videoauto_a1", "videoauto_a2")
ANSWER_FALLBACKS = ("none", "full")

_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_BOXED_OPEN = "\\boxed{"
_BRACES = re.compile(r"[{}]")
# VideoAuto-R1's box (its public reward code): content of non-brace characters and brace pairs
# holding no brace, i.e. at most one level of nesting. Possessive loops: the content can never
# end on a brace, so backtracking could not find another match, only waste time.
_VIDEOAUTO_BOX = re.compile(r"\\boxed\{((?:[^{}]++|\{[^{}]*+\})*+)\}")
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
# Blocks removed by the "full" fallback: reasoning and the EMO-R3 step blocks.
_REASONING_TAGS = ("think", "step1", "step2", "step3")
_STRAY_TAGS = tuple(f"<{t}>" for t in (*_REASONING_TAGS, "answer")) + tuple(
    f"</{t}>" for t in (*_REASONING_TAGS, "answer")
)


def parse_emotion_list(text: str | Sequence[str] | None) -> list[str]:
    """Split a prediction string or label cell into normalised emotion words (official rule).

    ``"['Silly', 'Mad']"`` -> ``["silly", "mad"]``; ``"happy, very sad"`` -> ``["happy", "very sad"]``.

    Args:
        text: a string; a list/tuple of strings (taken item by item without splitting, as the
            official code does for lists); ``None`` or NaN for a missing value.

    Returns:
        The non-empty items, each stripped, lower-cased and stripped again.
    """
    if isinstance(text, str):
        if text.startswith("["):
            text = text[1:]
        if text.endswith("]"):
            text = text[:-1]
        if text.isascii():
            # Fast path: for ASCII, lower-casing the whole string then stripping each item equals
            # the official strip -> lower -> strip per item.
            items = text.lower().replace("'", ",").replace('"', ",").split(",")
            return list(filter(None, map(str.strip, items)))
        items = text.replace("'", ",").replace('"', ",").split(",")
    elif text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    elif isinstance(text, (list, tuple)):
        items = text
        for item in items:
            if not isinstance(item, str):
                raise ValueError(f"emotion list items must be strings, got {item!r} in {text!r}")
    else:
        raise ValueError(
            f"expected a string, a list of strings, None or NaN, got {type(text).__name__}: {text!r}"
        )
    words = []
    for item in items:
        word = item.strip().lower().strip()
        if word:
            words.append(word)
    return words


def _last_answer_tag(response: str) -> str | None:
    # Content of the last complete pair: the last "<answer>" that some "</answer>" follows, up to
    # the first "</answer>" after it. Covers nesting ("<answer>a <answer>b</answer>" -> "b") and
    # ignores an unclosed trailing "<answer>" of a truncated generation.
    last_close = response.rfind(_ANSWER_CLOSE)
    if last_close < 0:
        return None
    start = response.rfind(_ANSWER_OPEN, 0, last_close)
    if start < 0:
        return None
    start += len(_ANSWER_OPEN)
    return response[start : response.find(_ANSWER_CLOSE, start)]


def _boxed_spans(response: str) -> list[str]:
    # Contents of every complete \boxed{...} with balanced braces, in order; an unclosed one
    # (truncated generation) is skipped. Boxes nested inside a box are part of its content.
    # The brace scan jumps from brace to brace (regex, in C) instead of walking characters.
    spans = []
    pos = response.find(_BOXED_OPEN)
    while pos >= 0:
        start = pos + len(_BOXED_OPEN)
        depth = 1
        for brace in _BRACES.finditer(response, start):
            depth += 1 if brace.group() == "{" else -1
            if not depth:
                end = brace.start()
                break
        else:
            break
        spans.append(response[start:end])
        pos = response.find(_BOXED_OPEN, end + 1)
    return spans


def videoauto_segment(response: str, index: int) -> str:
    """The text VideoAuto-R1 reads answer ``index`` from (official reward code, issue 13).

    ``index`` 0 (early answer a1): the text before the FIRST ``<think>``; 1 (final answer a2): the
    text after the LAST ``</think>``. A response without that tag is its own segment.
    """
    if index == 0:
        return response.partition(_THINK_OPEN)[0]
    if index == 1:
        return response.rpartition(_THINK_CLOSE)[2]
    raise ValueError(f"VideoAuto-R1 answer index must be 0 (a1) or 1 (a2), got {index!r}")


def videoauto_box(segment: str) -> str | None:
    """The content of the ONLY ``\\boxed{...}`` of ``segment`` (raw, not stripped), else None.

    Boxes are found left to right without overlap; a box may hold one level of nested braces
    (``\\boxed{\\text{a}}``); a deeper one is no box, though an inner box with one level can
    still match (``\\boxed{x{y{z}}}`` holds none, ``\\boxed{\\boxed{a}}`` holds one, whose content
    is ``\\boxed{a}``). Zero boxes or two or more give None.
    """
    found = _VIDEOAUTO_BOX.finditer(segment)
    first = next(found, None)
    if first is None or next(found, None) is not None:
        return None
    return first.group(1)


def _strip_reasoning(response: str) -> str:
    # "full" fallback: drop <think>...</think> and <stepN>...</stepN> blocks (an unclosed block
    # runs to the end), then any stray tag left over.
    for tag in _REASONING_TAGS:
        open_tag, close_tag = f"<{tag}>", f"</{tag}>"
        while (start := response.find(open_tag)) >= 0:
            end = response.find(close_tag, start)
            response = response[:start] + ("" if end < 0 else response[end + len(close_tag) :])
    for tag in _STRAY_TAGS:
        response = response.replace(tag, "")
    return response.strip()


def extract_answer(response: str, scheme: str = "answer", fallback: str = "none") -> str | None:
    """The answer span of a generated response.

    Schemes (tags are matched exactly, case-sensitive):
    - ``"answer"``: content of the last complete ``<answer>...</answer>``. With nested opening
      tags the innermost one wins; an unclosed trailing ``<answer>`` (truncated generation) is
      ignored, so the previous complete answer, if any, is returned. A ``</answer>`` with no
      ``<answer>`` before it is no answer: fast-thinking callers keep the prefilled
      ``<think></think><answer>`` prefix in front of the generated text.
    - ``"boxed"``: content of the last complete ``\\boxed{...}`` (balanced braces).
    - ``"boxed_first"``: content of the first complete ``\\boxed{...}`` (balanced braces).
    - ``"videoauto_a1"`` / ``"videoauto_a2"``: VideoAuto-R1's early / final answer exactly as its
      public reward code reads them: the segment before the first ``<think>`` / after the last
      ``</think>`` (the whole response when the tag is missing) must hold exactly one
      ``\\boxed{...}`` with at most one level of nested braces (``videoauto_segment``,
      ``videoauto_box``). Where the official code yields ``""`` this scheme finds no span.

    Args:
        response: decoded response text (special tokens stripped).
        scheme: one of ``ANSWER_SCHEMES``.
        fallback: when the scheme finds no complete span: ``"none"`` -> ``None``; ``"full"`` ->
            the response with ``<think>``/``<stepN>`` blocks (unclosed ones to the end) and any
            stray think/step/answer tags removed, stripped.

    Returns:
        The stripped span (may be ``""`` for an empty answer), or the fallback.
    """
    if scheme not in ANSWER_SCHEMES:
        raise ValueError(f"unknown answer scheme {scheme!r}; expected one of {ANSWER_SCHEMES}")
    if fallback not in ANSWER_FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; expected one of {ANSWER_FALLBACKS}")
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    if scheme == "answer":
        span = _last_answer_tag(response)
    elif scheme == "videoauto_a1":
        span = videoauto_box(videoauto_segment(response, 0))
    elif scheme == "videoauto_a2":
        span = videoauto_box(videoauto_segment(response, 1))
    else:
        spans = _boxed_spans(response)
        span = (spans[0] if scheme == "boxed_first" else spans[-1]) if spans else None
    if span is not None:
        return span.strip()
    return _strip_reasoning(response) if fallback == "full" else None


def build_wheel_map(rows: Iterable[Sequence[str]]) -> dict[str, str]:
    """Word -> level-1 category of one wheel, as the official evaluation builds it.

    Args:
        rows: the wheel's ``(level1, level2, level3)`` rows in file order, blanks already filled
            from the row above and every cell stripped and lower-cased.

    Returns:
        Every level1/level2/level3 word of the wheel -> its level-1 category; a word under two
        categories gets the last one in the official iteration order (module docstring, step 4).
    """
    tree: dict[str, dict[str, list[str]]] = {}
    for level1, level2, level3 in rows:
        tree.setdefault(level1, {}).setdefault(level2, []).append(level3)
    wheel_map = {}
    for level1, level2s in tree.items():
        wheel_map[level1] = level1
        for level2, level3s in level2s.items():
            wheel_map[level2] = level1
            for level3 in level3s:
                wheel_map[level3] = level1
    return wheel_map


def wheel_categories(rows: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """Level-1 categories of one wheel in order of first appearance (METHOD section 2 table)."""
    return tuple(dict.fromkeys(row[0] for row in rows))


def build_word_table(
    format_map: Mapping[str, Sequence[str]],
    synonym_map: Mapping[str, Sequence[str]],
    wheel_rows: Sequence[Iterable[Sequence[str]]],
) -> dict[str, tuple[str | None, ...]]:
    """Precompute steps 2-4 of the mapping for every key of the format map.

    Args:
        format_map: surface form -> format names (METHOD section 2, step 2).
        synonym_map: name -> wheel words (step 3).
        wheel_rows: per wheel, its filled and normalised ``(level1, level2, level3)`` rows.

    Returns:
        word -> per-wheel level-1 category (``None`` where the word is dropped); words outside
        the format map are dropped on every wheel and are not listed.
    """
    wheel_maps = [build_wheel_map(rows) for rows in wheel_rows]
    table = {}
    for word, names in format_map.items():
        missing = [name for name in names if name not in synonym_map]
        if missing:
            raise ValueError(f"format name(s) {missing} of {word!r} missing from the synonym map")
        candidates = sorted({w for name in names for w in synonym_map[name]})
        table[word] = tuple(
            next((wheel_map[w] for w in candidates if w in wheel_map), None) for wheel_map in wheel_maps
        )
    return table


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"emotion-wheel data file missing: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_wheel_rows(asset_dir: Path = ASSET_DIR) -> list[list[tuple[str, str, str]]]:
    """The 5 wheels' normalised rows from ``wheels.json`` (wheel1..wheel5)."""
    wheels = _read_json(Path(asset_dir) / "wheels.json")
    return [[tuple(row) for row in wheels[f"wheel{k + 1}"]] for k in range(NUM_WHEELS)]


class EmotionWheels:
    """The 5 official emotion wheels as a precomputed word -> level-1 category table.

    ``EmotionWheels.load()`` is the shared, cached instance. Word arguments are normalised
    (lower-cased and stripped) unless they are already a table key.
    """

    NUM_WHEELS = NUM_WHEELS

    def __init__(
        self,
        wheel_rows: Sequence[Iterable[Sequence[str]]],
        table: Mapping[str, Sequence[str | None]],
        max_remembered: int = 1 << 16,
    ) -> None:
        """Args:
        wheel_rows: per wheel, its filled and normalised ``(level1, level2, level3)`` rows.
        table: word -> 5 categories (``None`` = dropped), e.g. from ``build_word_table``.
        max_remembered: how many words needing normalisation (unknown words, other casing)
            are remembered, so that repeated ones cost a single dict lookup.
        """
        wheel_rows = [list(rows) for rows in wheel_rows]
        if len(wheel_rows) != NUM_WHEELS:
            raise ValueError(f"expected {NUM_WHEELS} wheels, got {len(wheel_rows)}")
        self._categories = tuple(wheel_categories(rows) for rows in wheel_rows)
        index = []
        for k, cats in enumerate(self._categories):
            if not 0 < len(cats) <= BITS_PER_WHEEL:
                raise ValueError(f"wheel {k} has {len(cats)} level-1 categories; 1..{BITS_PER_WHEEL} supported")
            index.append({cat: j for j, cat in enumerate(cats)})
        self._wheel_maps = tuple(build_wheel_map(rows) for rows in wheel_rows)
        self._table: dict[str, tuple[str | None, ...]] = {}
        self._packed: dict[str, int] = {}
        for word, cats in table.items():
            cats = tuple(cats)
            if len(cats) != NUM_WHEELS:
                raise ValueError(f"table entry {word!r} has {len(cats)} categories, expected {NUM_WHEELS}")
            packed = 0
            for k, cat in enumerate(cats):
                if cat is not None:
                    if cat not in index[k]:
                        raise ValueError(f"table entry {word!r}: {cat!r} is not a level-1 category of wheel {k}")
                    packed |= 1 << (BITS_PER_WHEEL * k + index[k][cat])
            self._table[word] = cats
            self._packed[word] = packed
        self._dropped = (None,) * NUM_WHEELS
        assert "" not in self._packed, "the empty string must not be a table key"
        # Lookup dicts = the table plus the remembered words (results never change).
        self._lookup = dict(self._table)
        self._packed_lookup = dict(self._packed)
        self._max_lookup = len(self._table) + max_remembered

    _instance: EmotionWheels | None = None

    @classmethod
    def load(cls) -> EmotionWheels:
        """The official wheels from ``merr1/assets/emotion_wheel`` (shipped table; cached)."""
        if cls._instance is None:
            cls._instance = cls(read_wheel_rows(ASSET_DIR), _read_json(ASSET_DIR / "word_table.json"))
        return cls._instance

    @classmethod
    def from_raw_maps(cls, asset_dir: Path = ASSET_DIR) -> EmotionWheels:
        """Rebuild the table from the raw merged maps (``format_map.json``, ``synonym_map.json``)."""
        asset_dir = Path(asset_dir)
        rows = read_wheel_rows(asset_dir)
        table = build_word_table(
            _read_json(asset_dir / "format_map.json"), _read_json(asset_dir / "synonym_map.json"), rows
        )
        return cls(rows, table)

    @property
    def table(self) -> dict[str, tuple[str | None, ...]]:
        """word -> 5 categories for every format-map key (a copy)."""
        return dict(self._table)

    def _check_wheel(self, k: int) -> None:
        if not isinstance(k, int) or not 0 <= k < NUM_WHEELS:
            raise ValueError(f"wheel index must be an int in [0, {NUM_WHEELS}), got {k!r}")

    def categories(self, k: int) -> tuple[str, ...]:
        """Level-1 categories of wheel ``k`` (0-based) in their fixed order (bit j of a mask)."""
        self._check_wheel(k)
        return self._categories[k]

    def _resolve(self, word: str) -> tuple[tuple[str | None, ...], int]:
        # Slow path for a word that is no lookup key: normalise it, remember the result.
        if not isinstance(word, str):
            raise ValueError(f"expected an emotion word (str), got {type(word).__name__}: {word!r}")
        key = word.lower().strip()
        cats, packed = self._table.get(key, self._dropped), self._packed.get(key, 0)
        if len(self._lookup) < self._max_lookup:
            self._lookup[word] = cats
            self._packed_lookup[word] = packed
        return cats, packed

    def map_word(self, word: str) -> tuple[str | None, ...]:
        """Level-1 category of ``word`` on each wheel, ``None`` where the protocol drops it."""
        cats = self._lookup.get(word) if isinstance(word, str) else None
        return cats if cats is not None else self._resolve(word)[0]

    def map_many(self, words: Iterable[str]) -> list[tuple[str | None, ...]]:
        """``map_word`` for many words at once (bulk fast path: one C-level pass of lookups)."""
        words = words if isinstance(words, list) else list(words)
        get = self._lookup.get
        try:
            out = list(map(get, words))
        except TypeError:  # an unhashable item
            out = [None] * len(words)
        if None in out:
            for i in compress(range(len(out)), map(is_, out, repeat(None))):
                word = words[i]
                cats = get(word) if isinstance(word, str) else None  # remembered in this call?
                out[i] = cats if cats is not None else self._resolve(word)[0]
        return out

    def map_packed(self, words: Iterable[str]) -> int:
        """All 5 category masks of a word list in one int: wheel k's mask in bits [8k, 8k + 8)."""
        if isinstance(words, str):
            raise ValueError("expected a list of words, got a string; split it with parse_emotion_list")
        get = self._packed_lookup.get
        packed = 0
        for w in words:
            m = get(w) if isinstance(w, str) else None
            packed |= m if m is not None else self._resolve(w)[1]
        return packed

    def map_packed_normalized(self, words: Iterable[str]) -> int:
        """``map_packed`` for words already normalised (e.g. from ``parse_emotion_list``): no
        second lookup for unknown words, which are dropped."""
        get = self._packed.get
        packed = 0
        for w in words:
            packed |= get(w, 0)
        return packed

    def map_text_packed(self, text: str | Sequence[str] | None) -> int:
        """``map_packed(parse_emotion_list(text))`` for a prediction string or label cell, fast."""
        if type(text) is str and text.isascii():
            if text.startswith("["):
                text = text[1:]
            if text.endswith("]"):
                text = text[:-1]
            # Same items as parse_emotion_list's ASCII path; "" is no table key, so maps to 0.
            get = self._packed.get
            packed = 0
            for item in text.lower().replace("'", ",").replace('"', ",").split(","):
                packed |= get(item.strip(), 0)
            return packed
        return self.map_packed_normalized(parse_emotion_list(text))

    def map_masks(self, words: Iterable[str]) -> tuple[int, ...]:
        """Per wheel, the predicted-category bitmask: bit j set <=> ``categories(k)[j]`` predicted."""
        packed = self.map_packed(words)
        return tuple((packed >> (BITS_PER_WHEEL * k)) & _WHEEL_FIELD for k in range(NUM_WHEELS))

    def map_words(self, words: Iterable[str]) -> tuple[frozenset[str], ...]:
        """Per wheel, the set of level-1 categories of ``words`` (METHOD section 2, step 5)."""
        masks = self.map_masks(words)
        return tuple(
            frozenset(cat for j, cat in enumerate(self._categories[k]) if masks[k] >> j & 1)
            for k in range(NUM_WHEELS)
        )

    def category_words(self, k: int) -> dict[str, tuple[str, ...]]:
        """Category -> every wheel-``k`` word (level1/2/3) that maps to it, sorted.

        Words listed under two categories appear only under the one that wins (step 4).
        """
        self._check_wheel(k)
        out: dict[str, list[str]] = {cat: [] for cat in self._categories[k]}
        for word, cat in self._wheel_maps[k].items():
            out[cat].append(word)
        return {cat: tuple(sorted(words)) for cat, words in out.items()}
