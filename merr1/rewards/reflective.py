"""EMO-R3 reflective rewards (METHOD section 7): re-checks scored by a second pass of the policy.

A response ``<step1>scene cues</step1><step2>how a person would feel</step2><step3>valence and
arousal</step3><answer>...</answer>`` is re-checked twice:

- text re-check (``text_recheck``): the policy sees steps 1-2 only (no media) and is asked which
  emotion best describes the text; its reply is scored against the GT: the MER-UniBench hit
  rate, i.e. the mean over the wheels with a GT of [reply categories ∩ G_k ≠ ∅] (1 / 0 when the
  wheels agree); 0.5 if the reply holds no emotion word (empty); 0 if the GT maps to nothing.
  The reply is read like an answer: its ``<answer>`` content if any, else the whole reply
  without reasoning blocks, split with the official list rule (so "happy, calm" works and a
  sentence is one item that usually maps to nothing).
- modality re-check (``modality_recheck``): the policy sees the media and step 1 and is asked
  whether the text describes the input; 1 if the reply starts with "yes", 0 with "no",
  0.5 otherwise (case-insensitive, after stripping spaces and punctuation).

A response without the step blocks needed for a re-check gets 0 for it (no query is sent): the
re-check cannot vouch for a response that skipped the structure.

Interface for rewards that need a second policy pass: the reward builds ``RecheckQuery`` objects
(the user-turn text; ``use_media`` says whether the prompt's media go with it), the recipe supplies
``batch.extras["reflective_generate"]``: a callable taking the list of queries of the whole batch
and returning one decoded reply per query (batched generation with the current policy, e.g.
greedy, short). EMO-R3's total: one advantage group ``{f1: 0.8, text_recheck: 0.05,
modality_recheck: 0.05, format: 0.1}`` (0.1 for the two re-checks together).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from merr1.components.emotion_wheel import extract_answer
from merr1.rewards.base import RewardBatch, RewardOutput
from merr1.rewards.emotion_set import batch_gt_masks, parse_answers, popcount

TEXT_RECHECK_QUESTION = "Which emotion best describes the text above? Answer with emotion words only."
MODALITY_RECHECK_QUESTION = "Can this text describe the input? Answer yes or no."

_STEP = {k: re.compile(rf"<step{k}>(.*?)</step{k}>", re.DOTALL) for k in (1, 2)}
_LEADING_NOISE = re.compile(r"^[\s\W_]+")


@dataclass(frozen=True)
class RecheckQuery:
    """One re-check prompt for the second policy pass.

    Attributes:
        kind: ``"text"`` or ``"modality"``.
        prompt_index: the prompt b whose media go with the query when ``use_media``.
        response_index: the response ``b*G+g`` being re-checked.
        text: the user-turn text (the recipe sends it as a plain user turn: no subtitle, no
            response-format instruction).
        use_media: attach the prompt's media (modality re-check) or not (text re-check).
        max_new_tokens: the reply's token budget (short: a word list or yes/no).
    """

    kind: str
    prompt_index: int
    response_index: int
    text: str
    use_media: bool
    max_new_tokens: int = 32


def extract_step(response: str, k: int) -> str | None:
    """Content of the first ``<step{k}>...</step{k}>`` (stripped), or None."""
    match = _STEP[k].search(response)
    return match.group(1).strip() if match else None


def yes_no_score(reply: str) -> float:
    """1.0 for a reply starting with "yes", 0.0 for "no", 0.5 otherwise."""
    head = _LEADING_NOISE.sub("", reply).lower()
    word = re.match(r"[a-z]+", head)
    word = word.group(0) if word else ""
    return 1.0 if word == "yes" else 0.0 if word == "no" else 0.5


class ReflectiveRewards:
    """EMO-R3 re-check rewards; outputs ``text_recheck`` and ``modality_recheck``.

    Args:
        extras_key: where the recipe puts the generate callback
            (``Callable[[list[RecheckQuery]], list[str]]``).
        text_question: appended after steps 1-2 for the text re-check.
        modality_question: appended after step 1 for the modality re-check.
    """

    outputs = ("text_recheck", "modality_recheck")

    def __init__(
        self,
        extras_key: str = "reflective_generate",
        text_question: str = TEXT_RECHECK_QUESTION,
        modality_question: str = MODALITY_RECHECK_QUESTION,
        max_new_tokens: int = 32,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.extras_key = extras_key
        self.text_question = text_question
        self.modality_question = modality_question
        self.max_new_tokens = max_new_tokens

    def queries(self, batch: RewardBatch) -> list[RecheckQuery]:
        """The re-check queries of a batch (responses lacking the needed steps get none)."""
        out: list[RecheckQuery] = []
        for b, group in enumerate(batch.responses):
            for g, response in enumerate(group):
                i = b * batch.group_size + g
                step1, step2 = extract_step(response, 1), extract_step(response, 2)
                if step1 is not None and step2 is not None:
                    out.append(RecheckQuery("text", b, i, f"{step1}\n{step2}\n{self.text_question}", False, self.max_new_tokens))
                if step1 is not None:
                    out.append(RecheckQuery("modality", b, i, f"{step1}\n{self.modality_question}", True, self.max_new_tokens))
        return out

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        generate: Callable[[list[RecheckQuery]], list[str]] | None = batch.extras.get(self.extras_key)
        if not callable(generate):
            raise ValueError(
                f"ReflectiveRewards needs batch.extras[{self.extras_key!r}]: a callable "
                "list[RecheckQuery] -> list[str] (one reply per query)"
            )
        queries = self.queries(batch)
        replies = generate(queries) if queries else []
        if len(replies) != len(queries):
            raise ValueError(f"reflective_generate returned {len(replies)} replies for {len(queries)} queries")
        num = batch.num_prompts * batch.group_size
        text_score = torch.zeros(num)
        modality_score = torch.zeros(num)

        text_items = [(q, r) for q, r in zip(queries, replies) if q.kind == "text"]
        if text_items:
            index = torch.tensor([q.response_index for q, _ in text_items])
            gt_masks = batch_gt_masks(batch.labels, batch.group_size)[index]
            text_score[index] = self._text_scores([r for _, r in text_items], gt_masks)
        for query, reply in zip(queries, replies):
            if query.kind == "modality":
                modality_score[query.response_index] = yes_no_score(reply)
        shape = (batch.num_prompts, batch.group_size)
        return RewardOutput(
            rewards={"text_recheck": text_score.reshape(shape), "modality_recheck": modality_score.reshape(shape)}
        )

    @staticmethod
    def _text_scores(replies: list[str], gt_masks: torch.Tensor) -> torch.Tensor:
        """Hit rate over wheels with a GT; 0.5 for a reply without emotion words. # [Q]

        A reply in the policy's own format is read through its ``<answer>`` tag; otherwise the
        whole reply (reasoning blocks removed) is the list of emotion words.
        """
        parsed = parse_answers([extract_answer(r, scheme="answer", fallback="full") for r in replies], count_words=True)
        valid = gt_masks != 0  # [Q, K]
        hit = (popcount(parsed.pred_masks & gt_masks) > 0) & valid
        num_valid = valid.sum(-1)
        score = hit.sum(-1).float() / num_valid.clamp_min(1)
        empty = (parsed.num_words == 0) & (num_valid > 0)
        return torch.where(empty, torch.full_like(score, 0.5), score)
