"""Run a function on 2 gloo (CPU) ranks: the multi-process harness of the FSDP2 tests.

The ranks are forked from the test process (``torch.multiprocessing``, start method ``fork``), so
they inherit its imports (torch, transformers) and start in well under a second; the process
group uses a file rendezvous in a temporary directory. Rank 0's ``out`` dict comes back to the
test; an exception on any rank fails the test with that rank's traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2


def _entry(rank: int, fn: Callable[..., None], work_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{work_dir}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        out: dict[str, Any] = {}
        fn(out, *args)
        if rank == 0:
            torch.save(out, os.path.join(work_dir, "results.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _import_heavy_modules() -> None:
    """Import what the ranks need before forking, so each rank does not import it again."""
    import safetensors.torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.distributed.algorithms._checkpoint.checkpoint_wrapper  # noqa: F401
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torchao.float8  # noqa: F401
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration, Qwen2ForCausalLM  # noqa: F401


def run_two_ranks(fn: Callable[..., None], work_dir: str | Path, *args) -> dict[str, Any]:
    """Call ``fn(out, *args)`` on 2 ranks; returns the ``out`` dict that rank 0 filled."""
    _import_heavy_modules()
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_entry, args=(fn, str(work_dir), args), nprocs=WORLD_SIZE, join=True, start_method="fork")
    return torch.load(work_dir / "results.pt", weights_only=False)
