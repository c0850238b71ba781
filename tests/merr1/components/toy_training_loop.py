"""A tiny resumable training loop that uses merr1's training infrastructure like a recipe does.

Used by the checkpointing tests in-process, in forked gloo ranks (FSDP2) and as a subprocess
(``python toy_training_loop.py OUT_DIR NUM_STEPS [--resume] [--sleep S]``, or under
``torchrun --nproc_per_node 2 ... --fsdp``) that receives SIGTERM or SIGINT and then exits with
``PreemptionHandler.exit_code`` (143 / 130), as the recipes do.
The loss depends on the data order (DataLoader + DistributedSampler, seed, epoch), dropout (global torch RNG, per rank), an
extra ``torch.Generator`` (input noise), AdamW state and the lr schedule, so any state the
checkpoint forgets shows up as a different loss after resuming.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from merr1.components.checkpointing import DataPosition, PreemptionHandler, TrainingCheckpointer
from merr1.components.distributed import all_reduce_dict, barrier, destroy, get_world_size_and_rank, init_distributed, set_seed
from merr1.components.metric_logging import MetricLogger, format_metrics
from merr1.components.optim import build_adamw, clip_grad_norm, cosine_schedule_with_warmup

logger = logging.getLogger("toy_training_loop")

NUM_SAMPLES = 48
BATCH_SIZE = 4  # per rank
SEED = 1234


def build_model() -> nn.Module:
    """Same initial weights on every rank and in every run (own seed, like tiny_thinker(seed=...))."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 4))


def build_dataloader(world_size: int, rank: int) -> tuple[DataLoader, DistributedSampler, torch.Generator]:
    """Fixed random regression data, sharded by a DistributedSampler (order = f(seed, epoch))."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(NUM_SAMPLES, 8, generator=g), torch.randn(NUM_SAMPLES, 4, generator=g))
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=SEED, drop_last=True)
    loader_generator = torch.Generator()
    loader = DataLoader(data, batch_size=BATCH_SIZE, sampler=sampler, drop_last=True, generator=loader_generator)
    return loader, sampler, loader_generator


def epoch_batches(
    loader: DataLoader, sampler: DistributedSampler, loader_generator: torch.Generator, epoch: int, num_to_skip: int
) -> Iterator[list[torch.Tensor]]:
    """The epoch's batches after the first ``num_to_skip`` (already trained on before resuming).

    ``iter(loader)`` draws one number from ``loader_generator`` (from the global torch RNG if the
    loader had none, which would shift the dropout stream of a resumed run): reseed it per epoch.
    """
    sampler.set_epoch(epoch)
    loader_generator.manual_seed(SEED + epoch)
    return itertools.islice(loader, num_to_skip, None)


def run(
    output_dir: str | Path,
    num_steps: int,
    *,
    resume: bool = False,
    resume_step: int | None = None,
    save_every: int | None = None,
    stop_after: int | None = None,
    fsdp: bool = False,
    signal_rank_at_step: tuple[int, int] | None = None,
    sleep_per_step: float = 0.0,
    on_save: Callable[[nn.Module, Path], None] | None = None,
    preemption: PreemptionHandler | None = None,
) -> str:
    """Train ``num_steps`` optimizer steps (cosine schedule over ``num_steps``); return why it stopped.

    Args:
        resume / resume_step: load the latest checkpoint / the one of ``resume_step``.
        save_every: periodic save interval in steps.
        stop_after: save and stop after this global step (an "interrupted" run).
        fsdp: shard the model with FSDP2 over the default process group.
        signal_rank_at_step: ``(rank, step)``: that rank sends itself SIGTERM after that step.
        on_save: ``on_save(model, tmp_step_dir)`` is called as the ``write_extra_files`` hook of
            every save (where a recipe exports HF weights).
        preemption: the signal handler to poll (default: a fresh ``PreemptionHandler()``, closed at
            the end); pass one to read its ``exit_code`` afterwards.

    Returns:
        "done", "stopped" or "preempted".
    """
    torch.set_num_threads(1)
    world_size, rank = get_world_size_and_rank()
    set_seed(SEED, rank)
    model = build_model()
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world_size,))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[3], mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = build_adamw(model, lr=1e-2, weight_decay=0.1)
    scheduler = cosine_schedule_with_warmup(
        optimizer, num_training_steps=num_steps, num_warmup_steps=2, min_lr_ratio=0.1
    )
    noise_generator = torch.Generator().manual_seed(SEED + 1000 + rank)
    generators = {"noise": noise_generator}
    checkpointer = TrainingCheckpointer(
        output_dir, fingerprint={"batch_size": BATCH_SIZE, "num_steps": num_steps}
    )
    position = DataPosition()
    if resume:
        if resume_step is None:
            restored = checkpointer.load_latest(model, optimizer, scheduler, generators=generators)
        else:
            restored = checkpointer.load(resume_step, model, optimizer, scheduler, generators=generators)
        position = restored.position
        assert restored.extra == {"note": f"step {position.global_step}"}, restored.extra
    metric_logger = MetricLogger(output_dir, resume_step=position.global_step if resume else None)
    loader, sampler, loader_generator = build_dataloader(world_size, rank)

    def save() -> None:
        checkpointer.save(
            model, optimizer, scheduler, position, generators=generators,
            extra={"note": f"step {position.global_step}"},
            write_extra_files=None if on_save is None else functools.partial(on_save, model),
        )

    own_handler = preemption is None
    preemption = PreemptionHandler() if own_handler else preemption
    with contextlib.ExitStack() as stack:
        stack.enter_context(metric_logger)
        if own_handler:
            stack.enter_context(preemption)
        while position.global_step < num_steps:
            for x, y in epoch_batches(loader, sampler, loader_generator, position.epoch, position.step_in_epoch):
                noise = 0.01 * torch.randn(x.shape, generator=noise_generator)  # [B, 8]
                loss = nn.functional.mse_loss(model(x + noise), y)
                loss.backward()
                grad_norm = clip_grad_norm(model.parameters(), max_norm=1.0)
                optimizer.step()
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                position = DataPosition(position.epoch, position.step_in_epoch + 1, position.global_step + 1)
                metrics = all_reduce_dict({"loss": loss.detach()}, op="mean")
                metric_logger.log(position.global_step, {**metrics, "lr": lr, "grad_norm": grad_norm})
                logger.info(format_metrics({"step": position.global_step, **metrics}))
                if save_every is not None and position.global_step % save_every == 0:
                    save()
                if signal_rank_at_step == (rank, position.global_step):
                    os.kill(os.getpid(), signal.SIGTERM)
                if preemption.should_stop():
                    save()
                    logger.warning("preempted: saved step %d, exiting", position.global_step)
                    return "preempted"
                if position.global_step == stop_after:
                    save()
                    return "stopped"
                if position.global_step == num_steps:
                    break
                time.sleep(sleep_per_step)
            else:
                assert position.step_in_epoch == len(loader)
                position = DataPosition(position.epoch + 1, 0, position.global_step)
    return "done"


def read_metrics(output_dir: str | Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("num_steps", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 over all ranks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    if args.fsdp:
        init_distributed()
    with PreemptionHandler() as handler:
        reason = run(
            args.output_dir, args.num_steps, resume=args.resume, sleep_per_step=args.sleep, fsdp=args.fsdp,
            preemption=handler,
        )  # fmt: skip
    # One write of the whole line: the ranks share stdout, and print() writes its pieces separately
    # (two ranks' lines then interleave, "exit reason: preempted exit code: exit reason: ...").
    os.write(sys.stdout.fileno(), f"exit reason: {reason} exit code: {handler.exit_code}\n".encode())
    barrier()  # no rank tears the process group down while another still uses it
    destroy()
    # os._exit, not sys.exit: about 1 run in 8 of this toy under torchrun (gloo, FSDP2, torch 2.13
    # CPU) aborted in interpreter finalization after a clean destroy ("terminate called without an
    # active exception", exit -6), old and new checkpoint code alike; the recipes' 2-rank runs never
    # showed it (tests/recipes). Everything is flushed and the process group is gone at this point.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(handler.exit_code)
