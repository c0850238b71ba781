"""Prompt templates for MER-R1 and its variants (METHOD section 1 and 7).

A prompt is one Qwen2.5-Omni chat exchange up to the assistant turn::

    <|im_start|>system\\n{system prompt}<|im_end|>\\n
    <|im_start|>user\\n<|audio_bos|><|AUDIO|>...<|audio_eos|><|vision_bos|><|VIDEO|>...<|vision_eos|>
    Subtitle: "{subtitle}"\\n{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n

Each placeholder is repeated once per feature the Thinker's encoder produces for that sample
(computed from the cached media shapes, see ``num_audio_tokens`` / ``num_video_tokens``). Two media
layouts, both the real Qwen2.5-Omni processor's:

- separate (``use_audio_in_video`` off): audio first, then video, each in its own bos/eos pair
  (above);
- audio in video (``use_audio_in_video`` on, the default for clips with their own sound): the
  clip's audio is interleaved with its video in 2-second chunks inside one block,
  ``<|vision_bos|><|audio_bos|>`` {video tokens of chunk 0}{audio tokens of chunk 0}{video of
  chunk 1}{audio of chunk 1}... ``<|audio_eos|><|vision_eos|>`` (``audio_in_video_chunks``; the
  processor's ``replace_video_with_audio_token``), and the Thinker gives audio and video tokens the
  same time axis (TMRoPE: 25 positions per second) when called with ``use_audio_in_video=True``.

Text-only models use the same template without the media block.

Modes (METHOD section 1):
- slow: the prompt above; the model thinks, then answers.
- fast: the same prompt with the assistant turn prefilled by the response format's empty reasoning,
  for ``mer_r1`` exactly ``FAST_THINKING_PREFIX = "<think></think><answer>"``.

Response formats (``RESPONSE_FORMATS``; each has its own instruction text):
- ``mer_r1``: ``<think>{reason}</think><answer>{words}</answer>``
- ``videoauto_r1``: ``\\boxed{words}<think>{reason}</think>\\boxed{words}`` (fast prefix ``\\boxed{``:
  the early answer a1 is VideoAuto-R1's answer-without-thinking)
- ``emo_r3``: ``<step1>..</step1><step2>..</step2><step3>..</step3><answer>{words}</answer>``

Tokenization. ``<think>``, ``<answer>`` etc. are plain text for the Qwen tokenizers, and byte-level
BPE merges punctuation runs across tag boundaries (``"sad.</think>"`` -> ``".</"``, ``"think"``...).
So responses are encoded as a list of *pieces* (tags and free text), each tokenized separately
and concatenated: the SFT target and the fast-mode prefix then share token boundaries exactly
(the fast prefix ids are a prefix of the ids of a target with empty reasoning), answer words always
start on a fresh token, and the reasoning can be truncated without touching the answer. Use
``encode_target`` / ``encode_fast_prefix`` rather than tokenizing the joined strings. Prompts are
encoded the same way (fixed text before the subtitle, subtitle, fixed text after it; see
``PromptEncoder``): their ids decode to ``build_prompt(...)`` exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_EOS = "<|audio_eos|>"
VISION_BOS = "<|vision_bos|>"
VIDEO_TOKEN = "<|VIDEO|>"
VISION_EOS = "<|vision_eos|>"

# Qwen2.5-Omni's default system prompt (the one its chat template and model card use).
QWEN_OMNI_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)

# METHOD section 1: fast thinking = assistant turn prefilled with an empty think block.
FAST_THINKING_PREFIX = "<think></think><answer>"

# The answer of a sample whose openset is empty (METHOD section 1: empty openset means neutral).
NEUTRAL_ANSWER = "neutral"

_TASK = (
    "As an expert in emotion analysis, infer the emotional state of the person in the video from "
    "the facial expressions, body movements, tone of voice and the subtitle."
)
MER_R1_INSTRUCTION = (
    _TASK + " First think step by step inside <think> </think>, then give every emotion word that "
    "applies, separated by commas, inside <answer> </answer>."
)
VIDEOAUTO_R1_INSTRUCTION = (
    _TASK + " First give your initial answer as \\boxed{emotion words}, then think step by step "
    "inside <think> </think>, then give your final answer as \\boxed{emotion words}. Separate "
    "emotion words by commas."
)
EMO_R3_INSTRUCTION = (
    _TASK + " Reason in three steps: the scene cues inside <step1> </step1>, how a person would "
    "feel in this situation inside <step2> </step2>, the valence and arousal inside "
    "<step3> </step3>. Then give every emotion word that applies, separated by commas, inside "
    "<answer> </answer>."
)

_ANSWER_SLOT = "\x00answer\x00"  # marks where the answer goes when deriving fast prefixes


def split_reason_steps(reason: str) -> tuple[str, str, str]:
    """Split a free-form reasoning text into three contiguous sentence groups (EMO-R3 steps).

    MER-Caption+ reasons are unstructured; they usually describe the cues first and conclude on
    the feeling last, so the sentences are cut into three near-equal consecutive groups (with
    fewer than three sentences, one per step and the last steps empty). A heuristic for SFT
    targets only.
    """
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", reason.strip()) if s]
    n = len(sentences)
    if n < 3:
        padded = sentences + [""] * (3 - n)
        return padded[0], padded[1], padded[2]
    bounds = [round(i * n / 3) for i in range(4)]
    groups = [" ".join(sentences[bounds[i] : bounds[i + 1]]) for i in range(3)]
    return groups[0], groups[1], groups[2]


def _mer_r1_pieces(reason: str, answer: str) -> list[str]:
    return ["<think>", reason, "</think><answer>", answer, "</answer>"]


def _videoauto_r1_pieces(reason: str, answer: str) -> list[str]:
    return ["\\boxed{", answer, "}<think>", reason, "</think>\\boxed{", answer, "}"]


def _emo_r3_pieces(reason: str, answer: str) -> list[str]:
    step1, step2, step3 = split_reason_steps(reason)
    return [
        "<step1>", step1, "</step1><step2>", step2, "</step2><step3>", step3,
        "</step3><answer>", answer, "</answer>",
    ]  # fmt: skip


@dataclass(frozen=True)
class ResponseFormat:
    """How a variant's response looks, how it is asked for, and how its answer is read back.

    Attributes:
        name: variant name (``mer_r1``, ``videoauto_r1``, ``emo_r3``).
        instruction: the task text at the end of the user turn.
        answer_scheme: ``extract_answer`` scheme of the final answer of a slow response.
        fast_answer_scheme: ``extract_answer`` scheme of a fast response (prefix + generation).
        pieces: ``(reason, answer) -> list[str]``, the response as separately tokenized pieces.
    """

    name: str
    instruction: str
    answer_scheme: str
    fast_answer_scheme: str
    pieces: Callable[[str, str], list[str]]

    def target_pieces(self, reason: str, labels: Sequence[str]) -> list[str]:
        """The SFT target as pieces; ``labels`` are joined by ", " (empty -> "neutral")."""
        return self.pieces(reason, format_answer(labels))

    def format_target(self, reason: str, labels: Sequence[str]) -> str:
        """The SFT target as one string, e.g. ``<think>{reason}</think><answer>a, b</answer>``."""
        return "".join(self.target_pieces(reason, labels))

    def fast_prefix_pieces(self) -> list[str]:
        """Pieces of the response before the answer, with empty reasoning (the fast-mode prefill)."""
        pieces = self.pieces("", _ANSWER_SLOT)
        return pieces[: pieces.index(_ANSWER_SLOT)]

    @property
    def fast_prefix(self) -> str:
        """The fast-mode prefill as a string (``FAST_THINKING_PREFIX`` for ``mer_r1``)."""
        return "".join(self.fast_prefix_pieces())


RESPONSE_FORMATS: dict[str, ResponseFormat] = {
    "mer_r1": ResponseFormat("mer_r1", MER_R1_INSTRUCTION, "answer", "answer", _mer_r1_pieces),
    "videoauto_r1": ResponseFormat(
        # a2 / a1 read as VideoAuto-R1's official reward code reads them (issue 13)
        "videoauto_r1", VIDEOAUTO_R1_INSTRUCTION, "videoauto_a2", "videoauto_a1", _videoauto_r1_pieces
    ),
    "emo_r3": ResponseFormat("emo_r3", EMO_R3_INSTRUCTION, "answer", "answer", _emo_r3_pieces),
}
assert RESPONSE_FORMATS["mer_r1"].fast_prefix == FAST_THINKING_PREFIX


def get_response_format(name: str) -> ResponseFormat:
    """The response format called ``name``; ValueError listing the known ones otherwise."""
    if name not in RESPONSE_FORMATS:
        raise ValueError(f"unknown response format {name!r}; expected one of {sorted(RESPONSE_FORMATS)}")
    return RESPONSE_FORMATS[name]


def format_answer(labels: Sequence[str]) -> str:
    """Emotion words joined by ", "; an empty list is the neutral answer."""
    return ", ".join(labels) if labels else NEUTRAL_ANSWER


def num_audio_tokens(num_feature_frames: int) -> int:
    """Audio tokens the Qwen2.5-Omni audio encoder emits for ``num_feature_frames`` mel frames.

    Two stride-2 reductions (conv, then pooling), as ``audio_tower._get_feat_extract_output_lengths``.
    """
    if num_feature_frames < 1:
        raise ValueError(f"audio needs at least one feature frame, got {num_feature_frames}")
    after_conv = (num_feature_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


def num_video_tokens(grid_thw: Sequence[int], spatial_merge_size: int = 2) -> int:
    """Video tokens for a video of patch grid (t, h, w): t*h*w / merge^2."""
    t, h, w = (int(x) for x in grid_thw)
    if h % spatial_merge_size or w % spatial_merge_size:
        raise ValueError(f"video grid {tuple(grid_thw)} is not divisible by merge size {spatial_merge_size}")
    return t * h * w // spatial_merge_size**2


def chunk_lengths(runs: Sequence[tuple[int, int]], tokens_per_chunk: int) -> list[int]:
    """Chunk sizes of a token sequence cut by the Qwen2.5-Omni rule (``get_chunked_index``).

    Walking the tokens, every token whose time value reaches ``current * tokens_per_chunk`` closes
    the open chunk, opens a new one with itself and advances ``current`` by ONE (so a jump over
    several chunk boundaries closes one-token chunks); the open chunk is closed at the end.

    Args:
        runs: the sequence as (time value, number of consecutive tokens with it), non-decreasing.
        tokens_per_chunk: time values per chunk (position_id_per_seconds * seconds_per_chunk).
    """
    lengths, current, size = [], 1, 0
    for value, count in runs:
        triggers = min(count, max(0, value // tokens_per_chunk + 1 - current))
        for _ in range(triggers):
            lengths.append(size)
            size, current = 1, current + 1
        size += count - triggers
    return lengths + [size]


def audio_in_video_chunks(
    num_audio: int,
    grid_thw: Sequence[int],
    second_per_grid: float,
    *,
    spatial_merge_size: int = 2,
    position_id_per_seconds: int = 25,
    seconds_per_chunk: float = 2.0,
) -> list[tuple[int, int]]:
    """(video tokens, audio tokens) of each chunk of a clip whose own audio is interleaved with its
    video (Qwen2.5-Omni ``use_audio_in_video``).

    Time values: a video token of temporal patch i has ``int(i * second_per_grid * 25)`` (float32, as
    the Thinker's ``get_rope_index``), audio token k has k (one audio token = 40 ms); chunk j
    holds the values in [50 j, 50 (j + 1)) (``chunk_lengths``). The video chunks come first in each
    pair; a chunk past the end of one modality contributes 0 tokens of it.

    Args:
        num_audio: audio tokens of the clip's sound (``num_audio_tokens``).
        grid_thw: the clip's video patch grid (t, h, w).
        second_per_grid: its ``video_second_per_grid``.
        spatial_merge_size, position_id_per_seconds, seconds_per_chunk: the Thinker config's.
    """
    import torch

    t, h, w = (int(x) for x in grid_thw)
    per_frame = (h // spatial_merge_size) * (w // spatial_merge_size)
    if num_audio < 1 or t < 1 or per_frame < 1:
        raise ValueError(f"audio in video needs audio and video tokens, got {num_audio} and grid {tuple(grid_thw)}")
    times = (torch.arange(t) * torch.tensor(float(second_per_grid)) * position_id_per_seconds).long().tolist()
    per_chunk = int(position_id_per_seconds * seconds_per_chunk)
    video = chunk_lengths([(v, per_frame) for v in times], per_chunk)
    audio = [per_chunk] * (num_audio // per_chunk) + ([num_audio % per_chunk] if num_audio % per_chunk else [])
    return [
        (video[j] if j < len(video) else 0, audio[j] if j < len(audio) else 0) for j in range(max(len(video), len(audio)))
    ]


def media_placeholder(
    num_audio: int = 0, num_video: int = 0, audio_in_video: Sequence[tuple[int, int]] | None = None
) -> str:
    """The media block of the user turn; empty for text-only prompts.

    Args:
        num_audio: audio placeholders (0: no audio).
        num_video: video placeholders (0: no video).
        audio_in_video: the ``audio_in_video_chunks`` of the clip: one interleaved block (their
            sums must be ``num_video`` and ``num_audio``); None: audio block, then video block.
    """
    if audio_in_video is not None:
        if sum(v for v, _ in audio_in_video) != num_video or sum(a for _, a in audio_in_video) != num_audio:
            raise ValueError(f"audio-in-video chunks {list(audio_in_video)} do not sum to {num_video} video and {num_audio} audio tokens")
        body = "".join(VIDEO_TOKEN * v + AUDIO_TOKEN * a for v, a in audio_in_video)
        return VISION_BOS + AUDIO_BOS + body + AUDIO_EOS + VISION_EOS
    text = ""
    if num_audio:
        text += AUDIO_BOS + AUDIO_TOKEN * num_audio + AUDIO_EOS
    if num_video:
        text += VISION_BOS + VIDEO_TOKEN * num_video + VISION_EOS
    return text


def user_text(subtitle: str, instruction: str) -> str:
    """The text part of the user turn: the subtitle, then the instruction."""
    return f'Subtitle: "{subtitle.strip()}"\n{instruction}'


def prompt_pieces(
    subtitle: str,
    response_format: ResponseFormat | str = "mer_r1",
    *,
    num_audio: int = 0,
    num_video: int = 0,
    system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
    instruction: str | None = None,
    fast: bool = False,
    audio_in_video: Sequence[tuple[int, int]] | None = None,
) -> list[str]:
    """The prompt as pieces: [fixed text before the subtitle, subtitle, fixed text after it,
    then the fast-mode prefill pieces when ``fast``]. Arguments as ``build_prompt``."""
    fmt = get_response_format(response_format) if isinstance(response_format, str) else response_format
    system = f"{IM_START}system\n{system_prompt}{IM_END}\n" if system_prompt is not None else ""
    task = fmt.instruction if instruction is None else instruction
    head, tail = user_text("\x00", task).split("\x00")
    header = f"{system}{IM_START}user\n{media_placeholder(num_audio, num_video, audio_in_video)}{head}"
    footer = f"{tail}{IM_END}\n{IM_START}assistant\n"
    return [header, subtitle.strip(), footer] + (fmt.fast_prefix_pieces() if fast else [])


def build_prompt(
    subtitle: str,
    response_format: ResponseFormat | str = "mer_r1",
    *,
    num_audio: int = 0,
    num_video: int = 0,
    system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
    instruction: str | None = None,
    fast: bool = False,
    audio_in_video: Sequence[tuple[int, int]] | None = None,
) -> str:
    """The whole prompt string up to (and including) the assistant header.

    Args:
        subtitle: the clip's (English) subtitle.
        response_format: a ``ResponseFormat`` or its name.
        num_audio: number of ``<|AUDIO|>`` placeholders (0: no audio block).
        num_video: number of ``<|VIDEO|>`` placeholders (0: no video block).
        system_prompt: system turn text; None leaves the system turn out.
        instruction: replaces the format's instruction text (e.g. a short one for tiny models).
        fast: append the format's fast-mode prefill after the assistant header.
        audio_in_video: interleave the audio with the video (``audio_in_video_chunks``).
    """
    return "".join(
        prompt_pieces(
            subtitle,
            response_format,
            num_audio=num_audio,
            num_video=num_video,
            system_prompt=system_prompt,
            instruction=instruction,
            fast=fast,
            audio_in_video=audio_in_video,
        )
    )


def build_chat_prompt(
    text: str,
    *,
    num_audio: int = 0,
    num_video: int = 0,
    system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
    audio_in_video: Sequence[tuple[int, int]] | None = None,
) -> str:
    """A plain chat turn up to the assistant header: system turn, then a user turn of the media
    block and ``text`` (no subtitle wrapper, no response-format instruction). Used for second
    passes of the policy such as EMO-R3's re-check questions."""
    system = f"{IM_START}system\n{system_prompt}{IM_END}\n" if system_prompt is not None else ""
    media = media_placeholder(num_audio, num_video, audio_in_video)
    return f"{system}{IM_START}user\n{media}{text}{IM_END}\n{IM_START}assistant\n"


def recheck_prompt_ids(tokenizer, query: str, prompt_ids: Sequence[int], *, use_media: bool) -> list[int]:
    """Ids of a plain chat turn asking ``query``, for second passes of the policy (EMO-R3's re-checks).

    The turn is set up like the rollout it re-checks: the system turn of ``prompt_ids`` (the
    rollout's own prompt) is copied verbatim, and with ``use_media`` so is its media block (from its
    first media start token to its last media end token), whatever its layout (audio then video, or
    audio interleaved in the video), so the rollout's media kwargs fit the re-check. The result is
    ``build_chat_prompt(query, ...)`` tokenized, with that system prompt and those placeholders.

    Args:
        tokenizer: the policy's tokenizer.
        query: the user text.
        prompt_ids: the unpadded prompt of the rollout being re-checked.
        use_media: attach the prompt's media block (a text-only turn otherwise).

    Returns:
        The prompt ids up to and including the assistant header.
    """
    ids = list(prompt_ids)
    im_start, im_end = _token_id(tokenizer, IM_START), _token_id(tokenizer, IM_END)
    system: list[int] = []
    if ids and ids[0] == im_start and im_end in ids:
        end = ids.index(im_end)
        if tokenizer.decode(ids[1:end]).startswith("system\n"):
            system = ids[: end + 1] + encode_text(tokenizer, "\n")
    media: list[int] = []
    if use_media:
        vocab = tokenizer.get_vocab()
        starts = {vocab[t] for t in (AUDIO_BOS, VISION_BOS) if t in vocab}
        ends = {vocab[t] for t in (AUDIO_EOS, VISION_EOS) if t in vocab}
        first = next((i for i, t in enumerate(ids) if t in starts), None)
        last = next((i for i in range(len(ids) - 1, -1, -1) if ids[i] in ends), None)
        if first is not None and last is not None and first < last:
            media = ids[first : last + 1]
    head = system + encode_text(tokenizer, f"{IM_START}user\n")
    return head + media + encode_text(tokenizer, f"{query}{IM_END}\n{IM_START}assistant\n")


def _token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"tokenizer has no special token {token}")
    return token_id


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS additions (special-token strings are recognized)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_pieces(tokenizer, pieces: Sequence[str]) -> list[int]:
    """Concatenation of the separately tokenized pieces."""
    return [i for piece in pieces for i in encode_text(tokenizer, piece)]


class PromptEncoder:
    """Token ids of prompts of one configuration, with the fixed pieces tokenized once.

    Prompt ids are the pieces of ``prompt_pieces`` tokenized separately (the fixed text before and
    after the subtitle is cached), so they decode to ``build_prompt(...)`` exactly and equal its
    direct tokenization except possibly at the two subtitle boundaries. Media placeholders are
    tokenized once each and repeated (special tokens are split out before BPE, so this equals
    tokenizing the expanded string), which costs no tokenizer time for thousands of video tokens.

    Args:
        tokenizer: HF tokenizer with the Qwen special tokens.
        response_format: format or its name.
        system_prompt: system turn (None: no system turn).
        instruction: replaces the format's instruction (None: the format's own).
    """

    def __init__(
        self,
        tokenizer,
        response_format: ResponseFormat | str = "mer_r1",
        system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
        instruction: str | None = None,
    ):
        self.tokenizer = tokenizer
        self.format = get_response_format(response_format) if isinstance(response_format, str) else response_format
        self.system_prompt = system_prompt
        self.instruction = instruction
        self.audio_id = _token_id(tokenizer, AUDIO_TOKEN)
        self.video_id = _token_id(tokenizer, VIDEO_TOKEN)
        self._fixed: dict[tuple[bool, bool, bool, bool], tuple[list[int], list[int]]] = {}

    def _fixed_ids(
        self, has_audio: bool, has_video: bool, fast: bool, interleaved: bool = False
    ) -> tuple[list[int], list[int]]:
        key = (has_audio, has_video, fast, interleaved)
        if key not in self._fixed:
            pieces = prompt_pieces(
                "",
                self.format,
                num_audio=int(has_audio),
                num_video=int(has_video),
                system_prompt=self.system_prompt,
                instruction=self.instruction,
                fast=fast,
                audio_in_video=[(1, 1)] if interleaved else None,
            )
            self._fixed[key] = (encode_text(self.tokenizer, pieces[0]), encode_pieces(self.tokenizer, pieces[2:]))
        return self._fixed[key]

    def encode_subtitle(self, subtitle: str) -> list[int]:
        """Token ids of the subtitle piece."""
        return encode_text(self.tokenizer, subtitle.strip())

    def encode_subtitles(self, subtitles: Sequence[str]) -> list[list[int]]:
        """``encode_subtitle`` of many subtitles in one tokenizer call."""
        texts = [s.strip() for s in subtitles]
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [i if t else [] for i, t in zip(ids, texts)]

    def assemble(
        self,
        subtitle_ids: Sequence[int],
        num_audio: int = 0,
        num_video: int = 0,
        fast: bool = False,
        audio_in_video: Sequence[tuple[int, int]] | None = None,
    ) -> list[int]:
        """Prompt ids from already tokenized subtitle ids (placeholders expanded; with
        ``audio_in_video`` chunks, one interleaved audio-video block)."""
        if audio_in_video is not None:
            media_placeholder(num_audio, num_video, audio_in_video)  # checks the chunk sums
        header, footer = self._fixed_ids(num_audio > 0, num_video > 0, fast, audio_in_video is not None)
        expanded: list[int] = []
        for i in header:
            if audio_in_video is not None and i in (self.audio_id, self.video_id):
                if i == self.video_id:  # the one-token template block is <VIDEO><AUDIO>
                    for v, a in audio_in_video:
                        expanded += [self.video_id] * v + [self.audio_id] * a
            elif i == self.audio_id:
                expanded += [i] * num_audio
            elif i == self.video_id:
                expanded += [i] * num_video
            else:
                expanded.append(i)
        return expanded + list(subtitle_ids) + footer

    def prompt_length(
        self,
        num_subtitle_tokens: int,
        num_audio: int = 0,
        num_video: int = 0,
        fast: bool = False,
        audio_in_video: bool = False,
    ) -> int:
        """Length of ``assemble(...)`` without building it (``audio_in_video``: whether interleaved)."""
        header, footer = self._fixed_ids(num_audio > 0, num_video > 0, fast, audio_in_video)
        return len(header) + len(footer) + num_subtitle_tokens + max(num_audio - 1, 0) + max(num_video - 1, 0)

    def encode(
        self,
        subtitle: str,
        num_audio: int = 0,
        num_video: int = 0,
        fast: bool = False,
        audio_in_video: Sequence[tuple[int, int]] | None = None,
    ) -> list[int]:
        """Prompt ids with ``num_audio`` / ``num_video`` placeholders (fast: with the prefill)."""
        return self.assemble(self.encode_subtitle(subtitle), num_audio, num_video, fast, audio_in_video)

    def fast_prefix_ids(self) -> list[int]:
        """Token ids of the fast-mode prefill (``encode_fast_prefix``)."""
        return encode_pieces(self.tokenizer, self.format.fast_prefix_pieces())


def encode_prompt(
    tokenizer,
    subtitle: str,
    response_format: ResponseFormat | str = "mer_r1",
    *,
    num_audio: int = 0,
    num_video: int = 0,
    system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
    instruction: str | None = None,
    fast: bool = False,
    audio_in_video: Sequence[tuple[int, int]] | None = None,
) -> list[int]:
    """Token ids of ``build_prompt(...)`` (one-off use; see ``PromptEncoder``)."""
    encoder = PromptEncoder(tokenizer, response_format, system_prompt, instruction)
    return encoder.encode(subtitle, num_audio, num_video, fast, audio_in_video)


def encode_fast_prefix(tokenizer, response_format: ResponseFormat | str = "mer_r1") -> list[int]:
    """Token ids of the fast-mode prefill (to append to slow-prompt ids, e.g. for SFCC's p_fast)."""
    fmt = get_response_format(response_format) if isinstance(response_format, str) else response_format
    return encode_pieces(tokenizer, fmt.fast_prefix_pieces())


def encode_target(
    tokenizer,
    reason: str,
    labels: Sequence[str],
    response_format: ResponseFormat | str = "mer_r1",
    *,
    max_reason_tokens: int | None = None,
) -> tuple[list[int], int]:
    """Token ids of an SFT target followed by the end-of-turn token ``<|im_end|>``.

    Args:
        reason: reasoning text.
        labels: ground-truth emotion words (empty -> "neutral").
        response_format: format or its name.
        max_reason_tokens: keep at most this many reasoning tokens (its end is cut); None keeps all.

    Returns:
        (ids, num_reason_tokens_dropped).
    """
    fmt = get_response_format(response_format) if isinstance(response_format, str) else response_format
    reason_ids = encode_text(tokenizer, reason.strip())
    num_dropped = 0
    if max_reason_tokens is not None and len(reason_ids) > max_reason_tokens:
        num_dropped = len(reason_ids) - max(max_reason_tokens, 0)
        reason_ids = reason_ids[: max(max_reason_tokens, 0)]
    if fmt.name == "emo_r3":
        # Steps are cut from the (possibly truncated) reason text, so decode it back first.
        reason_text = tokenizer.decode(reason_ids)
        ids = encode_pieces(tokenizer, fmt.target_pieces(reason_text, labels))
    else:
        marker = "\x00reason\x00"
        ids = []
        for piece in fmt.target_pieces(marker, labels):
            ids += reason_ids if piece == marker else encode_text(tokenizer, piece)
    return ids + [_token_id(tokenizer, IM_END)], num_dropped
