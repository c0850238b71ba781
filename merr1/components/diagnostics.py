"""Slow-vs-fast diagnostics of MER-R1's analysis (METHOD section 6; paper section 3, appendix D).

Everything here is computed per emotion wheel on the level-1 categories of the official mapping
(METHOD section 2) and then averaged over the K = 5 wheels with a plain mean, like the metrics of
``merr1.score``. Inputs are packed category masks (``EmotionWheels.map_text_packed``: wheel k's
mask in bits [8k, 8k + 8)) and, for the confidences, log-confidence rows over the flat category
axis of ``calibration.CategoryFirstTokens`` (wheel k's category j at ``offsets[k] + j``, the
same order as bit j of wheel k's mask).

Our reading of the definitions (the paper gives them in words; these are the formulas used):

- **Population.** On wheel k a sample counts when its mapped GT set G_k is non-empty, as for P^k
  and R^k in METHOD section 3. Per-wheel values are means over those samples; the reported value
  is the mean over wheels (a wheel without any sample is NaN and makes the mean NaN).
- **Recall / precision fast vs slow** are the OV-MERD+ set scores of each mode
  (``score_ovmerd``, or ``score_basic_f1`` for one-word labels); ``gap = slow - fast`` (what the
  reasoning adds; the recipe reports both modes and the gap).
- **Mean number of predicted categories** (``mean_num_categories``): per wheel, the mean of
  |Ŷ_k| over the counted samples; averaged over wheels.
- **Category log-confidence** (Definition 1): conf(c) = log sum_{t in F(c)} p(t), F(c) the first
  tokens of every wheel word of category c, p the next-token distribution at the ANSWER START:
  slow context = prompt + generated reasoning + the answer tag; fast context = prompt + the
  prefilled empty reasoning (``<think></think><answer>``). ``answer_start`` finds that position
  in a generated response; the recipe runs one no-grad forward per mode and calls
  ``calibration.category_log_confidence``.
- **GT confidence** (``confidence_summary``): per sample and wheel, the mean of conf(c) over
  c in G_k. **Margin** (Definition 2): GT confidence minus the mean of the ``num_hard_negatives``
  (3) highest conf(c) over categories c not in G_k (all of them when fewer exist; a wheel where
  G_k holds every category has no margin and is skipped for the margin only). Both are averaged
  over the counted samples with a defined confidence, then over wheels. The recipe compares the
  modes on the samples that have a confidence in BOTH modes (a slow response that never writes
  the answer tag has no answer start).
- **Retained hit rate** (``retained_hit_rate``): of the GT categories that fast thinking hits
  (G ∩ Ŷ_fast), the fraction the slow answer keeps (also in Ŷ_slow); pooled over the counted
  samples of a wheel, sum |G ∩ Ŷ_fast ∩ Ŷ_slow| / sum |G ∩ Ŷ_fast| (NaN without any fast hit),
  then averaged over wheels. Pooling avoids an undefined ratio for samples without fast hits.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from merr1.components.emotion_wheel import BITS_PER_WHEEL, NUM_WHEELS

_NAN = float("nan")
_FIELD = (1 << BITS_PER_WHEEL) - 1
NUM_HARD_NEGATIVES = 3


def _wheel_mask(packed: int, k: int) -> int:
    return packed >> (BITS_PER_WHEEL * k) & _FIELD


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else _NAN


def _check_lengths(*sequences: Sequence) -> None:
    if len({len(s) for s in sequences}) > 1:
        raise ValueError(f"inputs must have the same length, got {[len(s) for s in sequences]}")


def mean_num_categories(gt: Sequence[int], pred: Sequence[int]) -> dict:
    """Mean number of predicted level-1 categories, per wheel over samples with a mapped GT.

    Args:
        gt: packed GT category masks, one per sample.
        pred: packed predicted category masks, same order.

    Returns:
        ``{"mean": wheel mean, "per_wheel": [5 floats]}`` (NaN for a wheel without samples).
    """
    _check_lengths(gt, pred)
    per_wheel = []
    for k in range(NUM_WHEELS):
        sizes = [_wheel_mask(y, k).bit_count() for g, y in zip(gt, pred) if _wheel_mask(g, k)]
        per_wheel.append(_mean(sizes))
    return {"mean": _mean(per_wheel), "per_wheel": per_wheel}


def retained_hit_rate(gt: Sequence[int], fast: Sequence[int], slow: Sequence[int]) -> dict:
    """Fraction of the GT categories hit by fast thinking that the slow answer keeps.

    Args:
        gt, fast, slow: packed category masks (GT, fast prediction, slow prediction) per sample.

    Returns:
        ``{"mean": wheel mean, "per_wheel": [5 floats], "num_fast_hits": [5 ints]}``; per wheel
        sum |G ∩ F ∩ S| / sum |G ∩ F| over samples with a mapped GT (NaN without fast hits).
    """
    _check_lengths(gt, fast, slow)
    per_wheel, num_hits = [], []
    for k in range(NUM_WHEELS):
        hit = kept = 0
        for g, f, s in zip(gt, fast, slow):
            fast_hits = _wheel_mask(g, k) & _wheel_mask(f, k)
            hit += fast_hits.bit_count()
            kept += (fast_hits & _wheel_mask(s, k)).bit_count()
        per_wheel.append(kept / hit if hit else _NAN)
        num_hits.append(hit)
    return {"mean": _mean(per_wheel), "per_wheel": per_wheel, "num_fast_hits": num_hits}


def flat_category_mask(packed: Sequence[int], num_categories: Sequence[int]) -> torch.Tensor:
    """Packed masks -> boolean rows over the flat category axis of ``CategoryFirstTokens``.

    Args:
        packed: packed category masks, one per sample.
        num_categories: number of level-1 categories of each wheel (``len(categories(k))``).

    Returns:
        # [N, C] bool, C = sum(num_categories); wheel k's category j at column offsets[k] + j.
    """
    columns = [(k, j) for k, n in enumerate(num_categories) for j in range(n)]
    rows = [[bool(p >> (BITS_PER_WHEEL * k + j) & 1) for k, j in columns] for p in packed]
    return torch.tensor(rows, dtype=torch.bool).reshape(len(packed), len(columns))


def confidence_summary(
    conf: torch.Tensor,
    gt_mask: torch.Tensor,
    num_categories: Sequence[int],
    num_hard_negatives: int = NUM_HARD_NEGATIVES,
) -> dict:
    """GT-category log-confidence and its margin over the hardest non-GT categories (Defs. 1-2).

    Args:
        conf: category log-confidences at the answer start (``category_log_confidence``). # [N, C]
        gt_mask: True on each sample's mapped GT categories (``flat_category_mask``). # [N, C]
        num_categories: categories per wheel (the column blocks of ``conf``).
        num_hard_negatives: how many top non-GT categories form the margin's baseline.

    Returns:
        ``{"gt_confidence", "margin"}`` (wheel means) and ``"per_wheel"``: 5 dicts
        ``{"gt_confidence", "margin", "num_samples", "num_margin_samples"}``.
    """
    if conf.shape != gt_mask.shape or conf.dim() != 2 or conf.shape[1] != sum(num_categories):
        raise ValueError(
            f"conf {tuple(conf.shape)} and gt_mask {tuple(gt_mask.shape)} must both be [N, {sum(num_categories)}]"
        )
    if num_hard_negatives < 1:
        raise ValueError(f"num_hard_negatives must be >= 1, got {num_hard_negatives}")
    conf = conf.double()
    per_wheel = []
    start = 0
    for n in num_categories:
        c, g = conf[:, start : start + n], gt_mask[:, start : start + n]  # [N, n]
        start += n
        num_gt = g.sum(1)  # [N]
        counted = num_gt > 0
        gt_conf = (c * g).sum(1) / num_gt.clamp_min(1)  # [N]: mean conf over GT categories
        negatives = c.masked_fill(g, -math.inf).topk(min(num_hard_negatives, n), dim=1).values  # [N, h]
        real = torch.isfinite(negatives)
        hard = negatives.where(real, 0.0).sum(1) / real.sum(1).clamp_min(1)  # [N]
        with_margin = counted & real.any(1)
        per_wheel.append(
            {
                "gt_confidence": gt_conf[counted].mean().item() if counted.any() else _NAN,
                "margin": (gt_conf - hard)[with_margin].mean().item() if with_margin.any() else _NAN,
                "num_samples": int(counted.sum()),
                "num_margin_samples": int(with_margin.sum()),
            }
        )
    return {
        "gt_confidence": _mean([w["gt_confidence"] for w in per_wheel]),
        "margin": _mean([w["margin"] for w in per_wheel]),
        "per_wheel": per_wheel,
    }


def answer_start(
    ids: Sequence[int], token_bytes: Callable[[Sequence[int]], list[bytes]], open_tag: str = "<answer>"
) -> tuple[int, str] | None:
    """Where the answer of a generated response starts: the token that begins it and its glue.

    The answer starts right after the LAST ``open_tag`` of the response text. Byte-level BPE can
    merge the tag's end with the first answer word (``'>happy'``), so the result is the index t
    of the token holding the first answer byte and the "glue": the bytes of token t before the
    answer (``""`` when the tag ends on a token boundary, e.g. ``">"`` in the merged case;
    ``calibration.CategoryFirstTokens.spelling_index(glue)`` gives the matching first-token sets).
    The answer-start distribution is then the one predicting token t, i.e. the last position of
    the context prompt + ``ids[:t]``.

    Args:
        ids: the response token ids (no padding).
        token_bytes: token ids -> their bytes (``calibration.TokenBytes``).
        open_tag: the answer's opening tag.

    Returns:
        ``(t, glue)`` with ``0 <= t <= len(ids)`` (``len(ids)`` when the response ends with the tag),
        or None when the tag is absent or the glue is not valid UTF-8.
    """
    pieces = token_bytes(list(ids))
    text = b"".join(pieces)
    tag = open_tag.encode("utf-8")
    at = text.rfind(tag)
    if at < 0:
        return None
    answer_at = at + len(tag)
    offset = 0
    for t, piece in enumerate(pieces):
        if offset >= answer_at:  # the tag ends on a token boundary (nothing generated after it)
            return t, ""
        if offset + len(piece) > answer_at:  # token t holds the first answer byte
            try:
                return t, text[offset:answer_at].decode("utf-8")
            except UnicodeDecodeError:
                return None
        offset += len(piece)
    return len(pieces), ""
