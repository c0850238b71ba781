"""Process-group setup and the few collectives the recipes need.

A recipe runs the same code as one plain ``python`` process (no process group: a world of 1, every
helper below is then a no-op or an identity) or under ``torchrun`` (``tune run --nproc_per_node``),
which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.

Backends: ``cpu:gloo,cuda:nccl`` when CUDA is available (NCCL for the GPU tensors of FSDP2, gloo
for CPU tensors such as the scalar reductions below), ``gloo`` otherwise (CPU tests).
"""

from __future__ import annotations

import logging
import os
import random
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

ReduceOp = Literal["sum", "mean", "max", "min"]
_DIST_OPS = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,  # divided by the world size afterwards (gloo has no AVG)
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
}


def init_distributed(
    backend: str | None = None,
    init_method: str | None = None,
    timeout_s: float = 1800.0,
) -> tuple[int, int]:
    """Initialise the default process group when launched by torchrun; else do nothing.

    A process group is created when ``WORLD_SIZE`` is set in the environment (torchrun sets it,
    also for ``--nproc_per_node 1``) or when ``init_method`` is given (tests: ``file://...`` plus
    ``RANK``/``WORLD_SIZE``). A plain ``python`` process is a world of 1 without a process group.
    Calling it again once the group exists returns the current world size and rank.

    Args:
        backend: ``None`` picks ``cpu:gloo,cuda:nccl`` if CUDA is available, else ``gloo``.
        init_method: rendezvous URL; ``None`` means ``env://`` (``MASTER_ADDR``/``MASTER_PORT``).
        timeout_s: collective timeout. Generous by default: saving a 7B checkpoint is one long
            collective for the ranks that wait on the slowest writer.

    Returns:
        ``(world_size, rank)``.
    """
    if dist.is_initialized():
        return get_world_size_and_rank()
    if "WORLD_SIZE" not in os.environ and init_method is None:
        return 1, 0
    missing = [k for k in ("WORLD_SIZE", "RANK") if k not in os.environ]
    if missing:
        raise ValueError(f"init_distributed: environment variable(s) {missing} not set (launch with torchrun)")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if "nccl" in backend:
        # Bind this process to its GPU before NCCL creates communicators on it.
        torch.cuda.set_device(_local_rank())
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        world_size=int(os.environ["WORLD_SIZE"]),
        rank=int(os.environ["RANK"]),
        timeout=timedelta(seconds=timeout_s),
    )
    world_size, rank = get_world_size_and_rank()
    logger.info("initialised process group: backend=%s world_size=%d rank=%d", backend, world_size, rank)
    return world_size, rank


def get_world_size_and_rank() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_rank_zero() -> bool:
    """True on global rank 0 (and in a single process without a process group)."""
    return get_world_size_and_rank()[1] == 0


def device_for_rank(device_cfg: str) -> torch.device:
    """The device this rank computes on.

    Args:
        device_cfg: ``"cpu"``, ``"cuda"`` (GPU ``LOCAL_RANK``) or ``"auto"`` (``"cuda"`` if
            available, else ``"cpu"``).

    Returns:
        ``torch.device("cpu")`` or ``torch.device("cuda", LOCAL_RANK)``; for CUDA it is also made
        the current device.
    """
    if device_cfg not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device_cfg!r}")
    if device_cfg == "auto":
        device_cfg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_cfg == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available (use device=cpu or device=auto)")
    device = torch.device("cuda", _local_rank())
    torch.cuda.set_device(device)
    return device


def set_seed(seed: int, rank: int | None = None) -> int:
    """Seed python ``random``, numpy and torch (CPU and all CUDA devices) with ``seed + rank``.

    The per-rank offset gives every rank its own dropout masks and sampling noise (rank r of a
    2-rank run does not replay rank 0's random numbers). Anything that must be identical on all
    ranks must therefore not draw from these global generators: data order comes from a sampler
    seeded with the base ``seed`` (and the epoch), and models are built from their own seed
    (``tiny_thinker(seed=...)``) or loaded from a checkpoint.

    Args:
        seed: the base seed from the config.
        rank: offset; ``None`` means this process's global rank.

    Returns:
        The effective seed ``seed + rank``.
    """
    import numpy as np

    if rank is None:
        rank = get_world_size_and_rank()[1]
    effective_seed = seed + rank
    random.seed(effective_seed)
    np.random.seed(effective_seed % 2**32)
    torch.manual_seed(effective_seed)  # also seeds every CUDA device
    return effective_seed


def all_reduce_scalar(value: float | torch.Tensor, op: ReduceOp = "mean") -> float:
    """Reduce one Python number (or a one-element tensor) over all ranks.

    Args:
        value: this rank's value.
        op: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``.

    Returns:
        The reduced value as a float, identical on every rank (``float(value)`` in a world of 1).
    """
    return all_reduce_dict({"value": value}, op)["value"]


def all_reduce_dict(values: dict[str, float | torch.Tensor], op: ReduceOp = "mean") -> dict[str, float]:
    """Reduce a dict of numbers over all ranks in one collective (keys must match on every rank).

    Args:
        values: name -> this rank's number (float, int, bool or one-element tensor).
        op: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``.

    Returns:
        name -> reduced float, identical on every rank. Reduced in float64.
    """
    if op not in _DIST_OPS:
        raise ValueError(f"op must be one of {sorted(_DIST_OPS)}, got {op!r}")
    keys = list(values)
    world_size, _ = get_world_size_and_rank()
    if world_size == 1 or not keys:
        return {k: float(values[k]) for k in keys}
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(packed, op=_DIST_OPS[op])
    if op == "mean":
        packed /= world_size
    return dict(zip(keys, packed.tolist()))


class ResumableDistributedSampler(torch.utils.data.DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way, without loading the skipped samples.

    The order of an epoch depends only on (``seed``, epoch), as for ``DistributedSampler``;
    ``set_epoch(epoch, start_index)`` drops the first ``start_index`` indices of this rank's order,
    so a resumed run sees exactly the samples the uninterrupted run would have seen next.
    """

    def __init__(self, dataset, *, num_replicas: int, rank: int, shuffle: bool, seed: int, drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index {start_index} outside [0, {self.num_samples}] for this epoch")
        super().set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in a world of 1)."""
    if get_world_size_and_rank()[0] == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def gather_objects(obj: Any, dst: int = 0) -> list[Any]:
    """Every rank's picklable ``obj`` on rank ``dst``, in rank order; ``[]`` on the other ranks."""
    world_size, rank = get_world_size_and_rank()
    if world_size == 1:
        return [obj]
    out = [None] * world_size if rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out if rank == dst else []


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    """Destroy the default process group if there is one (call once at the end of a recipe)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _collective_device() -> torch.device:
    """Where small tensors for collectives live: CPU unless the group is NCCL-only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
