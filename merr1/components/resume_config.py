"""Which settings may change when a run resumes from a checkpoint (issue 15).

A resumed run restores the model, optimizer, scheduler, data position and RNG from the checkpoint,
but everything else comes from the config it is launched with. A changed learning rate, batch
size, reward or seed would silently make the continuation a different experiment than the one
the checkpoint belongs to (and the schedule would still come from the checkpoint). So the resolved
config saved in the checkpoint is compared with this run's, key by key, and every difference is
refused unless it is harmless (``NON_TRAJECTORY_KEYS``: where and how often to log and save) or
named by the user in ``resume_allow_changed`` (a list of dotted keys or sections, e.g.
``[optimizer.lr]`` or ``[optimizer]``); allowed changes are logged and recorded in every later
checkpoint's ``meta.json`` (``resume_history``).

Deliberately conservative: every key counts as trajectory-changing unless it is listed as
harmless, so a new config key is guarded without anyone remembering to add it here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Top-level keys (or dotted prefixes) whose value does not change the training trajectory.
NON_TRAJECTORY_KEYS: tuple[str, ...] = (
    "output_dir",  # the run directory (the checkpoint is found in it)
    "log_every_n_steps",
    "log_samples_every_n_steps",
    "num_logged_samples",
    "num_workers",  # DataLoader worker processes: same batches, same order
    "save_every_n_steps",
    "keep_last_n_checkpoints",
    "save_dtype",  # dtype of the exported HF weights only
    # Memory/speed only: the same numbers (tests/merr1/components/test_parallel.py checks
    # bit-identical losses and gradients with and without them).
    "enable_activation_checkpointing",
    "fsdp_reshard_after_forward",
    "resume_from_checkpoint",
    "resume_allow_changed",
    "metric_logger",  # where the numbers also go (metrics.jsonl is always written)
    # Rollouts: one generator per row makes them independent of the batching, and every decode
    # backend samples the same tokens (tests/merr1/components/test_generation.py).
    "rollout_batch_size",
    "generation.decode_backend",
)

_UNSET = object()


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> ``{"a.b.0.c": leaf}``; empty containers are leaves.

    Args:
        config: a plain config (dicts, lists, scalars), e.g. ``OmegaConf.to_container(cfg, resolve=True)``.
        prefix: key prefix (used by the recursion).

    Returns:
        Dotted key -> leaf value. List items are keyed by their index (``rewards.1.strict``);
        tuples count as lists.
    """
    if isinstance(config, Mapping) and config:
        items: Iterable[tuple[Any, Any]] = config.items()
    elif isinstance(config, (list, tuple)) and config:
        items = enumerate(config)
    else:
        return {prefix: list(config) if isinstance(config, tuple) else config}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _covered(key: str, patterns: Iterable[str]) -> bool:
    """``key`` equals a pattern or lies inside it (``optimizer`` covers ``optimizer.lr``)."""
    return any(key == p or key.startswith(p + ".") for p in patterns)


def changed_settings(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Sequence[str] = NON_TRAJECTORY_KEYS
) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs between two resolved configs.

    Args:
        saved: the config the checkpoint was written with.
        current: this run's config.
        ignore: keys/sections left out of the comparison.

    Returns:
        ``{key: (saved value, current value)}`` sorted by key; a key missing on one side has the
        value ``<unset>`` there. ``1`` and ``1.0`` are equal (YAML may write either).
    """
    old, new = flatten_config(dict(saved)), flatten_config(dict(current))
    changes = {}
    for key in sorted(set(old) | set(new)):
        if _covered(key, ignore):
            continue
        a, b = old.get(key, _UNSET), new.get(key, _UNSET)
        # True == 1 in Python, but a flag that became a number is a change.
        same = a is not _UNSET and b is not _UNSET and a == b and isinstance(a, bool) == isinstance(b, bool)
        if not same:
            changes[key] = (a, b)
    return changes


def format_value(value: Any) -> str:
    """A config value as written in a change list (JSON; ``<unset>`` for a missing key)."""
    if value is _UNSET:
        return "<unset>"
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return repr(value)


def format_changes(changes: Mapping[str, tuple[Any, Any]]) -> list[str]:
    """``["optimizer.lr: 0.0001 -> 0.0002", ...]``."""
    return [f"{key}: {format_value(a)} -> {format_value(b)}" for key, (a, b) in changes.items()]


def check_resume_settings(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    allow_changed: Sequence[str] = (),
    *,
    ignore: Sequence[str] = NON_TRAJECTORY_KEYS,
    checkpoint: str = "the checkpoint",
) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
    """Refuse a resume whose config changes the trajectory, unless the changes are allowed.

    Args:
        saved: the resolved config saved with the checkpoint.
        current: this run's resolved config.
        allow_changed: dotted keys or sections the user allows to change (``resume_allow_changed``).
        ignore: harmless keys (default ``NON_TRAJECTORY_KEYS``).
        checkpoint: named in the error message.

    Returns:
        ``(allowed changes {key: (old, new)}, unused entries of allow_changed)``: the first is
        what the caller records, the second what it warns about (a typo allows nothing).

    Raises:
        ValueError: listing every refused change as ``key: old -> new``.
    """
    allow_changed = [str(p) for p in allow_changed]
    changes = changed_settings(saved, current, ignore)
    refused = {k: v for k, v in changes.items() if not _covered(k, allow_changed)}
    if refused:
        lines = "\n  ".join(format_changes(refused))
        example = ", ".join(refused)
        raise ValueError(
            f"cannot resume from {checkpoint}: these settings differ from the ones it was trained with, "
            f"and would change the training trajectory:\n  {lines}\n"
            f"Put them back, or name them in resume_allow_changed to continue with the new values "
            f"(e.g. 'resume_allow_changed=[{example}]'; the change is recorded in the next checkpoints)."
        )
    unused = [p for p in allow_changed if not any(_covered(k, [p]) for k in changes)]
    return changes, unused
