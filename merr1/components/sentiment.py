"""Emotion words -> sentiment for the sentiment sets of MER-UniBench (METHOD section 3).

MOSI, MOSEI, SIMS and SIMSv2 are scored on sentiment: the predicted emotion words of a sample are
mapped to one of positive / negative / neutral, then ``merr1.score.score_sentiment`` compares
(prediction == "positive") with (GT score > 0) by exact string match. Two mappers, both callables
``mapper(word_lists) -> list[str]`` with a ``describe()`` for the report:

- ``LLMSentimentMapper``: the protocol. A local instruction LLM (Qwen2.5-7B-Instruct in the paper)
  through ``transformers``, with the prompt of AffectGPT's public evaluation code
  (``openset_to_sentiment_qwen``: ``SENTIMENT_PROMPT``, its whitespace included) sent as the only
  user turn of the model's chat template, and the reply cleaned like that code's LLM helper does
  (``clean_response``: strip, drop one leading "Output"/"Input"-style label and colon, remove
  newlines; NO lower-casing). The words are given as ``[w1, w2]`` (the openset list format of
  the prompt's examples; no words -> ``[]``). Deviation: the official code samples
  (temperature 0.7, top-p 0.8, repetition penalty 1.05, 512 new tokens); the default here is
  greedy decoding (``temperature=0``), so a run is deterministic; the sampling settings are
  arguments. ``max_new_tokens`` defaults to 32: a longer reply can never equal "positive" or
  "negative", so the cap cannot change a score.
- ``LexiconSentimentMapper``: a documented fallback for runs without an LLM (CPU, tests). Each
  word is mapped with the official emotion-wheel mapping (METHOD section 2); each wheel where it
  maps votes with the polarity of its level-1 category (``CATEGORY_POLARITY``: happy, joyful,
  joy, powerful, peaceful, genius are positive; surprised is neutral and abstains; the rest are
  negative). A word is positive/negative by majority over its wheels (a tie or no mapping: no
  vote); the sample is "positive" or "negative" by majority over its words, "neutral" on a tie
  or when no word votes. The mapping's quirks carry over: "fear" maps to a positive category on
  four wheels (via "fearless", METHOD section 2) and so counts as positive.

The recipe reports which mapper produced the sentiment scores (``describe()["name"]``): scores
of the lexicon path are NOT comparable with the paper's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from merr1.components.emotion_wheel import EmotionWheels

log = logging.getLogger(__name__)

# AffectGPT's openset -> sentiment prompt (openset_to_sentiment_qwen). Its source continues the
# string over indented lines with backslashes, so every sentence after the first is preceded by
# 12 spaces; reproduced as is. ``{words}`` receives e.g. "[happy, excited]".
_GAP = " " * 12
SENTIMENT_PROMPT = (
    "Please act as an expert in the field of emotions. "
    f"{_GAP}We provide a few words to describe the emotions of a character. "
    f"{_GAP}Please choose the most likely sentiment from the given candidates: [positive, negative, neutral] "
    f"{_GAP}Please direct output answer without analyzing process. "
    f"{_GAP}Input: [joyful]; Output: positive "
    f"{_GAP}Input: []; Output: neutral "
    f"{_GAP}Input: {{words}}; Output: "
)

# Leading labels the official LLM helper removes from a reply, in its order (one pass each).
_REPLY_LABELS = ("输入", "输出", "翻译", "让我们来翻译一下：", "output", "Output", "input", "Input")


def format_words(words: Sequence[str]) -> str:
    """The prompt's list format: ``["happy", "sad"]`` -> ``"[happy, sad]"``; ``[]`` -> ``"[]"``."""
    return "[" + ", ".join(words) + "]"


def clean_response(text: str) -> str:
    """Clean an LLM reply like the official helper: strip; drop each leading label of
    ``_REPLY_LABELS`` once, in order; strip; drop one leading ``:`` or ``：``; strip; remove
    newlines; strip. Case is kept (``score_sentiment`` matches "positive" exactly)."""
    text = text.strip()
    for label in _REPLY_LABELS:
        if text.startswith(label):
            text = text[len(label) :]
    text = text.strip()
    for colon in (":", "："):
        if text.startswith(colon):
            text = text[len(colon) :]
    return text.strip().replace("\n", "").strip()


# ---------------------------------------------------------------------------------------------
# Lexicon fallback


# Polarity of every level-1 category of the five wheels (METHOD section 2 table).
CATEGORY_POLARITY: dict[str, str] = {
    **dict.fromkeys(("happy", "joyful", "joy", "powerful", "peaceful", "genius"), "positive"),
    **dict.fromkeys(
        ("mad", "disgusted", "sad", "scared", "fearful", "angry", "bad", "anger", "fear", "disgust"), "negative"
    ),
    "surprised": "neutral",
}


def _majority(num_positive: int, num_negative: int) -> str:
    if num_positive > num_negative:
        return "positive"
    if num_negative > num_positive:
        return "negative"
    return "neutral"


class LexiconSentimentMapper:
    """Wheel-category lexicon with majority votes (module docstring). No model, no randomness.

    Args:
        wheels: the emotion wheels (default ``EmotionWheels.load()``).
    """

    def __init__(self, wheels: EmotionWheels | None = None) -> None:
        self.wheels = wheels or EmotionWheels.load()
        for k in range(self.wheels.NUM_WHEELS):
            unknown = set(self.wheels.categories(k)) - set(CATEGORY_POLARITY)
            if unknown:
                raise ValueError(f"wheel {k + 1} categories {sorted(unknown)} have no polarity in CATEGORY_POLARITY")

    def word_polarity(self, word: str) -> str:
        """Majority polarity of ``word``'s categories over the wheels where it maps."""
        votes = [CATEGORY_POLARITY[c] for c in self.wheels.map_word(word) if c is not None]
        return _majority(votes.count("positive"), votes.count("negative"))

    def __call__(self, word_lists: Sequence[Sequence[str]]) -> list[str]:
        """One of "positive", "negative", "neutral" per list of emotion words."""
        out = []
        for words in word_lists:
            polarities = [self.word_polarity(w) for w in words]
            out.append(_majority(polarities.count("positive"), polarities.count("negative")))
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": "lexicon"}

    def close(self) -> None:
        """Nothing to release (same interface as ``LLMSentimentMapper``)."""


# ---------------------------------------------------------------------------------------------
# LLM (the protocol)


class LLMSentimentMapper:
    """A local ``transformers`` causal LM answers the protocol's prompt (module docstring).

    The model is loaded on the first call (so a recipe can free its own model first) and kept
    until ``close()``.

    Args:
        model_path: local HF checkpoint directory of an instruction model with a chat template
            (e.g. Qwen2.5-7B-Instruct).
        batch_size: prompts per ``generate`` call (left-padded).
        max_new_tokens: reply length cap.
        temperature: 0 = greedy (deterministic); > 0 samples (the official code used 0.7).
        top_p: nucleus mass when sampling (official 0.8).
        repetition_penalty: as ``transformers`` (official 1.05; applies to greedy decoding too).
        dtype: model dtype (``"bf16"``, ``"fp32"``, ...).
        device: ``"auto"`` (CUDA if available), ``"cuda"`` or ``"cpu"``.
        seed: RNG seed for sampling (unused when greedy).
    """

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 32,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.05,
        dtype: str = "bf16",
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        if not model_path:
            raise ValueError("LLMSentimentMapper needs model_path (a local checkpoint directory)")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1 or repetition_penalty <= 0:
            raise ValueError(
                f"need temperature >= 0, 0 < top_p <= 1, repetition_penalty > 0; got "
                f"{temperature}, {top_p}, {repetition_penalty}"
            )
        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
        self.model_path = str(model_path)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.dtype = dtype
        self.device = device
        self.seed = seed
        self._model = None
        self._tokenizer = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": "llm",
            "model_path": self.model_path,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "max_new_tokens": self.max_new_tokens,
        }

    def prompts(self, word_lists: Sequence[Sequence[str]]) -> list[str]:
        """The chat-formatted prompt text of each word list (one user turn, generation prompt)."""
        tokenizer = self._load()[1]
        messages = [[{"role": "user", "content": SENTIMENT_PROMPT.format(words=format_words(w))}] for w in word_lists]
        return [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from merr1.components.models import resolve_dtype

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            log.info("sentiment mapper: loading %s on %s", self.model_path, device)
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            self._tokenizer.padding_side = "left"
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
            self._model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=resolve_dtype(self.dtype))
            self._model.to(device).eval()
        return self._model, self._tokenizer

    def __call__(self, word_lists: Sequence[Sequence[str]]) -> list[str]:
        """The cleaned reply (e.g. "positive") per list of emotion words, in order."""
        import torch

        if not word_lists:
            return []
        model, tokenizer = self._load()
        texts = self.prompts(word_lists)
        generator_kwargs: dict[str, Any] = {"do_sample": False}
        if self.temperature > 0:
            generator_kwargs = {
                "do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0,
            }  # fmt: skip
            torch.manual_seed(self.seed)
        replies = []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)  # fmt: skip
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    repetition_penalty=self.repetition_penalty,
                    pad_token_id=tokenizer.pad_token_id,
                    **generator_kwargs,
                )
            new_tokens = out[:, batch["input_ids"].shape[1] :]  # [B, T] generated part (left-padded prompts)
            replies += [clean_response(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        return replies

    def close(self) -> None:
        """Free the model (and the CUDA cache)."""
        import torch

        self._model = None
        self._tokenizer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
