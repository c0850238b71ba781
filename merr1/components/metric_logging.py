"""Metric and sample logs the recipes write, progress bars, the stdout summary line, the saved config.

``{output_dir}/metrics.jsonl`` holds one JSON object per optimizer step, ``{"step": N, ...}``.
It is always written: it is the source of truth for resume and for ``python -m merr1.plot``.
Next to it, any torchtune metric logger (``torchtune.training.metric_logging.DiskLogger``,
``TensorBoardLogger``, ``WandBLogger``, ``CometLogger``, ``MLFlowLogger``) or any object with the
same four methods (``log(name, data, step)``, ``log_dict(payload, step)``, ``log_config(config)``,
``close()``) can receive every step as well: the recipe instantiates the config's
``metric_logger`` section (on rank 0) and passes it as ``MetricLogger(..., backend=...)``; this
module never imports torchtune.
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
- The backend gets the numbers only (``backend_scalars``): ints, floats (NaN and inf as they are:
  TensorBoard and W&B draw them as gaps/markers) and one-element tensors/arrays; strings, lists
  and None stay in the JSONL file only. The backend cannot be rewound: after a resume it receives
  the re-run steps again (TensorBoard shows both points; W&B drops steps below its current one
  unless the run is resumed under the same id, see the README).
- Progress bars (``progress_bar``): tqdm, live in a terminal; outside one (a log file, a SLURM
  output) one plain line about every ``MERR1_PROGRESS_INTERVAL_S`` seconds (default 30) instead
  of a carriage-return refresh per step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

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
        if enabled is None:
            # Imported here: merr1.components.distributed imports torch, which the JSONL, YAML and
            # progress helpers of this module do not need (faster scripts; issue 16).
            from merr1.components.distributed import is_rank_zero

            enabled = is_rank_zero()
        self.enabled = enabled
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


METRIC_LOGGER_METHODS = ("log", "log_dict", "log_config", "close")


def check_metric_logger(backend: Any) -> Any:
    """Return ``backend`` if it has torchtune's metric-logger methods, else raise ``ValueError``.

    Args:
        backend: e.g. the instantiated ``metric_logger`` config section.
    """
    missing = [name for name in METRIC_LOGGER_METHODS if not callable(getattr(backend, name, None))]
    if missing:
        raise ValueError(
            f"metric_logger: {type(backend).__name__} has no method(s) {missing}; a metric logger needs "
            "log(name, data, step), log_dict(payload, step), log_config(config) and close(), like "
            "torchtune.training.metric_logging.DiskLogger, TensorBoardLogger or WandBLogger"
        )
    return backend


def backend_scalars(metrics: Mapping[str, Any]) -> dict[str, int | float]:
    """The numbers of a metrics dict, for a torchtune-style logger (module docstring).

    bool -> int; int and float as they are (NaN/inf included); one-element tensors and numpy values
    -> Python numbers; everything else (strings, lists, None, larger tensors) is left out.
    """
    out: dict[str, int | float] = {}
    for key, value in metrics.items():
        if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
            value = value.tolist()
            while isinstance(value, list) and len(value) == 1:
                value = value[0]
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)):
            out[key] = value
    return out


class MetricLogger(_JsonlWriter):
    """``{output_dir}/metrics.jsonl``: one JSON object per optimizer step (see module docstring),
    and optionally the same numbers to a torchtune-style ``backend``.

    Args:
        output_dir: run directory (created if needed).
        filename: file name inside ``output_dir``.
        resume_step: the step of the checkpoint a resumed run starts from; lines with a larger
            step are removed. ``None`` starts a fresh file.
        enabled: write or not; ``None`` means "on global rank 0 only". A disabled logger never
            calls the backend.
        backend: a metric logger with ``log``, ``log_dict``, ``log_config`` and ``close`` (any
            ``torchtune.training.metric_logging`` class); ``None`` = the JSONL file only. The
            MetricLogger owns it: ``close()`` closes it.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        filename: str = "metrics.jsonl",
        resume_step: int | None = None,
        enabled: bool | None = None,
        backend: Any = None,
    ) -> None:
        self.backend = None if backend is None else check_metric_logger(backend)
        super().__init__(Path(output_dir) / filename, resume_step, strictly_increasing=True, enabled=enabled)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write ``{"step": step, **metrics}`` (``step`` must increase from call to call), then
        pass the numbers to the backend."""
        self._write(step, metrics)
        if self.enabled and self.backend is not None:
            self.backend.log_dict(backend_scalars(metrics), step)

    def log_config(self, config: Any) -> None:
        """Hand the run's config to the backend (torchtune's loggers expect the OmegaConf
        ``DictConfig`` the recipe received; W&B stores it with the run). No-op without a backend;
        the resolved config is saved as ``config.yaml`` by ``save_config`` either way."""
        if self.enabled and self.backend is not None:
            self.backend.log_config(config)

    def close(self) -> None:
        super().close()
        if self.backend is not None:
            backend, self.backend = self.backend, None
            backend.close()


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


def grpo_postfix(
    metrics: Mapping[str, Any], reward_names: Iterable[str], extra: Sequence[str] = ("loss", "time/step")
) -> str:
    """The GRPO progress-bar postfix: every reward the advantage groups use, then ``extra``.

    Recall and precision come first (always logged), then each name of ``reward_names`` in order
    (duplicates once), as ``<name>=<reward/<name>/mean>``; rewards that were not logged are skipped.

    Args:
        metrics: one step's metrics (``reward/<name>/mean`` keys).
        reward_names: e.g. ``[r for g in advantage.groups for r, _ in g.rewards]``.
        extra: further metric keys, shown as they are.

    Returns:
        e.g. ``recall=0.539 precision=0.776 cali_pos=0.256 format=0.938 loss=-1.4e-08 time/step=0.611``.
    """
    names = list(dict.fromkeys(["recall", "precision", *reward_names]))
    shown = {name: metrics[f"reward/{name}/mean"] for name in names if f"reward/{name}/mean" in metrics}
    shown.update({key: metrics[key] for key in extra if key in metrics})
    return " ".join(f"{key}={_short(value)}" for key, value in shown.items())


def _short(value: Any) -> str:
    if hasattr(value, "tolist"):
        value = value.tolist()
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def should_log_samples(step: int, every_n_steps: int) -> bool:
    """Whether a 1-based ``step`` writes samples: the first step, then every ``every_n_steps``
    (so a run shorter than ``every_n_steps`` still shows what the policy writes)."""
    if every_n_steps < 1:
        raise ValueError(f"log_samples_every_n_steps must be >= 1, got {every_n_steps}")
    return step == 1 or step % every_n_steps == 0


PROGRESS_INTERVAL_ENV = "MERR1_PROGRESS_INTERVAL_S"
DEFAULT_PROGRESS_INTERVAL_S = 30.0


class _LineWriter:
    """A file for tqdm that turns its carriage-return refreshes into plain lines (log files)."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self._file.write(line + "\n")

    def flush(self) -> None:
        self._file.flush()


class _Progress(tqdm):
    """tqdm whose ``set_postfix_str``/``set_postfix`` redraw only in a terminal; outside one the
    new postfix shows on the next line that ``mininterval`` lets through."""

    def __init__(self, *args, live: bool, **kwargs) -> None:
        self._live = live
        super().__init__(*args, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=refresh and self._live)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        super().set_postfix(ordered_dict, refresh=refresh and self._live, **kwargs)


def progress_interval_s(value: float | None = None) -> float:
    """Seconds between progress lines outside a terminal: ``value``, else the environment
    variable ``MERR1_PROGRESS_INTERVAL_S``, else 30."""
    if value is None:
        text = os.environ.get(PROGRESS_INTERVAL_ENV)
        if text is None:
            return DEFAULT_PROGRESS_INTERVAL_S
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{PROGRESS_INTERVAL_ENV} must be a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"the progress interval must be >= 0 seconds, got {value!r}")
    return float(value)


# Progress lines outside a terminal: "grpo:  50% 1/2 [00:03<00:03, 2.6s/it, recall=0.25 ...]".
_LOG_LINE_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def progress_bar(
    total: int,
    desc: str,
    *,
    initial: int = 0,
    disable: bool = False,
    file: TextIO | None = None,
    interval_s: float | None = None,
) -> tqdm:
    """A tqdm progress bar for training and evaluation loops.

    In a terminal (``file.isatty()``): tqdm as usual (live, resized with the window). Elsewhere
    (piped to a file, a SLURM log): ASCII lines, each a full line, at most one every
    ``interval_s`` seconds (plus the first and the last), and ``set_postfix_str`` never forces
    one: a 2,000-step run logs a few dozen lines, not thousands of refreshes.

    Args:
        total: number of steps.
        desc: label in front of the bar.
        initial: steps already done (a resumed run).
        disable: no output at all (non-zero ranks).
        file: where to write; default ``sys.stderr``.
        interval_s: seconds between lines outside a terminal; ``None`` = ``progress_interval_s()``.
    """
    file = sys.stderr if file is None else file
    isatty = getattr(file, "isatty", None)
    if callable(isatty) and isatty():
        return _Progress(total=total, initial=initial, desc=desc, disable=disable, file=file,
                         dynamic_ncols=True, live=True)  # fmt: skip
    return _Progress(
        total=total, initial=initial, desc=desc, disable=disable, file=_LineWriter(file), live=False,
        mininterval=progress_interval_s(interval_s), maxinterval=float("inf"), miniters=1, ascii=True,
        bar_format=_LOG_LINE_FORMAT,  # no bar graphic and no width limit: the whole postfix stays in the line
    )  # fmt: skip


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
