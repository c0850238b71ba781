"""Tokenizers: the real one from a checkpoint directory, and a tiny offline one for tests and demos.

The tiny tokenizer is a byte-level BPE with Qwen2's pre-tokenizer, wrapped as the same
``transformers.Qwen2Tokenizer`` class the real Qwen2.5-Omni checkpoints use, so code paths
(special tokens, ``decode``, leading-space variants of words) behave like the real thing.
It is trained by ``scripts/make_tiny_tokenizer.py`` and shipped in ``merr1/assets/tiny_tokenizer``.

Special tokens sit at fixed ids 0..9 (``TINY_SPECIAL_TOKENS``), so the tiny models can be
configured without loading the tokenizer. Like the real Qwen tokenizer, ``<think>``, ``</think>``,
``<answer>`` and ``</answer>`` are ordinary text (BPE merges usually make each one token).
"""

from __future__ import annotations

import functools
import json
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import torch

# Same strings as the real Qwen2.5-Omni tokenizer; ids are the tiny tokenizer's.
TINY_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 0,
    "<|im_start|>": 1,
    "<|im_end|>": 2,
    "<|AUDIO|>": 3,
    "<|audio_bos|>": 4,
    "<|audio_eos|>": 5,
    "<|IMAGE|>": 6,
    "<|VIDEO|>": 7,
    "<|vision_bos|>": 8,
    "<|vision_eos|>": 9,
}

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"

# Qwen2's pre-tokenization regex (splits words, numbers, punctuation and whitespace runs).
_QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A minimal Qwen-style chat template (system/user/assistant turns with <|im_start|>/<|im_end|>).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``Qwen2Tokenizer``.

    Training takes well under a second on a few thousand sentences and is deterministic for a
    given corpus.

    Args:
        texts: training corpus.
        vocab_size: total vocabulary size, special tokens included.

    Returns:
        A ``transformers.Qwen2Tokenizer`` with ``TINY_SPECIAL_TOKENS`` at ids 0..9,
        ``eos`` = ``<|im_end|>`` (end of an assistant turn, as in Qwen chat models),
        ``pad`` = ``<|endoftext|>``, and ``TINY_CHAT_TEMPLATE``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    model_state = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model_state["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_state["merges"]]
    for token, idx in TINY_SPECIAL_TOKENS.items():
        if vocab.get(token) != idx:
            raise AssertionError(f"special token {token} not at id {idx}")

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [t for t in TINY_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")]}
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    for token, idx in TINY_SPECIAL_TOKENS.items():
        if tokenizer.convert_tokens_to_ids(token) != idx:
            raise AssertionError(f"special token {token} not at id {idx} after wrapping")
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / Qwen byte-level BPE alphabet: byte -> the printable character that stands for it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}


def token_bytes(tokenizer, token_ids: Sequence[int]) -> list[bytes]:
    """The bytes each token contributes to the decoded text (special tokens stripped).

    Exact for byte-level BPE tokenizers (Qwen's, the tiny one): a token's characters are mapped
    back through the byte alphabet, so a token holding part of a multi-byte character gives its
    raw bytes. Special tokens give ``b""``; tokens of other tokenizers fall back to decoding the
    single id. Callers that look up ids repeatedly use the shared table ``token_bytes_table``.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        token_ids: the ids to look up.
    """
    special_ids = set(tokenizer.all_special_ids)
    out = []
    for token_id, token in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids))):
        if token_id in special_ids or token is None:
            out.append(b"")
        elif all(c in _BYTE_DECODER for c in token):
            out.append(bytes(_BYTE_DECODER[c] for c in token))
        else:
            out.append(tokenizer.decode([token_id], clean_up_tokenization_spaces=False).encode("utf-8"))
    return out


class TokenBytes:
    """The one token -> bytes table of a tokenizer (get it with ``token_bytes_table``).

    Used by the text-level stop strings of generation (``dense``: the whole vocabulary as a padded
    byte matrix), by SFCC's answer-word locator and by the evaluation diagnostics (``__call__``:
    a few ids at a time, filled lazily). Values are ``token_bytes``'s.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, bytes] = {}
        self._dense: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, ids: Sequence[int]) -> list[bytes]:
        """The bytes of each id in ``ids``."""
        cache = self._cache
        try:
            return [cache[i] for i in ids]
        except KeyError:
            missing = sorted({i for i in ids if i not in cache})
            cache.update(zip(missing, token_bytes(self.tokenizer, missing)))
            return [cache[i] for i in ids]

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's bytes: ``(table [V, L] uint8 zero-padded, lengths [V] int64)``, V = ``len(tokenizer)``."""
        if self._dense is None:
            import torch

            vocab_size = len(self.tokenizer)
            pieces = self(range(vocab_size))
            max_len = max(1, max(len(p) for p in pieces))
            flat = bytearray(b"".join(p.ljust(max_len, b"\0") for p in pieces))
            table = torch.frombuffer(flat, dtype=torch.uint8).view(vocab_size, max_len).clone()
            self._dense = (table, torch.tensor([len(p) for p in pieces], dtype=torch.long))
        return self._dense


_TABLES: "weakref.WeakKeyDictionary[object, TokenBytes]" = weakref.WeakKeyDictionary()


def token_bytes_table(tokenizer) -> TokenBytes:
    """The shared ``TokenBytes`` of ``tokenizer`` (built on first use, lives as long as it does)."""
    table = _TABLES.get(tokenizer)
    if table is None:
        table = _TABLES[tokenizer] = TokenBytes(tokenizer)
    return table


END_TOKENS = ("<|im_end|>", "<|endoftext|>")


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end a generated answer: the tokenizer's EOS plus Qwen's end-of-turn and
    end-of-text tokens when the vocabulary has them (Qwen chat checkpoints stop on both)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in END_TOKENS if token in vocab]
    if not ids:
        raise ValueError("the tokenizer has no EOS token and none of " + ", ".join(END_TOKENS))
    return sorted(set(ids))


@functools.lru_cache(maxsize=None)
def _load_tiny_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def tiny_tokenizer(path: str | Path | None = None):
    """The shipped tiny tokenizer (cached; do not mutate the returned object)."""
    path = Path(path) if path is not None else TINY_TOKENIZER_DIR
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(
            f"tiny tokenizer not found at {path}; regenerate it with `python scripts/make_tiny_tokenizer.py`"
        )
    return _load_tiny_tokenizer(str(path))


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a checkpoint directory (real Qwen2.5-Omni/Qwen2 or a tiny one)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return AutoTokenizer.from_pretrained(str(path))
