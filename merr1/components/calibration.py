"""Slow-fast confidence calibration, SFCC (METHOD section 4).

For each emotion word e of a slow answer y_ans, at the position where e's first token is
predicted, the current policy gives two next-token distributions:

    p_slow = pi(. | x, y_cot, y_ans<e)     slow context: prompt + reasoning + answer prefix
    p_fast = pi(. | x, y_ans<e)            fast context: prompt + empty think + the SAME answer tokens

Category confidence on wheel k:  conf_k(c) = log sum_{t in F(c)} p(t) = logsumexp_{t in F(c)} log p(t)
where F(c) is the set of FIRST token ids of every wheel-k word of level-1 category c (a token
shared by several words counts once: a membership matrix, not counts). Gap:

    Delta_k(e) = conf_slow,k(c_k(e)) - conf_fast,k(c_k(e))

Word-level variant (ablation A1): Delta(e) = log p_slow(t_e) - log p_fast(t_e) with t_e the
word's own first token (the same value on every wheel where e maps).

Spellings. A word's first token depends on what precedes it: byte-level BPE gives different
tokens for ``happy`` at the answer start and for `` happy`` after ``", "``, and a pre-tokenizer like
Qwen2's can glue one punctuation byte to a word (``>happy`` right after ``<answer>``, ``,sad``).
We call "glue" the bytes of the word's first token that come before the word (``""`` and ``" "``
in the two common cases, ``">"`` in the glued one) and use, for a word with glue g, the sets
F_g(c) = {first token of g + w : w a word of c} restricted to tokens longer than g (a token that
is g alone, e.g. a bare space, says nothing about the category and is left out). The sets of
``""`` (word at answer start) and ``" "`` (word after ", ") are built up front, others on first use.

How the recipe uses this module (step by step; tensors on any device; ``SlowFastCalibration`` is
the YAML component that bundles steps 1, 2 and 4):

1. Once: ``table = CategoryFirstTokens(tokenizer)``.
2. After generation: ``words, fast = locate_answer_words(response_ids, response_mask, table,
   fast_prefix=FAST_THINKING_PREFIX, fast_prefix_ids=prompts.encode_fast_prefix(tokenizer))``.
   ``words`` lists every located answer word of every
   response (row ``b*G+g``) with its position ``slow_position`` in the response tokens and
   ``fast_position`` in ``fast.ids``. ``fast`` holds the fast "responses": the fast-prefix tokens
   (with the answer text of a token that straddles the ``<answer>`` boundary re-encoded after it)
   + the slow response's own answer tokens.
3. Two no-grad teacher-forced passes of the current policy per micro-batch
   (``generation.teacher_forced_logits``: each prompt runs once, its KV cache serves the rows):
   the slow pass over the responses (the recipe's old-log-prob pass, reused), and a fast pass over
   the fast responses that computes the LM head only at the words' fast positions. Position s of a
   response means the distribution that PREDICTS its token s. ``WordLogits`` collects both passes'
   rows of every word (``token_logits_at`` picks them out of the compact ``[N, V]`` outputs) into
   ``[W, V]`` slow and fast logits.
4. ``gap = slow_fast_gap(slow_logits, fast_logits, words, table, confidence="category")``
   (``"word"`` for A1) -> ``[W, K]``; ``batch.extras["calibration"] =
   CalibrationInputs.from_words(words, gap, num_responses)``; ``merr1.rewards.CalibrationRewards``
   turns that into R+ and R-.

Locating words (skipped words are counted in ``AnswerWords.num_skipped``): token bytes come from
the byte-level BPE alphabet (Qwen2's tokenizer; other tokenizers fall back to decoding single
tokens); the answer is the content of the last complete ``<answer>...</answer>`` (as
``extract_answer``); its words are ``parse_emotion_list``'s items, found in order in the
ASCII-lower-cased answer bytes (a word not found that way is skipped). A word whose first token
straddles the ``<answer>`` boundary is located in the re-encoded fast head as well and is skipped
if the fast head tokenizes it differently (other glue or other token). Unknown words get a
position but map to no category, so they carry no gap. Responses without a complete answer
(no tags, truncated) get no words and a fast response of the prefix alone.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from merr1.components.emotion_wheel import EmotionWheels, parse_emotion_list
from merr1.components.tokenizer import TokenBytes, token_bytes_table


def _default_fast_prefix(tokenizer) -> tuple[str, list[int]]:
    """``FAST_THINKING_PREFIX`` and its ids as the data module encodes them (piece by piece)."""
    try:
        from merr1.components.data.prompts import FAST_THINKING_PREFIX, encode_fast_prefix
    except ImportError as err:  # the data branch owns the constant
        raise ValueError(
            "fast_prefix not given and merr1.components.data.prompts is unavailable: pass fast_prefix"
        ) from err
    return FAST_THINKING_PREFIX, list(encode_fast_prefix(tokenizer, "mer_r1"))


# ---------------------------------------------------------------------------------------------
# First-token sets per category


FIRST_TOKEN_MASSES = ("distinct_tokens", "per_word")


def _check_first_token_mass(first_token_mass: str) -> None:
    if first_token_mass not in FIRST_TOKEN_MASSES:
        raise ValueError(f"first_token_mass must be one of {FIRST_TOKEN_MASSES}, got {first_token_mass!r}")


class CategoryFirstTokens:
    """First-token sets F_g(c) of every level-1 category of every wheel, per glue g.

    The categories of all wheels are stacked into one flat axis of size C = sum_k C_k: wheel k's
    category j is flat index ``offsets[k] + j``. Spelling ids index ``spellings`` (the glue
    strings): 0 is ``""`` (word at answer start), 1 is ``" "`` (word after ", "); more are added on
    first use by ``spelling_index``.

    Two readings of conf(c) = log sum p (Eq. 1; issue 13), ``first_token_mass``:

    - ``"distinct_tokens"`` (default): sum over the DISTINCT first tokens of c's words, each once
      (a membership matrix). conf(c) is then the log-probability of one event, "the next token
      starts a word of c": <= 0, and not inflated for a category that lists many synonyms
      sharing a first token (``happy``, ``happiness``, ``happily`` often share theirs).
    - ``"per_word"``: Eq. 1 literally, sum over c's WORDS of p(the word's first token), so a
      first token shared by n words of c counts n times (a count matrix). The mass can exceed 1
      and grows with how many listed words of c start alike. When one token dominates both the
      slow and the fast distribution its count cancels in the gap; otherwise the gaps differ.

    Args:
        tokenizer: the policy's HF tokenizer.
        wheels: the emotion wheels (default ``EmotionWheels.load()``).
        first_token_mass: ``"distinct_tokens"`` or ``"per_word"`` (above); the default of
            ``category_log_confidence`` for this table.
    """

    def __init__(
        self, tokenizer, wheels: EmotionWheels | None = None, first_token_mass: str = "distinct_tokens"
    ) -> None:
        _check_first_token_mass(first_token_mass)
        self.first_token_mass = first_token_mass
        wheels = wheels or EmotionWheels.load()
        self.tokenizer = tokenizer
        self.token_bytes = token_bytes_table(tokenizer)
        self.num_wheels = wheels.NUM_WHEELS
        self.categories = tuple(tuple(wheels.categories(k)) for k in range(self.num_wheels))
        offsets, total = [], 0
        for cats in self.categories:
            offsets.append(total)
            total += len(cats)
        self.offsets = tuple(offsets)
        self.num_categories = total
        self._words: list[str] = []
        self._word_category: list[int] = []
        for k, cats in enumerate(self.categories):
            by_category = wheels.category_words(k)
            for j, name in enumerate(cats):
                for word in by_category.get(name, ()):
                    self._words.append(word)
                    self._word_category.append(offsets[k] + j)
        self.spellings: list[str] = []
        self._sets: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._spelling_ids: dict[str, int] = {}
        # (fast prefix, its ids) -> bridge bytes -> encoded fast head (filled by locate_answer_words)
        self.fast_heads: dict[tuple[str, tuple[int, ...]], dict[bytes, tuple[list[int], bytes, list[int]]]] = {}
        self.spelling_index("")
        self.spelling_index(" ")

    def flat_index(self, k: int, category: str) -> int:
        """Flat index of ``category`` on wheel ``k``."""
        return self.offsets[k] + self.categories[k].index(category)

    def spelling_index(self, glue: str) -> int:
        """The spelling id of ``glue`` (its first-token sets are built on first use)."""
        if glue not in self._spelling_ids:
            self._spelling_ids[glue] = len(self.spellings)
            self.spellings.append(glue)
            self._sets.append(self._build_sets(glue))
        return self._spelling_ids[glue]

    def first_tokens(self, spelling: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_ids [U] int64, membership [U, C] bool)`` of a spelling id."""
        token_ids, counts = self._sets[spelling]
        return token_ids, counts > 0

    def word_counts(self, spelling: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_ids [U] int64, counts [U, C] int64)``: how many words of category c start
        with token u (glue-only first tokens left out, as in the sets)."""
        return self._sets[spelling]

    def mass_weights(self, spelling: int, first_token_mass: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_ids [U], weights [U, C] float64)``: how often p(u) enters conf(c), per reading
        (class docstring; ``None`` = this table's ``first_token_mass``)."""
        first_token_mass = self.first_token_mass if first_token_mass is None else first_token_mass
        _check_first_token_mass(first_token_mass)
        token_ids, counts = self._sets[spelling]
        weights = counts if first_token_mass == "per_word" else counts > 0
        return token_ids, weights.to(torch.float64)

    def token_set(self, spelling: int, flat_category: int) -> set[int]:
        """F_g(c) as a Python set (inspection and tests)."""
        token_ids, counts = self._sets[spelling]
        return set(token_ids[counts[:, flat_category] > 0].tolist())

    def _build_sets(self, glue: str) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [glue + w for w in self._words]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        firsts = [ids[0] if ids else -1 for ids in encoded]
        glue_len = len(glue.encode("utf-8"))
        lengths = dict(zip(set(firsts) - {-1}, map(len, self.token_bytes(list(set(firsts) - {-1})))))
        pairs = [(t, c) for t, c in zip(firsts, self._word_category) if t >= 0 and lengths[t] > glue_len]
        token_ids = sorted({t for t, _ in pairs})
        column = {t: u for u, t in enumerate(token_ids)}
        counts = torch.zeros(len(token_ids), self.num_categories, dtype=torch.int64)  # words per (token, category)
        if pairs:
            index = torch.tensor([(column[t], c) for t, c in pairs], dtype=torch.int64)
            counts.index_put_((index[:, 0], index[:, 1]), torch.ones(len(pairs), dtype=torch.int64), accumulate=True)
        return torch.tensor(token_ids, dtype=torch.int64), counts


# ---------------------------------------------------------------------------------------------
# Confidence math (vectorized over words; a loop over the few distinct spellings only)


def category_log_confidence(
    logits: torch.Tensor,
    spelling: torch.Tensor,
    table: CategoryFirstTokens,
    temperature: float = 1.0,
    first_token_mass: str | None = None,
) -> torch.Tensor:
    """conf(c) = log sum_u w(u, c) p(u) over category c's first tokens u, for every category.

    Args:
        logits: next-token logits at the word positions. # [W, V]
        spelling: spelling id of each row (``table.spellings``). # [W]
        table: the first-token sets.
        temperature: logits are divided by it before the softmax.
        first_token_mass: ``"distinct_tokens"`` (w = 1 per distinct first token) or ``"per_word"``
            (w = the number of c's words starting with u: Eq. 1 literally); ``None`` = the
            table's (``CategoryFirstTokens`` docstring).

    Returns:
        float32 log confidences, >= log(float64 tiny) ~ -708 (an empty set gives that floor, never
        -inf). # [W, C]
    """
    logits = logits.float() / temperature
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # [W, 1]
    floor = torch.finfo(torch.float64).tiny
    out = torch.full(
        (logits.shape[0], table.num_categories), math.log(floor), dtype=torch.float64, device=logits.device
    )
    spelling = spelling.to(logits.device)
    for s in torch.unique(spelling).tolist():
        rows = (spelling == s).nonzero().squeeze(-1)  # [W_s]
        token_ids, weights = table.mass_weights(s, first_token_mass)  # [U], [U, C] float64
        if token_ids.numel() == 0:
            continue
        member = logits[rows][:, token_ids.to(logits.device)]  # [W_s, U]
        top = member.amax(-1, keepdim=True)  # [W_s, 1]
        # exp in float64: a category far below the row's best member must not underflow to 0.
        sums = (member - top).double().exp() @ weights.to(logits.device)  # [W_s, C]
        out[rows] = sums.clamp_min(floor).log() + (top - log_norm[rows]).double()
    return out.float()


def token_log_prob(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) of one token per row. # logits [W, V], token_ids [W] -> [W] float32"""
    logits = logits.float() / temperature
    picked = logits.gather(-1, token_ids.to(logits.device).view(-1, 1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


# ---------------------------------------------------------------------------------------------
# Locating answer words in token ids


@dataclass
class AnswerWords:
    """Every located answer word of a batch of responses (flat over words).

    Attributes:
        words: the parsed answer words. [W]
        response_index: the response (row ``b*G+g``) of each word. # [W] int64
        slow_position: index of the word's first token in the response tokens. # [W] int64
        fast_position: index of the same token in the fast response tokens. # [W] int64
        spelling: spelling id (``CategoryFirstTokens.spellings``: the token's bytes before the word). # [W]
        token_id: the word's first token id (A1). # [W] int64
        category: flat category index per wheel (``CategoryFirstTokens``), -1 = unmapped. # [W, K]
        category_mask: ``1 << j`` for the word's category j of wheel k, 0 = unmapped. # [W, K] int64
        num_skipped: answer words that could not be located (see the module docstring).
    """

    words: list[str]
    response_index: torch.Tensor
    slow_position: torch.Tensor
    fast_position: torch.Tensor
    spelling: torch.Tensor
    token_id: torch.Tensor
    category: torch.Tensor
    category_mask: torch.Tensor
    num_skipped: int = 0

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class FastResponses:
    """The fast-thinking "responses": fast prefix + the slow answer tokens, right-padded.

    Attributes:
        ids: # [R, T_f] int64, padded with ``pad_token_id``
        mask: True on real tokens (a prefix of each row). # [R, T_f] bool
    """

    ids: torch.Tensor
    mask: torch.Tensor


_TAIL_TOKENS = 32  # the answer sits at the end: look there first, at the whole response if needed


def _find_answer(
    ids: list[int], token_bytes: TokenBytes, open_tag: bytes, close_tag: bytes
) -> tuple[bytes, list[int], int, int] | None:
    """The last complete answer in ``ids``: ``(text, starts, a0, a1)`` or None.

    ``text`` is the bytes of ``ids``, ``starts[t]`` token t's byte offset, and the answer content
    is ``text[a0:a1]``: from the last opening tag that a closing tag follows to the first closing
    tag after it, as ``extract_answer``.
    """
    pieces = token_bytes(ids)
    text = b"".join(pieces)
    close = text.rfind(close_tag)
    opening = text.rfind(open_tag, 0, close) if close >= 0 else -1
    if opening < 0:
        return None
    starts = list(itertools.accumulate(map(len, pieces), initial=0))[:-1]
    a0 = opening + len(open_tag)
    return text, starts, a0, text.find(close_tag, a0)


def _token_at(starts: list[int], text: bytes, p: int) -> tuple[int, bytes]:
    """Index of the token holding byte ``p`` and its bytes before ``p`` (the glue)."""
    t = bisect.bisect_right(starts, p) - 1
    return t, text[starts[t] : p]


def locate_answer_words(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    table: CategoryFirstTokens,
    *,
    fast_prefix: str | None = None,
    fast_prefix_ids: Sequence[int] | None = None,
    answer_tags: tuple[str, str] = ("<answer>", "</answer>"),
    pad_token_id: int | None = None,
    wheels: EmotionWheels | None = None,
) -> tuple[AnswerWords, FastResponses]:
    """Find each answer word's first token in the responses and build the fast responses.

    Args:
        response_ids: generated tokens, right-padded. # [R, T]
        response_mask: True on generated tokens (a prefix of each row). # [R, T]
        table: ``CategoryFirstTokens(tokenizer)`` (tokenizer, token bytes, spellings, categories).
        fast_prefix: the fast-thinking response prefix (default
            ``merr1.components.data.prompts.FAST_THINKING_PREFIX``, i.e. ``<think></think><answer>``).
        fast_prefix_ids: its token ids exactly as fast thinking is prompted (default: with the
            default prefix ``prompts.encode_fast_prefix(tokenizer)``, else the tokenized string).
        answer_tags: opening and closing answer tags.
        pad_token_id: padding of ``FastResponses.ids`` (default the tokenizer's pad id, else 0).
        wheels: default ``EmotionWheels.load()``.

    Returns:
        ``(words, fast)`` (module docstring).
    """
    if response_ids.shape != response_mask.shape or response_ids.dim() != 2:
        raise ValueError(
            f"response_ids {tuple(response_ids.shape)} and response_mask {tuple(response_mask.shape)} "
            "must be equal [R, T]"
        )
    lengths = response_mask.sum(-1)  # [R]
    if not torch.equal(response_mask, torch.arange(response_ids.shape[1], device=lengths.device) < lengths[:, None]):
        raise ValueError("response_mask must be True on a prefix of each row (right-padded responses)")
    tokenizer, token_bytes = table.tokenizer, table.token_bytes
    if fast_prefix is None:
        fast_prefix, default_ids = _default_fast_prefix(tokenizer)
        fast_prefix_ids = default_ids if fast_prefix_ids is None else fast_prefix_ids
    elif fast_prefix_ids is None:
        fast_prefix_ids = tokenizer(fast_prefix, add_special_tokens=False)["input_ids"]
    wheels = wheels or EmotionWheels.load()
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    open_tag, close_tag = (t.encode("utf-8") for t in answer_tags)
    prefix_len = len(fast_prefix.encode("utf-8"))
    word_category = _WordCategories(wheels, table)

    spans = _answer_spans(response_ids, lengths, token_bytes, open_tag, close_tag)
    heads = _fast_heads(table, fast_prefix, list(fast_prefix_ids), {span.bridge for span in spans if span is not None})
    rows: list[tuple[int, int, int, int, int]] = []  # response, slow pos, fast pos, spelling, token
    words: list[str] = []
    fast_rows: list[list[int]] = []
    num_skipped = 0
    for r, span in enumerate(spans):
        if span is None:
            fast_rows.append(heads[b""][0])
            continue
        head = heads[span.bridge]
        fast_rows.append(head[0] + span.ids[span.t_first : span.t_end])
        located, skipped = _locate_words(span, head, prefix_len, table)
        num_skipped += skipped
        for word, t, fast_position, spelling in located:
            words.append(word)
            rows.append((r, span.offset + t, fast_position, spelling, span.ids[t]))

    category = torch.tensor([word_category(w) for w in words], dtype=torch.int64).reshape(len(words), table.num_wheels)
    info = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 5)
    answer_words = AnswerWords(
        words=words,
        response_index=info[:, 0],
        slow_position=info[:, 1],
        fast_position=info[:, 2],
        spelling=info[:, 3],
        token_id=info[:, 4],
        category=category,
        category_mask=word_category.masks(category),
        num_skipped=num_skipped,
    )
    fast_width = max((len(f) for f in fast_rows), default=0)
    shape = (len(fast_rows), fast_width)
    fast_ids = torch.tensor([f + [pad_token_id] * (fast_width - len(f)) for f in fast_rows], dtype=torch.int64)
    fast_mask = torch.tensor([[True] * len(f) + [False] * (fast_width - len(f)) for f in fast_rows], dtype=torch.bool)
    return answer_words, FastResponses(ids=fast_ids.reshape(shape), mask=fast_mask.reshape(shape))


@dataclass
class _AnswerSpan:
    """A response's tokens around its answer (``ids`` start at response token ``offset``)."""

    offset: int
    ids: list[int]
    text: bytes  # bytes of ``ids``
    starts: list[int]  # byte offset of each token of ``ids`` in ``text``
    a0: int  # answer content = text[a0:a1]
    a1: int
    t_first: int  # first token starting inside the answer
    t_end: int  # first token starting at or after the closing tag
    bridge: bytes  # answer bytes before t_first (the rest of a token straddling the opening tag)


def _answer_spans(
    response_ids: torch.Tensor, lengths: torch.Tensor, token_bytes: TokenBytes, open_tag: bytes, close_tag: bytes
) -> list[_AnswerSpan | None]:
    """The answer span of each response, searched in its last tokens first, then in all of them."""
    num_rows, width = response_ids.shape
    tail = min(_TAIL_TOKENS, width)
    tail_start = (lengths - tail).clamp_min(0)  # [R]
    tail_index = (tail_start[:, None] + torch.arange(tail, device=lengths.device)).clamp_max(max(width - 1, 0))
    tails = response_ids.gather(1, tail_index).tolist() if width else [[] for _ in range(num_rows)]
    spans: list[_AnswerSpan | None] = []
    for r, (offset, length) in enumerate(zip(tail_start.tolist(), lengths.tolist())):
        ids = tails[r][: length - offset]
        found = _find_answer(ids, token_bytes, open_tag, close_tag)
        if found is None and offset > 0:
            offset, ids = 0, response_ids[r, :length].tolist()
            found = _find_answer(ids, token_bytes, open_tag, close_tag)
        if found is None:
            spans.append(None)
            continue
        text, starts, a0, a1 = found
        t_first = bisect.bisect_left(starts, a0)
        t_end = bisect.bisect_left(starts, a1)
        bridge = text[a0 : min(starts[t_first], a1)] if t_first < len(starts) else text[a0:a1]
        spans.append(_AnswerSpan(offset, ids, text, starts, a0, a1, t_first, t_end, bridge))
    return spans


def _locate_words(
    span: _AnswerSpan, head: tuple[list[int], bytes, list[int]], prefix_len: int, table: CategoryFirstTokens
) -> tuple[list[tuple[str, int, int, int]], int]:
    """``[(word, token index in span.ids, fast position, spelling id)]`` and the number skipped."""
    head_ids, head_text, head_starts = head
    answer = span.text[span.a0 : span.a1]
    lowered = answer.lower()
    located: list[tuple[str, int, int, int]] = []
    num_skipped = 0
    cursor = 0
    for word in parse_emotion_list(answer.decode("utf-8", "replace")):
        encoded = word.encode("utf-8")
        at = lowered.find(encoded, cursor)
        if at < 0:  # e.g. a non-ASCII word whose lower-casing changed its bytes
            num_skipped += 1
            continue
        cursor = at + len(encoded)
        t, glue = _token_at(span.starts, span.text, span.a0 + at)
        if t >= span.t_first:
            fast_position = len(head_ids) + t - span.t_first
        else:  # the word starts in the token straddling the tag: find it in the fast head
            fast_position, head_glue = _token_at(head_starts, head_text, prefix_len + at)
            if head_glue != glue or head_ids[fast_position] != span.ids[t]:
                num_skipped += 1
                continue
        try:
            spelling = table.spelling_index(glue.decode("utf-8"))
        except UnicodeDecodeError:
            num_skipped += 1
            continue
        located.append((word, t, fast_position, spelling))
    return located, num_skipped


def _fast_heads(
    table: CategoryFirstTokens, fast_prefix: str, prefix_ids: list[int], bridges: set[bytes]
) -> dict[bytes, tuple[list[int], bytes, list[int]]]:
    """Bridge -> (fast head token ids, their bytes, token byte offsets), batched and cached.

    No bridge: the exact prefix ids. A bridge (answer bytes of a token straddling the opening tag)
    is re-encoded together with the prefix string, so that the glued word gets the same local
    tokenization as in the slow response. Cached on the table (a bridge is at most one token's
    tail, so the cache stays small).
    """
    cache = table.fast_heads.setdefault((fast_prefix, tuple(prefix_ids)), {})
    if b"" not in cache:
        pieces = table.token_bytes(prefix_ids)
        cache[b""] = (prefix_ids, b"".join(pieces), list(itertools.accumulate(map(len, pieces), initial=0))[:-1])
    missing = sorted(bridges - set(cache))
    if missing:
        texts = [fast_prefix + b.decode("utf-8", "replace") for b in missing]
        for bridge, ids in zip(missing, table.tokenizer(texts, add_special_tokens=False)["input_ids"]):
            pieces = table.token_bytes(ids)
            cache[bridge] = (ids, b"".join(pieces), list(itertools.accumulate(map(len, pieces), initial=0))[:-1])
    return cache


class _WordCategories:
    """Word -> flat category index per wheel (-1 unmapped), cached."""

    def __init__(self, wheels: EmotionWheels, table: CategoryFirstTokens) -> None:
        self.wheels = wheels
        self.table = table
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, word: str) -> tuple[int, ...]:
        if word not in self._cache:
            mapped = self.wheels.map_word(word)
            self._cache[word] = tuple(-1 if c is None else self.table.flat_index(k, c) for k, c in enumerate(mapped))
        return self._cache[word]

    def masks(self, category: torch.Tensor) -> torch.Tensor:
        """Flat category indices ``[W, K]`` -> per-wheel bitmasks ``1 << j`` (0 where -1)."""
        offsets = torch.tensor(self.table.offsets, dtype=torch.int64)
        local = (category - offsets).clamp_min(0)
        return torch.where(category >= 0, torch.ones_like(category) << local, torch.zeros_like(category))


def token_logits_at(
    token_logits: torch.Tensor, token_mask: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Pick the logits of given tokens out of a teacher-forced pass's compact output.

    Args:
        token_logits: logits predicting every True token of ``token_mask``, in row-major order
            (what ``generation.teacher_forced_logits`` returns). # [N, V]
        token_mask: the tokens ``token_logits`` covers. # [R, T] bool
        rows: row of each wanted token. # [W]
        positions: its position in that row (``AnswerWords.slow_position`` / ``fast_position``). # [W]

    Returns:
        # [W, V], in the order of ``rows``/``positions``

    Raises:
        ValueError: a wanted token is not covered by ``token_mask``.
    """
    device = token_logits.device
    row_of = torch.full(token_mask.shape, -1, dtype=torch.long, device=device)  # token -> logits row
    row_of[token_mask.to(device)] = torch.arange(token_logits.shape[0], device=device)
    picked = row_of[rows.to(device), positions.to(device)]  # [W]
    if bool((picked < 0).any()):
        raise ValueError("a requested token is outside token_mask")
    return token_logits[picked]


class WordLogits:
    """The slow and fast next-token logits of every located answer word, gathered micro-batch by
    micro-batch from the recipe's no-grad policy pass (module docstring, step 3).

    For each micro-batch (a slice of response rows), ``add`` takes the slow pass's logits of its
    response tokens and, only when the slice holds located words, calls ``fast_logits`` once on
    the slice's fast responses with targets at the words' fast positions. ``result`` returns the
    ``[W, V]`` slow and fast logits in ``words`` order.

    Args:
        words, fast: from ``SlowFastCalibration.locate``.
    """

    def __init__(self, words: AnswerWords, fast: FastResponses) -> None:
        self.words, self.fast = words, fast
        self._slow: torch.Tensor | None = None  # [W, V]
        self._fast: torch.Tensor | None = None

    def add(
        self,
        rows: slice,
        slow_token_logits: torch.Tensor,
        response_mask: torch.Tensor,
        fast_logits: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        """Gather the words of response rows ``rows``.

        Args:
            rows: the micro-batch's rows of the rollout.
            slow_token_logits: logits of the micro-batch's response tokens (row-major). # [N, V]
            response_mask: the micro-batch's response mask. # [r, T]
            fast_logits: ``fast_logits(fast_ids [r, T_f], fast_mask [r, T_f], targets [r, T_f])`` ->
                ``[n, V]`` logits of the targets in row-major order (a teacher-forced pass of the
                same prompts); called at most once.
        """
        if self._slow is None:
            vocab_size = slow_token_logits.shape[-1]
            self._slow = slow_token_logits.new_zeros(len(self.words), vocab_size)
            self._fast = slow_token_logits.new_zeros(len(self.words), vocab_size)
        word_rows = self.words.response_index
        selected = ((word_rows >= rows.start) & (word_rows < rows.stop)).nonzero().squeeze(-1)  # [w]
        if selected.numel() == 0:
            return
        local_rows = word_rows[selected] - rows.start
        fast_positions = self.words.fast_position[selected]
        self._slow[selected.to(self._slow.device)] = token_logits_at(
            slow_token_logits, response_mask, local_rows, self.words.slow_position[selected]
        )
        device = slow_token_logits.device
        fast_ids, fast_mask = self.fast.ids[rows].to(device), self.fast.mask[rows].to(device)
        targets = torch.zeros_like(fast_mask)
        targets[local_rows.to(device), fast_positions.to(device)] = True
        self._fast[selected.to(self._fast.device)] = token_logits_at(
            fast_logits(fast_ids, fast_mask, targets), targets, local_rows, fast_positions
        )

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(slow, fast)`` logits, float32 ``[W, V]`` (``[0, 0]`` if no micro-batch was added)."""
        if self._slow is None:
            return torch.zeros(0, 0), torch.zeros(0, 0)
        return self._slow.float(), self._fast.float()


# ---------------------------------------------------------------------------------------------
# Gaps and the reward inputs


def slow_fast_gap(
    slow_logits: torch.Tensor,
    fast_logits: torch.Tensor,
    words: AnswerWords,
    table: CategoryFirstTokens,
    *,
    confidence: str = "category",
    temperature: float = 1.0,
) -> torch.Tensor:
    """Delta_k(e) = conf_slow,k(c_k(e)) - conf_fast,k(c_k(e)) per word and wheel.

    Args:
        slow_logits: logits predicting each word's first token in the slow context. # [W, V]
        fast_logits: the same in the fast context. # [W, V]
        words: from ``locate_answer_words``.
        table: the first-token sets.
        confidence: ``"category"`` (METHOD section 4) or ``"word"`` (A1: log p of the word's own
            first token, the same value on every wheel where the word maps).
        temperature: logits are divided by it.

    Returns:
        float32 gaps, 0 where the word is unmapped on a wheel (``category == -1``). # [W, K]
    """
    if slow_logits.shape != fast_logits.shape or slow_logits.dim() != 2 or slow_logits.shape[0] != len(words):
        raise ValueError(
            f"slow_logits {tuple(slow_logits.shape)} and fast_logits {tuple(fast_logits.shape)} "
            f"must be [W={len(words)}, V]"
        )
    mapped = (words.category >= 0).to(slow_logits.device)  # [W, K]
    if confidence == "category":
        conf_slow = category_log_confidence(slow_logits, words.spelling, table, temperature)  # [W, C]
        conf_fast = category_log_confidence(fast_logits, words.spelling, table, temperature)
        index = words.category.clamp_min(0).to(slow_logits.device)  # [W, K]
        gap = conf_slow.gather(1, index) - conf_fast.gather(1, index)
    elif confidence == "word":
        word_gap = token_log_prob(slow_logits, words.token_id, temperature) - token_log_prob(
            fast_logits, words.token_id, temperature
        )  # [W]
        gap = word_gap[:, None].expand(-1, mapped.shape[1])
    else:
        raise ValueError(f"confidence must be 'category' or 'word', got {confidence!r}")
    return torch.where(mapped, gap, torch.zeros_like(gap)).float()


@dataclass
class CalibrationInputs:
    """What the recipe puts in ``RewardBatch.extras["calibration"]`` for ``CalibrationRewards``.

    Attributes:
        response_index: response (row ``b*G+g``) of each word. # [W] int64
        category_mask: per-wheel category bitmask of each word (0 = unmapped). # [W, K] int64
        gap: slow-fast gap Delta_k of each word (ignored where ``category_mask == 0``). # [W, K] float32
        num_responses: num_prompts * G (a response may have no words).
    """

    response_index: torch.Tensor
    category_mask: torch.Tensor
    gap: torch.Tensor
    num_responses: int

    @classmethod
    def from_words(cls, words: AnswerWords, gap: torch.Tensor, num_responses: int) -> "CalibrationInputs":
        """Package ``slow_fast_gap``'s output (moved to CPU) for the reward."""
        return cls(
            response_index=words.response_index.cpu(),
            category_mask=words.category_mask.cpu(),
            gap=gap.detach().float().cpu(),
            num_responses=num_responses,
        )


class SlowFastCalibration:
    """YAML component bundling the SFCC steps for a recipe (module docstring, steps 1-4).

    Args:
        confidence: ``"category"`` (MER-R1) or ``"word"`` (ablation A1).
        temperature: logits are divided by it (1.0: the policy's own distribution).
        fast_prefix: fast-thinking response prefix; None = ``prompts.FAST_THINKING_PREFIX``.
        answer_tags: opening and closing answer tags.
        first_token_mass: the reading of Eq. 1 for ``"category"`` confidence:
            ``"distinct_tokens"`` (default: each distinct first token once) or ``"per_word"``
            (once per word); see ``CategoryFirstTokens``. ``"word"`` (A1) does not use it.

    Usage::

        calibration.setup(tokenizer)  # once
        words, fast = calibration.locate(response_ids, response_mask)  # after generation
        gather = WordLogits(words, fast)
        for rows in micro_batches:  # the no-grad policy pass over the rollouts
            token_logits = ...  # teacher_forced_logits of the response tokens of ``rows``
            gather.add(rows, token_logits, response_mask[rows], lambda ids, mask, targets: ...)
        batch.extras["calibration"] = calibration.inputs(*gather.result(), words, num_responses)
    """

    def __init__(
        self,
        confidence: str = "category",
        temperature: float = 1.0,
        fast_prefix: str | None = None,
        answer_tags: Sequence[str] = ("<answer>", "</answer>"),
        first_token_mass: str = "distinct_tokens",
    ) -> None:
        _check_first_token_mass(first_token_mass)
        if confidence not in ("category", "word"):
            raise ValueError(f"confidence must be 'category' or 'word', got {confidence!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if len(answer_tags) != 2:
            raise ValueError(f"answer_tags must be (opening, closing), got {answer_tags!r}")
        self.confidence = confidence
        self.temperature = temperature
        self.fast_prefix = fast_prefix
        self.answer_tags = (str(answer_tags[0]), str(answer_tags[1]))
        self.first_token_mass = first_token_mass
        self.table: CategoryFirstTokens | None = None

    def setup(
        self, tokenizer, fast_prefix_ids: Sequence[int] | None = None, wheels: EmotionWheels | None = None
    ) -> None:
        """Build the first-token sets for the policy's tokenizer and fix the fast prefix.

        Args:
            tokenizer: the policy's tokenizer.
            fast_prefix_ids: the prefix ids exactly as fast thinking is prompted (default: see
                ``locate_answer_words``).
            wheels: default ``EmotionWheels.load()``.
        """
        self.table = CategoryFirstTokens(tokenizer, wheels, self.first_token_mass)
        if self.fast_prefix is None:
            prefix, ids = _default_fast_prefix(tokenizer)
        else:
            prefix, ids = self.fast_prefix, tokenizer(self.fast_prefix, add_special_tokens=False)["input_ids"]
        self._prefix = (prefix, list(ids) if fast_prefix_ids is None else list(fast_prefix_ids))

    def _table(self) -> CategoryFirstTokens:
        if self.table is None:
            raise ValueError("SlowFastCalibration.setup(tokenizer) must be called first")
        return self.table

    def locate(self, response_ids: torch.Tensor, response_mask: torch.Tensor) -> tuple[AnswerWords, FastResponses]:
        """``locate_answer_words`` with this component's prefix and tags."""
        table = self._table()
        prefix, prefix_ids = self._prefix
        return locate_answer_words(
            response_ids,
            response_mask,
            table,
            fast_prefix=prefix,
            fast_prefix_ids=prefix_ids,
            answer_tags=self.answer_tags,
        )

    def inputs(
        self, slow_logits: torch.Tensor, fast_logits: torch.Tensor, words: AnswerWords, num_responses: int
    ) -> CalibrationInputs:
        """Gaps -> ``CalibrationInputs`` for ``batch.extras["calibration"]``."""
        gap = slow_fast_gap(
            slow_logits, fast_logits, words, self._table(), confidence=self.confidence, temperature=self.temperature
        )
        return CalibrationInputs.from_words(words, gap, num_responses)
