"""Resumable training state (atomic, verified, sharded) and SIGTERM/SIGINT handling for the recipes.

Layout under ``{output_dir}/checkpoints/``::

    latest                  text file "step_120": the newest COMMITTED checkpoint (the source of truth)
    step_120/
      manifest.json         size and CRC-32 of every other file (written last, before the commit)
      meta.json             step, data position, world size, fingerprint, resume history
      config.yaml           the resolved config of the run that wrote it (if given)
      state/                torch.distributed.checkpoint (DCP): model + optimizer, one shard file per rank
      state/trainer.pt      rank 0: lr scheduler state, data position, the recipe's ``extra`` dict
      state/rng_rank{r}.pt  rank r: python / numpy / torch CPU / CUDA RNG states + the recipe's generators
      ...                   whatever the ``write_extra_files`` hook writes (HF-format weights)
    step_120.v2/            a second save of step 120 (e.g. a new run in the same output_dir)
    .tmp_step_130/          a save in progress (or a crashed one: removed by the next save)

Commit (issue 15): every rank writes into ``.tmp_step_N``; the files are checksummed (each rank
its own shard), rank 0 writes ``manifest.json``, renames the directory to a name that does not
exist yet (``step_N``, or ``step_N.v2``, ``.v3``... when that step was saved before), and only then
replaces ``latest`` (temp file + ``os.replace``). Older copies of the same step and checkpoints
beyond ``keep_last_n`` are deleted after that. So at every instant ``latest`` names a complete
directory, and the only intact checkpoint is never deleted before its successor is committed,
whatever the step numbers and ``keep_last_n`` (a directory is never renamed once committed).
Multi-node runs need ``output_dir`` on a filesystem all nodes share (as DCP itself does).
Peak disk use: ``keep_last_n + 1`` checkpoints (the new one is written before the oldest goes).

Integrity: ``load_latest`` first verifies the checkpoint against its manifest: the size of every
file, and the CRC-32 of every file the resume reads (``meta.json``, ``config.yaml``, ``state/``;
the HF export is only size-checked there, ``verify_checkpoint`` checks all of it). A truncated,
missing, unreadable or overwritten file makes it fall back to the newest older intact checkpoint,
with a warning naming the file; if none is intact it stops with an error naming the files.
CRC-32 (``zlib.crc32``) detects accidental corruption, not tampering: it ran at ~2.3 GB/s per core
on the dev machine (SHA-256 1.1 GB/s, BLAKE2b 0.9 GB/s), and every rank checksums its own shard
(in threads for several files), so a 100 GB state on 8 ranks costs ~5 s per save and per resume
on top of the I/O (the files were just written or are about to be read, so mostly from the page
cache).

Disk space: before writing, the free space of the checkpoint folder is compared with the size of
the new checkpoint (the previous checkpoint's size, or the model + optimizer state for the first
save) and a clear error names the folder, the bytes needed and the bytes free; a disk that fills
up during the write gives an ``OSError(ENOSPC)`` saying so (torch's own message is an unreadable
``unexpected pos`` from its zip writer). A failed save is removed and leaves ``latest`` as it was.

Model and optimizer go through ``get_state_dict``/``set_state_dict``, so the same code saves an
FSDP2-sharded model (each rank writes its shards) and a plain one. DCP reshards on load; a
checkpoint written by a different number of ranks is refused unless ``allow_world_size_change``
(model, optimizer, scheduler, position and extra are then loaded, the per-rank RNG streams are
not, so the continuation is valid but not bit-identical to an uninterrupted run).

Resume settings: with ``config`` given, the checkpoint's ``config.yaml`` is compared with this
run's (``merr1.components.resume_config``): a change that alters the training trajectory is
refused unless named in ``resume_allow_changed``, and allowed changes are recorded in every later
``meta.json``. A resumed run's config is written to ``config.resumed_at_step_N.yaml`` (the
finished run's ``config.yaml`` and ``step_N/`` files are never rewritten; saving the step that was
just loaded is skipped, since its state is the one on disk).

Per-rank RNG states are saved because each rank has its own dropout/sampling stream
(``merr1.components.distributed.set_seed`` offsets the seed by the rank). The data order must be
a function of (seed, epoch): the recipe re-creates the epoch's order (``sampler.set_epoch``) and
skips the ``step_in_epoch`` optimizer steps' batches already consumed. Give the DataLoader its own
``generator`` and reseed it per epoch: every ``iter(loader)`` draws a number from it, or from the
global torch RNG when it has none, which would shift the dropout stream of a resumed run (it
creates its iterator at the resume point, not at the epoch start).

Checkpoints are taken between optimizer steps (never inside gradient accumulation).

Security: ``state/.metadata`` is read by DCP with ``pickle``; resume only checkpoints you trust.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from merr1.components.distributed import all_reduce_scalar, barrier, get_world_size_and_rank
from merr1.components.metric_logging import atomic_write_text, fsync_dir, save_config, to_jsonable
from merr1.components.resume_config import NON_TRAJECTORY_KEYS, check_resume_settings, format_changes, format_value

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 2  # 2: manifest.json, versioned directory names, resume history
MANIFEST_NAME = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)(?:\.v(\d+))?$")
_RANK_FILE = re.compile(r"(?:^|/)(?:__(\d+)_\d+\.distcp|rng_rank(\d+)\.pt)$")
_CHUNK_BYTES = 16 * 2**20
_MAX_HASH_THREADS = 4
# Files a resume reads (checksummed on load); everything else is size-checked on load.
_RESUME_FILES = re.compile(r"^(meta\.json|config\.yaml|state/.*)$")


@dataclass
class DataPosition:
    """Where training stands; saved with every checkpoint.

    Attributes:
        epoch: current epoch (0-based).
        step_in_epoch: optimizer steps completed in ``epoch`` (the recipe skips that many
            steps' worth of batches when it resumes).
        global_step: optimizer steps completed since the start of training; names the checkpoint.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class ResumeState:
    """What ``TrainingCheckpointer.load_latest`` returns besides restoring the objects in place."""

    position: DataPosition
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


class CorruptCheckpointError(ValueError):
    """No intact checkpoint to resume from (the message names the damaged files)."""


class TrainingCheckpointer:
    """Saves and restores a resumable training state in ``{output_dir}/checkpoints`` (module docstring).

    Every rank must call ``save``/``load_latest`` at the same point (they are collectives).

    Args:
        output_dir: run directory.
        keep_last_n: keep the just-written checkpoint and the ``keep_last_n - 1`` newest older
            ones; ``None`` keeps all. Directories numbered above the one just written (left by an
            earlier run in the same ``output_dir``) are not touched.
        fingerprint: values derived from the config and data that must not change across a
            resume (e.g. steps per epoch), JSON-able; compared on load, with world size.
        allow_world_size_change: load a checkpoint written by a different number of ranks
            (resharded by DCP; RNG streams not restored) instead of refusing it.
        config: the resolved run config as a plain dict; written to ``step_N/config.yaml`` with
            every checkpoint, and compared on load with the checkpoint's (module docstring).
        resume_allow_changed: dotted config keys or sections allowed to differ from the
            checkpoint's config on resume (the user's ``resume_allow_changed``).
        non_trajectory_keys: config keys that may always change (default
            ``resume_config.NON_TRAJECTORY_KEYS``: logging, saving, workers, output_dir).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        keep_last_n: int | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        allow_world_size_change: bool = False,
        config: Mapping[str, Any] | None = None,
        resume_allow_changed: Sequence[str] = (),
        non_trajectory_keys: Sequence[str] = NON_TRAJECTORY_KEYS,
    ) -> None:
        if keep_last_n is not None and (isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 1):
            raise ValueError(f"keep_last_n must be >= 1 or None (keep all), got {keep_last_n!r}")
        if isinstance(resume_allow_changed, str):
            raise ValueError(f"resume_allow_changed must be a list of keys, got the string {resume_allow_changed!r}")
        self.output_dir = Path(output_dir)
        self.checkpoints_dir = self.output_dir / "checkpoints"
        self.keep_last_n = keep_last_n
        self.fingerprint = to_jsonable(dict(fingerprint or {}), "fingerprint")
        self.allow_world_size_change = allow_world_size_change
        self.config = None if config is None else to_jsonable(dict(config), "config")
        self.resume_allow_changed = [str(key) for key in resume_allow_changed or ()]
        self.non_trajectory_keys = tuple(non_trajectory_keys)
        self._last_saved_step: int | None = None
        self._resume_history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ queries
    def latest_name(self) -> str | None:
        """Directory name in the ``latest`` file (``step_N`` or ``step_N.vK``), or None."""
        pointer = self.checkpoints_dir / "latest"
        if not pointer.exists():
            return None
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if _STEP_DIR.match(name) is None:
            raise ValueError(f"{pointer} is corrupt: expected 'step_<N>', got {name!r}")
        return name

    def latest_step(self) -> int | None:
        """Step of the newest committed checkpoint (from the ``latest`` file), or None."""
        name = self.latest_name()
        return None if name is None else _parse_name(name)[0]

    def latest_dir(self) -> Path | None:
        """The directory ``latest`` names, or None."""
        name = self.latest_name()
        return None if name is None else self.checkpoints_dir / name

    def step_dir(self, step: int) -> Path:
        """Directory of the checkpoint of ``global_step == step``: the one ``latest`` names if it
        is that step, else the newest version of that step (``step_N`` if there is none)."""
        name = self.latest_name()
        if name is not None and _parse_name(name)[0] == step:
            return self.checkpoints_dir / name
        versions = [(version, path) for s, version, path in self._committed() if s == step]
        return max(versions)[1] if versions else self.checkpoints_dir / f"step_{step}"

    def _committed(self) -> list[tuple[int, int, Path]]:
        """(step, version, path) of every committed checkpoint directory, sorted."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for path in self.checkpoints_dir.iterdir():
            if path.is_dir() and _STEP_DIR.match(path.name):
                found.append((*_parse_name(path.name), path))
        return sorted(found)

    def _complete_steps(self) -> list[int]:
        return sorted({step for step, _, _ in self._committed()})

    # ------------------------------------------------------------------ save
    def save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        position: DataPosition,
        *,
        generators: Mapping[str, torch.Generator] | None = None,
        extra: Mapping[str, Any] | None = None,
        write_extra_files: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the training state for ``position.global_step`` atomically (collective).

        Args:
            model: the (FSDP2-sharded or plain) model.
            optimizer: its optimizer.
            lr_scheduler: its scheduler, or None.
            position: the data position AFTER the step just completed.
            generators: name -> ``torch.Generator`` the recipe samples with (per rank).
            extra: anything else to restore, identical on every rank (rank 0's copy is saved);
                plain Python types and tensors only (loaded with ``weights_only=True``).
            write_extra_files: called on every rank with the temporary step directory before it
                is committed, e.g. ``lambda d: save_hf_checkpoint(model, d / "hf")``; its files
                become part of the atomic checkpoint (and are pruned with it).

        Returns:
            The committed directory. A second save of the same step in the same process (or of
            the step just loaded) is skipped: the state is the one already on disk.

        Raises:
            OSError: ``ENOSPC`` when the free space does not fit the checkpoint (checked before
                writing) or the disk filled up while writing; the message names the folder,
                the bytes needed and free. Any failure on any rank raises on every rank and
                leaves ``latest`` on the previous checkpoint.
        """
        step = position.global_step
        if step == self._last_saved_step:
            logger.info("checkpoint for step %d already on disk (%s): not saved again", step, self.step_dir(step))
            return self.step_dir(step)
        from torch.distributed.checkpoint.state_dict import get_state_dict

        world_size, rank = get_world_size_and_rank()
        tmp_dir = self.checkpoints_dir / f".tmp_step_{step}"
        with _saving():
            model_state, optim_state = get_state_dict(model, optimizer)
            needed = 0
            try:
                _on_every_rank(lambda: self._prepare(tmp_dir, rank))
                needed = self._check_free_space(step, model_state, optim_state)
                _on_every_rank(
                    lambda: self._write_state(
                        tmp_dir, model_state, optim_state, lr_scheduler, position, generators, extra, world_size, rank
                    )
                )
                if write_extra_files is not None:
                    _on_every_rank(lambda: write_extra_files(tmp_dir))
                _on_every_rank(lambda: self._write_manifest(tmp_dir, world_size, rank))
                committed: list[Path] = []
                _on_every_rank(lambda: committed.append(self._commit(tmp_dir, step)) if rank == 0 else None)
            except BaseException as err:
                if not isinstance(err, (Exception, _checkpoint_exception_type())):
                    raise  # KeyboardInterrupt, SystemExit: default behaviour
                self._after_failed_save(err, tmp_dir, step, needed, rank)
                raise
            final_dir = Path(_broadcast_object(str(committed[0]) if rank == 0 else None))
            if rank == 0:
                self._prune(final_dir)
            barrier()
        self._last_saved_step = step
        logger.info("saved resumable checkpoint for step %d to %s", step, final_dir)
        return final_dir

    def _prepare(self, tmp_dir: Path, rank: int) -> None:
        """Rank 0: remove crashed saves' leftovers, create the temp directory."""
        if rank == 0:
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            (tmp_dir / "state").mkdir(parents=True)

    def _write_state(
        self, tmp_dir, model_state, optim_state, lr_scheduler, position, generators, extra, world_size, rank
    ) -> None:
        """DCP shards (collective), this rank's RNG file, and on rank 0 trainer state, config, meta."""
        from torch.distributed.checkpoint import FileSystemWriter, save

        with _single_process_dcp_is_intended():
            save(
                {"model": model_state, "optimizer": optim_state},
                storage_writer=FileSystemWriter(tmp_dir / "state"),
                no_dist=not dist.is_initialized(),
            )
        _save_durably(capture_rng_state(generators), tmp_dir / "state" / f"rng_rank{rank}.pt")
        if rank == 0:
            trainer_state = {
                "lr_scheduler": None if lr_scheduler is None else lr_scheduler.state_dict(),
                "position": asdict(position),
                "extra": dict(extra or {}),
            }
            _save_durably(trainer_state, tmp_dir / "state" / "trainer.pt")
            if self.config is not None:
                save_config(self.config, tmp_dir / "config.yaml")
            meta = {
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "step": position.global_step,
                "position": asdict(position),
                "world_size": world_size,
                "fingerprint": self.fingerprint,
                "resume_history": self._resume_history,
                "torch_version": torch.__version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(tmp_dir / "meta.json", json.dumps(meta, indent=2) + "\n")

    def _after_failed_save(self, err: BaseException, tmp_dir: Path, step: int, needed: int, rank: int) -> None:
        """Remove the partial save (every rank has stopped writing) and name a full disk as such."""
        free = _free_bytes(self.checkpoints_dir)  # before the partial save is removed
        barrier()  # every rank measured before rank 0 deletes
        if rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC and "free" in str(err):
            return  # the free-space check's own error
        if _is_disk_full(err, free):
            raise OSError(
                errno.ENOSPC,
                f"disk full while writing checkpoint step_{step} into {self.checkpoints_dir}: {free} bytes were free "
                f"when the write failed, about {needed} bytes are needed. The partial save was removed and 'latest' "
                f"still names {self.latest_name()}. Free space (or lower keep_last_n_checkpoints) and resume",
            ) from err

    def _write_manifest(self, tmp_dir: Path, world_size: int, rank: int) -> None:
        """Checksum every file (each rank its own shards), then rank 0 writes ``manifest.json``."""
        files = _from_rank0(
            lambda: {str(p.relative_to(tmp_dir)): p.stat().st_size for p in sorted(tmp_dir.rglob("*")) if p.is_file()}
        )
        mine = [rel for rel, owner in _assign_files(files, world_size).items() if owner == rank]
        parts = _gather_from_every_rank(lambda: _checksum_files(tmp_dir, mine))
        if rank == 0:
            checksums = {rel: entry for part in parts for rel, entry in part.items()}
            manifest = {
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "checksum": "crc32",
                "files": {rel: checksums[rel] for rel in sorted(files)},
            }
            atomic_write_text(tmp_dir / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
            for directory in sorted({p.parent for p in tmp_dir.rglob("*")}, key=lambda p: -len(p.parts)):
                fsync_dir(directory)

    def _remove_leftovers(self) -> None:
        """Delete temp dirs of crashed saves (rank 0, before a save)."""
        for path in self.checkpoints_dir.glob(".*_step_*"):
            logger.warning("removing %s left by an interrupted save", path)
            shutil.rmtree(path)

    def _commit(self, tmp_dir: Path, step: int) -> Path:
        """Rename the complete temp dir to a fresh name, then point ``latest`` at it (rank 0)."""
        versions = [version for s, version, _ in self._committed() if s == step]
        name = f"step_{step}" if not versions else f"step_{step}.v{max(versions) + 1}"
        final_dir = self.checkpoints_dir / name
        os.replace(tmp_dir, final_dir)  # the name is new: never replaces a checkpoint
        fsync_dir(self.checkpoints_dir)
        atomic_write_text(self.checkpoints_dir / "latest", name + "\n")
        return final_dir

    def _prune(self, committed: Path) -> None:
        """After ``latest`` names ``committed``: delete older copies of its step and old checkpoints."""
        step, version = _parse_name(committed.name)
        to_delete = [(path, f"superseded by {committed.name}") for s, v, path in self._committed() if s == step and v < version]
        if self.keep_last_n is not None:
            older = [path for s, _, path in self._committed() if s < step]
            num_to_delete = max(0, len(older) - (self.keep_last_n - 1))
            to_delete += [(path, f"keep_last_n={self.keep_last_n}") for path in older[:num_to_delete]]
        for path, why in to_delete:
            logger.info("removing checkpoint %s (%s)", path, why)
            try:
                shutil.rmtree(path)
            except OSError as err:  # the new checkpoint is committed: a failed cleanup is not fatal
                logger.warning("could not remove %s: %s", path, err)

    def _check_free_space(self, step: int, model_state: Mapping, optim_state: Mapping) -> int:
        """Raise ``OSError(ENOSPC)`` on every rank when the new checkpoint does not fit (collective).

        Needed = the size of the latest committed checkpoint (same shapes -> same size), or for
        the first save the bytes of the model and optimizer state (the HF export comes on top).

        Returns:
            The estimated bytes needed.
        """
        _, rank = get_world_size_and_rank()
        state_bytes = all_reduce_scalar(float(_tensor_bytes(model_state) + _tensor_bytes(optim_state)), "sum")
        previous = float(self._latest_size() or 0) if rank == 0 else 0.0
        needed = int(max(state_bytes, all_reduce_scalar(previous, "max")))
        free = int(all_reduce_scalar(float(_free_bytes(self.checkpoints_dir)), "min"))
        if free < needed:
            kept = len(self._committed()) if rank == 0 else 0
            raise OSError(
                errno.ENOSPC,
                f"not enough free space to save checkpoint step_{step} in {self.checkpoints_dir}: it needs about "
                f"{needed} bytes ({needed / 1e9:.2f} GB), {free} bytes ({free / 1e9:.2f} GB) are free. "
                f"The run keeps keep_last_n={self.keep_last_n} checkpoints (plus the new one while it is written; "
                f"{kept} on disk now). Free space, lower keep_last_n_checkpoints, or point output_dir elsewhere",
            )
        if rank == 0 and self.keep_last_n is not None:
            room_for = free // max(needed, 1)
            still_to_come = self.keep_last_n + 1 - len(self._committed())
            if room_for < still_to_come:
                logger.warning(
                    "%s has room for %d checkpoint(s) of ~%d bytes, but keep_last_n=%d needs room for %d more "
                    "(the kept ones plus the next one while it is written): a later save will fail for lack of space",
                    self.checkpoints_dir, room_for, needed, self.keep_last_n, still_to_come,
                )  # fmt: skip
        return needed

    def _latest_size(self) -> int | None:
        """Total size of the latest committed checkpoint from its manifest (None if unknown)."""
        latest = self.latest_dir()
        try:
            manifest = json.loads((latest / MANIFEST_NAME).read_text(encoding="utf-8"))
            return sum(int(entry["size"]) for entry in manifest["files"].values())
        except (TypeError, OSError, ValueError, KeyError):
            return None

    # ------------------------------------------------------------------ load
    def load_latest(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        *,
        generators: Mapping[str, torch.Generator] | None = None,
    ) -> ResumeState:
        """Restore everything from the newest intact checkpoint (collective).

        The checkpoint ``latest`` names is verified first (``verify``); if it is damaged, the
        newest older intact one is used, with a warning naming the damaged file. Model,
        optimizer, scheduler and generators are restored in place, and so are this rank's global
        RNG states; build them exactly as for a fresh run first.

        Returns:
            The saved data position, the ``extra`` dict and the checkpoint path.

        Raises:
            FileNotFoundError: there is no checkpoint under ``output_dir``.
            CorruptCheckpointError: no checkpoint is intact (the message names the damaged files).
            ValueError: the checkpoint does not fit this run (config changes, fingerprint, world
                size, or model and optimizer parameter names/shapes).
        """
        # Rank 0 lists the candidates, so that every rank verifies the same directories in the
        # same order even if a rank's view of a shared filesystem lags.
        candidates = [Path(p) for p in _from_rank0(self._resume_candidates)]
        damaged = []
        for path in candidates:
            problems = self.verify(path)
            if not problems:
                if damaged:
                    logger.warning("resuming from %s, the newest intact checkpoint", path)
                return self._load_dir(path, model, optimizer, lr_scheduler, generators)
            logger.warning(
                "checkpoint %s is damaged, trying the previous one: %s", path, "; ".join(problems)
            )
            damaged.append(f"{path.name}: " + "; ".join(problems))
        raise CorruptCheckpointError(
            f"cannot resume: no intact checkpoint in {self.checkpoints_dir}. Damaged: " + " | ".join(damaged)
        )

    def _resume_candidates(self) -> list[str]:
        """The directory ``latest`` names, then every older committed checkpoint, newest first."""
        name = self.latest_name()
        if name is None:
            raise FileNotFoundError(
                f"resume requested but there is no checkpoint in {self.checkpoints_dir} (no 'latest' file); "
                "start without resuming or point output_dir at the run to resume"
            )
        step, version = _parse_name(name)
        older = [str(path) for s, v, path in reversed(self._committed()) if (s, v) < (step, version)]
        return [str(self.checkpoints_dir / name), *older]

    def load(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        *,
        generators: Mapping[str, torch.Generator] | None = None,
    ) -> ResumeState:
        """Like ``load_latest`` for the checkpoint of a given step (``step_dir(step)``; no fallback)."""
        path = Path(_from_rank0(lambda: str(self.step_dir(step))))
        problems = self.verify(path)
        if problems:
            raise CorruptCheckpointError(f"checkpoint {path} is damaged: " + "; ".join(problems))
        return self._load_dir(path, model, optimizer, lr_scheduler, generators)

    def verify(self, step_dir: Path, full: bool = False) -> list[str]:
        """Check a checkpoint against its manifest on every rank's share of the files (collective).

        Args:
            step_dir: the checkpoint directory.
            full: checksum every file (default: the files a resume reads; the rest by size).

        Returns:
            Problems as ``"<relative path>: <what>"`` (empty if intact), the same on every rank.
        """
        world_size, rank = get_world_size_and_rank()
        expected = None
        if rank == 0:
            expected = _read_manifest(step_dir)
        expected = _broadcast_object(expected)
        if isinstance(expected, str):  # the manifest itself is missing or unreadable
            return [expected]
        files = {rel: entry["size"] for rel, entry in expected.items()}
        mine = [rel for rel, owner in _assign_files(files, world_size).items() if owner == rank]
        problems = _check_files(step_dir, {rel: expected[rel] for rel in mine}, full)
        problems = sorted(p for part in _all_gather_object(problems) for p in part)
        if full:
            return problems
        damaged = [p for p in problems if _RESUME_FILES.match(p.split(": ", 1)[0])]
        for problem in problems:
            if problem not in damaged and rank == 0:
                logger.warning("%s: %s (a resume does not read it)", step_dir, problem)
        return damaged

    def _load_dir(
        self,
        step_dir: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        generators: Mapping[str, torch.Generator] | None,
    ) -> ResumeState:
        """Restore from a verified checkpoint directory."""
        from torch.distributed.checkpoint import CheckpointException, FileSystemReader, load
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

        meta = json.loads((step_dir / "meta.json").read_text(encoding="utf-8"))
        world_size, rank = get_world_size_and_rank()
        self._check_compatible(meta, step_dir, world_size)

        model_state, optim_state = get_state_dict(model, optimizer)
        reader = FileSystemReader(step_dir / "state")
        # get_state_dict gives the fresh optimizer a state for EVERY parameter, but a saved
        # optimizer has none for parameters that never received a gradient (AdamW skips them, e.g.
        # the Thinker's unused audio_bos_eos_token): leave those stateless, as in the saved run.
        # Model weights are always loaded strictly.
        saved_keys = set(reader.read_metadata().state_dict_metadata)
        optim_state["state"] = {
            fqn: param_state
            for fqn, param_state in optim_state["state"].items()
            if any(f"optimizer.state.{fqn}.{key}" in saved_keys for key in param_state)
        }
        state = {"model": model_state, "optimizer": optim_state}
        try:
            with _single_process_dcp_is_intended():
                load(state, storage_reader=reader, no_dist=not dist.is_initialized())
        except CheckpointException as err:  # a BaseException in DCP; every rank gets the same failures
            reasons = "; ".join(sorted({str(exc) for exc, _ in err.failures.values()}))
            raise ValueError(
                f"cannot load the model/optimizer state from {step_dir}: {reasons} "
                "(build the model and optimizer from the config the checkpoint was written with)"
            ) from err
        # strict=False only lets the stateless parameters above through: every model key was
        # already checked against the checkpoint by ``load``.
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
            options=StateDictOptions(strict=False),
        )

        trainer_state = torch.load(step_dir / "state" / "trainer.pt", weights_only=True)
        if lr_scheduler is not None:
            lr_scheduler.load_state_dict(trainer_state["lr_scheduler"])
        if meta["world_size"] == world_size:
            rng_state = torch.load(step_dir / "state" / f"rng_rank{rank}.pt", weights_only=True)
            restore_rng_state(rng_state, generators)
        else:
            logger.warning(
                "checkpoint %s was written by %d ranks, this run has %d: model and optimizer resharded, "
                "RNG streams not restored (the run continues, but not bit-identically)",
                step_dir, meta["world_size"], world_size,
            )  # fmt: skip
        position = DataPosition(**trainer_state["position"])
        self._last_saved_step = position.global_step  # its state is on disk: never re-saved
        if rank == 0 and self.config is not None:
            self._save_resumed_config(position.global_step)
        logger.info("resumed from %s (epoch %d, step_in_epoch %d)", step_dir, position.epoch, position.step_in_epoch)
        return ResumeState(position=position, extra=trainer_state["extra"], path=step_dir)

    def _save_resumed_config(self, step: int) -> Path:
        """This run's config next to the first run's ``config.yaml``, under a new name."""
        path = self.output_dir / f"config.resumed_at_step_{step}.yaml"
        attempt = 1
        while path.exists():
            attempt += 1
            path = self.output_dir / f"config.resumed_at_step_{step}.{attempt}.yaml"
        return save_config(self.config, path)

    def _check_compatible(self, meta: dict[str, Any], step_dir: Path, world_size: int) -> None:
        if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"{step_dir}: checkpoint format {meta.get('format_version')}, this code reads {CHECKPOINT_FORMAT_VERSION}"
            )
        saved = meta["fingerprint"]
        differences = [
            f"{key}: checkpoint {saved.get(key, '<unset>')!r} vs this run {self.fingerprint.get(key, '<unset>')!r}"
            for key in sorted(set(saved) | set(self.fingerprint))
            if saved.get(key) != self.fingerprint.get(key) or (key in saved) != (key in self.fingerprint)
        ]
        if differences:
            raise ValueError(
                f"cannot resume from {step_dir}: the config changed in keys that must stay fixed: "
                + "; ".join(differences)
            )
        if meta["world_size"] != world_size and not self.allow_world_size_change:
            raise ValueError(
                f"cannot resume from {step_dir}: it was written by {meta['world_size']} ranks, this run has "
                f"{world_size}. Use the same number of ranks for an exact resume, or allow_world_size_change=True "
                "to load the resharded model and optimizer (RNG streams are then not restored)"
            )
        self._resume_history = list(meta.get("resume_history", []))
        if self.config is None or not (step_dir / "config.yaml").is_file():
            return
        import yaml

        saved_config = yaml.safe_load((step_dir / "config.yaml").read_text(encoding="utf-8"))
        changes, unused = check_resume_settings(
            saved_config,
            self.config,
            self.resume_allow_changed,
            ignore=self.non_trajectory_keys,
            checkpoint=str(step_dir),
        )
        if unused:
            logger.warning("resume_allow_changed names %s, which did not change", unused)
        if changes:
            logger.warning(
                "resuming from %s with changed settings (allowed by resume_allow_changed): %s",
                step_dir, "; ".join(format_changes(changes)),
            )  # fmt: skip
            self._resume_history.append(
                {
                    "step": meta["step"],
                    "checkpoint": step_dir.name,
                    "changed": {key: [format_value(a), format_value(b)] for key, (a, b) in changes.items()},
                }
            )


def verify_checkpoint(step_dir: str | os.PathLike, full: bool = True) -> list[str]:
    """Check one checkpoint directory against its manifest in this process (not a collective).

    Args:
        step_dir: a ``checkpoints/step_N`` directory.
        full: checksum every file (default), or only the files a resume reads (others by size).

    Returns:
        Problems as ``"<relative path>: <what>"``; empty if the checkpoint is intact.
    """
    step_dir = Path(step_dir)
    expected = _read_manifest(step_dir)
    if isinstance(expected, str):
        return [expected]
    return _check_files(step_dir, expected, full)


# ---------------------------------------------------------------------- manifest helpers
def _parse_name(name: str) -> tuple[int, int]:
    """``step_12`` -> (12, 1); ``step_12.v3`` -> (12, 3)."""
    match = _STEP_DIR.match(name)
    assert match is not None, name
    return int(match.group(1)), int(match.group(2) or 1)


def file_crc32(path: Path) -> tuple[int, str]:
    """(size in bytes, CRC-32 as 8 hex digits) of a file, read in 16 MiB chunks."""
    crc, size = 0, 0
    buffer = bytearray(_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while num := f.readinto(view):
            crc = zlib.crc32(view[:num], crc)  # releases the GIL: threads hash files in parallel
            size += num
    return size, f"{crc:08x}"


def _checksum_files(root: Path, relative_paths: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{rel: {"size", "crc32"}}`` for files under ``root``, a few threads at a time."""
    if not relative_paths:
        return {}
    with ThreadPoolExecutor(max_workers=min(_MAX_HASH_THREADS, len(relative_paths))) as pool:
        results = pool.map(lambda rel: file_crc32(root / rel), relative_paths)
        return {rel: {"size": size, "crc32": crc} for rel, (size, crc) in zip(relative_paths, results)}


def _read_manifest(step_dir: Path) -> dict[str, dict[str, Any]] | str:
    """The manifest's ``files`` entry, or a problem string naming what is wrong."""
    path = step_dir / MANIFEST_NAME
    if not step_dir.is_dir():
        return "directory missing"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if not all(isinstance(e, dict) and isinstance(e["size"], int) and isinstance(e["crc32"], str) for e in files.values()):
            raise ValueError("malformed entry")
        return files
    except FileNotFoundError:
        return f"{MANIFEST_NAME}: missing (not a committed checkpoint of this merr1 version)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{MANIFEST_NAME}: unreadable ({type(err).__name__}: {err})"


def _check_files(root: Path, expected: Mapping[str, Mapping[str, Any]], full: bool) -> list[str]:
    """Problems of the given manifest entries: missing, wrong size, unreadable, wrong checksum."""
    problems, to_hash = [], []
    for rel, entry in expected.items():
        path = root / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        except OSError as err:
            problems.append(f"{rel}: unreadable ({err.strerror})")
            continue
        if size != entry["size"]:
            problems.append(f"{rel}: {size} bytes, the manifest says {entry['size']} (truncated or overwritten)")
        elif full or _RESUME_FILES.match(rel):
            to_hash.append(rel)

    def checksum(rel: str) -> str | None:
        try:
            _, crc = file_crc32(root / rel)
        except OSError as err:
            return f"{rel}: unreadable ({err.strerror or err})"
        if crc != expected[rel]["crc32"]:
            return f"{rel}: checksum {crc} != {expected[rel]['crc32']} in the manifest (the content changed)"
        return None

    if to_hash:
        with ThreadPoolExecutor(max_workers=min(_MAX_HASH_THREADS, len(to_hash))) as pool:
            problems += [p for p in pool.map(checksum, to_hash) if p is not None]
    return sorted(problems)


def _assign_files(files: Mapping[str, int], world_size: int) -> dict[str, int]:
    """Which rank checksums which file: a rank's own DCP shard and RNG file go to that rank (it
    just wrote them / is about to read them, so they are in its page cache), the others to the
    least-loaded rank, largest first. Deterministic, so every rank computes the same split."""
    owners: dict[str, int] = {}
    load = [0] * world_size
    shared = []
    for rel, size in files.items():
        match = _RANK_FILE.search(rel)
        if match:
            owner = int(match.group(1) or match.group(2)) % world_size
            owners[rel] = owner
            load[owner] += size
        else:
            shared.append((size, rel))
    for size, rel in sorted(shared, key=lambda item: (-item[0], item[1])):
        owner = min(range(world_size), key=lambda r: (load[r], r))
        owners[rel] = owner
        load[owner] += size
    return owners


def _tensor_bytes(state: Any) -> int:
    """Bytes of the tensors in a nested state dict (this rank's shards of DTensors)."""
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    if isinstance(state, Mapping):
        return sum(_tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(v) for v in state)
    return 0


def _free_bytes(path: Path) -> int:
    """Bytes available to this user on the filesystem of ``path`` (or of its nearest existing parent)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def _is_disk_full(err: BaseException, free: int) -> bool:
    """An ENOSPC/EDQUOT anywhere in the error chain (DCP failures included), or (torch's zip
    writer drops the errno: 'unexpected pos') less than 1 MiB left on the filesystem."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        failures = getattr(exc, "failures", None)  # torch.distributed.checkpoint.CheckpointException
        if isinstance(failures, Mapping):
            stack.extend(f[0] for f in failures.values() if isinstance(f, tuple) and isinstance(f[0], BaseException))
        stack.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
    return free < 2**20


def _checkpoint_exception_type() -> type:
    from torch.distributed.checkpoint import CheckpointException

    return CheckpointException


def _on_every_rank(fn: Callable[[], None]) -> None:
    """Run ``fn`` on every rank; if it fails on any rank, raise on every rank (collective).

    A rank that failed alone would leave the others waiting in the next barrier until the
    process-group timeout; this way all of them stop with an error at the same point.
    """
    error: BaseException | None = None
    try:
        fn()
    except (Exception, _checkpoint_exception_type()) as err:  # DCP's CheckpointException is a BaseException
        error = err
    failed = all_reduce_scalar(float(error is not None), "max") > 0
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("another rank failed while saving the checkpoint (its log has the error)")


def _from_rank0(fn: Callable[[], Any]) -> Any:
    """Rank 0 runs ``fn``; its result reaches every rank. If it raises, rank 0 re-raises its
    error and the other ranks raise a RuntimeError quoting it (none is left waiting)."""
    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    error: BaseException | None = None
    result: tuple[str, Any] = ("", None)
    if dist.get_rank() == 0:
        try:
            result = ("ok", fn())
        except Exception as err:
            error, result = err, ("error", f"{type(err).__name__}: {err}")
    status, value = _broadcast_object(result)
    if error is not None:
        raise error
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def _gather_from_every_rank(fn: Callable[[], Any]) -> list[Any]:
    """Every rank runs ``fn``; all results in rank order. If any rank raises, that rank re-raises
    its error and the others raise a RuntimeError quoting it."""
    if not (dist.is_available() and dist.is_initialized()):
        return [fn()]
    error: BaseException | None = None
    try:
        result: tuple[str, Any] = ("ok", fn())
    except Exception as err:
        error, result = err, ("error", f"{type(err).__name__}: {err}")
    gathered = _all_gather_object(result)
    if error is not None:
        raise error
    failed = [f"rank {r} failed: {value}" for r, (status, value) in enumerate(gathered) if status == "error"]
    if failed:
        raise RuntimeError("; ".join(failed))
    return [value for _, value in gathered]


def _broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


# Incremented while TrainingCheckpointer.save runs: a SIGINT then keeps its default behaviour.
_SAVES_IN_PROGRESS = 0


@contextlib.contextmanager
def _saving() -> Iterator[None]:
    global _SAVES_IN_PROGRESS
    _SAVES_IN_PROGRESS += 1
    try:
        yield
    finally:
        _SAVES_IN_PROGRESS -= 1


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """This process's RNG states: python, numpy, torch CPU, current CUDA device (if used), generators."""
    import numpy as np

    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    cuda_used = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch_cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if cuda_used else None,
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Inverse of ``capture_rng_state``; ``generators`` must have the names that were saved."""
    import numpy as np

    generators = dict(generators or {})
    if set(generators) != set(state["generators"]):
        raise ValueError(
            f"generators to restore {sorted(generators)} differ from the checkpoint's {sorted(state['generators'])}"
        )
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch_cpu"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])


@contextlib.contextmanager
def _single_process_dcp_is_intended() -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group (a plain ``python`` run)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _save_durably(obj: Any, path: Path) -> None:
    with path.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


# Exit codes after a preemption save: 128 + the signal number, what a shell reports for a process
# killed by that signal, so a SLURM requeue script can tell "stopped by a signal, resumable" from
# an error (1) and from a finished run (0). README, "Exit codes".
EXIT_CODE_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_CODE_SIGINT = 128 + signal.SIGINT  # 130


def preemption_exit_code(signum: int | signal.Signals) -> int:
    """The documented exit code after a save triggered by ``signum`` (128 + signal number)."""
    return 128 + int(signum)


class PreemptionHandler:
    """Turns SIGTERM and SIGINT into a flag checked once per step; the recipe then saves and exits.

    - SIGTERM (preemption, ``scancel``, torchrun shutting down) is recorded, however often it comes.
    - SIGINT (Ctrl-C) is recorded the same way when it is the first signal and no checkpoint save
      is running; a second SIGINT (or any SIGINT after a recorded signal, or one during a save)
      gets the handler that was installed before (Python's: ``KeyboardInterrupt``), so pressing
      Ctrl-C twice stops at once, as without the handler. SIGINT is left alone if it was ignored
      when the handler was installed (a background job of a non-interactive shell).

    The recipe calls ``should_stop()`` once per optimizer step on every rank (a collective: True
    everywhere as soon as any rank got a signal), then saves a resumable checkpoint, logs it and
    exits with ``exit_code`` (``EXIT_CODE_SIGTERM`` = 143, ``EXIT_CODE_SIGINT`` = 130; on every
    rank the same, SIGTERM winning when ranks got different signals). Whoever sent the signal
    kills after a grace period, and the save must fit in it: torchrun forwards SIGTERM/SIGINT to
    its workers and SIGKILLs them after ``--shutdown_timeout`` (default 30 s); SLURM after
    ``KillWait``.

    Args:
        signals: signal names or numbers to catch, e.g. ``("SIGTERM", "SIGUSR1")``.
            Must be constructed in the main thread.
    """

    def __init__(self, signals: Sequence[str | int] = ("SIGTERM", "SIGINT")) -> None:
        self.received: signal.Signals | None = None
        self.stop_signal: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        for sig in signals:
            signum = signal.Signals[sig] if isinstance(sig, str) else signal.Signals(sig)
            if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and (self.received is not None or _SAVES_IN_PROGRESS > 0):
            self._default(sig, frame)
            return
        if self.received is None:
            self.received = sig
            again = " (Ctrl-C again to stop at once, without saving)" if sig == signal.SIGINT else ""
            # os.write: safe inside a signal handler (logging could be holding its lock right now).
            os.write(2, f"received {sig.name}: finishing this step, then saving a resumable checkpoint{again}\n".encode())

    def _default(self, sig: signal.Signals, frame: FrameType | None) -> None:
        """What ``sig`` did before this handler was installed."""
        previous = self._previous.get(sig, signal.SIG_DFL)
        if callable(previous):
            previous(int(sig), frame)  # signal.default_int_handler raises KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    def should_stop(self) -> bool:
        """True on every rank if any rank received a signal (all-reduce max; call on all ranks)."""
        signum = int(all_reduce_scalar(float(self.received or 0), op="max"))
        if signum and self.stop_signal is None:
            self.stop_signal = signal.Signals(signum)
            logger.warning("received %s: stopping after this step", self.stop_signal.name)
        return self.stop_signal is not None

    @property
    def exit_code(self) -> int:
        """``preemption_exit_code`` of the signal that stopped the run (after ``should_stop``), else 0."""
        return 0 if self.stop_signal is None else preemption_exit_code(self.stop_signal)

    def close(self) -> None:
        """Restore the signal handlers that were installed before."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> PreemptionHandler:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
