"""Optimizer, learning-rate schedule and gradient clipping for the recipes.

- ``build_adamw``: AdamW with weight decay on matrices only (params with ``ndim >= 2``: linear and
  embedding weights); biases and norm scales (``ndim < 2``) are not decayed (nanoGPT's rule).
  ``fused=True`` when every parameter is on CUDA, else ``foreach=True``.
- ``cosine_schedule_with_warmup``: linear warmup then cosine decay to ``min_lr_ratio * lr``
  (a warmup longer than the run is clamped to the run, with a warning).
- ``clip_grad_norm``: ``torch.nn.utils.clip_grad_norm_`` (which handles FSDP2 DTensor gradients
  in torch 2.13: the total norm comes back as a replicated DTensor) returning a plain float.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)


def weight_decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed (``ndim >= 2``) and a non-decayed group.

    Args:
        model: the model (FSDP2-sharded or not; DTensor ``ndim`` is the global one).
        weight_decay: decoupled weight decay of the first group.

    Returns:
        Up to two param groups (an empty group is left out), decayed first.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the model's trainable parameters (YAML: ``instantiate(cfg.optimizer, model)``).

    Weight decay applies to parameters with ``ndim >= 2`` only (see ``weight_decay_param_groups``).
    The fused CUDA kernel is used when every parameter lives on CUDA, the multi-tensor ``foreach``
    implementation otherwise (CPU; both work with FSDP2 DTensor parameters).

    Args:
        model: the model to optimise; must have at least one parameter with ``requires_grad``.
        lr: peak learning rate (the schedule multiplies it).
        weight_decay: decoupled weight decay for matrices.
        betas: Adam ``(beta1, beta2)`` (a YAML list is accepted).
        eps: Adam epsilon.

    Returns:
        The optimizer.
    """
    groups = weight_decay_param_groups(model, weight_decay)
    if not groups:
        raise ValueError("build_adamw: the model has no trainable parameters (all requires_grad=False)")
    on_cuda = all(p.device.type == "cuda" for g in groups for p in g["params"])
    implementation = {"fused": True} if on_cuda else {"foreach": True}
    beta1, beta2 = betas
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps, **implementation)


def cosine_with_warmup_factor(step: int, num_warmup_steps: int, num_training_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr used by optimizer step ``step`` (0-based).

    Warmup (``step < W``): ``(step + 1) / (W + 1)``, a linear ramp that reaches 1 at step ``W``.
    Then cosine: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``p = (step - W) / (T - W)``, so
    step ``W`` has factor 1 (if ``W < T``); every step from ``T`` on has factor ``r``.
    """
    if step < num_warmup_steps:
        return (step + 1) / (num_warmup_steps + 1)
    if step >= num_training_steps:
        return min_lr_ratio
    progress = (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule_with_warmup(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int,
    num_warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup then cosine decay to ``min_lr_ratio * lr`` (``cosine_with_warmup_factor``).

    Call ``scheduler.step()`` once after every ``optimizer.step()``; optimizer step ``s``
    (0-based) then uses ``lr * cosine_with_warmup_factor(s, ...)``.

    Args:
        optimizer: optimizer whose param groups hold the peak lr.
        num_training_steps: total number of optimizer steps ``T`` (the recipe computes it).
        num_warmup_steps: warmup steps ``W`` (0 = start at the peak lr); a ``W`` longer than the
            run is clamped to ``T`` with a warning.
        min_lr_ratio: final lr as a fraction of the peak lr, in [0, 1].

    Returns:
        A ``LambdaLR`` (its state dict saves nothing about the shape of the schedule: the config
        is the source of truth, and the checkpoint fingerprint guards against changing it).
    """
    if num_warmup_steps < 0:
        raise ValueError(f"num_warmup_steps must be >= 0, got {num_warmup_steps}")
    if num_training_steps < 0:
        raise ValueError(f"num_training_steps must be >= 0, got {num_training_steps}")
    if num_training_steps < num_warmup_steps:  # e.g. a smoke run with max_steps_per_epoch=3
        logger.warning(
            "lr_scheduler.num_warmup_steps (%d) is longer than the run (%d optimizer steps): clamped to %d, "
            "so the whole run warms up and never reaches the peak lr",
            num_warmup_steps, num_training_steps, num_training_steps,
        )  # fmt: skip
        num_warmup_steps = num_training_steps
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    factor = functools.partial(
        cosine_with_warmup_factor,
        num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return LambdaLR(optimizer, factor)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> float:
    """Clip gradients to a total norm of ``max_norm``; return the norm before clipping.

    Works for plain and FSDP2 (DTensor) parameters, but not a mix of both (FSDP2 recipes shard the
    root module, so every parameter is a DTensor). Parameters without a gradient are ignored.

    Args:
        parameters: model parameters.
        max_norm: maximum total norm; ``math.inf`` only measures.
        norm_type: p of the p-norm.

    Returns:
        The total gradient norm over all ranks' shards as a Python float (nan/inf if a gradient
        is not finite; the gradients are then left scaled by a non-finite factor, as in torch).
    """
    from torch.distributed.tensor import DTensor

    total_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
    if isinstance(total_norm, DTensor):
        total_norm = total_norm.full_tensor()
    return float(total_norm.item())
