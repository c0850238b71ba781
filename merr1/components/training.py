"""The pieces every merr1 recipe shares, as small functions the recipes call top to bottom.

- ``ModelSpec`` + ``build_model``: the one model-build path, in a fixed order (issue 11):
  meta skeleton -> float8 -> activation checkpointing -> compile -> FSDP2 shard -> weights from
  rank 0 -> freeze. Used for the trained policy (``role="train"``), GRPO's frozen reference model
  (``"reference"``: no float8, no activation checkpointing, no gradients) and the evaluation model
  (``"eval"``: unsharded, stored in the compute dtype, no gradients).
- ``OptimizerStep``: clip, finite check, ``optimizer.step``, ``zero_grad``, float8 scales, lr schedule.
- ``StepLoader``: the data order of a run, ``epochs x steps_per_epoch`` optimizer steps, each a list
  of micro-batches, resumable mid-epoch from a ``DataPosition`` (see ``checkpointing``).
- ``TrainingRun``: everything a training run writes to its ``output_dir`` and when: the resolved
  config, the resume from the newest checkpoint, ``metrics.jsonl``, the progress bar, periodic and
  preemption (SIGTERM) checkpoints (resumable state plus HF weights), the final HF export.
- ``init_process``: device, process group, FSDP or not, seeds.
- ``MODEL_CONFIG``, ``OPTIMIZER_CONFIG``, ``RUN_CONFIG``: the config keys these pieces read, with
  what they accept (``config_checks``); a recipe's ``CONFIG_SPEC`` includes them.
- ``autocast``, ``Laps`` and ``peak_memory_gb``.

What stays in each recipe is what differs between them: the loss of one step, the metrics it
logs, and the order of phases (GRPO: rollouts, scoring, updates).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from merr1.components import distributed, hf_checkpoint, parallel
from merr1.components.checkpointing import DataPosition, PreemptionHandler, TrainingCheckpointer
from merr1.components.config_checks import AtLeast, Component, plain_config
from merr1.components.resume_config import NON_TRAJECTORY_KEYS
from merr1.components.metric_logging import MetricLogger, progress_bar, save_config
from merr1.components.models import multimodal_encoders, resolve_dtype
from merr1.components.optim import clip_grad_norm

log = logging.getLogger(__name__)

Role = Literal["train", "reference", "eval"]

PositiveInt = Annotated[int, AtLeast(1)]
# The keys ``ModelSpec.from_config`` and ``init_process`` read.
MODEL_CONFIG: dict[str, Any] = {
    "device": Literal["cpu", "cuda", "auto"],
    "dtype": Literal["fp32", "bf16"],
    "checkpoint_dir": str | None,
    "model": Component(keywords=("dtype", "device")),
    "fsdp_reshard_after_forward": bool,
    "fsdp_cpu_offload": bool,
    "enable_activation_checkpointing": bool,
    "compile": bool,
    "freeze_multimodal_encoders": bool,
    "float8": {"enabled": bool, "recipe": Literal["tensorwise", "rowwise"], "enable_fsdp_float8_all_gather": bool,
               "emulate": bool},  # fmt: skip
}
# The optimizer, its schedule (``num_training_steps`` comes from the recipe) and ``OptimizerStep``.
OPTIMIZER_CONFIG: dict[str, Any] = {
    "optimizer": Component(positional=1),  # (model)
    "lr_scheduler": Component(positional=1, keywords=("num_training_steps",)),  # (optimizer)
    "max_grad_norm": float,
}
# The keys ``TrainingRun`` reads (``metric_logger`` is instantiated by the recipe, on rank 0).
RUN_CONFIG: dict[str, Any] = {
    "output_dir": str,
    "metric_logger": Component(optional=True),
    "save_every_n_steps": PositiveInt | None,
    "keep_last_n_checkpoints": PositiveInt | None,
    "save_dtype": Literal["fp32", "bf16"],
    "resume_from_checkpoint": bool,
    "resume_allow_changed": list[str],  # settings a resume may change on purpose (recorded), e.g. [optimizer.lr]
    "log_every_n_steps": PositiveInt,
}


@dataclass(frozen=True)
class Process:
    """This process in the run: its device, the world, and whether models are FSDP2-sharded."""

    device: torch.device
    world_size: int
    rank: int
    sharded: bool

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def init_process(device: str, seed: int, *, fsdp_cpu_offload: bool = False) -> Process:
    """Pick the device, join the process group (under torchrun) and seed ``seed + rank``.

    Models are FSDP2-sharded whenever the run is launched by torchrun (``tune run
    --nproc_per_node N``, also N = 1, which allows ``fsdp_cpu_offload`` on one GPU); a plain process
    trains unsharded (bf16 through ``autocast``).
    """
    torch_device = distributed.device_for_rank(device)
    world_size, rank = distributed.init_distributed()
    sharded = torch.distributed.is_initialized()
    if fsdp_cpu_offload and (not sharded or torch_device.type != "cuda"):
        raise ValueError(
            "fsdp_cpu_offload keeps FSDP-sharded GPU parameters in CPU memory: it needs device cuda and "
            "a `tune run --nproc_per_node N` launch (N >= 1)"
        )
    distributed.set_seed(seed, rank)
    return Process(torch_device, world_size, rank, sharded)


# --------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Float8Settings:
    """torchao float8 training of the LLM's large linears (``parallel.apply_float8``)."""

    recipe: str = "tensorwise"
    enable_fsdp_float8_all_gather: bool = False
    emulate: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """How a recipe's model is built: its config's model keys, read in one place.

    Args:
        builder: ``builder(dtype=..., device=...)`` returns the model, e.g.
            ``functools.partial(config.instantiate, cfg.model)``.
        checkpoint_dir: HF weights to load (rank 0 reads them); None = the builder's own random
            initialisation (tiny models), built once on rank 0 and broadcast.
        dtype: training: the FSDP2 compute dtype (master weights stay float32); evaluation: the
            stored dtype.
        float8: float8 settings, or None (off).
        activation_checkpointing: wrap each decoder layer (training only).
        compile: ``torch.compile`` each decoder layer.
        reshard_after_forward: FSDP2 ZeRO-3 (True) or keep parameters until backward (False).
        cpu_offload: FSDP2 parameters, gradients and optimizer states in CPU memory.
        freeze_multimodal_encoders: the audio and vision encoders keep their weights (no grads, no
            Adam states).
    """

    builder: Callable[..., nn.Module]
    checkpoint_dir: str | None = None
    dtype: torch.dtype = torch.float32
    float8: Float8Settings | None = None
    activation_checkpointing: bool = False
    compile: bool = False
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    freeze_multimodal_encoders: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], builder: Callable[..., nn.Module]) -> ModelSpec:
        """The training recipes' keys: ``checkpoint_dir``, ``dtype``, ``float8.*``,
        ``enable_activation_checkpointing``, ``compile``, ``fsdp_reshard_after_forward``,
        ``fsdp_cpu_offload``, ``freeze_multimodal_encoders``."""
        float8 = cfg["float8"]
        return cls(
            builder=builder,
            checkpoint_dir=cfg["checkpoint_dir"],
            dtype=resolve_dtype(cfg["dtype"]),
            float8=Float8Settings(
                recipe=float8["recipe"],
                enable_fsdp_float8_all_gather=float8["enable_fsdp_float8_all_gather"],
                emulate=float8["emulate"],
            )
            if float8["enabled"]
            else None,
            activation_checkpointing=cfg["enable_activation_checkpointing"],
            compile=cfg["compile"],
            reshard_after_forward=cfg["fsdp_reshard_after_forward"],
            cpu_offload=cfg["fsdp_cpu_offload"],
            freeze_multimodal_encoders=cfg["freeze_multimodal_encoders"],
        )

    @property
    def float8_all_gather(self) -> bool:
        """True when float8 weight scales must be precomputed after each optimizer step."""
        return self.float8 is not None and self.float8.enable_fsdp_float8_all_gather


def build_model(spec: ModelSpec, *, role: Role, device: torch.device, sharded: bool) -> nn.Module:
    """Build, transform, shard and load a model in the one fixed order (module docstring).

    No rank ever holds two full copies: every rank builds a meta skeleton; rank 0 reads the
    checkpoint (or builds the random model) and broadcasts it into the shards.

    Args:
        spec: what to build.
        role: ``"train"`` (float8, activation checkpointing, trainable), ``"reference"`` (frozen
            copy for the KL term) or ``"eval"`` (unsharded replica in ``spec.dtype``, frozen).
        device: this rank's device.
        sharded: FSDP2 (a torchrun launch); ignored for ``"eval"`` (data parallel replicas).

    Returns:
        The model in train mode (``"train"``) or eval mode with ``requires_grad=False``.
    """
    if role not in ("train", "reference", "eval"):
        raise ValueError(f"role must be 'train', 'reference' or 'eval', got {role!r}")
    training = role == "train"
    skeleton_dtype = spec.dtype if role == "eval" else torch.float32  # FSDP keeps float32 masters
    model = spec.builder(dtype=skeleton_dtype, device="meta")
    if training and spec.float8 is not None:
        converted = parallel.apply_float8(
            model,
            recipe=spec.float8.recipe,
            enable_fsdp_float8_all_gather=spec.float8.enable_fsdp_float8_all_gather,
            emulate=spec.float8.emulate,
        )
        log.info("float8 (%s): %d linear layers converted", spec.float8.recipe, len(converted))
    if training and spec.activation_checkpointing:
        parallel.apply_activation_checkpointing(model)
    if spec.compile and role != "eval":
        parallel.compile_decoder_layers(model)
    if sharded and role != "eval":
        parallel.shard_model(
            model,
            param_dtype=spec.dtype,
            reduce_dtype=torch.float32,
            reshard_after_forward=spec.reshard_after_forward,
            cpu_offload=spec.cpu_offload,
        )
    load_device = "cpu" if spec.cpu_offload and role != "eval" else device
    if spec.checkpoint_dir is not None:
        hf_checkpoint.load_hf_checkpoint(model, spec.checkpoint_dir, load_device)
    else:  # the builder's random initialisation (tiny models), broadcast from rank 0
        full = spec.builder(dtype=skeleton_dtype, device="cpu").state_dict() if distributed.is_rank_zero() else None
        hf_checkpoint.load_full_state_dict(model, full, load_device)
    if not training:
        model.requires_grad_(False)
        model.eval()
        return model
    if spec.freeze_multimodal_encoders:
        for encoder in multimodal_encoders(model):
            encoder.requires_grad_(False)
    model.train()
    return model


def autocast(device: torch.device, dtype: torch.dtype, sharded: bool):
    """bf16 autocast for a plain (unsharded) process; FSDP2's mixed precision does it when sharded."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=not sharded and dtype == torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Optimizer step


@dataclass
class OptimizerStep:
    """One optimizer update after the gradients of a step are accumulated.

    ``__call__(step)``: clip to ``max_grad_norm`` (the total norm over all ranks), refuse a
    non-finite norm (``FloatingPointError`` naming the step; nothing is updated), step the
    optimizer, zero the gradients, precompute float8 scales (tensorwise + float8 all-gather), and
    advance the lr schedule. Returns ``{"grad_norm", "lr"}`` (the lr this update used).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    max_grad_norm: float
    float8_all_gather: bool = False

    def __call__(self, step: int) -> dict[str, float]:
        grad_norm = clip_grad_norm(self.model.parameters(), self.max_grad_norm)
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm {grad_norm} at step {step}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.float8_all_gather:
            parallel.precompute_float8_scales(self.model)
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        return {"grad_norm": grad_norm, "lr": lr}


# --------------------------------------------------------------------------------------------
# Data order


class StepLoader:
    """``epochs x steps_per_epoch`` optimizer steps over a data set, resumable mid-epoch.

    Each rank reads its shard of an order that depends only on (``seed``, epoch)
    (``distributed.ResumableDistributedSampler``); the DataLoader gets its own generator, reseeded
    per epoch, so a resumed run does not shift the global RNG (``checkpointing`` docstring).

    Args:
        dataset: the data set.
        collate_fn: turns a list of items into a batch.
        batch_size: items per batch (per rank).
        batches_per_step: batches per optimizer step (gradient accumulation).
        epochs: number of epochs.
        max_steps_per_epoch: cap on the steps of an epoch; None = as many as fit.
        shuffle, seed, num_workers: as for the sampler and DataLoader.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        collate_fn: Callable[[list], Any],
        batch_size: int,
        batches_per_step: int,
        epochs: int,
        max_steps_per_epoch: int | None,
        shuffle: bool,
        seed: int,
        num_workers: int,
    ) -> None:
        world_size, rank = distributed.get_world_size_and_rank()
        self.batch_size, self.batches_per_step, self.epochs, self.seed = batch_size, batches_per_step, epochs, seed
        self.sampler = distributed.ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=num_workers,
            drop_last=True,
            generator=self.generator,
        )
        self.steps_per_epoch = len(self.loader) // batches_per_step
        if max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, max_steps_per_epoch)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"no optimizer step fits in an epoch: {len(dataset)} samples for {world_size} ranks x "
                f"{batches_per_step} batches x {batch_size} per step"
            )
        self.total_steps = epochs * self.steps_per_epoch

    def steps(self, start: DataPosition) -> Iterator[tuple[DataPosition, list[Any]]]:
        """From ``start`` on: ``(position after the step, its batches)`` for every remaining step."""
        global_step = start.global_step
        for epoch in range(start.epoch, self.epochs):
            first = start.step_in_epoch if epoch == start.epoch else 0
            self.sampler.set_epoch(epoch, start_index=first * self.batches_per_step * self.batch_size)
            self.generator.manual_seed(self.seed + epoch)
            batches = iter(self.loader)
            for step_in_epoch in range(first, self.steps_per_epoch):
                micro_batches = [next(batches) for _ in range(self.batches_per_step)]
                global_step += 1
                yield DataPosition(epoch, step_in_epoch + 1, global_step), micro_batches


# --------------------------------------------------------------------------------------------
# Between steps


class TrainingRun:
    """Everything a training run writes to ``output_dir``, and when (``RUN_CONFIG`` keys).

    On construction (every rank; collective): a fresh run writes the resolved config to
    ``config.yaml`` (rank 0); with ``resume_from_checkpoint`` the model, optimizer, scheduler, data
    position and RNG are restored from the newest intact checkpoint (``start`` is where the run
    continues), after its settings were compared with this run's (``resume_config``: a changed
    setting that changes the trajectory is refused unless named in ``resume_allow_changed``), and
    nothing the first run wrote is rewritten (its config goes to ``config.resumed_at_step_N.yaml``).
    ``metrics.jsonl`` is opened (truncated after ``start`` when resuming) and SIGTERM / SIGINT are
    caught. Then ``end_step`` after every optimizer step and ``finish`` at the end; ``close``
    always; the process then exits with ``exit_code`` (143 / 130 after a preemption save).

    Args:
        cfg: the recipe config (``RUN_CONFIG`` keys are read; the whole resolved config is saved).
        model, optimizer, lr_scheduler: what a checkpoint holds.
        tokenizer: saved next to the HF weights.
        total_steps: optimizer steps of the whole run (the progress bar's total).
        fingerprint: values derived from the config and data that a resumed run must share with the
            checkpoint (e.g. steps per epoch; the config itself is compared key by key).
        non_trajectory_keys: config keys a resume may always change (``resume_config``).
        postfix: one step's metrics -> the progress bar's postfix text.
        desc: progress-bar label.
        metric_logger: the instantiated ``metric_logger`` component (any torchtune metric logger, or
            an object with its methods) or None; it gets every step's numbers next to
            ``metrics.jsonl`` (always written: the source of truth for resume and plots).
    """

    def __init__(
        self,
        cfg: Mapping[str, Any],
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
        tokenizer,
        total_steps: int,
        fingerprint: Mapping[str, Any],
        postfix: Callable[[Mapping[str, Any]], str],
        desc: str,
        metric_logger: Any = None,
        non_trajectory_keys: Sequence[str] = NON_TRAJECTORY_KEYS,
    ) -> None:
        resolved = dict(plain_config(cfg))
        self.output_dir = Path(cfg["output_dir"])
        self.model, self.optimizer, self.lr_scheduler, self.tokenizer = model, optimizer, lr_scheduler, tokenizer
        self.save_every = cfg["save_every_n_steps"]
        self.log_every = cfg["log_every_n_steps"]
        self.save_dtype = resolve_dtype(cfg["save_dtype"])
        self.postfix = postfix
        resumed = bool(cfg["resume_from_checkpoint"])
        if distributed.is_rank_zero() and not resumed:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(resolved, self.output_dir / "config.yaml")
        self.checkpointer = TrainingCheckpointer(
            self.output_dir, keep_last_n=cfg["keep_last_n_checkpoints"], fingerprint=fingerprint, config=resolved,
            resume_allow_changed=cfg["resume_allow_changed"], non_trajectory_keys=non_trajectory_keys,
        )  # fmt: skip
        self.total_steps = total_steps
        self.start = DataPosition()
        if resumed:
            self.start = self.checkpointer.load_latest(model, optimizer, lr_scheduler).position
        self.metric_logger = MetricLogger(
            self.output_dir, resume_step=self.start.global_step if resumed else None, backend=metric_logger
        )
        self.metric_logger.log_config(cfg)  # torchtune's loggers take the config as the recipe got it
        self.preemption = PreemptionHandler()
        self.progress = progress_bar(
            total_steps, desc, initial=self.start.global_step, disable=not distributed.is_rank_zero()
        )

    def end_step(self, position: DataPosition, metrics: Mapping[str, Any]) -> bool:
        """Log the step, save if due; True when the run must stop (preempted: saved first)."""
        step = position.global_step
        self.metric_logger.log(step, metrics)
        if step % self.log_every == 0:  # before update: a printed line shows its own step's numbers
            self.progress.set_postfix_str(self.postfix(metrics), refresh=False)
        self.progress.update(1)
        if self.save_every and step % self.save_every == 0:
            self.save(position)
        if self.preemption.should_stop():
            self.save(position)
            log.warning(
                "preempted (%s) at step %d: saved a resumable checkpoint in %s; rerun with "
                "resume_from_checkpoint=true (exit code %d)",
                self.preemption.stop_signal.name if self.preemption.stop_signal else "signal", step,
                self.output_dir / "checkpoints", self.preemption.exit_code,
            )  # fmt: skip
            return True
        return False

    def save(self, position: DataPosition) -> Path:
        """Resumable state plus HF-format weights (``step_N/hf``), committed atomically (collective;
        a second save of the same step is skipped)."""
        return self.checkpointer.save(
            self.model,
            self.optimizer,
            self.lr_scheduler,
            position,
            write_extra_files=lambda step_dir: hf_checkpoint.save_hf_checkpoint(
                self.model, step_dir / "hf", dtype=self.save_dtype, tokenizer=self.tokenizer
            ),
        )

    def finish(self, position: DataPosition) -> Path | None:
        """The last resumable checkpoint (skipped if the last step saved one) and the final HF
        weights in ``{output_dir}/hf`` (the next stage's ``checkpoint_dir``). A resumed run that
        was already finished rewrites nothing. Signals are released first: a Ctrl-C during the
        final export stops at once."""
        self.preemption.close()
        if self.start.global_step >= self.total_steps and position.global_step == self.start.global_step:
            log.info("the run was already finished at step %d: nothing to train or write", position.global_step)
            return None
        self.save(position)
        final = hf_checkpoint.save_hf_checkpoint(
            self.model, self.output_dir / "hf", dtype=self.save_dtype, tokenizer=self.tokenizer
        )
        if distributed.is_rank_zero():
            log.info("final HF weights: %s (load with from_pretrained, or checkpoint_dir=%s)", final, final)
        return final

    @property
    def exit_code(self) -> int:
        """The process's exit code: 0, or 143 / 130 after a SIGTERM / SIGINT preemption save."""
        return self.preemption.exit_code

    def close(self) -> None:
        """Close the progress bar and the metrics file, restore the signal handlers."""
        self.progress.close()
        self.metric_logger.close()
        self.preemption.close()


class Laps:
    """Wall-clock phases of a step: ``lap("generate")`` records the seconds since the previous lap
    (or since construction) under that name in ``seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, name: str) -> float:
        now = time.perf_counter()
        self.seconds[name], self._last = now - self._last, now
        return self.seconds[name]


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident memory of this process (CPU), in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
