"""Slow-fast confidence calibration, SFCC (METHOD section 4).

For each emotion word e of a slow answer y_ans, at the position where e's first token is
predicted, the current policy gives two next-token distributions:

    p_slow = pi(. | x, y_cot, y_ans<e)        the slow context (prompt + reasoning + answer prefix)
    p_fast = pi(. | x, y_ans<e)               the fast context (prompt + empty think + the SAME answer tokens)

Category confidence on wheel k:  conf_k(c) = log sum_{t in F_k(c)} p(t) = logsumexp_{t in F_k(c)} log p(t)
where F_k(c) is the set of FIRST token ids of every wheel-k word of level-1 category c (a token
shared by several words counts once: a membership matrix, not counts). Gap:

    Delta_k(e) = conf_slow,k(c_k(e)) - conf_fast,k(c_k(e))

Word-level variant (ablation A1): Delta(e) = log p_slow(t_e) - log p_fast(t_e) with t_e the
word's own first token (the same value on every wheel where e maps).

How the recipe uses this module (step by step; all tensors on any device):

1. Once: ``table = CategoryFirstTokens.build(tokenizer)``.
2. After generation: ``words, fast = locate_answer_words(response_ids, response_mask, tokenizer,
   table, fast_prefix=FAST_THINKING_PREFIX)``. ``words`` lists every located answer word of every
   response (row ``b*G+g``) with its position ``slow_position`` in the response tokens and
   ``fast_position`` in ``fast.ids``, the fast responses: fast-prefix tokens (+ re-encoded text of
   a token that straddles the answer boundary) + the slow response's answer tokens.
3. Forward the policy (no grad) on [prompt; response] and on [prompt; fast response] (the same
   left-padded prompts and media; the fast response plays the role of the response). Position s
   of a response means the distribution that PREDICTS response token s, i.e. the full-sequence
   logits at index P - 1 + s (P = padded prompt length): ``response_logits_at(...)`` gathers the
   rows ``[W, V]``; only those rows of the LM head are needed.
4. ``gap = slow_fast_gap(slow_logits, fast_logits, words, table, confidence="category"|"word")``
   (``[W, K]``), then ``batch.extras["calibration"] = CalibrationInputs.from_words(words, gap,
   num_responses)``; ``merr1.rewards.CalibrationRewards`` turns that into R+ and R-.

Locating words (robust by design; skipped words are counted in ``AnswerWords.num_skipped``):
token bytes come from the byte-level BPE alphabet (Qwen2's tokenizer; other tokenizers fall back
to decoding single tokens); the answer is the content of the last ``<answer>...</answer>``; its
words are ``parse_emotion_list``'s items, found in order in the (ASCII-lower-cased) answer bytes.
A word is used only if a token starts exactly at its first byte (spelling "start": no leading
space) or at the single space before it (spelling "space", e.g. after ", "); a word whose first
byte falls inside a token (e.g. ``>happy`` merged with the tag, ``,sad``) is skipped, because the
first-token sets do not describe that position. Unknown words still get a position but map to
no category, so they carry no gap. The fast context must hold the same answer tokens: if the
``<answer>`` boundary falls inside a token, the part of that token after the boundary is
re-encoded after the fast prefix and the answer tokens continue from the next token.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from merr1.components.emotion_wheel import EmotionWheels, parse_emotion_list

SPELLINGS = ("start", "space")  # index 0: word with no leading space; 1: word after a space


def _default_fast_prefix() -> str:
    try:
        from merr1.components.prompts import FAST_THINKING_PREFIX
    except ImportError as err:  # the data branch owns the constant
        raise ValueError(
            "fast_prefix not given and merr1.components.prompts.FAST_THINKING_PREFIX is unavailable"
        ) from err
    return FAST_THINKING_PREFIX


# ---------------------------------------------------------------------------------------------
# First-token sets per category


@dataclass(frozen=True)
class CategoryFirstTokens:
    """First-token membership of every level-1 category of every wheel, for both spellings.

    The categories of all wheels are stacked into one flat axis of size C = sum_k C_k: wheel k's
    category j is flat index ``offsets[k] + j``.

    Attributes:
        categories: per wheel, the level-1 categories in ``EmotionWheels.categories(k)`` order.
        offsets: flat index of each wheel's first category.
        token_ids: the union of all first tokens. # [U] int64
        membership: membership[s, u, c] = token_ids[u] is the first token (spelling s) of some
            word of flat category c. # [2, U, C] bool
    """

    categories: tuple[tuple[str, ...], ...]
    offsets: tuple[int, ...]
    token_ids: torch.Tensor
    membership: torch.Tensor

    @property
    def num_categories(self) -> int:
        return self.membership.shape[-1]

    @classmethod
    def build(cls, tokenizer, wheels: EmotionWheels | None = None) -> "CategoryFirstTokens":
        """First tokens of ``word`` (spelling "start") and ``" " + word`` (spelling "space").

        Args:
            tokenizer: a HF tokenizer (``encode``-able without special tokens).
            wheels: the emotion wheels (default ``EmotionWheels.load()``).
        """
        wheels = wheels or EmotionWheels.load()
        categories = tuple(tuple(wheels.categories(k)) for k in range(wheels.NUM_WHEELS))
        offsets, total = [], 0
        for cats in categories:
            offsets.append(total)
            total += len(cats)
        words: list[str] = []
        flat_category: list[int] = []
        for k, cats in enumerate(categories):
            by_category = wheels.category_words(k)
            for j, name in enumerate(cats):
                for word in by_category.get(name, ()):
                    words.append(word)
                    flat_category.append(offsets[k] + j)
        pairs: set[tuple[int, int, int]] = set()  # (spelling, token id, flat category)
        for spelling, texts in enumerate((words, [" " + w for w in words])):
            for ids, c in zip(_encode_many(tokenizer, texts), flat_category):
                if ids:
                    pairs.add((spelling, ids[0], c))
        token_ids = sorted({t for _, t, _ in pairs})
        column = {t: u for u, t in enumerate(token_ids)}
        membership = torch.zeros(len(SPELLINGS), len(token_ids), total, dtype=torch.bool)
        if pairs:
            index = torch.tensor([(s, column[t], c) for s, t, c in pairs], dtype=torch.int64)
            membership[index[:, 0], index[:, 1], index[:, 2]] = True
        return cls(
            categories=categories,
            offsets=tuple(offsets),
            token_ids=torch.tensor(token_ids, dtype=torch.int64),
            membership=membership,
        )

    def flat_index(self, k: int, category: str) -> int:
        """Flat index of ``category`` on wheel ``k``."""
        return self.offsets[k] + self.categories[k].index(category)


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------
# Confidence math (vectorized)


def category_log_confidence(
    logits: torch.Tensor,
    spelling: torch.Tensor,
    table: CategoryFirstTokens,
    temperature: float = 1.0,
) -> torch.Tensor:
    """conf(c) = logsumexp of the log-probs of category c's first tokens, for every category.

    Args:
        logits: next-token logits at the word positions. # [W, V]
        spelling: which first-token sets to use per row (0 "start", 1 "space"). # [W]
        table: the first-token membership.
        temperature: logits are divided by it before the softmax.

    Returns:
        log confidences, float32, >= log(float64 tiny) ~ -708 (never -inf). # [W, C]
    """
    logits = logits.float() / temperature
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # [W, 1]
    token_ids = table.token_ids.to(logits.device)
    member = logits.index_select(-1, token_ids)  # [W, U]
    top = member.amax(-1, keepdim=True) if member.shape[-1] else torch.zeros_like(log_norm)
    # exp in float64: a category far below the row's best member must not underflow to 0.
    scaled = (member - top).double().exp()  # [W, U]
    membership = table.membership.to(device=logits.device, dtype=torch.float64)  # [2, U, C]
    sums = torch.stack([scaled @ membership[0], scaled @ membership[1]], dim=1)  # [W, 2, C]
    sums = sums.gather(1, spelling.to(logits.device).view(-1, 1, 1).expand(-1, 1, sums.shape[-1])).squeeze(1)
    log_sums = sums.clamp_min(torch.finfo(torch.float64).tiny).log()  # [W, C]
    return (log_sums + (top - log_norm).double()).float()


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
        spelling: 0 if the first token starts at the word ("start"), 1 if at the space before it. # [W]
        token_id: the word's first token id (A1). # [W] int64
        category: flat category index per wheel (``CategoryFirstTokens``), -1 = unmapped. # [W, K]
        category_mask: ``1 << j`` for the word's category j of wheel k, 0 = unmapped. # [W, K] int64
        num_skipped: words of the answers that could not be located or aligned (see module docstring).
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
        mask: True on real tokens. # [R, T_f] bool
    """

    ids: torch.Tensor
    mask: torch.Tensor


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable Latin-1 bytes map to themselves, the others to 256+i."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


class TokenBytes:
    """Token id -> the bytes it contributes to the decoded text (cached per id).

    Byte-level BPE tokens are mapped through the byte alphabet exactly; special tokens give b""
    (responses are decoded with special tokens stripped); any other token (non byte-level
    tokenizers) falls back to ``tokenizer.decode([id])``.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.special_ids = set(tokenizer.all_special_ids)
        self._cache: dict[int, bytes] = {}

    def __call__(self, ids: Sequence[int]) -> list[bytes]:
        missing = [i for i in set(ids) if i not in self._cache]
        if missing:
            for i, token in zip(missing, self.tokenizer.convert_ids_to_tokens(missing)):
                self._cache[i] = self._token_bytes(i, token)
        return [self._cache[i] for i in ids]

    def _token_bytes(self, token_id: int, token: str | None) -> bytes:
        if token_id in self.special_ids or token is None:
            return b""
        if all(ch in _BYTE_DECODER for ch in token):
            return bytes(_BYTE_DECODER[ch] for ch in token)
        return self.tokenizer.decode([token_id]).encode("utf-8")


def locate_answer_words(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    tokenizer,
    table: CategoryFirstTokens,
    *,
    fast_prefix: str | None = None,
    answer_tags: tuple[str, str] = ("<answer>", "</answer>"),
    pad_token_id: int | None = None,
    token_bytes: TokenBytes | None = None,
    wheels: EmotionWheels | None = None,
) -> tuple[AnswerWords, FastResponses]:
    """Find each answer word's first token in the responses and build the fast responses.

    Args:
        response_ids: generated tokens, right-padded. # [R, T]
        response_mask: True on generated tokens (a prefix of each row). # [R, T]
        tokenizer: the policy's tokenizer.
        table: ``CategoryFirstTokens.build(tokenizer)`` (for the flat category indices).
        fast_prefix: the fast-thinking response prefix (default
            ``merr1.components.prompts.FAST_THINKING_PREFIX``, i.e. ``<think></think><answer>``).
        answer_tags: opening and closing answer tags; the LAST complete pair is the answer.
        pad_token_id: padding of ``FastResponses.ids`` (default the tokenizer's pad id, else 0).
        token_bytes: a reusable ``TokenBytes(tokenizer)`` cache (built if None).
        wheels: default ``EmotionWheels.load()``.

    Returns:
        ``(words, fast)``; a response without a complete answer gets no words and a fast response
        made of the prefix tokens alone.
    """
    if response_ids.shape != response_mask.shape or response_ids.dim() != 2:
        raise ValueError(
            f"response_ids {tuple(response_ids.shape)} and response_mask {tuple(response_mask.shape)} must be equal [R, T]"
        )
    lengths = response_mask.sum(-1)  # [R]
    if not bool((response_mask.long().cumprod(-1).sum(-1) == lengths).all()):
        raise ValueError("response_mask must be True on a prefix of each row (right-padded responses)")
    fast_prefix = _default_fast_prefix() if fast_prefix is None else fast_prefix
    token_bytes = token_bytes or TokenBytes(tokenizer)
    wheels = wheels or EmotionWheels.load()
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    open_tag, close_tag = (t.encode("utf-8") for t in answer_tags)
    prefix_ids = tokenizer.encode(fast_prefix, add_special_tokens=False)
    word_category = _WordCategories(wheels, table)

    rows: list[tuple[int, int, int, int, int]] = []  # response, slow pos, fast pos, spelling, token
    words: list[str] = []
    fast_rows: list[list[int]] = []
    num_skipped = 0
    for r, (row, length) in enumerate(zip(response_ids.tolist(), lengths.tolist())):
        ids = row[:length]
        found = _find_answer(ids, token_bytes, open_tag, close_tag)
        if found is None:
            fast_rows.append(list(prefix_ids))
            continue
        text, starts, a0, a1 = found
        # First token starting inside the answer; the answer bytes before it (the rest of a token
        # that straddles the opening tag) are re-encoded after the prefix.
        t_first = bisect.bisect_left(starts, a0)
        t_end = bisect.bisect_left(starts, a1)
        bridge = text[a0 : min(starts[t_first], a1)] if t_first < len(starts) else text[a0:a1]
        head = prefix_ids
        if bridge:
            head = tokenizer.encode(fast_prefix + bridge.decode("utf-8", "replace"), add_special_tokens=False)
        fast_rows.append(head + ids[t_first:t_end])

        answer = text[a0:a1]
        lowered = answer.lower()
        cursor = 0
        for word in parse_emotion_list(answer.decode("utf-8", "replace")):
            encoded = word.encode("utf-8")
            at = lowered.find(encoded, cursor)
            if at < 0:  # e.g. a non-ASCII word whose lower-casing changed its bytes
                num_skipped += 1
                continue
            cursor = at + len(encoded)
            p = a0 + at
            t = bisect.bisect_right(starts, p) - 1
            if starts[t] == p:
                spelling = 0
            elif starts[t] == p - 1 and text[p - 1 : p] == b" ":
                spelling = 1
            else:  # the word starts inside a token
                num_skipped += 1
                continue
            if t < t_first:  # only possible with an opening tag that ends in a space
                num_skipped += 1
                continue
            assert t < t_end, "an answer word must start before the closing tag"
            words.append(word)
            rows.append((r, t, len(head) + t - t_first, spelling, ids[t]))

    categories = [word_category(w) for w in words]
    info = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 5)
    category = torch.tensor(categories, dtype=torch.int64).reshape(len(words), EmotionWheels.NUM_WHEELS)
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
    width = max((len(f) for f in fast_rows), default=0)
    fast_ids = torch.full((len(fast_rows), width), pad_token_id, dtype=torch.int64)
    fast_mask = torch.zeros((len(fast_rows), width), dtype=torch.bool)
    for r, f in enumerate(fast_rows):
        fast_ids[r, : len(f)] = torch.tensor(f, dtype=torch.int64)
        fast_mask[r, : len(f)] = True
    return answer_words, FastResponses(ids=fast_ids, mask=fast_mask)


_TAIL_TOKENS = 128  # the answer sits at the end: look there first, the whole response if needed


def _find_answer(
    ids: list[int], token_bytes: TokenBytes, open_tag: bytes, close_tag: bytes
) -> tuple[bytes, list[int], int, int] | None:
    """The last complete answer: ``(text, starts, a0, a1)`` or None.

    ``text`` holds the bytes of the tokens from some index ``first`` on (the tail window, or the
    whole response if the tail has no complete answer); ``starts[t]`` is token t's byte offset in
    ``text`` (-1 for the tokens before ``first``, which never hold answer bytes); the answer
    content is ``text[a0:a1]``.
    """
    for first in (len(ids) - _TAIL_TOKENS, 0) if len(ids) > _TAIL_TOKENS else (0,):
        pieces = token_bytes(ids[first:])
        text = b"".join(pieces)
        close = text.rfind(close_tag)
        opening = text.rfind(open_tag, 0, close) if close >= 0 else -1
        if opening >= 0:
            starts = [-1] * first + list(itertools.accumulate(map(len, pieces), initial=0))[:-1]
            return text, starts, opening + len(open_tag), close
    return None


class _WordCategories:
    """Word -> flat category index per wheel (-1 unmapped), cached."""

    def __init__(self, wheels: EmotionWheels, table: CategoryFirstTokens) -> None:
        self.wheels = wheels
        self.table = table
        self._cache: dict[str, tuple[int, ...]] = {}

    def __call__(self, word: str) -> tuple[int, ...]:
        if word not in self._cache:
            mapped = self.wheels.map_word(word)
            self._cache[word] = tuple(
                -1 if c is None else self.table.flat_index(k, c) for k, c in enumerate(mapped)
            )
        return self._cache[word]

    def masks(self, category: torch.Tensor) -> torch.Tensor:
        """Flat category indices ``[W, K]`` -> per-wheel bitmasks ``1 << j`` (0 where -1)."""
        offsets = torch.tensor(self.table.offsets, dtype=torch.int64)
        local = (category - offsets).clamp_min(0)
        return torch.where(category >= 0, torch.ones_like(category) << local, torch.zeros_like(category))


def response_logits_at(
    logits: torch.Tensor, prompt_length: int, rows: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Rows of full-sequence logits that predict response tokens ``positions`` of ``rows``.

    Args:
        logits: logits over [prompt; response] (prompt left-padded to ``prompt_length``). # [R, P+T, V]
        prompt_length: P.
        rows: response index per word. # [W]
        positions: response-token index per word (``slow_position`` or ``fast_position``). # [W]

    Returns:
        # [W, V]
    """
    return logits[rows.to(logits.device), (positions + prompt_length - 1).to(logits.device)]


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
        table: first-token sets.
        confidence: ``"category"`` (METHOD section 4) or ``"word"`` (A1: log p of the word's own
            first token, the same on every wheel).
        temperature: logits are divided by it.

    Returns:
        float32 gaps, 0 where the word is unmapped on a wheel (``category_mask == 0``). # [W, K]
    """
    if slow_logits.shape != fast_logits.shape or slow_logits.shape[0] != len(words):
        raise ValueError(
            f"slow_logits {tuple(slow_logits.shape)} and fast_logits {tuple(fast_logits.shape)} must be [W={len(words)}, V]"
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
        num_responses: num_prompts * G (words are optional: a response may have none).
    """

    response_index: torch.Tensor
    category_mask: torch.Tensor
    gap: torch.Tensor
    num_responses: int

    @classmethod
    def from_words(cls, words: AnswerWords, gap: torch.Tensor, num_responses: int) -> "CalibrationInputs":
        return cls(
            response_index=words.response_index.cpu(),
            category_mask=words.category_mask.cpu(),
            gap=gap.detach().float().cpu(),
            num_responses=num_responses,
        )
