"""The GRPO objective (METHOD section 4, Eq. 3) with the usual aggregation variants.

What is implemented, exactly. Per token t of rollout i (only tokens where ``mask`` is True count):

    importance_ratio="token" (default; DeepSeekMath's GRPO, TRL ``importance_sampling_level="token"``):
        r_t    = exp(logp_t - old_logp_t)                           one ratio per TOKEN
    importance_ratio="sequence" (GSPO, Zheng et al. 2025, arXiv 2507.18071):
        s_i    = exp( (1/|y_i|) sum_t (logp_t - old_logp_t) )        one ratio per SEQUENCE,
                                                                    length-normalized; r_t = s_i
    L_clip = -min(r_t * A_i, clip(r_t, 1 - clip_low, 1 + clip_high) * A_i)
    KL     = exp(ref - logp) - (ref - logp) - 1                     k3 estimator (Schulman, 2020,
                                                                    "Approximating KL divergence")
    L_tok  = L_clip + beta * KL

The paper's Eq. 3 writes a sequence-level ratio r_i = pi(y_i | x) / pi_old(y_i | x) inside a mean
over the G rollouts; merr1 (like TRL and DeepSeekMath, whose GRPO the paper builds on) uses
token-level ratios by default. The literal product ratio of Eq. 3 is not implemented: it is
exp(sum over the whole response), which a clip range of 0.2 cannot serve for responses of hundreds
of tokens; ``"sequence"`` is its length-normalized form from GSPO, with the clip applied to s_i
(the GSPO paper clips s_i to [1 - 3e-4, 1 + 4e-4]: set ``clip_low`` / ``clip_high`` so). The gradient
flows through s_i (d s_i = s_i * mean_t d logp_t), as in GSPO; s_i is computed in the logprobs'
dtype from the masked mean of the log-ratios (an all-masked sequence has s_i = 1). With one policy
update per rollout batch (all ratios 1) both choices give the same loss and gradient under every
aggregation (d r_t = d logp_t; d s_i = mean_t d logp_t, held by each of the sequence's tokens);
they differ once the policy moves off the rollout policy (``num_iterations > 1``, or old log-probs
from another engine). The KL term stays per token in both, as TRL does.

The k3 estimator is unbiased for KL(pi || pi_ref) under samples from pi and always >= 0. It is
skipped entirely (no reference forward needed) when ``beta == 0`` or ``ref_logprobs is None``.

Aggregation of L_tok into one scalar (``aggregation``):

- ``"grpo"``:    mean over each sequence's tokens, then mean over sequences (Eq. 3's 1/G sum, with
  the token mean of DeepSeekMath/TRL; with ``"sequence"`` ratios and no KL, every token of a
  sequence holds the same loss and this is GSPO's objective exactly);
- ``"dapo"``:    sum over all tokens of the batch / number of tokens (DAPO's token-level mean);
- ``"dr_grpo"``: sum over all tokens / (number of sequences * ``max_len``) with a constant
  ``max_len`` (Dr. GRPO: no length normalization bias).

A sequence whose mask is all zero (no response token counts) adds 0 to every numerator. It COUNTS
as a sequence in the ``"grpo"`` and ``"dr_grpo"`` denominators, as in TRL (``grpo``: ``.mean()``
over the rows; ``dr_grpo``: ``per_token_loss.size(0)``), so it dilutes the other sequences'
weight; for ``"dapo"`` it adds no token. An all-masked BATCH gives loss 0 (the count is clamped to
>= 1), never NaN.

Data parallelism and gradient accumulation: each of the three is ``local_sum / count``, where the
count is "sequences" (``grpo``, ``dr_grpo``) or "tokens" (``dapo``): ``local_normalizer(mask,
aggregation)`` (or ``GRPOLoss.local_normalizer``) is the count of one micro-batch. Pass
``normalizer`` = that count summed over everything that contributes to one optimizer step (all
ranks, all micro-batches; the recipe all-reduces it) so that summing the per-rank,
per-micro-batch gradients gives exactly the gradient of the single-process loss. FSDP averages
gradients over ranks by default, so the recipe then multiplies the loss by the world size (or
reduces with a sum). For ``dr_grpo`` the normalizer is the global number of sequences;
``max_len`` still multiplies it.

Statistics: the clip statistics follow the common convention that a ratio is "clipped low" when
``r < 1 - clip_low`` and ``A < 0`` and "clipped high" when ``r > 1 + clip_high`` and ``A > 0``
(the cases where the clip removes the gradient). With token ratios the ratio and clip statistics
are over tokens; with sequence ratios over the sequences that have at least one token.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Aggregation = Literal["grpo", "dapo", "dr_grpo"]
_AGGREGATIONS = ("grpo", "dapo", "dr_grpo")
ImportanceRatio = Literal["token", "sequence"]
_IMPORTANCE_RATIOS = ("token", "sequence")


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


def grpo_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    beta: float = 0.0,
    aggregation: Aggregation = "grpo",
    max_len: int | None = None,
    normalizer: float | torch.Tensor | None = None,
    importance_ratio: ImportanceRatio = "token",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped GRPO surrogate with optional k3 KL penalty (module docstring: what is implemented).

    Args:
        logprobs: log pi_theta of the sampled tokens (with grad). # [N, T]
        advantages: one advantage per sequence ``[N]`` or per token ``[N, T]``.
        mask: True for response tokens that count. # [N, T]
        old_logprobs: log-probs under the policy that generated the rollouts. # [N, T]
            ``None`` = on-policy (``logprobs.detach()``: ratio 1, same gradient).
        ref_logprobs: log-probs under the reference model. # [N, T]
        clip_low: eta below 1 (ratio lower bound ``1 - clip_low``).
        clip_high: eta above 1; ``None`` = ``clip_low`` (symmetric clip).
        beta: KL coefficient; 0 skips the KL term.
        aggregation: ``"grpo"``, ``"dapo"`` or ``"dr_grpo"`` (module docstring).
        max_len: the constant length of ``"dr_grpo"`` (usually ``max_new_tokens``).
        normalizer: global count (sequences or tokens, see the module docstring); ``None`` = local
            (``local_normalizer(mask, aggregation)``).
        importance_ratio: ``"token"`` (r_t per token) or ``"sequence"`` (GSPO's s_i per sequence).

    Returns:
        ``(loss, stats)``: the scalar loss and detached scalar statistics ``policy_loss``,
        ``kl`` (token mean; 0 when skipped), ``ratio_mean``, ``ratio_min``, ``ratio_max``,
        ``clip_frac_low``, ``clip_frac_high`` (fractions of tokens, or of sequences with a token
        for ``"sequence"``), ``num_tokens``.
    """
    _check_options(aggregation, max_len, importance_ratio)
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} differ in shape")
    clip_high = clip_low if clip_high is None else clip_high
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low/clip_high must be >= 0, got {clip_low}, {clip_high}")

    mask_f = mask.to(logprobs.dtype)  # [N, T]
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # [N, 1]
    if importance_ratio == "sequence" and advantages.shape[-1] != 1:
        raise ValueError(
            f"importance_ratio 'sequence' needs one advantage per sequence ([N]), got shape {tuple(advantages.shape)}"
        )
    advantages = advantages.to(logprobs.dtype)
    if old_logprobs is None:
        old_logprobs = logprobs.detach()

    log_ratio = logprobs - old_logprobs  # [N, T]
    if importance_ratio == "sequence":  # GSPO: s_i = exp(masked mean of the log-ratios)
        log_ratio = torch.where(mask.bool(), log_ratio, torch.zeros_like(log_ratio)).sum(-1, keepdim=True)
        log_ratio = log_ratio / mask_f.sum(-1, keepdim=True).clamp_min(1.0)  # [N, 1]
    ratio = torch.exp(log_ratio)  # [N, T] or [N, 1]
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    policy_tok = -torch.minimum(ratio * advantages, clipped_ratio * advantages)  # [N, T]
    policy_tok = policy_tok.expand(mask_f.shape)

    use_kl = beta != 0.0 and ref_logprobs is not None
    if use_kl:
        kl_tok = k3_kl(logprobs, ref_logprobs)  # [N, T]
        loss_tok = policy_tok + beta * kl_tok
    else:
        kl_tok = None
        loss_tok = policy_tok

    loss = _aggregate(loss_tok, mask_f, aggregation, max_len, normalizer)
    with torch.no_grad():
        num_tokens = mask_f.sum()
        denom = num_tokens.clamp_min(1.0)
        # the units the ratio statistics count: tokens, or sequences with at least one token
        units = mask.bool() if importance_ratio == "token" else mask.bool().any(-1, keepdim=True)  # [N, T] | [N, 1]
        unit_ratio, unit_adv = ratio.detach(), advantages.expand(units.shape)
        num_units = units.sum().clamp_min(1)
        low = (unit_ratio < 1.0 - clip_low) & (unit_adv < 0) & units
        high = (unit_ratio > 1.0 + clip_high) & (unit_adv > 0) & units
        masked_ratio = unit_ratio[units]
        empty = masked_ratio.numel() == 0
        stats = {
            "policy_loss": _aggregate(policy_tok.detach(), mask_f, aggregation, max_len, normalizer),
            "kl": (kl_tok.detach() * mask_f).sum() / denom if use_kl else logprobs.new_zeros(()),
            "ratio_mean": logprobs.new_ones(()) if empty else masked_ratio.mean(),
            "ratio_min": logprobs.new_ones(()) if empty else masked_ratio.min(),
            "ratio_max": logprobs.new_ones(()) if empty else masked_ratio.max(),
            "clip_frac_low": low.sum() / num_units,
            "clip_frac_high": high.sum() / num_units,
            "num_tokens": num_tokens,
        }
    return loss, stats


def _check_options(aggregation: str, max_len: int | None, importance_ratio: str) -> None:
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
    if aggregation == "dr_grpo" and (max_len is None or max_len <= 0):
        raise ValueError("aggregation 'dr_grpo' needs a positive constant max_len (e.g. max_new_tokens)")
    if importance_ratio not in _IMPORTANCE_RATIOS:
        raise ValueError(f"importance_ratio must be one of {_IMPORTANCE_RATIOS}, got {importance_ratio!r}")


def local_normalizer(mask: torch.Tensor, aggregation: Aggregation) -> float:
    """The count one micro-batch contributes to the loss denominator (module docstring).

    ``"grpo"`` and ``"dr_grpo"``: the number of sequences, all-masked ones included (TRL);
    ``"dapo"``: the number of response tokens. Sum it over ranks and micro-batches for the
    ``normalizer`` of one optimizer step.

    Args:
        mask: True for response tokens that count. # [N, T]
        aggregation: ``"grpo"``, ``"dapo"`` or ``"dr_grpo"``.
    """
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be [N, T], got shape {tuple(mask.shape)}")
    return float(mask.sum()) if aggregation == "dapo" else float(mask.shape[0])


def _aggregate(
    loss_tok: torch.Tensor,
    mask_f: torch.Tensor,
    aggregation: str,
    max_len: int | None,
    normalizer: float | torch.Tensor | None,
) -> torch.Tensor:
    """Reduce per-token losses ``[N, T]`` to a scalar (module docstring)."""
    masked = loss_tok * mask_f  # [N, T]
    # Every sequence counts in the grpo / dr_grpo denominators, all-masked ones included (TRL).
    count = mask_f.shape[0] if aggregation != "dapo" else mask_f.sum()
    count = count if normalizer is None else normalizer
    if aggregation == "grpo":
        seq_mean = masked.sum(-1) / mask_f.sum(-1).clamp_min(1.0)  # [N]
        return seq_mean.sum() / _clamp_count(count, masked)
    if aggregation == "dapo":
        return masked.sum() / _clamp_count(count, masked)
    return masked.sum() / (_clamp_count(count, masked) * max_len)


def _clamp_count(count: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A count as a tensor >= 1 (an all-masked batch gives loss 0, not NaN)."""
    return torch.as_tensor(count, dtype=like.dtype, device=like.device).clamp_min(1.0)


class GRPOLoss:
    """YAML component wrapping :func:`grpo_loss` with fixed hyper-parameters.

    Args:
        clip_low, clip_high, beta, aggregation, max_len, importance_ratio: as in :func:`grpo_loss`
            (``importance_ratio``: ``"token"``, the default, or GSPO's ``"sequence"``).
    """

    def __init__(
        self,
        clip_low: float = 0.2,
        clip_high: float | None = None,
        beta: float = 0.0,
        aggregation: Aggregation = "grpo",
        max_len: int | None = None,
        importance_ratio: ImportanceRatio = "token",
    ) -> None:
        _check_options(aggregation, max_len, importance_ratio)
        # A negative KL weight rewards moving away from the reference; a clip range <= 0 freezes
        # the ratio. Both are refused (issue 15) instead of training something else silently.
        for name, value, positive in (("beta", beta, False), ("clip_low", clip_low, True), ("clip_high", clip_high, True)):
            if value is None:  # clip_high None = clip_low
                continue
            finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not finite or value < 0 or (positive and value == 0):
                raise ValueError(f"loss.{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
        self.clip_low = clip_low
        self.clip_high = clip_low if clip_high is None else clip_high
        self.beta = beta
        self.aggregation = aggregation
        self.max_len = max_len
        self.importance_ratio = importance_ratio

    def local_normalizer(self, response_mask: torch.Tensor) -> float:
        """This micro-batch's share of the loss denominator (``local_normalizer``): sum it over
        ranks and micro-batches and pass the total as ``normalizer``. # response_mask [N, T]"""
        return local_normalizer(response_mask, self.aggregation)

    @property
    def needs_reference(self) -> bool:
        """Whether the recipe must compute reference log-probs (``beta != 0``)."""
        return self.beta != 0.0

    def __call__(
        self,
        logprobs: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        old_logprobs: torch.Tensor | None = None,
        ref_logprobs: torch.Tensor | None = None,
        normalizer: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return grpo_loss(
            logprobs,
            advantages,
            mask,
            old_logprobs,
            ref_logprobs,
            clip_low=self.clip_low,
            clip_high=self.clip_high,
            beta=self.beta,
            aggregation=self.aggregation,
            max_len=self.max_len,
            normalizer=normalizer,
            importance_ratio=self.importance_ratio,
        )


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Summed next-token cross-entropy of the target rows (the SFT loss numerator).

    The recipe divides by the GLOBAL number of target tokens of the optimizer step (all ranks, all
    micro-batches), so N ranks x batch B give the same loss and gradient as 1 rank x batch N*B.
    Rows are upcast to float32 ``chunk_size`` at a time to bound memory (V = 152k for Qwen).

    Args:
        logits: logits of the positions that predict a target. # [N, V]
        targets: the target token ids. # [N]

    Returns:
        The float32 scalar sum over the N rows of -log softmax(logits)[target].
    """
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {targets.shape[0]} targets")
    total = logits.new_zeros((), dtype=torch.float32)
    for start in range(0, logits.shape[0], chunk_size):
        rows = logits[start : start + chunk_size].float()
        total = total + torch.nn.functional.cross_entropy(rows, targets[start : start + chunk_size], reduction="sum")
    return total
