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

import logging
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torchtune import config
from tqdm import tqdm

from merr1.components import hf_checkpoint, distributed, parallel
from merr1.components.checkpointing import DataPosition, PreemptionHandler, TrainingCheckpointer
from merr1.components.data import IGNORE_INDEX
from merr1.components.loss import cross_entropy_sum
from merr1.components.metric_logging import MetricLogger, format_metrics, save_config
from merr1.components.models import logits_only_at, multimodal_encoders, resolve_dtype
from merr1.components.optim import clip_grad_norm

log = logging.getLogger("merr1.sft")

# Every top-level key the recipe reads; anything else in the config is a typo (issue 5).
CONFIG_KEYS = {
    "output_dir", "seed", "device", "dtype", "checkpoint_dir", "tokenizer", "model", "dataset",
    "collator", "num_workers", "batch_size", "epochs", "max_steps_per_epoch",
    "gradient_accumulation_steps", "shuffle", "optimizer", "lr_scheduler", "max_grad_norm",
    "fsdp_reshard_after_forward", "fsdp_cpu_offload", "enable_activation_checkpointing", "compile",
    "freeze_multimodal_encoders",
    "float8", "save_every_n_steps", "keep_last_n_checkpoints", "save_dtype",
    "resume_from_checkpoint", "log_every_n_steps",
}  # fmt: skip


class SFTRecipe:
    """Full-parameter SFT. ``setup`` builds everything, ``train`` runs, ``cleanup`` tears down."""

    def __init__(self, cfg: DictConfig) -> None:
        unknown = sorted(set(cfg.keys()) - CONFIG_KEYS)
        missing = sorted(CONFIG_KEYS - set(cfg.keys()))
        if unknown or missing:
            raise ValueError(f"config keys: unknown {unknown}, missing {missing} (recipe reads {sorted(CONFIG_KEYS)})")
        self._world_size, self._rank = distributed.init_distributed()
        self._is_rank_zero = self._rank == 0
        self._device = distributed.device_for_rank(cfg.device)
        # FSDP2 whenever launched by torchrun (also --nproc_per_node 1: CPU offload on one GPU);
        # a plain process trains unsharded, with torch.autocast for bf16.
        self._sharded = torch.distributed.is_initialized()
        if cfg.fsdp_cpu_offload and (not self._sharded or self._device.type != "cuda"):
            raise ValueError(
                "fsdp_cpu_offload keeps FSDP-sharded GPU parameters in CPU memory: it needs device cuda and "
                "a `tune run --nproc_per_node N` launch (N >= 1)"
            )
        self._dtype = resolve_dtype(cfg.dtype)
        if self._dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be fp32 or bf16, got {cfg.dtype}")
        self._output_dir = Path(cfg.output_dir)
        self._seed = distributed.set_seed(cfg.seed, self._rank)
        self._epochs = cfg.epochs
        self._batch_size = cfg.batch_size
        self._grad_accum = cfg.gradient_accumulation_steps
        self._max_steps_per_epoch = cfg.max_steps_per_epoch
        self._max_grad_norm = cfg.max_grad_norm
        self._save_every = cfg.save_every_n_steps
        self._log_every = cfg.log_every_n_steps
        self._save_dtype = resolve_dtype(cfg.save_dtype)
        for key in ("epochs", "batch_size", "gradient_accumulation_steps", "log_every_n_steps"):
            if not isinstance(cfg[key], int) or cfg[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {cfg[key]!r}")
        self._resume = cfg.resume_from_checkpoint
        self._position = DataPosition()

    # ------------------------------------------------------------------------------- setup
    def setup(self, cfg: DictConfig) -> None:
        cfg_dict = OmegaConf.to_container(cfg, resolve=True)
        if self._is_rank_zero:
            self._output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg_dict, self._output_dir / "config.yaml")
        self._tokenizer = config.instantiate(cfg.tokenizer)
        # Data first: a missing file or a bad row fails before the model is built.
        self._dataset = config.instantiate(cfg.dataset, self._tokenizer)
        self._collator = config.instantiate(cfg.collator, self._tokenizer)
        self._sampler = distributed.ResumableDistributedSampler(
            self._dataset, num_replicas=self._world_size, rank=self._rank, shuffle=cfg.shuffle, seed=cfg.seed
        )
        self._loader_generator = torch.Generator()
        self._dataloader = DataLoader(
            self._dataset,
            batch_size=self._batch_size,
            sampler=self._sampler,
            collate_fn=self._collator,
            num_workers=cfg.num_workers,
            drop_last=True,
            generator=self._loader_generator,
        )
        self._steps_per_epoch = len(self._dataloader) // self._grad_accum
        if self._max_steps_per_epoch is not None:
            self._steps_per_epoch = min(self._steps_per_epoch, self._max_steps_per_epoch)
        if self._steps_per_epoch < 1:
            raise ValueError(
                f"no optimizer step fits in an epoch: {len(self._dataset)} samples, {self._world_size} ranks x "
                f"batch_size {self._batch_size} x gradient_accumulation_steps {self._grad_accum}"
            )
        self._total_steps = self._epochs * self._steps_per_epoch

        self._model = self._setup_model(cfg)
        self._optimizer = config.instantiate(cfg.optimizer, self._model)
        self._lr_scheduler = config.instantiate(cfg.lr_scheduler, self._optimizer, num_training_steps=self._total_steps)
        self._float8_all_gather = cfg.float8.enabled and cfg.float8.enable_fsdp_float8_all_gather

        self._checkpointer = TrainingCheckpointer(
            self._output_dir,
            keep_last_n=cfg.keep_last_n_checkpoints,
            fingerprint={
                "model": cfg_dict["model"], "batch_size": self._batch_size, "grad_accum": self._grad_accum,
                "epochs": self._epochs, "steps_per_epoch": self._steps_per_epoch, "dataset": cfg_dict["dataset"],
            },  # fmt: skip
            config=cfg_dict,
        )
        if self._resume:
            state = self._checkpointer.load_latest(self._model, self._optimizer, self._lr_scheduler)
            self._position = state.position
            log.info("resumed from %s at step %d", state.path, self._position.global_step)
        self._metric_logger = MetricLogger(
            self._output_dir, resume_step=self._position.global_step if self._resume else None
        )
        self._preemption = PreemptionHandler()
        if self._is_rank_zero:
            num_params = sum(p.numel() for p in self._model.parameters())
            log.info(
                "SFT: %d samples, %d ranks, %d optimizer steps (%d epochs x %d), %.1fM parameters, dtype %s, device %s",
                len(self._dataset), self._world_size, self._total_steps, self._epochs, self._steps_per_epoch,
                num_params / 1e6, cfg.dtype, self._device,
            )  # fmt: skip

    def _setup_model(self, cfg: DictConfig) -> torch.nn.Module:
        # Skeleton on every rank (no weights read); weights come from rank 0 after sharding.
        model = config.instantiate(cfg.model, dtype=torch.float32, device="meta")
        if cfg.float8.enabled:
            converted = parallel.apply_float8(
                model,
                recipe=cfg.float8.recipe,
                enable_fsdp_float8_all_gather=cfg.float8.enable_fsdp_float8_all_gather,
                emulate=cfg.float8.emulate,
            )
            log.info("float8 (%s): %d linear layers converted", cfg.float8.recipe, len(converted))
        if cfg.enable_activation_checkpointing:
            parallel.apply_activation_checkpointing(model)
        if cfg.compile:
            parallel.compile_decoder_layers(model)
        if self._sharded:
            parallel.shard_model(
                model,
                param_dtype=self._dtype,
                reduce_dtype=torch.float32,
                reshard_after_forward=cfg.fsdp_reshard_after_forward,
                cpu_offload=cfg.fsdp_cpu_offload,
            )
        load_device = "cpu" if cfg.fsdp_cpu_offload else self._device
        if cfg.checkpoint_dir is not None:
            hf_checkpoint.load_hf_checkpoint(model, cfg.checkpoint_dir, load_device)
        else:  # random initialisation from the builder's seed (tiny models), broadcast from rank 0
            full = config.instantiate(cfg.model, dtype=torch.float32, device="cpu").state_dict() if self._is_rank_zero else None
            hf_checkpoint.load_full_state_dict(model, full, load_device)
        if cfg.freeze_multimodal_encoders:  # audio + vision encoders keep their weights (memory: no grads/Adam states)
            for encoder in multimodal_encoders(model):
                encoder.requires_grad_(False)
        model.train()
        return model

    # ------------------------------------------------------------------------------- train
    def _batches_of_step(self, batches) -> list[dict[str, Any]]:
        return [next(batches) for _ in range(self._grad_accum)]

    def _autocast(self):
        use = not self._sharded and self._dtype == torch.bfloat16
        return torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=use)

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
            with self._autocast(), logits_only_at(self._model, predicts):
                logits = self._model(**batch, use_cache=False).logits  # [N, V]
            token_loss_sum = cross_entropy_sum(logits, targets)
            (token_loss_sum * (self._world_size / num_targets)).backward()
            loss_sum += token_loss_sum.item()
            num_tokens += int(batch["attention_mask"].sum())
        grad_norm = clip_grad_norm(self._model.parameters(), self._max_grad_norm)
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm {grad_norm} at step {self._position.global_step + 1}")
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        if self._float8_all_gather:
            parallel.precompute_float8_scales(self._model)
        lr = self._lr_scheduler.get_last_lr()[0]
        self._lr_scheduler.step()
        totals = distributed.all_reduce_dict({"loss_sum": loss_sum, "tokens": num_tokens}, "sum")
        return {
            "loss": totals["loss_sum"] / num_targets,
            "lr": lr,
            "grad_norm": grad_norm,
            "num_target_tokens": num_targets,
            "num_tokens": totals["tokens"],
        }

    def train(self) -> None:
        start = self._position
        progress = tqdm(
            total=self._total_steps, initial=start.global_step, disable=not self._is_rank_zero, desc="sft", dynamic_ncols=True
        )
        for epoch in range(start.epoch, self._epochs):
            step_in_epoch = start.step_in_epoch if epoch == start.epoch else 0
            self._sampler.set_epoch(epoch, start_index=step_in_epoch * self._grad_accum * self._batch_size)
            self._loader_generator.manual_seed(self._seed + epoch)
            batches = iter(self._dataloader)
            for step_in_epoch in range(step_in_epoch, self._steps_per_epoch):
                step_start = time.perf_counter()
                metrics = self._train_step(self._batches_of_step(batches))
                step_time = time.perf_counter() - step_start
                self._position = DataPosition(epoch, step_in_epoch + 1, self._position.global_step + 1)
                metrics.update(
                    epoch=epoch,
                    step_time_s=step_time,
                    tokens_per_second=metrics["num_tokens"] / step_time,
                    tokens_per_second_per_device=metrics["num_tokens"] / step_time / self._world_size,
                    peak_memory_gb=self._peak_memory_gb(),
                )
                self._metric_logger.log(self._position.global_step, metrics)
                progress.update(1)
                if self._position.global_step % self._log_every == 0:
                    progress.set_postfix_str(format_metrics(metrics, ["loss", "lr", "grad_norm"]))
                if self._save_every and self._position.global_step % self._save_every == 0:
                    self.save_checkpoint()
                if self._preemption.should_stop():
                    self.save_checkpoint()
                    log.warning(
                        "preempted (SIGTERM) at step %d: saved a resumable checkpoint in %s; "
                        "rerun with resume_from_checkpoint=true",
                        self._position.global_step, self._output_dir / "checkpoints",
                    )  # fmt: skip
                    progress.close()
                    return
            self._position = DataPosition(epoch + 1, 0, self._position.global_step)
        progress.close()
        self.save_checkpoint()  # skipped when the last step already saved one
        final = hf_checkpoint.save_hf_checkpoint(
            self._model, self._output_dir / "hf", dtype=self._save_dtype, tokenizer=self._tokenizer
        )
        if self._is_rank_zero:
            log.info("final HF weights: %s (load with from_pretrained or checkpoint_dir=%s)", final, final)

    def _peak_memory_gb(self) -> float:
        if self._device.type == "cuda":
            return torch.cuda.max_memory_allocated(self._device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: peak RSS (KiB on Linux)

    def save_checkpoint(self) -> None:
        """Resumable state plus HF-format weights, atomically, in ``checkpoints/step_N``."""
        self._checkpointer.save(
            self._model,
            self._optimizer,
            self._lr_scheduler,
            self._position,
            write_extra_files=lambda step_dir: hf_checkpoint.save_hf_checkpoint(
                self._model, step_dir / "hf", dtype=self._save_dtype, tokenizer=self._tokenizer
            ),
        )

    def cleanup(self) -> None:
        self._metric_logger.close()
        self._preemption.close()
        distributed.destroy()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    recipe = SFTRecipe(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
