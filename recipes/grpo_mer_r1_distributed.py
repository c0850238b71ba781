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
import sys
import zlib
from typing import Annotated, Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config

from merr1.components import distributed, training
from merr1.components.calibration import WordLogits
from merr1.components.config_checks import Above, AtLeast, Component, check_config, expand_list_item_overrides
from merr1.components.data import PromptCollator
from merr1.components.data.collate import select_media
from merr1.components.data.prompts import recheck_prompt_ids
from merr1.components.emotion_wheel import ANSWER_SCHEMES
from merr1.components.generation import (
    DECODE_BACKENDS,
    SamplingConfig,
    StopStrings,
    generate,
    generate_in_batches,
    media_token_ids,
    teacher_forced_logits,
)
from merr1.components.metric_logging import SampleLogger, grpo_postfix, should_log_samples
from merr1.components.models import is_thinker, resolve_dtype
from merr1.components.parallel import gathered_parameters
from merr1.components.resume_config import NON_TRAJECTORY_KEYS
from merr1.components.tokenizer import stop_token_ids
from merr1.rewards import EmotionSetRewards, RewardBatch, merge_outputs

log = logging.getLogger("merr1.grpo")

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
    "num_workers": Annotated[int, AtLeast(0)],
    "batch_size": PositiveInt,  # prompts per rank per micro-batch
    "gradient_accumulation_steps": PositiveInt,
    "num_generations": Annotated[int, AtLeast(2)],  # G = 1: every advantage is 0, nothing trains
    "num_iterations": PositiveInt,
    "epochs": PositiveInt,
    "max_steps_per_epoch": PositiveInt | None,
    "shuffle": bool,
    "rollout_batch_size": PositiveInt | None,  # prompts per generate call; null = all prompts of the step
    "generation": {"max_new_tokens": PositiveInt, "temperature": Annotated[float, Above(0)],
                   "top_p": Annotated[float, Above(0)], "top_k": Annotated[int, AtLeast(0)],
                   "stop_strings": list[str] | None, "decode_backend": Literal[DECODE_BACKENDS]},  # fmt: skip
    "rewards": [Component()],
    "calibration": Component(optional=True),
    "advantage": Component(),
    "loss": Component(),
    "metrics_answer_scheme": Literal[ANSWER_SCHEMES],
    "log_samples_every_n_steps": PositiveInt,
    "num_logged_samples": Annotated[int, AtLeast(0)],
}


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What one rollout phase produces; row ``b * G + g`` is sample g of prompt b. Never mutated."""

    names: list[str]  # [B]
    labels: list[list[str]]  # [B] ground-truth emotion words ([] = neutral)
    prompt_ids: torch.Tensor  # [B, P] left-padded, on the device
    prompt_mask: torch.Tensor  # [B, P]
    media: dict[str, torch.Tensor] | None  # the B prompts' Thinker media kwargs, on the device
    response_ids: torch.Tensor  # [B*G, T]
    response_mask: torch.Tensor  # [B*G, T] True on generated tokens (stop/EOS included)
    texts: list[str]  # [B*G] the decoded responses
    num_generations: int  # G

    def prompt_media(self, prompts) -> dict[str, torch.Tensor] | None:
        """The media kwargs of the given prompt indices (one row each)."""
        return None if self.media is None else select_media(self.media, len(self.names), prompts)


class GRPORecipe:
    """GRPO for MER-R1 and its variants. ``setup``, ``train``, ``cleanup``."""

    def __init__(self, cfg: DictConfig) -> None:
        check_config(cfg, CONFIG_SPEC)
        process = training.init_process(cfg.device, cfg.seed, fsdp_cpu_offload=cfg.fsdp_cpu_offload)
        self._device, self._world_size, self._sharded = process.device, process.world_size, process.sharded
        self._is_rank_zero = process.is_rank_zero
        self._dtype = resolve_dtype(cfg.dtype)
        self._data_seed = cfg.seed
        self._batch_size = cfg.batch_size
        self._group_size = cfg.num_generations
        self._num_iterations = cfg.num_iterations
        self._temperature = cfg.generation.temperature
        self._rollout_batch_size = cfg.rollout_batch_size
        self._samples_every = cfg.log_samples_every_n_steps
        self._num_logged_samples = cfg.num_logged_samples
        self._run: training.TrainingRun | None = None
        self._sample_logger: SampleLogger | None = None

    # ------------------------------------------------------------------------------- setup
    def setup(self, cfg: DictConfig) -> None:
        self._tokenizer = config.instantiate(cfg.tokenizer)
        # Data first: a missing file or a bad row fails before the model is built.
        self._dataset = config.instantiate(cfg.dataset, self._tokenizer)
        self._collator = PromptCollator(self._tokenizer)
        self._loader = training.StepLoader(
            self._dataset,
            collate_fn=self._collator,  # prompts (left-padded) and their media, collated once per step
            batch_size=cfg.batch_size * cfg.gradient_accumulation_steps,
            batches_per_step=1,
            epochs=cfg.epochs,
            max_steps_per_epoch=cfg.max_steps_per_epoch,
            shuffle=cfg.shuffle,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
        )
        self._setup_rewards(cfg)
        spec = training.ModelSpec.from_config(cfg, functools.partial(config.instantiate, cfg.model))
        self._model = training.build_model(spec, role="train", device=self._device, sharded=self._sharded)
        self._ref_model = None
        if self._loss.needs_reference:
            self._ref_model = training.build_model(spec, role="reference", device=self._device, sharded=self._sharded)
        log.info("reference model: %s", "built (beta = %g)" % self._loss.beta if self._ref_model else "none (beta = 0)")
        optimizer = config.instantiate(cfg.optimizer, self._model)
        num_updates = self._loader.total_steps * self._num_iterations
        lr_scheduler = config.instantiate(cfg.lr_scheduler, optimizer, num_training_steps=num_updates)
        self._optimizer_step = training.OptimizerStep(
            self._model, optimizer, lr_scheduler, cfg.max_grad_norm, spec.float8_all_gather
        )
        self._setup_sampling(cfg.generation)
        # Writes config.yaml, resumes (resume_from_checkpoint), opens metrics.jsonl (+ metric_logger).
        group_rewards = [name for group in self._advantage.groups for name, _ in group.rewards]
        self._run = training.TrainingRun(
            cfg, model=self._model, optimizer=optimizer, lr_scheduler=lr_scheduler, tokenizer=self._tokenizer,
            total_steps=self._loader.total_steps, desc="grpo",
            postfix=functools.partial(grpo_postfix, reward_names=group_rewards),  # every reward a group uses
            metric_logger=config.instantiate(cfg.metric_logger) if self._is_rank_zero and cfg.metric_logger else None,
            non_trajectory_keys=(*NON_TRAJECTORY_KEYS, "metrics_answer_scheme"),  # logging only
            fingerprint={"steps_per_epoch": self._loader.steps_per_epoch},  # the config is compared key by key
        )  # fmt: skip
        self._position = self._run.start
        self._sample_logger = SampleLogger(
            self._run.output_dir, "samples.jsonl", self._position.global_step if cfg.resume_from_checkpoint else None
        )
        if self._is_rank_zero:
            log.info(
                "GRPO: %d prompts, %d ranks x %d prompts x G=%d per step, %d steps (%d epochs x %d), "
                "%d updates per step, rewards %s, advantage groups %s",
                len(self._dataset), self._world_size, cfg.batch_size * cfg.gradient_accumulation_steps,
                self._group_size, self._loader.total_steps, cfg.epochs, self._loader.steps_per_epoch,
                self._num_iterations, sorted(self._reward_names), [g.name for g in self._advantage.groups],
            )  # fmt: skip

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

    def _setup_sampling(self, gen: DictConfig) -> None:
        stop_ids = stop_token_ids(self._tokenizer)
        suppress = media_token_ids(self._model.config) if is_thinker(self._model) else []  # never sample media tokens
        stop_strings = StopStrings.from_tokenizer(self._tokenizer, list(gen.stop_strings)) if gen.stop_strings else None
        self._sampling = SamplingConfig(
            max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
            eos_token_ids=stop_ids, pad_token_id=self._tokenizer.pad_token_id, stop_strings=stop_strings,
            suppress_token_ids=suppress, decode_backend=gen.decode_backend,
        )  # fmt: skip
        self._recheck_sampling = SamplingConfig(  # EMO-R3 re-checks: greedy, their own token budget
            max_new_tokens=gen.max_new_tokens, temperature=0.0, eos_token_ids=stop_ids,
            pad_token_id=self._tokenizer.pad_token_id, suppress_token_ids=suppress, decode_backend=gen.decode_backend,
        )  # fmt: skip

    # ------------------------------------------------------------------------------- passes
    def _autocast(self):
        return training.autocast(self._device, self._dtype, self._sharded)

    def _micro_batches(self, num_rows: int) -> list[slice]:
        """Row slices of ``batch_size`` prompts x G responses (groups never split)."""
        step = self._batch_size * self._group_size
        return [slice(start, min(start + step, num_rows)) for start in range(0, num_rows, step)]

    def _logits(self, model, rollout: Rollout, rows: slice, response_ids, response_mask, targets) -> torch.Tensor:
        """Logits predicting the ``targets`` tokens of rollout rows ``rows`` (whole groups), each
        prompt computed once for its G responses. Returns ``[targets.sum(), V]`` (row-major)."""
        G = self._group_size
        assert rows.start % G == 0 and rows.stop % G == 0, "micro-batches hold whole groups"
        p0, p1 = rows.start // G, rows.stop // G  # the prompts of these rows
        with self._autocast():
            return teacher_forced_logits(
                model, rollout.prompt_ids[p0:p1], rollout.prompt_mask[p0:p1], response_ids, response_mask, targets,
                num_samples=G, media=rollout.prompt_media(range(p0, p1)),
            )  # fmt: skip

    def _response_logprobs(self, model, rollout: Rollout, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs (of logits / temperature) of the sampled tokens of ``rows`` # [R, T] (0 where
        masked), and the raw logits of the response tokens # [N, V]."""
        response_ids, response_mask = rollout.response_ids[rows], rollout.response_mask[rows]  # [R, T]
        logits = self._logits(model, rollout, rows, response_ids, response_mask, response_mask)  # [N, V]
        token_logprobs = torch.log_softmax(logits.float() / self._temperature, dim=-1)
        token_logprobs = token_logprobs.gather(-1, response_ids[response_mask].unsqueeze(-1)).squeeze(-1)  # [N]
        logprobs = torch.zeros(response_ids.shape, dtype=torch.float32, device=self._device)
        return logprobs.masked_scatter(response_mask, token_logprobs), logits

    @torch.no_grad()
    def _rollout_policy_pass(self, rollout: Rollout) -> tuple[torch.Tensor, Any]:
        """No-grad policy pass over the rollouts: old log-probs ``[B*G, T]`` and, for SFCC, the
        calibration inputs (slow word logits from this pass, fast ones from a pass over the fast
        responses of the micro-batches that hold answer words; ``calibration.WordLogits``)."""
        old_logprobs = torch.zeros(rollout.response_ids.shape, dtype=torch.float32, device=self._device)
        gather = words = None
        if self._calibration is not None:
            words, fast = self._calibration.locate(rollout.response_ids.cpu(), rollout.response_mask.cpu())
            gather = WordLogits(words, fast)
        for rows in self._micro_batches(rollout.response_ids.shape[0]):
            old_logprobs[rows], logits = self._response_logprobs(self._model, rollout, rows)
            if gather is not None:
                fast_logits = functools.partial(self._logits, self._model, rollout, rows)
                gather.add(rows, logits, rollout.response_mask[rows], fast_logits)
        if gather is None:
            return old_logprobs, None
        return old_logprobs, self._calibration.inputs(*gather.result(), words, rollout.response_ids.shape[0])

    @torch.no_grad()
    def _reference_logprobs(self, rollout: Rollout) -> torch.Tensor:
        ref = torch.zeros(rollout.response_ids.shape, dtype=torch.float32, device=self._device)
        for rows in self._micro_batches(ref.shape[0]):
            ref[rows] = self._response_logprobs(self._ref_model, rollout, rows)[0]
        return ref

    def _reflective_generate(self, rollout: Rollout):
        """Callback for rewards that need a second policy pass (EMO-R3 re-checks): greedy replies
        to plain user turns set up like the rollout (``prompts.recheck_prompt_ids``)."""

        def reply(queries) -> list[str]:
            replies = [""] * len(queries)
            # One batch per prompt whose media go with its queries, one for all text-only queries.
            batches: dict[int | None, list[int]] = {}
            for i, query in enumerate(queries):
                batches.setdefault(query.prompt_index if query.use_media else None, []).append(i)
            self._model.eval()
            for b, members in batches.items():
                batch = self._collator([{"name": str(i), "media": {}, "prompt_ids": torch.tensor(self._recheck_prompt(
                    rollout, queries[i])) } for i in members])  # fmt: skip
                budget = max(queries[i].max_new_tokens for i in members)
                with torch.no_grad(), self._autocast():
                    result = generate(
                        self._model, batch["prompt_ids"].to(self._device), batch["prompt_mask"].to(self._device),
                        dataclasses.replace(self._recheck_sampling, max_new_tokens=budget),
                        media=None if b is None else rollout.prompt_media([b] * len(members)),
                    )  # fmt: skip
                for i, text in zip(members, self._decode(result.response_ids, result.response_mask)):
                    replies[i] = text
            self._model.train()
            return replies

        return reply

    def _recheck_prompt(self, rollout: Rollout, query) -> list[int]:
        b = query.prompt_index
        prompt = rollout.prompt_ids[b][rollout.prompt_mask[b].bool()].tolist()
        return recheck_prompt_ids(self._tokenizer, query.text, prompt, use_media=query.use_media)

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

    def _rollout(self, batch: dict[str, Any]) -> Rollout:
        """Sample G responses per prompt, ``rollout_batch_size`` prompts per generate call."""
        prompt_ids = batch["prompt_ids"].to(self._device)  # [B, P]
        prompt_mask = batch["prompt_mask"].to(self._device)  # [B, P]
        media = {k: v.to(self._device) for k, v in batch["media"].items()} if batch["media"] else None
        self._model.eval()
        with torch.no_grad(), self._autocast():
            sampled = generate_in_batches(
                self._model, prompt_ids, prompt_mask, self._sampling, num_samples=self._group_size, media=media,
                generator=self._row_generators(batch["names"]),
                rollout_batch_size=self._rollout_batch_size or len(batch["names"]),
            )  # fmt: skip
        self._model.train()
        return Rollout(
            names=batch["names"], labels=batch["labels"], prompt_ids=prompt_ids, prompt_mask=prompt_mask,
            media=media, response_ids=sampled.response_ids, response_mask=sampled.response_mask,
            texts=self._decode(sampled.response_ids, sampled.response_mask), num_generations=self._group_size,
        )  # fmt: skip

    def _score(self, rollout: Rollout, extras: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """All rewards ``[num_prompts, G]`` (the logged recall/precision/f1 included) and sub-values."""
        G = self._group_size
        reward_batch = RewardBatch(
            responses=[rollout.texts[b * G : (b + 1) * G] for b in range(len(rollout.names))],
            labels=rollout.labels,
            extras=extras,
        )
        outputs = merge_outputs([reward(reward_batch) for reward in self._rewards])
        logged = self._log_rewards(reward_batch)
        rewards = dict(outputs.rewards)
        for name, value in logged.rewards.items():
            rewards.setdefault(name, value)
        return rewards, {**logged.metrics, **outputs.metrics}

    def _loss_normalizer(self, response_mask: torch.Tensor) -> float:
        """The loss's normalizer of one update (``GRPOLoss.local_normalizer``), summed over all ranks."""
        return max(distributed.all_reduce_scalar(self._loss.local_normalizer(response_mask), "sum"), 1.0)

    def _policy_update(self, rollout: Rollout, advantages, old_logprobs, ref_logprobs) -> dict[str, float]:
        """One optimizer step over all micro-batches of the step's rollouts (Eq. 3)."""
        normalizer = self._loss_normalizer(rollout.response_mask)
        sums = {"loss": 0.0, "policy_loss": 0.0}
        means: dict[str, float] = {}
        micro_batches = self._micro_batches(rollout.response_ids.shape[0])
        for rows in micro_batches:
            logprobs, _ = self._response_logprobs(self._model, rollout, rows)
            loss, stats = self._loss(
                logprobs,
                advantages[rows],
                rollout.response_mask[rows],
                old_logprobs=None if old_logprobs is None else old_logprobs[rows],
                ref_logprobs=None if ref_logprobs is None else ref_logprobs[rows],
                normalizer=normalizer,
            )
            (loss * self._world_size).backward()  # FSDP averages gradients over ranks
            sums["loss"] += loss.item()
            sums["policy_loss"] += float(stats["policy_loss"])
            for key in ("kl", "ratio_mean", "ratio_min", "ratio_max", "clip_frac_low", "clip_frac_high"):
                means[key] = means.get(key, 0.0) + float(stats[key]) / len(micro_batches)
        update = self._optimizer_step(self._position.global_step + 1)
        totals = distributed.all_reduce_dict(sums, "sum")  # each rank holds its share of the global loss
        means = distributed.all_reduce_dict(means, "mean")
        return {"loss": totals["loss"], "loss/policy": totals["policy_loss"],
                **{f"loss/{k}": v for k, v in means.items()}, **update}  # fmt: skip

    def _grpo_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        lap = training.Laps()
        with gathered_parameters(self._model):  # FSDP2: one all-gather for the whole rollout phase
            rollout = self._rollout(batch)
            lap("generate")
            extras: dict[str, Any] = {"reflective_generate": self._reflective_generate(rollout)}
            old_logprobs = None  # None: the detached current log-probs (ratio 1) in a single update
            if self._calibration is not None or self._num_iterations > 1:
                old_logprobs, extras["calibration"] = self._rollout_policy_pass(rollout)
        ref_logprobs = self._reference_logprobs(rollout) if self._ref_model is not None else None
        lap("calibrate")
        rewards, reward_metrics = self._score(rollout, extras)
        advantages, adv_stats = self._advantage({k: v for k, v in rewards.items() if k in self._advantage.reward_names})
        advantages = advantages.to(self._device).flatten()  # [B*G]
        lap("score")
        for _ in range(self._num_iterations):
            update_stats = self._policy_update(rollout, advantages, old_logprobs, ref_logprobs)
        lap("train")
        self._maybe_log_samples(rollout, rewards, advantages)
        return self._step_metrics(rollout, rewards, reward_metrics, adv_stats, update_stats, lap.seconds)

    def _step_metrics(self, rollout: Rollout, rewards, reward_metrics, adv_stats, update_stats, times) -> dict[str, float]:
        local: dict[str, float] = {}
        for name, value in rewards.items():
            local[f"reward/{name}/mean"] = value.float().mean().item()
            local[f"reward/{name}/std"] = value.float().std(-1, unbiased=False).mean().item()  # within-group
        for name, value in reward_metrics.items():
            local[f"reward_metric/{name}/mean"] = value.float().mean().item()
        lengths = rollout.response_mask.sum(-1).float()
        local["response_length/mean"] = lengths.mean().item()
        local.update(adv_stats)
        metrics = distributed.all_reduce_dict(local, "mean")
        metrics["response_length/max"] = distributed.all_reduce_scalar(lengths.max().item(), "max")
        num_tokens = distributed.all_reduce_scalar(float(lengths.sum()), "sum")
        metrics.update(update_stats)
        metrics.update({f"time/{k}": v for k, v in times.items()})
        metrics["time/step"] = sum(times.values())
        metrics["rollout_tokens_per_second"] = num_tokens / max(times["generate"], 1e-9)
        metrics["rollouts_per_second"] = rollout.response_ids.shape[0] * self._world_size / metrics["time/step"]
        metrics["num_predicted_categories"] = metrics.get("reward_metric/num_categories/mean", float("nan"))
        return metrics

    def _maybe_log_samples(self, rollout: Rollout, rewards, advantages) -> None:
        step = self._position.global_step + 1
        if not should_log_samples(step, self._samples_every) or not self._is_rank_zero:  # step 1, then every N
            return
        samples = []
        for row in range(min(self._num_logged_samples, len(rollout.texts))):
            b, g = divmod(row, self._group_size)
            samples.append({
                "name": rollout.names[b], "labels": rollout.labels[b], "sample": g, "response": rollout.texts[row],
                "rewards": {name: round(float(value[b, g]), 4) for name, value in rewards.items()},
                "advantage": round(float(advantages[row]), 4),
            })  # fmt: skip
        self._sample_logger.log(step, samples)

    # ------------------------------------------------------------------------------- loop
    def train(self) -> None:
        for position, (batch,) in self._loader.steps(self._position):
            metrics = self._grpo_step(batch)
            self._position = position
            metrics["epoch"] = position.epoch
            if self._run.end_step(position, metrics):
                return  # preempted: a resumable checkpoint was saved
        self._run.finish(self._position)

    @property
    def exit_code(self) -> int:
        return 0 if self._run is None else self._run.exit_code

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.close()
        if self._sample_logger is not None:
            self._sample_logger.close()
        distributed.destroy()


@config.parse
def recipe_main(cfg: DictConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    recipe = GRPORecipe(cfg)
    try:  # the process group, the logs and the signal handlers are released also when a run fails
        recipe.setup(cfg)
        recipe.train()
    finally:
        recipe.cleanup()
    return recipe.exit_code  # 0, or 143 / 130 after a preemption save (README, "exit codes")


if __name__ == "__main__":
    sys.argv = expand_list_item_overrides(sys.argv)  # `key.N.sub=value` overrides of list items
    sys.exit(recipe_main())
