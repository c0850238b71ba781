"""Run a function on N gloo ranks in forked processes (cheap: no torch re-import, no torchrun).

Each rank gets RANK/WORLD_SIZE/LOCAL_RANK in its environment and a process group through
``merr1.components.distributed.init_distributed`` with a ``file://`` rendezvous, so no network
port is needed. Heavy torch.distributed modules are imported before forking (a rank then starts in
well under a second). Fork is safe here because the children set one intra-op thread before any
torch op.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Imported here, before forking, so that every rank inherits them instead of importing them itself
# (they take seconds to import; FSDP2 pulls in DTensor).
import torch._dynamo  # noqa: F401  (DTensor.from_local imports it lazily)
import torch.distributed.checkpoint  # noqa: F401
import torch.distributed.checkpoint.state_dict  # noqa: F401
import torch.distributed.device_mesh  # noqa: F401
import torch.distributed.fsdp  # noqa: F401


def _rank_main(rank: int, world_size: int, store_path: Path, result_path: Path, fn: Callable, kwargs: dict) -> None:
    import torch

    from merr1.components.distributed import destroy, init_distributed

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    try:
        init_distributed(init_method=f"file://{store_path}")
        result = fn(**kwargs)
        destroy()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    result_path.write_bytes(pickle.dumps(result))


def run_on_ranks(
    fn: Callable[..., Any], world_size: int, tmp_dir: Path, timeout_s: float = 120.0, **kwargs
) -> list[Any]:
    """Call ``fn(**kwargs)`` on ``world_size`` forked gloo ranks; return each rank's result.

    Fails (AssertionError) if a rank raises, exits non-zero or does not finish in ``timeout_s``.
    """
    ctx = multiprocessing.get_context("fork")
    launch_dir = Path(tmp_dir) / f"launch_{uuid.uuid4().hex[:8]}"
    launch_dir.mkdir(parents=True)
    store_path = launch_dir / "store"
    result_paths = [launch_dir / f"result_{rank}.pkl" for rank in range(world_size)]
    procs = [
        ctx.Process(target=_rank_main, args=(rank, world_size, store_path, result_paths[rank], fn, kwargs))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    exit_codes = [proc.exitcode for proc in procs]
    assert exit_codes == [0] * world_size, f"rank exit codes {exit_codes} (see the traceback above)"
    return [pickle.loads(path.read_bytes()) for path in result_paths]
