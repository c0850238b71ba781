"""Resumable training state (atomic, sharded) and SIGTERM handling for the recipes.

Layout under ``{output_dir}/checkpoints/``::

    latest                  text file "step_120": the newest COMPLETE checkpoint (the source of truth)
    step_120/
      meta.json             step, data position, world size, config fingerprint (written last)
      config.yaml           the resolved config of the run that wrote it (if given)
      state/                torch.distributed.checkpoint (DCP): model + optimizer, one shard file per rank
      state/trainer.pt      rank 0: lr scheduler state, data position, the recipe's ``extra`` dict
      state/rng_rank{r}.pt  rank r: python / numpy / torch CPU / CUDA RNG states + the recipe's generators
      ...                   whatever the ``write_extra_files`` hook writes (HF-format weights)
    .tmp_step_130/          a save in progress (or a crashed one: removed by the next save)

Atomicity: every rank writes into ``.tmp_step_N`` (same filesystem, fsync'ed files), then after a
barrier rank 0 writes ``meta.json``, renames the directory to ``step_N`` and replaces ``latest``
(temp file + ``os.replace``). A crash at any point before that rename leaves ``latest`` on the
previous complete checkpoint. Multi-node runs need ``output_dir`` on a filesystem all nodes share
(as DCP itself does).

Model and optimizer go through ``get_state_dict``/``set_state_dict``, so the same code saves an
FSDP2-sharded model (each rank writes its shards) and a plain one. DCP reshards on load; a
checkpoint written by a different number of ranks is refused unless ``allow_world_size_change``
(model, optimizer, scheduler, position and extra are then loaded, the per-rank RNG streams are
not, so the continuation is valid but not bit-identical to an uninterrupted run).

Per-rank RNG states are saved because each rank has its own dropout/sampling stream
(``merr1.components.distributed.set_seed`` offsets the seed by the rank). The data order must be
a function of (seed, epoch): the recipe re-creates the epoch's order (``sampler.set_epoch``) and
skips the ``step_in_epoch`` optimizer steps' batches already consumed. Give the DataLoader its own
``generator`` and reseed it per epoch: every ``iter(loader)`` draws a number from it, or from the
global torch RNG when it has none, which would shift the dropout stream of a resumed run (it
creates its iterator at the resume point, not at the epoch start).

Checkpoints are taken between optimizer steps (never inside gradient accumulation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from merr1.components.distributed import all_reduce_scalar, barrier, get_world_size_and_rank
from merr1.components.metric_logging import atomic_write_text, fsync_dir, save_config, to_jsonable

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


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


class TrainingCheckpointer:
    """Saves and restores a resumable training state in ``{output_dir}/checkpoints`` (module docstring).

    Every rank must call ``save``/``load_latest`` at the same point (they are collectives).

    Args:
        output_dir: run directory.
        keep_last_n: keep the just-written checkpoint and the ``keep_last_n - 1`` newest older
            ones; ``None`` keeps all. Directories numbered above the one just written (left by an
            earlier run in the same ``output_dir``) are not touched.
        fingerprint: config values that must not change across a resume (batch size, model
            shape, ...), JSON-able; compared on load, with world size.
        allow_world_size_change: load a checkpoint written by a different number of ranks
            (resharded by DCP; RNG streams not restored) instead of refusing it.
        config: the resolved run config as a plain dict; written to ``step_N/config.yaml`` with
            every checkpoint (``save_config``), so each checkpoint says how it was produced.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        keep_last_n: int | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        allow_world_size_change: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if keep_last_n is not None and keep_last_n < 1:
            raise ValueError(f"keep_last_n must be >= 1 or None (keep all), got {keep_last_n}")
        self.checkpoints_dir = Path(output_dir) / "checkpoints"
        self.keep_last_n = keep_last_n
        self.fingerprint = to_jsonable(dict(fingerprint or {}), "fingerprint")
        self.allow_world_size_change = allow_world_size_change
        self.config = config
        self._last_saved_step: int | None = None

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint (from the ``latest`` file), or None."""
        pointer = self.checkpoints_dir / "latest"
        if not pointer.exists():
            return None
        match = _STEP_DIR.match(pointer.read_text(encoding="utf-8").strip())
        if match is None:
            raise ValueError(f"{pointer} is corrupt: expected 'step_<N>', got {pointer.read_text()!r}")
        return int(match.group(1))

    def step_dir(self, step: int) -> Path:
        """Directory of the checkpoint written at ``global_step == step``."""
        return self.checkpoints_dir / f"step_{step}"

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
            The committed ``step_N`` directory. A second save at the same step in the same
            process is skipped (the state is the one already written).
        """
        step = position.global_step
        final_dir = self.step_dir(step)
        if step == self._last_saved_step:
            logger.info("checkpoint for step %d already written to %s", step, final_dir)
            return final_dir
        from torch.distributed.checkpoint import FileSystemWriter, save
        from torch.distributed.checkpoint.state_dict import get_state_dict

        world_size, rank = get_world_size_and_rank()
        tmp_dir = self.checkpoints_dir / f".tmp_step_{step}"
        if rank == 0:
            self._remove_leftovers()
            (tmp_dir / "state").mkdir(parents=True)
        barrier()

        model_state, optim_state = get_state_dict(model, optimizer)
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
        if write_extra_files is not None:
            write_extra_files(tmp_dir)
        barrier()

        if rank == 0:
            meta = {
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "step": step,
                "position": asdict(position),
                "world_size": world_size,
                "fingerprint": self.fingerprint,
                "torch_version": torch.__version__,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(tmp_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
            self._commit(tmp_dir, final_dir)
            self._prune(step)
        barrier()
        self._last_saved_step = step
        logger.info("saved resumable checkpoint for step %d to %s", step, final_dir)
        return final_dir

    def _remove_leftovers(self) -> None:
        """Delete temp dirs of crashed saves (rank 0, before a save)."""
        if not self.checkpoints_dir.exists():
            return
        for path in self.checkpoints_dir.glob(".*_step_*"):
            logger.warning("removing %s left by an interrupted save", path)
            shutil.rmtree(path)

    def _commit(self, tmp_dir: Path, final_dir: Path) -> None:
        """Rename the complete temp dir into place and point ``latest`` at it (rank 0)."""
        fsync_dir(tmp_dir / "state")
        fsync_dir(tmp_dir)
        old_dir = None
        if final_dir.exists():  # an earlier run (or the run before a resume) wrote this step
            old_dir = final_dir.with_name(f".old_{final_dir.name}")
            os.replace(final_dir, old_dir)
        os.replace(tmp_dir, final_dir)
        fsync_dir(self.checkpoints_dir)
        atomic_write_text(self.checkpoints_dir / "latest", final_dir.name + "\n")
        if old_dir is not None:
            shutil.rmtree(old_dir)

    def _prune(self, step: int) -> None:
        if self.keep_last_n is None:
            return
        older = sorted(s for s in self._complete_steps() if s < step)
        num_to_delete = max(0, len(older) - (self.keep_last_n - 1))
        for old_step in older[:num_to_delete]:
            logger.info("pruning checkpoint %s (keep_last_n=%d)", self.step_dir(old_step), self.keep_last_n)
            shutil.rmtree(self.step_dir(old_step))

    def _complete_steps(self) -> list[int]:
        return [int(m.group(1)) for p in self.checkpoints_dir.iterdir() if (m := _STEP_DIR.match(p.name))]

    # ------------------------------------------------------------------ load
    def load_latest(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        *,
        generators: Mapping[str, torch.Generator] | None = None,
    ) -> ResumeState:
        """Restore everything from the newest complete checkpoint (collective).

        Model, optimizer, scheduler and generators are restored in place, and so are this rank's
        global RNG states; build them exactly as for a fresh run first.

        Returns:
            The saved data position, the ``extra`` dict and the checkpoint path.

        Raises:
            FileNotFoundError: there is no checkpoint under ``output_dir``.
            ValueError: the checkpoint does not fit this run (fingerprint, world size, or model and
                optimizer parameter names/shapes).
        """
        step = self.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"resume requested but there is no checkpoint in {self.checkpoints_dir} (no 'latest' file); "
                "start without resuming or point output_dir at the run to resume"
            )
        return self.load(step, model, optimizer, lr_scheduler, generators=generators)

    def load(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        *,
        generators: Mapping[str, torch.Generator] | None = None,
    ) -> ResumeState:
        """Like ``load_latest`` for the checkpoint of a given step."""
        from torch.distributed.checkpoint import CheckpointException, FileSystemReader, load
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        step_dir = self.step_dir(step)
        meta_path = step_dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"checkpoint {step_dir} is missing or incomplete (no meta.json)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        world_size, rank = get_world_size_and_rank()
        self._check_compatible(meta, step_dir, world_size)

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        try:
            with _single_process_dcp_is_intended():
                load(state, storage_reader=FileSystemReader(step_dir / "state"), no_dist=not dist.is_initialized())
        except CheckpointException as err:  # a BaseException in DCP; every rank gets the same failures
            reasons = "; ".join(sorted({str(exc) for exc, _ in err.failures.values()}))
            raise ValueError(
                f"cannot load the model/optimizer state from {step_dir}: {reasons} "
                "(build the model and optimizer from the config the checkpoint was written with)"
            ) from err
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

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
            )
        position = DataPosition(**trainer_state["position"])
        logger.info("resumed from %s (epoch %d, step_in_epoch %d)", step_dir, position.epoch, position.step_in_epoch)
        return ResumeState(position=position, extra=trainer_state["extra"], path=step_dir)

    def _check_compatible(self, meta: dict[str, Any], step_dir: Path, world_size: int) -> None:
        if meta["format_version"] != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"{step_dir}: checkpoint format {meta['format_version']}, this code reads {CHECKPOINT_FORMAT_VERSION}"
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


class PreemptionHandler:
    """Turns SIGTERM (preemption, ``scancel``, torchrun shutting down) into a flag checked per step.

    The handler only records the signal; the recipe calls ``should_stop()`` once per optimizer
    step on every rank (it is a collective: True everywhere as soon as any rank got a signal),
    then saves a resumable checkpoint, logs it and exits with code 0. Whoever sent the signal
    kills after a grace period, and the save must fit in it: torchrun forwards SIGTERM to its
    workers and SIGKILLs them after ``--shutdown_timeout`` (default 30 s); SLURM after ``KillWait``.

    Args:
        signals: signal names or numbers to catch, e.g. ``("SIGTERM", "SIGUSR1")``.
            Must be constructed in the main thread.
    """

    def __init__(self, signals: Sequence[str | int] = ("SIGTERM",)) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        for sig in signals:
            signum = signal.Signals[sig] if isinstance(sig, str) else signal.Signals(sig)
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def should_stop(self) -> bool:
        """True on every rank if any rank received a signal (all-reduce max; call on all ranks)."""
        stop = all_reduce_scalar(float(self.received is not None), op="max") > 0
        if stop and self.received is not None:
            logger.warning("received %s: stopping after this step", self.received.name)
        return stop

    def close(self) -> None:
        """Restore the signal handlers that were installed before."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> PreemptionHandler:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
