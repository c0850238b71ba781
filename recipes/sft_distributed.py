"""Stage 1 of MER-R1: supervised fine-tuning of the Qwen2.5-Omni Thinker on MER-Caption+.

Targets are ``<think>{reason}</think><answer>{labels}</answer>`` (METHOD section 1, 5: 5k random
samples, 2 epochs, lr 2e-5). Plain torch: FSDP2 (``fully_shard``) over ranks, optional activation
checkpointing, per-layer ``torch.compile`` and torchao float8; no trainer framework.

Launch (from the repo root; see the configs' headers):
    tune run --nproc_per_node 8 sft_distributed --config qwen2_5_omni/7B_sft
    tune run sft_distributed --config debug/sft_tiny          # one CPU process

What a demanding user should know:
- The loss is the sum of token cross-entropies over the assistant's tokens divided by the GLOBAL
  number of target tokens of the optimizer step (all ranks, all micro-batches): N ranks x batch B
  train exactly like 1 rank x batch N*B. FSDP averages gradients over ranks, so each rank's loss is
  scaled by the world size before ``backward``.
- ``dtype: bf16`` keeps float32 master weights: FSDP2's MixedPrecisionPolicy when launched by
  torchrun (``tune run --nproc_per_node N``, also N = 1, which allows ``fsdp_cpu_offload`` on one
  GPU), ``torch.autocast`` in a single plain process (``tune run`` without ``--nproc_per_node``).
- Only the rows of the logits that predict a target are computed (``logits_only_at``): the long
  audio/video prompt never reaches ``lm_head``.
- Resume (``resume_from_checkpoint: true``) restores model, optimizer, scheduler, data position
  and RNG: every step after resuming has the uninterrupted run's loss. SIGTERM saves a resumable
  checkpoint, then the run exits.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Annotated, Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config

from merr1.components import distributed, training
from merr1.components.config_checks import AtLeast, Component, check_config, expand_list_item_overrides
from merr1.components.data import IGNORE_INDEX
from merr1.components.loss import cross_entropy_sum
from merr1.components.metric_logging import format_metrics
from merr1.components.models import logits_only_at, resolve_dtype

log = logging.getLogger("merr1.sft")

PositiveInt = Annotated[int, AtLeast(1)]
# Every key the recipe reads, with what it accepts; checked before anything is built (issue 11).
# The model, optimizer and run keys are shared with the other recipes (``merr1.components.training``).
CONFIG_SPEC = {
    **training.MODEL_CONFIG,  # device, dtype, checkpoint_dir, model, fsdp_*, float8, compile, ...
    **training.OPTIMIZER_CONFIG,  # optimizer, lr_scheduler, max_grad_norm
    **training.RUN_CONFIG,  # output_dir, save_every_n_steps, keep_last_n_checkpoints, save_dtype, resume, logging
    "seed": int,
    "tokenizer": Component(),
    "dataset": Component(positional=1),  # (tokenizer)
    "collator": Component(positional=1),  # (tokenizer)
    "num_workers": Annotated[int, AtLeast(0)],
    "batch_size": PositiveInt,  # per rank
    "gradient_accumulation_steps": PositiveInt,
    "epochs": PositiveInt,
    "max_steps_per_epoch": PositiveInt | None,
    "shuffle": bool,
}


class SFTRecipe:
    """Full-parameter SFT. ``setup`` builds everything, ``train`` runs, ``cleanup`` tears down."""

    def __init__(self, cfg: DictConfig) -> None:
        check_config(cfg, CONFIG_SPEC)
        process = training.init_process(cfg.device, cfg.seed, fsdp_cpu_offload=cfg.fsdp_cpu_offload)
        self._device, self._world_size, self._sharded = process.device, process.world_size, process.sharded
        self._is_rank_zero = process.is_rank_zero
        self._dtype = resolve_dtype(cfg.dtype)
        self._run: training.TrainingRun | None = None

    # ------------------------------------------------------------------------------- setup
    def setup(self, cfg: DictConfig) -> None:
        self._tokenizer = config.instantiate(cfg.tokenizer)
        # Data first: a missing file or a bad row fails before the model is built.
        self._dataset = config.instantiate(cfg.dataset, self._tokenizer)
        self._loader = training.StepLoader(
            self._dataset,
            collate_fn=config.instantiate(cfg.collator, self._tokenizer),
            batch_size=cfg.batch_size,
            batches_per_step=cfg.gradient_accumulation_steps,
            epochs=cfg.epochs,
            max_steps_per_epoch=cfg.max_steps_per_epoch,
            shuffle=cfg.shuffle,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
        )
        spec = training.ModelSpec.from_config(cfg, functools.partial(config.instantiate, cfg.model))
        self._model = training.build_model(spec, role="train", device=self._device, sharded=self._sharded)
        optimizer = config.instantiate(cfg.optimizer, self._model)
        lr_scheduler = config.instantiate(cfg.lr_scheduler, optimizer, num_training_steps=self._loader.total_steps)
        self._optimizer_step = training.OptimizerStep(
            self._model, optimizer, lr_scheduler, cfg.max_grad_norm, spec.float8_all_gather
        )
        # Writes config.yaml, resumes (resume_from_checkpoint), opens metrics.jsonl (+ metric_logger).
        self._run = training.TrainingRun(
            cfg, model=self._model, optimizer=optimizer, lr_scheduler=lr_scheduler, tokenizer=self._tokenizer,
            total_steps=self._loader.total_steps, desc="sft",
            postfix=functools.partial(format_metrics, keys=["loss", "lr", "grad_norm"]),
            metric_logger=config.instantiate(cfg.metric_logger) if self._is_rank_zero and cfg.metric_logger else None,
            fingerprint={"steps_per_epoch": self._loader.steps_per_epoch},  # the config is compared key by key
        )  # fmt: skip
        self._position = self._run.start
        if self._is_rank_zero:
            log.info(
                "SFT: %d samples, %d ranks, %d optimizer steps (%d epochs x %d), %.1fM parameters, dtype %s, device %s",
                len(self._dataset), self._world_size, self._loader.total_steps, cfg.epochs,
                self._loader.steps_per_epoch, sum(p.numel() for p in self._model.parameters()) / 1e6, cfg.dtype,
                self._device,
            )  # fmt: skip

    # ------------------------------------------------------------------------------- train
    def _train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches."""
        # Global normaliser: target tokens of this step over all ranks and micro-batches.
        local_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
        num_targets = distributed.all_reduce_scalar(float(local_targets), "sum")
        if num_targets == 0:
            raise ValueError("an optimizer step has no target token: check max_seq_len and the data")
        loss_sum = 0.0
        num_tokens = 0
        for batch in micro_batches:
            batch = {k: v.to(self._device) if torch.is_tensor(v) else v for k, v in batch.items()}
            labels = batch.pop("labels")  # [B, L]
            predicts = torch.zeros_like(labels, dtype=torch.bool)  # [B, L]: position t predicts labels[t+1]
            predicts[:, :-1] = labels[:, 1:] != IGNORE_INDEX
            targets = labels[:, 1:][predicts[:, :-1]]  # [N]
            with training.autocast(self._device, self._dtype, self._sharded), logits_only_at(self._model, predicts):
                logits = self._model(**batch, use_cache=False).logits  # [N, V]
            token_loss_sum = cross_entropy_sum(logits, targets)
            (token_loss_sum * (self._world_size / num_targets)).backward()  # FSDP averages over ranks
            loss_sum += token_loss_sum.item()
            num_tokens += int(batch["attention_mask"].sum())
        update = self._optimizer_step(self._position.global_step + 1)
        totals = distributed.all_reduce_dict({"loss_sum": loss_sum, "tokens": num_tokens}, "sum")
        return {
            "loss": totals["loss_sum"] / num_targets,
            "lr": update["lr"],
            "grad_norm": update["grad_norm"],
            "num_target_tokens": num_targets,
            "num_tokens": totals["tokens"],
        }

    def train(self) -> None:
        for position, micro_batches in self._loader.steps(self._position):
            step_start = time.perf_counter()
            metrics = self._train_step(micro_batches)
            step_time = time.perf_counter() - step_start
            self._position = position
            metrics.update(
                epoch=position.epoch,
                step_time_s=step_time,
                tokens_per_second=metrics["num_tokens"] / step_time,
                tokens_per_second_per_device=metrics["num_tokens"] / step_time / self._world_size,
                peak_memory_gb=training.peak_memory_gb(self._device),
            )
            if self._run.end_step(position, metrics):
                return  # preempted: a resumable checkpoint was saved
        self._run.finish(self._position)

    @property
    def exit_code(self) -> int:
        return 0 if self._run is None else self._run.exit_code

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.close()
        distributed.destroy()


@config.parse
def recipe_main(cfg: DictConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    recipe = SFTRecipe(cfg)
    try:  # the process group, the logs and the signal handlers are released also when a run fails
        recipe.setup(cfg)
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe.exit_code  # 0, or 143 / 130 after a preemption save (README, "exit codes")


if __name__ == "__main__":
    sys.argv = expand_list_item_overrides(sys.argv)  # `key.N.sub=value` overrides of list items
    sys.exit(recipe_main())
