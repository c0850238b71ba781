"""VideoAuto-R1 early-exit inference (METHOD section 7; issue 13).

A VideoAuto-R1 model answers ``\\boxed{a1}<think>...</think>\\boxed{a2}``. At inference the
early answer a1 is kept, and the thinking skipped, when the model is confident in it:

1. Decode a1 first: the response until its box closes (stop string ``"}"``, besides the
   sampling config's own EOS / stops), at most ``answer_max_new_tokens`` tokens.
2. Confidence = exp(mean log p) over the tokens of a1's box content (the geometric mean token
   probability, as the official code computes it). Undefined (-1, never exits) when the text
   before ``<think>`` holds no complete box or several, when the content is empty, and when it
   starts (stripped) with ``"Let's analyze"``, the trained way of declining to answer early.
3. Exit when confidence >= ``threshold`` (0.97, the official default): the answer is a1.
   Otherwise continue: a second ``generate`` call on prompt + the a1 tokens decodes the rest
   (thinking and a2) under the remaining token budget; the answer is a2. a1 and a2 are read with
   the official rules (``merr1.rewards.videoauto.split_answers``) from the decoded text.

Why a second ``generate`` call instead of keeping the KV state: ``generate`` stays the one
rollout engine (no cache plumbing through its API), the second call runs only on the rows that
did not exit (the batch shrinks, which is the point of exiting early), and its extra cost is one
prefill of prompt + a1 (the media encoders included) against hundreds of decoded thinking tokens.
With greedy decoding the result equals one uninterrupted ``generate`` call up to float round-off
(tested: the same tokens on the tiny models); sampled continuations draw from the same
distribution but not the same random stream.

Deviations from the official code (IVUL-KAUST/VideoAuto-R1 at f7d91a3,
``lmms_eval/models/simple/early_exit.py`` and ``qwen2_5_vl_autothink.py``), deliberate:

- It decodes the whole response for every sample and then picks a1 or a2; here the thinking
  is really skipped (``decode_all=True`` decodes it anyway, to measure the tokens saved and
  score a2 on every sample). It requires at least two boxes in the full response and takes the
  FIRST box anywhere; the full response does not exist when exiting early, so here a1's box is
  the one box before ``<think>`` in the a1 stage (the a1 rule of its reward code).
- It finds a1's tokens by re-encoding the box content (after its multiple-choice letter
  normalisation) and searching that token sequence in the response; here the tokens are those
  whose bytes overlap the content's bytes, so a token merging ``{`` with the first letters
  (``{happy``) counts. Emotion answers are words, not choice letters: no letter normalisation.
- Its token log-probs come from ``generate``'s processed scores (greedy: the raw logits, with
  any repetition penalty of the checkpoint's generation config; sampling: after temperature and
  top-p); here they are ``merr1.components.generation``'s log-probs: under ``logits /
  temperature`` before top-k / top-p, at temperature 1 for greedy, no repetition penalty.
- A box whose content has nested braces closes at its first ``}`` in the a1 stage: it gets no
  confidence (no exit) and decoding simply continues.

``summarize_early_exit`` aggregates the records: early-exit rate, tokens used and saved, and the
emotion-set scores (``merr1.rewards.emotion_set.set_scores``: wheel-averaged recall, precision,
F1) of a1, a2 and the chosen answer.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from merr1.components.data.collate import select_media
from merr1.components.generation import Generators, Rollouts, SamplingConfig, StopStrings, generate
from merr1.components.tokenizer import token_bytes_table

DEFAULT_THRESHOLD = 0.97
FALLBACK_PREFIX = "Let's analyze"
# A box with one level of nested braces (emotion_wheel.videoauto_box), on bytes.
_BOX = re.compile(rb"\\boxed\{((?:[^{}]++|\{[^{}]*+\})*+)\}")


@dataclass
class EarlyExitRecord:
    """One sample's early-exit decode.

    Attributes:
        response: the decoded response (special tokens stripped): the a1 stage, plus the rest when
            it was decoded.
        a1: the early answer (``split_answers`` of ``response``; ``""`` when none).
        a2: the final answer, or None when it was not decoded (exited without ``decode_all``).
        answer: the chosen answer: a1 if exited, else a2.
        exited: whether a1 was confident enough.
        confidence: exp(mean log p) of a1's content tokens; -1.0 when undefined (module docstring).
        num_answer_tokens: tokens decoded in the a1 stage.
        num_think_tokens: tokens decoded after it (0 when not decoded).
        num_tokens: tokens early exit needs: the a1 stage if exited, else both stages.
        num_tokens_saved: exited: the thinking tokens skipped, measured when they were decoded
            anyway (``decode_all``), else None; 0 when not exited.
        finished: the response ended (EOS / stop) within the budget; True when exited.
    """

    response: str
    a1: str
    a2: str | None
    answer: str
    exited: bool
    confidence: float
    num_answer_tokens: int
    num_think_tokens: int
    num_tokens: int
    num_tokens_saved: int | None
    finished: bool


def answer_confidence(token_bytes: Sequence[bytes], logprobs: Sequence[float], prefix: str = FALLBACK_PREFIX) -> float:
    """Confidence of the early answer in the a1 stage's tokens (module docstring, step 2).

    Args:
        token_bytes: the bytes each generated token decodes to (special tokens: ``b""``).
        logprobs: each token's log-prob.
        prefix: content starting with it (stripped) declines to answer: no confidence.

    Returns:
        exp(mean log p) over the tokens overlapping the content of the only box before
        ``<think>``, or -1.0 when undefined.
    """
    text = b"".join(token_bytes)
    head = text.split(b"<think>", 1)[0]
    boxes = list(_BOX.finditer(head))
    if len(boxes) != 1:
        return -1.0
    start, end = boxes[0].span(1)
    content = boxes[0].group(1).decode("utf-8", errors="replace")
    if start == end or content.strip().startswith(prefix):
        return -1.0
    picked, offset = [], 0
    for piece, logprob in zip(token_bytes, logprobs):
        if offset < end and offset + len(piece) > start:
            picked.append(float(logprob))
        offset += len(piece)
    return math.exp(sum(picked) / len(picked))


def _with_stop(config: SamplingConfig, tokenizer, text: str) -> StopStrings:
    """The config's stop strings plus ``text`` (built from the tokenizer's shared byte table)."""
    if config.stop_strings is None:
        return StopStrings.from_tokenizer(tokenizer, [text])
    return dataclasses.replace(config.stop_strings, patterns=(*config.stop_strings.patterns, text.encode("utf-8")))


def _ended(ids: list[int], text: bytes, config: SamplingConfig) -> bool:
    """Whether a response stopped by the config's own EOS / stops (not the added ``"}"``)."""
    if ids and ids[-1] in config.eos_token_ids:
        return True
    if any(len(seq) <= len(ids) and ids[-len(seq) :] == list(seq) for seq in config.stop_sequences):
        return True
    patterns = config.stop_strings.patterns if config.stop_strings is not None else ()
    return any(p in text for p in patterns)


def _rows(rollouts: Rollouts, row: int) -> tuple[list[int], list[float]]:
    keep = rollouts.response_mask[row]
    return rollouts.response_ids[row][keep].tolist(), rollouts.logprobs[row][keep].tolist()


@torch.no_grad()
def early_exit_generate(
    model: nn.Module,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    config: SamplingConfig,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    answer_max_new_tokens: int = 64,
    decode_all: bool = False,
    media: dict[str, torch.Tensor] | None = None,
    generator: Generators = None,
    fallback_prefix: str = FALLBACK_PREFIX,
) -> list[EarlyExitRecord]:
    """Answer each prompt with VideoAuto-R1 early exit (module docstring).

    Args:
        model: the policy (Thinker or Qwen2 LM), as for ``generate``.
        tokenizer: its tokenizer (stop string, token bytes, decoding).
        prompt_ids: left-padded prompts. # [B, P]
        prompt_mask: 1/True on prompt tokens. # [B, P]
        config: sampling settings; ``max_new_tokens`` caps the WHOLE response (both stages).
        threshold: exit when a1's confidence >= it; > 1 never exits (always think).
        answer_max_new_tokens: cap of the a1 stage.
        decode_all: also decode the thinking and a2 of exited samples (a2 scores and measured
            tokens saved on every sample; no compute is saved).
        media: the Thinker's media kwargs of the B prompts.
        generator: RNG for sampling, or one generator per prompt (a list of B).
        fallback_prefix: an a1 starting with it declines to answer (never exits).

    Returns:
        One ``EarlyExitRecord`` per prompt, in order.
    """
    from merr1.rewards.videoauto import split_answers

    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 (above 1: never exit), got {threshold}")
    if answer_max_new_tokens < 1:
        raise ValueError(f"answer_max_new_tokens must be >= 1, got {answer_max_new_tokens}")
    num_prompts = prompt_ids.shape[0]
    table = token_bytes_table(tokenizer)

    # 1. The a1 stage: stop when the box closes.
    first_config = dataclasses.replace(
        config,
        max_new_tokens=min(answer_max_new_tokens, config.max_new_tokens),
        stop_strings=_with_stop(config, tokenizer, "}"),
    )
    first = generate(model, prompt_ids, prompt_mask, first_config, media=media, generator=generator)
    stage = []  # per prompt: (ids, confidence, exited, stopped: ended by EOS / stop, exhausted: no budget left)
    for b in range(num_prompts):
        ids, logprobs = _rows(first, b)
        pieces = table(ids)
        confidence = answer_confidence(pieces, logprobs, fallback_prefix)
        stopped = _ended(ids, b"".join(pieces), config)
        stage.append((ids, confidence, confidence >= threshold, stopped, len(ids) >= config.max_new_tokens))

    # 2. The rest, for the rows that did not exit (all with decode_all), on prompt + a1 tokens.
    rows = [b for b, (_, _, exited, stopped, exhausted) in enumerate(stage)
            if (decode_all or not exited) and not (stopped or exhausted)]  # fmt: skip
    rest: dict[int, tuple[list[int], bool]] = {}
    if rows:
        budgets = [config.max_new_tokens - len(stage[b][0]) for b in rows]
        prompts = [
            torch.cat([
                prompt_ids[b][prompt_mask[b].bool()],
                torch.tensor(stage[b][0], dtype=prompt_ids.dtype, device=prompt_ids.device),
            ])  # fmt: skip
            for b in rows
        ]
        width = max(len(p) for p in prompts)
        ids2 = prompt_ids.new_zeros(len(rows), width)
        mask2 = torch.zeros(len(rows), width, dtype=torch.long, device=prompt_ids.device)
        for i, p in enumerate(prompts):
            ids2[i, width - len(p) :] = p
            mask2[i, width - len(p) :] = 1
        second_generator = [generator[b] for b in rows] if isinstance(generator, (list, tuple)) else generator
        second = generate(
            model,
            ids2,
            mask2,
            dataclasses.replace(config, max_new_tokens=max(budgets)),
            media=(select_media(media, num_prompts, rows) if media else None),
            generator=second_generator,
        )
        for i, (b, budget) in enumerate(zip(rows, budgets)):
            ids, _ = _rows(second, i)
            finished = bool(second.finished[i]) and len(ids) <= budget
            rest[b] = (ids[:budget], finished)

    # 3. Records.
    records = []
    for b, (ids, confidence, exited, stopped, exhausted) in enumerate(stage):
        more, finished = rest.get(b, ([], stopped))
        response = tokenizer.decode(ids + more, skip_special_tokens=True)
        a1, a2 = split_answers(response)
        decoded = b in rest or stopped or exhausted  # the response is complete (or cut at the cap)
        records.append(
            EarlyExitRecord(
                response=response,
                a1=a1,
                a2=a2 if decoded else None,
                answer=a1 if exited else a2,
                exited=exited,
                confidence=confidence,
                num_answer_tokens=len(ids),
                num_think_tokens=len(more),
                num_tokens=len(ids) + (0 if exited else len(more)),
                num_tokens_saved=(len(more) if decoded else None) if exited else 0,
                finished=True if exited else finished,
            )
        )
    return records


def summarize_early_exit(records: Sequence[EarlyExitRecord], labels: Sequence[Sequence[str]]) -> dict:
    """Early-exit rate, tokens and the scores of a1, a2 and the chosen answer.

    Args:
        records: from ``early_exit_generate``.
        labels: each record's ground-truth emotion words (parsed).

    Returns:
        ``num_samples``, ``num_exited``, ``early_exit_rate``, ``mean_confidence`` (over defined
        confidences; None if none), ``mean_tokens`` (tokens early exit needs per sample),
        ``tokens_saved`` and ``tokens_saved_fraction`` (of the tokens a full decode takes; None
        unless every exited sample's saving was measured, ``decode_all``), ``num_a2`` (samples
        whose a2 was decoded), and ``{a1, a2, answer}/{recall, precision, f1}``: mean
        emotion-set scores (a2 over the ``num_a2`` samples; None when there are none).
    """
    from merr1.rewards.emotion_set import batch_gt_masks, parse_answers, set_scores

    if len(records) != len(labels):
        raise ValueError(f"{len(records)} records but {len(labels)} label lists")
    if not records:
        raise ValueError("no records to summarize")
    num = len(records)
    exited = [r for r in records if r.exited]
    confidences = [r.confidence for r in records if r.confidence >= 0]
    used = sum(r.num_tokens for r in records)
    saved = None
    if all(r.num_tokens_saved is not None for r in exited):
        saved = sum(r.num_tokens_saved for r in exited)
    summary = {
        "num_samples": num,
        "num_exited": len(exited),
        "early_exit_rate": len(exited) / num,
        "mean_confidence": sum(confidences) / len(confidences) if confidences else None,
        "mean_tokens": used / num,
        "tokens_saved": saved,
        "tokens_saved_fraction": None if saved is None else saved / max(used + saved, 1),
    }
    gt = batch_gt_masks([list(words) for words in labels], 1)  # [N, K]
    with_a2 = [i for i, r in enumerate(records) if r.a2 is not None]
    summary["num_a2"] = len(with_a2)
    for name, answers, index in (
        ("a1", [r.a1 for r in records], list(range(num))),
        ("a2", [records[i].a2 for i in with_a2], with_a2),
        ("answer", [r.answer for r in records], list(range(num))),
    ):
        if not index:
            summary.update({f"{name}/{m}": None for m in ("recall", "precision", "f1")})
            continue
        scores = set_scores(parse_answers(answers).pred_masks, gt[index])
        summary.update({f"{name}/{m}": scores[m].mean().item() for m in ("recall", "precision", "f1")})
    return summary
