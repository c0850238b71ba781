"""Metric and sample logs the recipes write, the stdout summary line, and the saved config.

``{output_dir}/metrics.jsonl`` holds one JSON object per optimizer step, ``{"step": N, ...}``.
Choices:

- Only rank 0 writes (the recipe reduces metrics over ranks first, see
  ``merr1.components.distributed.all_reduce_dict``); on other ranks the loggers do nothing.
- Every line is flushed and fsync'ed when written (~0.6 ms per line measured on the dev machine's
  disk, negligible next to a training step), so a line logged before a checkpoint is durable when
  the checkpoint is, even if the machine dies.
- NaN and +-inf are written as ``null`` (plain ``json`` would write ``NaN``, which is not JSON)
  and counted in ``num_nonfinite`` (a warning names the key the first time it happens).
- Tensors and numpy values are converted with ``.tolist()`` (a one-element tensor -> a number).
- On resume (``resume_step=S``) the file is rewritten keeping the lines with ``step <= S``: the
  steps after the checkpoint are logged again by the resumed run, so no step appears twice and
  nothing logged up to the checkpoint is lost. A torn last line (crash mid-write) is dropped.
  Without ``resume_step`` an existing file is replaced (a fresh run).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from merr1.components.distributed import is_rank_zero

logger = logging.getLogger(__name__)


class _JsonlWriter:
    """Append-only JSONL file of ``{"step": N, ...}`` objects, written by rank 0 only."""

    def __init__(
        self,
        path: Path,
        resume_step: int | None,
        strictly_increasing: bool,
        enabled: bool | None,
    ) -> None:
        self.path = path
        self.enabled = is_rank_zero() if enabled is None else enabled
        self._strictly_increasing = strictly_increasing
        self.last_step: int | None = None
        self.nonfinite_counts: Counter[str] = Counter()
        self._file = None
        if not self.enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.unlink(missing_ok=True)
        else:
            self.last_step = truncate_jsonl(path, resume_step)
        self._file = path.open("a", encoding="utf-8")

    @property
    def num_nonfinite(self) -> int:
        """Number of NaN/inf values written as null so far."""
        return sum(self.nonfinite_counts.values())

    def _write(self, step: int, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._file is not None, f"{self.path} is closed"
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"step must be an int, got {step!r}")
        if self.last_step is not None and (
            step < self.last_step or (self._strictly_increasing and step == self.last_step)
        ):
            raise ValueError(f"{self.path.name}: step {step} logged after step {self.last_step}")
        nonfinite: list[str] = []
        line = {"step": step}
        for key, value in record.items():
            if key == "step":
                raise ValueError("'step' is passed as an argument, not as a metric")
            line[key] = to_jsonable(value, key, nonfinite)
        for key in nonfinite:
            if self.nonfinite_counts[key] == 0:
                logger.warning("%s: non-finite value for %r at step %d written as null", self.path.name, key, step)
            self.nonfinite_counts[key] += 1
        self._file.write(json.dumps(line, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.last_step = step

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class MetricLogger(_JsonlWriter):
    """``{output_dir}/metrics.jsonl``: one JSON object per optimizer step (see module docstring).

    Args:
        output_dir: run directory (created if needed).
        filename: file name inside ``output_dir``.
        resume_step: the step of the checkpoint a resumed run starts from; lines with a larger
            step are removed. ``None`` starts a fresh file.
        enabled: write or not; ``None`` means "on global rank 0 only".
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "metrics.jsonl",
        resume_step: int | None = None,
        enabled: bool | None = None,
    ) -> None:
        super().__init__(Path(output_dir) / filename, resume_step, strictly_increasing=True, enabled=enabled)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write ``{"step": step, **metrics}``; ``step`` must increase from call to call."""
        self._write(step, metrics)


class SampleLogger(_JsonlWriter):
    """``{output_dir}/samples.jsonl``: sample prompts/responses, one JSON object per sample.

    Same file semantics as ``MetricLogger`` (rank 0 only, fsync'ed, truncated on resume), but a
    step may have many lines.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "samples.jsonl",
        resume_step: int | None = None,
        enabled: bool | None = None,
    ) -> None:
        super().__init__(Path(output_dir) / filename, resume_step, strictly_increasing=False, enabled=enabled)

    def log(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        """Write one line ``{"step": step, **sample}`` per sample (text, rewards, ...)."""
        for sample in samples:
            self._write(step, sample)


def to_jsonable(value: Any, key: str = "value", nonfinite: list[str] | None = None) -> Any:
    """Convert a metric value to plain JSON types; NaN/inf -> None (and ``key`` appended to ``nonfinite``).

    Accepts None, bool, int, float, str, tensors and numpy values (via ``.tolist()``), and
    mappings/sequences of those (OmegaConf containers included).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if nonfinite is not None:
            nonfinite.append(key)
        return None
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and numpy scalars
        return to_jsonable(value.tolist(), key, nonfinite)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v, f"{key}.{k}", nonfinite) for k, v in value.items()}
    if isinstance(value, Sequence):  # list, tuple, OmegaConf ListConfig (str is handled above)
        return [to_jsonable(v, key, nonfinite) for v in value]
    raise ValueError(f"metric {key!r} has a value of type {type(value).__name__} that cannot be logged as JSON")


def truncate_jsonl(path: Path, resume_step: int) -> int | None:
    """Rewrite ``path`` keeping the lines with ``step <= resume_step``; return the last kept step.

    Lines that are not a JSON object with an int ``step`` (a torn last line) are dropped with a
    warning. A missing file is created empty. The rewrite goes through a temporary file and
    ``os.replace``, so a crash leaves either the old or the new file.
    """
    kept: list[str] = []
    last_step = None
    num_dropped = num_torn = 0
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                num_torn += 1
                continue
            if step <= resume_step:
                kept.append(line)
                last_step = step
            else:
                num_dropped += 1
    if num_torn:
        logger.warning("%s: dropped %d unreadable line(s)", path, num_torn)
    if num_dropped:
        logger.info(
            "%s: removed %d line(s) logged after step %d (the resumed run logs them again)",
            path, num_dropped, resume_step,
        )
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return last_step


def format_metrics(metrics: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """Compact one-line summary for stdout/tqdm, e.g. ``step=12 loss=1.234 lr=2e-05``.

    Args:
        metrics: name -> value (numbers, tensors, strings).
        keys: which keys to show, in order (missing ones are skipped); ``None`` shows all.

    Returns:
        ``key=value`` pairs separated by spaces; floats with 4 significant digits.
    """
    parts = []
    for key in metrics if keys is None else keys:
        if key not in metrics:
            continue
        value = metrics[key]
        if hasattr(value, "tolist"):  # tensors and numpy values
            value = value.tolist()
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def save_config(cfg_dict: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically: temp file + ``os.replace``).

    Call on rank 0 only. The recipe converts its OmegaConf config first
    (``OmegaConf.to_container(cfg, resolve=True)``).

    Args:
        cfg_dict: plain dict of YAML types (dict, list, str, int, float, bool, None).
        path: file to write; parent directories are created.

    Returns:
        The written path.
    """
    import yaml

    if not isinstance(cfg_dict, Mapping):
        raise ValueError(f"save_config expects a dict, got {type(cfg_dict).__name__}")
    try:
        text = yaml.safe_dump(dict(cfg_dict), sort_keys=False, default_flow_style=False)
    except yaml.representer.RepresenterError as err:
        raise ValueError(f"save_config: the config holds a value YAML cannot write: {err.args[-1]!r}") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically and durably: temp file, fsync, ``os.replace``, fsync dir.

    A crash at any point leaves either the old or the new content (never a torn file).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and new entries in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
