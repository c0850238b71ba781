"""Stage 2 of MER-R1: GRPO with disentangled rewards/advantages and slow-fast confidence calibration.

Per step (METHOD section 4, Eq. 3): sample G responses per prompt with the policy itself (one
prefill per prompt, parameters all-gathered once for the whole rollout phase); score every reward;
for the calibration rewards, read the slow next-token distributions from a no-grad policy forward
over prompt + response and the fast ones from a second forward over prompt + empty think + the
same answer tokens; combine rewards into advantages with the configured advantage groups; then
``num_iterations`` clipped-ratio policy updates over the same rollouts, with a frozen reference
model for the KL term only when ``loss.beta > 0``. Every paper variant (Baseline, RD, RD+AD,
MER-R1, A1, A2, B1, B2, VideoAuto-R1, EMO-R3) is a config of this one recipe.

Launch (from the repo root; see the configs' headers):
    tune run --nproc_per_node 8 recipes/grpo_mer_r1_distributed.py --config recipes/configs/qwen2_5_omni/7B_grpo_mer_r1.yaml
    tune run grpo_mer_r1_distributed --config debug/grpo_mer_r1_tiny          # one CPU process

What a demanding user should know:
- One "step" = one rollout phase over ``batch_size * gradient_accumulation_steps`` prompts per
  rank, then ``num_iterations`` optimizer updates over those rollouts (each accumulating
  gradients over micro-batches of ``batch_size`` prompts x G responses).
- Old log-probs (the ratio's denominator) come from a no-grad forward of the rollout policy when
  calibration or ``num_iterations > 1`` needs that forward anyway; otherwise the current
  log-probs, detached (ratio 1, the usual single-update shortcut).
- Log-probs are those of logits / ``generation.temperature``, as sampled.
- The loss normalizer (sequences or tokens) is all-reduced over ranks and micro-batches and the
  loss is scaled by the world size (FSDP averages gradients), so N ranks match one process.
- Recall and precision are always logged (``reward/recall``, ``reward/precision``), also when
  the variant optimizes something else.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torchtune import config
from tqdm import tqdm

from merr1.components import hf_checkpoint, distributed, parallel
from merr1.components.checkpointing import DataPosition, PreemptionHandler, TrainingCheckpointer
from merr1.components.data import PromptCollator, collate_media
from merr1.components.generation import (
    SamplingConfig,
    StopStrings,
    generate,
    media_token_ids,
    teacher_forced_logits,
)
from merr1.components.metric_logging import MetricLogger, SampleLogger, format_metrics, save_config
from merr1.components.models import is_thinker, multimodal_encoders, resolve_dtype
from merr1.components.optim import clip_grad_norm
from merr1.components.data.prompts import AUDIO_TOKEN, VIDEO_TOKEN, build_chat_prompt, encode_text
from merr1.components.tokenizer import stop_token_ids
from merr1.rewards import EmotionSetRewards, RewardBatch, merge_outputs

log = logging.getLogger("merr1.grpo")

CONFIG_KEYS = {
    "output_dir", "seed", "device", "dtype", "checkpoint_dir", "tokenizer", "model", "dataset",
    "num_workers", "batch_size", "gradient_accumulation_steps", "num_generations", "num_iterations",
    "epochs", "max_steps_per_epoch", "shuffle", "generation", "rewards", "calibration", "advantage",
    "loss", "metrics_answer_scheme", "optimizer", "lr_scheduler", "max_grad_norm",
    "fsdp_reshard_after_forward", "fsdp_cpu_offload", "enable_activation_checkpointing", "compile",
    "freeze_multimodal_encoders",
    "float8", "save_every_n_steps", "keep_last_n_checkpoints", "save_dtype", "resume_from_checkpoint",
    "log_every_n_steps", "log_samples_every_n_steps", "num_logged_samples",
}  # fmt: skip


def collate_prompts(collator: PromptCollator, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Left-padded prompts plus each prompt's own media (micro-batches re-collate their media)."""
    return {**collator(samples), "sample_media": [s["media"] for s in samples]}


class GRPORecipe:
    """GRPO for MER-R1 and its variants. ``setup``, ``train``, ``cleanup``."""

    def __init__(self, cfg: DictConfig) -> None:
        unknown = sorted(set(cfg.keys()) - CONFIG_KEYS)
        missing = sorted(CONFIG_KEYS - set(cfg.keys()))
        if unknown or missing:
            raise ValueError(f"config keys: unknown {unknown}, missing {missing} (recipe reads {sorted(CONFIG_KEYS)})")
        for key in ("batch_size", "gradient_accumulation_steps", "num_generations", "num_iterations", "epochs",
                    "log_every_n_steps", "log_samples_every_n_steps"):  # fmt: skip
            if not isinstance(cfg[key], int) or cfg[key] < 1:
                raise ValueError(f"{key} must be a positive integer, got {cfg[key]!r}")
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
        self._data_seed = cfg.seed
        distributed.set_seed(cfg.seed, self._rank)
        self._batch_size = cfg.batch_size
        self._grad_accum = cfg.gradient_accumulation_steps
        self._group_size = cfg.num_generations
        self._num_iterations = cfg.num_iterations
        self._epochs = cfg.epochs
        self._max_steps_per_epoch = cfg.max_steps_per_epoch
        self._max_grad_norm = cfg.max_grad_norm
        self._save_every = cfg.save_every_n_steps
        self._log_every = cfg.log_every_n_steps
        self._samples_every = cfg.log_samples_every_n_steps
        self._num_logged_samples = cfg.num_logged_samples
        self._save_dtype = resolve_dtype(cfg.save_dtype)
        self._resume = cfg.resume_from_checkpoint
        self._position = DataPosition()
        if not cfg.generation.temperature > 0:
            raise ValueError(f"generation.temperature must be > 0 for GRPO (G samples per prompt), got {cfg.generation.temperature}")

    # ------------------------------------------------------------------------------- setup
    def setup(self, cfg: DictConfig) -> None:
        cfg_dict = OmegaConf.to_container(cfg, resolve=True)
        if self._is_rank_zero:
            self._output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg_dict, self._output_dir / "config.yaml")
        self._tokenizer = config.instantiate(cfg.tokenizer)
        self._setup_data(cfg)
        self._setup_rewards(cfg)

        self._model = self._build_model(cfg, trainable=True)
        self._ref_model = self._build_model(cfg, trainable=False) if self._loss.needs_reference else None
        log.info("reference model: %s", "built (beta = %g)" % self._loss.beta if self._ref_model else "none (beta = 0)")
        self._optimizer = config.instantiate(cfg.optimizer, self._model)
        num_updates = self._total_steps * self._num_iterations
        self._lr_scheduler = config.instantiate(cfg.lr_scheduler, self._optimizer, num_training_steps=num_updates)
        self._float8_all_gather = cfg.float8.enabled and cfg.float8.enable_fsdp_float8_all_gather

        gen = cfg.generation
        self._temperature = gen.temperature
        suppress = media_token_ids(self._model.config) if is_thinker(self._model) else []
        self._sampling = SamplingConfig(
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=gen.top_k,
            eos_token_ids=stop_token_ids(self._tokenizer),
            pad_token_id=self._tokenizer.pad_token_id,
            stop_strings=StopStrings.from_tokenizer(self._tokenizer, list(gen.stop_strings)) if gen.stop_strings else None,
            suppress_token_ids=suppress,
        )
        self._recheck_sampling = SamplingConfig(
            max_new_tokens=gen.max_new_tokens,
            temperature=0.0,
            eos_token_ids=stop_token_ids(self._tokenizer),
            pad_token_id=self._tokenizer.pad_token_id,
            suppress_token_ids=suppress,
        )

        self._checkpointer = TrainingCheckpointer(
            self._output_dir,
            keep_last_n=cfg.keep_last_n_checkpoints,
            fingerprint={
                "model": cfg_dict["model"], "batch_size": self._batch_size, "grad_accum": self._grad_accum,
                "num_generations": self._group_size, "steps_per_epoch": self._steps_per_epoch,
                "dataset": cfg_dict["dataset"],
            },  # fmt: skip
            config=cfg_dict,
        )
        if self._resume:
            state = self._checkpointer.load_latest(self._model, self._optimizer, self._lr_scheduler)
            self._position = state.position
        resume_step = self._position.global_step if self._resume else None
        self._metric_logger = MetricLogger(self._output_dir, resume_step=resume_step)
        self._sample_logger = SampleLogger(self._output_dir, "samples.jsonl", resume_step)
        self._preemption = PreemptionHandler()
        if self._is_rank_zero:
            log.info(
                "GRPO: %d prompts, %d ranks x %d prompts x G=%d per step, %d steps (%d epochs x %d), "
                "%d updates per step, rewards %s, advantage groups %s",
                len(self._dataset), self._world_size, self._batch_size * self._grad_accum, self._group_size,
                self._total_steps, self._epochs, self._steps_per_epoch, self._num_iterations,
                sorted(self._reward_names), [g.name for g in self._advantage.groups],
            )  # fmt: skip

    def _setup_data(self, cfg: DictConfig) -> None:
        self._dataset = config.instantiate(cfg.dataset, self._tokenizer)
        self._collator = PromptCollator(self._tokenizer)
        self._sampler = distributed.ResumableDistributedSampler(
            self._dataset, num_replicas=self._world_size, rank=self._rank, shuffle=cfg.shuffle, seed=cfg.seed
        )
        self._loader_generator = torch.Generator()
        self._prompts_per_step = self._batch_size * self._grad_accum
        self._dataloader = DataLoader(
            self._dataset,
            batch_size=self._prompts_per_step,
            sampler=self._sampler,
            collate_fn=functools.partial(collate_prompts, self._collator),
            num_workers=cfg.num_workers,
            drop_last=True,
            generator=self._loader_generator,
        )
        self._steps_per_epoch = len(self._dataloader)
        if self._max_steps_per_epoch is not None:
            self._steps_per_epoch = min(self._steps_per_epoch, self._max_steps_per_epoch)
        if self._steps_per_epoch < 1:
            raise ValueError(
                f"no GRPO step fits in an epoch: {len(self._dataset)} prompts for {self._world_size} ranks x "
                f"{self._prompts_per_step} prompts per step"
            )
        self._total_steps = self._epochs * self._steps_per_epoch

    def _setup_rewards(self, cfg: DictConfig) -> None:
        self._rewards = [config.instantiate(reward) for reward in cfg.rewards]
        self._calibration = config.instantiate(cfg.calibration) if cfg.calibration is not None else None
        if self._calibration is not None:
            self._calibration.setup(self._tokenizer)
        self._advantage = config.instantiate(cfg.advantage)
        self._loss = config.instantiate(cfg.loss)
        # Logged for every variant (issue 6), computed on the side if the variant does not optimize them.
        self._log_rewards = EmotionSetRewards(answer_scheme=cfg.metrics_answer_scheme)
        self._reward_names = {name for reward in self._rewards for name in reward.outputs}
        missing = sorted(self._advantage.reward_names - self._reward_names)
        if missing:
            raise ValueError(f"advantage groups use rewards {missing} that no configured reward produces ({sorted(self._reward_names)})")
        if {"cali_pos", "cali_neg"} & self._reward_names and self._calibration is None:
            raise ValueError("CalibrationRewards needs the `calibration` component (SlowFastCalibration); it is null")

    def _build_model(self, cfg: DictConfig, trainable: bool) -> torch.nn.Module:
        # Skeleton on every rank; weights from rank 0 after sharding (no rank holds two full copies).
        model = config.instantiate(cfg.model, dtype=torch.float32, device="meta")
        if trainable and cfg.float8.enabled:
            converted = parallel.apply_float8(
                model,
                recipe=cfg.float8.recipe,
                enable_fsdp_float8_all_gather=cfg.float8.enable_fsdp_float8_all_gather,
                emulate=cfg.float8.emulate,
            )
            log.info("float8 (%s): %d linear layers converted", cfg.float8.recipe, len(converted))
        if trainable and cfg.enable_activation_checkpointing:
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
        else:  # the builder's random initialisation (tiny models), broadcast from rank 0
            full = config.instantiate(cfg.model, dtype=torch.float32, device="cpu").state_dict() if self._is_rank_zero else None
            hf_checkpoint.load_full_state_dict(model, full, load_device)
        if not trainable:
            model.requires_grad_(False)
            model.eval()
        elif cfg.freeze_multimodal_encoders:  # audio + vision encoders keep their weights (memory: no grads/Adam states)
            for encoder in multimodal_encoders(model):
                encoder.requires_grad_(False)
        return model

    # ------------------------------------------------------------------------------- pieces
    def _autocast(self):
        use = not self._sharded and self._dtype == torch.bfloat16
        return torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=use)

    def _media(self, sample_media: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Collated media of a list of samples (one entry per batch row), on the device."""
        if not sample_media or not sample_media[0]:
            return {}
        return {k: v.to(self._device) for k, v in collate_media(sample_media).items()}

    def _logits(self, model, rollout, rows: slice, response_ids, response_mask, targets) -> torch.Tensor:
        """Logits predicting the ``targets`` tokens of the responses of rollout rows ``rows`` (whole
        groups): each prompt runs once and its KV cache serves its G responses.

        Returns:
            # [targets.sum(), V], rows in row-major order of ``targets``
        """
        G = self._group_size
        assert rows.start % G == 0 and rows.stop % G == 0, "micro-batches hold whole groups"
        prompts = slice(rows.start // G, rows.stop // G)
        with self._autocast():
            return teacher_forced_logits(
                model, rollout["prompt_ids"][prompts], rollout["prompt_mask"][prompts], response_ids, response_mask,
                targets, num_samples=G, media=self._media(rollout["sample_media"][prompts]) or None,
            )  # fmt: skip

    def _response_logprobs(self, model, rollout, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs (of logits / temperature) of the sampled tokens of ``rows``, and the raw logits.

        Returns:
            logprobs # [R, T] (0 where masked); raw logits of the response tokens # [N, V]
        """
        response_ids, response_mask = rollout["response_ids"][rows], rollout["response_mask"][rows]  # [R, T]
        logits = self._logits(model, rollout, rows, response_ids, response_mask, response_mask)  # [N, V]
        token_logprobs = torch.log_softmax(logits.float() / self._temperature, dim=-1)
        token_logprobs = token_logprobs.gather(-1, response_ids[response_mask].unsqueeze(-1)).squeeze(-1)  # [N]
        logprobs = torch.zeros(response_ids.shape, dtype=torch.float32, device=self._device)
        return logprobs.masked_scatter(response_mask, token_logprobs), logits

    def _micro_batches(self, num_rows: int) -> list[slice]:
        """Row slices of ``batch_size`` prompts x G responses (groups never split)."""
        step = self._batch_size * self._group_size
        return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]

    @torch.no_grad()
    def _rollout_policy_pass(self, rollout: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """No-grad policy pass over the rollouts: old log-probs [B*G, T] and, for SFCC, the
        calibration inputs (slow distributions here, fast ones from a second forward per
        micro-batch over prompt + empty think + the same answer tokens)."""
        num_rows = rollout["response_ids"].shape[0]
        old_logprobs = torch.zeros(rollout["response_ids"].shape, dtype=torch.float32, device=self._device)
        words = fast = None
        if self._calibration is not None:
            words, fast = self._calibration.locate(rollout["response_ids"].cpu(), rollout["response_mask"].cpu())
            word_rows = words.response_index.to(self._device)
            slow_positions, fast_positions = words.slow_position.to(self._device), words.fast_position.to(self._device)
            slow_words = fast_words = None
        for rows in self._micro_batches(num_rows):
            logprobs, logits = self._response_logprobs(self._model, rollout, rows)
            old_logprobs[rows] = logprobs
            if words is None:
                continue
            in_micro = (word_rows >= rows.start) & (word_rows < rows.stop)  # [W]
            if not in_micro.any():
                continue
            mask = rollout["response_mask"][rows]
            row_of = torch.full(mask.shape, -1, dtype=torch.long, device=self._device)  # token -> logits row
            row_of[mask] = torch.arange(logits.shape[0], device=self._device)
            local_rows = word_rows[in_micro] - rows.start
            slow = logits[row_of[local_rows, slow_positions[in_micro]]]  # [w, V]
            fast_ids, fast_mask = fast.ids[rows].to(self._device), fast.mask[rows].to(self._device)
            targets = torch.zeros_like(fast_mask)
            targets[local_rows, fast_positions[in_micro]] = True
            rows_out = self._logits(self._model, rollout, rows, fast_ids, fast_mask, targets)  # row-major order
            rank = torch.argsort(torch.argsort(local_rows * targets.shape[1] + fast_positions[in_micro]))  # word -> row
            fast_logits = rows_out[rank]
            if slow_words is None:
                slow_words = slow.new_zeros(len(words.words), slow.shape[-1])
                fast_words = slow.new_zeros(len(words.words), slow.shape[-1])
            slow_words[in_micro], fast_words[in_micro] = slow, fast_logits
        if words is None:
            return old_logprobs, None
        if slow_words is None:  # no located word in the whole batch
            vocab = self._model.get_output_embeddings().weight.shape[0]
            slow_words = fast_words = torch.zeros(0, vocab, device=self._device)
        return old_logprobs, self._calibration.inputs(slow_words.float(), fast_words.float(), words, num_rows)

    @torch.no_grad()
    def _reference_logprobs(self, rollout: dict[str, Any]) -> torch.Tensor:
        ref = torch.zeros(rollout["response_ids"].shape, dtype=torch.float32, device=self._device)
        for rows in self._micro_batches(ref.shape[0]):
            ref[rows] = self._response_logprobs(self._ref_model, rollout, rows)[0]
        return ref

    def _reflective_generate(self, rollout: dict[str, Any]):
        """Callback for rewards that need a second policy pass (EMO-R3 re-checks): greedy replies
        to plain user turns (the query text, with the prompt's media when asked)."""
        def reply(queries) -> list[str]:
            system_prompt = self._dataset.encoder.prompts.system_prompt
            audio_id, video_id = (self._tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_TOKEN, VIDEO_TOKEN))
            replies = [""] * len(queries)
            # One batch per prompt whose media go with its queries, one for all text-only queries.
            by_media: dict[int | None, list[int]] = {}
            for i, query in enumerate(queries):
                by_media.setdefault(query.prompt_index if query.use_media else None, []).append(i)
            self._model.eval()
            for prompt_index, members in by_media.items():
                prompt = rollout["prompt_ids_unpadded"][prompt_index] if prompt_index is not None else None
                num_audio = 0 if prompt is None else int((prompt == audio_id).sum())
                num_video = 0 if prompt is None else int((prompt == video_id).sum())
                samples = [
                    {"name": str(i), "media": rollout["sample_media"][prompt_index] if prompt is not None else {},
                     "prompt_ids": torch.tensor(encode_text(self._tokenizer, build_chat_prompt(
                         queries[i].text, num_audio=num_audio, num_video=num_video, system_prompt=system_prompt)))}
                    for i in members
                ]  # fmt: skip
                batch = self._collator(samples)
                sampling = dataclasses.replace(
                    self._recheck_sampling, max_new_tokens=max(queries[i].max_new_tokens for i in members)
                )
                with torch.no_grad(), self._autocast():
                    result = generate(
                        self._model, batch["prompt_ids"].to(self._device), batch["prompt_mask"].to(self._device),
                        sampling, media=self._media([s["media"] for s in samples]) or None,
                    )  # fmt: skip
                for i, text in zip(members, self._decode(result.response_ids, result.response_mask)):
                    replies[i] = text
            self._model.train()
            return replies

        return reply

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return self._tokenizer.batch_decode(
            [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu())], skip_special_tokens=True
        )

    # ------------------------------------------------------------------------------- one step
    def _row_generators(self, names: list[str]) -> list[torch.Generator]:
        """One sampling generator per rollout row, seeded by (seed, step, prompt name, sample):
        rollouts do not depend on the number of ranks or the batch a prompt lands in, and a
        resumed run samples exactly what the uninterrupted one did."""
        step = self._position.global_step + 1
        return [
            torch.Generator(device=self._device).manual_seed(zlib.crc32(f"{self._data_seed}/{step}/{name}/{g}".encode()))
            for name in names
            for g in range(self._group_size)
        ]

    def _rollout(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Sample G responses per prompt (parameters gathered once inside ``generate``)."""
        G = self._group_size
        prompt_ids = batch["prompt_ids"].to(self._device)  # [B, P]
        prompt_mask = batch["prompt_mask"].to(self._device)  # [B, P]
        self._model.eval()
        with torch.no_grad(), self._autocast():
            rollouts = generate(
                self._model, prompt_ids, prompt_mask, self._sampling, num_samples=G,
                media=self._media(batch["sample_media"]) or None, generator=self._row_generators(batch["names"]),
            )  # fmt: skip
        self._model.train()
        return {
            "names": batch["names"],
            "labels": batch["labels"],
            "sample_media": batch["sample_media"],  # per prompt
            "prompt_ids_unpadded": [p[m.bool()] for p, m in zip(batch["prompt_ids"], batch["prompt_mask"])],
            "prompt_ids": prompt_ids,  # [B, P]
            "prompt_mask": prompt_mask,  # [B, P]
            "response_ids": rollouts.response_ids,  # [B*G, T]
            "response_mask": rollouts.response_mask,  # [B*G, T]
        }

    def _score(self, rollout: dict[str, Any], extras: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """All rewards [num_prompts, G] (the logged recall/precision/f1 included) and sub-values."""
        G = self._group_size
        texts = self._decode(rollout["response_ids"], rollout["response_mask"])
        rollout["texts"] = texts
        reward_batch = RewardBatch(
            responses=[texts[b * G : (b + 1) * G] for b in range(len(rollout["names"]))],
            labels=rollout["labels"],
            extras=extras,
        )
        outputs = merge_outputs([reward(reward_batch) for reward in self._rewards])
        logged = self._log_rewards(reward_batch)
        rewards = dict(outputs.rewards)
        for name, value in logged.rewards.items():
            rewards.setdefault(name, value)
        return rewards, {**logged.metrics, **outputs.metrics}

    def _loss_normalizer(self, response_mask: torch.Tensor) -> float:
        """Sequences (grpo, dr_grpo) or tokens (dapo) of one update, summed over all ranks."""
        if self._loss.aggregation == "dapo":
            local = float(response_mask.sum())
        else:
            local = float((response_mask.sum(-1) > 0).sum())
        return max(distributed.all_reduce_scalar(local, "sum"), 1.0)

    def _policy_update(self, rollout, advantages, old_logprobs, ref_logprobs) -> dict[str, float]:
        """One optimizer step over all micro-batches of the step's rollouts (Eq. 3)."""
        normalizer = self._loss_normalizer(rollout["response_mask"])
        sums = {"loss": 0.0, "policy_loss": 0.0}
        means: dict[str, float] = {}
        micro_batches = self._micro_batches(rollout["response_ids"].shape[0])
        for rows in micro_batches:
            logprobs, _ = self._response_logprobs(self._model, rollout, rows)
            loss, stats = self._loss(
                logprobs,
                advantages[rows],
                rollout["response_mask"][rows],
                old_logprobs=None if old_logprobs is None else old_logprobs[rows],
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[rows],
                normalizer=normalizer,
            )
            (loss * self._world_size).backward()  # FSDP averages gradients over ranks
            sums["loss"] += loss.item()
            sums["policy_loss"] += float(stats["policy_loss"])
            for key in ("kl", "ratio_mean", "ratio_min", "ratio_max", "clip_frac_low", "clip_frac_high"):
                means[key] = means.get(key, 0.0) + float(stats[key]) / len(micro_batches)
        grad_norm = clip_grad_norm(self._model.parameters(), self._max_grad_norm)
        if not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm {grad_norm} at step {self._position.global_step + 1}")
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        if self._float8_all_gather:
            parallel.precompute_float8_scales(self._model)
        lr = self._lr_scheduler.get_last_lr()[0]
        self._lr_scheduler.step()
        totals = distributed.all_reduce_dict(sums, "sum")  # each rank holds its share of the global loss
        means = distributed.all_reduce_dict(means, "mean")
        return {"loss": totals["loss"], "loss/policy": totals["policy_loss"],
                **{f"loss/{k}": v for k, v in means.items()}, "grad_norm": grad_norm, "lr": lr}  # fmt: skip

    def _grpo_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        times = {}
        start = time.perf_counter()
        rollout = self._rollout(batch)
        times["generate"] = time.perf_counter() - start

        start = time.perf_counter()
        extras: dict[str, Any] = {"reflective_generate": self._reflective_generate(rollout)}
        old_logprobs = None  # None: the detached current log-probs (ratio 1) in a single update
        if self._calibration is not None or self._num_iterations > 1:
            old_logprobs, extras["calibration"] = self._rollout_policy_pass(rollout)
        ref_logprobs = self._reference_logprobs(rollout) if self._ref_model is not None else None
        times["calibrate"] = time.perf_counter() - start

        start = time.perf_counter()
        rewards, reward_metrics = self._score(rollout, extras)
        advantages, adv_stats = self._advantage({k: v for k, v in rewards.items() if k in self._advantage.reward_names})
        advantages = advantages.to(self._device).flatten()  # [B*G]
        times["score"] = time.perf_counter() - start

        start = time.perf_counter()
        for _ in range(self._num_iterations):
            update_stats = self._policy_update(rollout, advantages, old_logprobs, ref_logprobs)
        times["train"] = time.perf_counter() - start

        metrics = self._step_metrics(rollout, rewards, reward_metrics, adv_stats, update_stats, times)
        self._maybe_log_samples(rollout, rewards, advantages)
        return metrics

    def _step_metrics(self, rollout, rewards, reward_metrics, adv_stats, update_stats, times) -> dict[str, float]:
        local: dict[str, float] = {}
        for name, value in rewards.items():
            local[f"reward/{name}/mean"] = value.float().mean().item()
            local[f"reward/{name}/std"] = value.float().std(-1, unbiased=False).mean().item()  # within-group
        for name, value in reward_metrics.items():
            local[f"reward_metric/{name}/mean"] = value.float().mean().item()
        lengths = rollout["response_mask"].sum(-1).float()
        local["response_length/mean"] = lengths.mean().item()
        local["response_length/max"] = lengths.max().item()
        local.update(adv_stats)
        metrics = distributed.all_reduce_dict(local, "mean")
        num_tokens = distributed.all_reduce_scalar(float(lengths.sum()), "sum")
        metrics.update(update_stats)
        metrics.update({f"time/{k}": v for k, v in times.items()})
        metrics["time/step"] = sum(times.values())
        metrics["rollout_tokens_per_second"] = num_tokens / max(times["generate"], 1e-9)
        metrics["rollouts_per_second"] = rollout["response_ids"].shape[0] * self._world_size / metrics["time/step"]
        metrics["num_predicted_categories"] = metrics.get("reward_metric/num_categories/mean", float("nan"))
        return metrics

    def _maybe_log_samples(self, rollout, rewards, advantages) -> None:
        step = self._position.global_step + 1
        if step % self._samples_every or not self._is_rank_zero:
            return
        samples = []
        G = self._group_size
        for row in range(min(self._num_logged_samples, len(rollout["texts"]))):
            b, g = divmod(row, G)
            samples.append(
                {
                    "name": rollout["names"][b],
                    "labels": rollout["labels"][b],
                    "sample": g,
                    "response": rollout["texts"][row],
                    "rewards": {name: round(float(value[b, g]), 4) for name, value in rewards.items()},
                    "advantage": round(float(advantages[row]), 4),
                }
            )
        self._sample_logger.log(step, samples)

    # ------------------------------------------------------------------------------- loop
    def train(self) -> None:
        start = self._position
        progress = tqdm(
            total=self._total_steps, initial=start.global_step, disable=not self._is_rank_zero, desc="grpo", dynamic_ncols=True
        )
        for epoch in range(start.epoch, self._epochs):
            step_in_epoch = start.step_in_epoch if epoch == start.epoch else 0
            self._sampler.set_epoch(epoch, start_index=step_in_epoch * self._prompts_per_step)
            self._loader_generator.manual_seed(self._data_seed + epoch)
            batches = iter(self._dataloader)
            for step_in_epoch in range(step_in_epoch, self._steps_per_epoch):
                metrics = self._grpo_step(next(batches))
                self._position = DataPosition(epoch, step_in_epoch + 1, self._position.global_step + 1)
                metrics["epoch"] = epoch
                self._metric_logger.log(self._position.global_step, metrics)
                progress.update(1)
                if self._position.global_step % self._log_every == 0:
                    progress.set_postfix_str(
                        format_metrics(metrics, ["reward/recall/mean", "reward/precision/mean", "loss", "time/step"])
                    )
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
            log.info("final HF weights: %s", final)

    def save_checkpoint(self) -> None:
        """Resumable state plus HF-format weights, atomically (rollout seeds derive from the step)."""
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
        self._sample_logger.close()
        self._preemption.close()
        distributed.destroy()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    recipe = GRPORecipe(cfg)
    recipe.setup(cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
