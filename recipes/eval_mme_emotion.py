"""Evaluate a checkpoint on MME-Emotion: answers, step extraction, judging, the official metrics.

The official pipeline (``docs/mme_emotion.md``; protocol code in ``merr1.components.mme_emotion``):

- A. answers: the model under test answers every sample of every task (``tasks``) in each mode
  (``modes``; slow = think then answer, the default; fast = the assistant turn prefilled with the
  empty reasoning), greedy by default, data-parallel over ranks. The question text is merr1's
  reconstruction (``merr1.components.data.mme_emotion``).
- C. steps: the ``extractor`` backend rewrites every answer as ``<step>Step 1 ... Step N</step>``
  with the official per-task prompt; a request that fails every try gives the step
  ``"Error: <reason>"``, which is kept and judged (official).
- D. judging: the ``judge`` backend scores every step with the official per-task prompt, given up
  to 10 frames at 1 fps (the frame cache), the audio clue and the label; a clip without frames
  is not sent (score null, as the official script does for a missing video); a request that
  fails every try gets score null. Null and unparseable scores are dropped by the metrics.
- E. metrics: per task (each task's official parser) and Overall (all samples pooled, fraction
  parser), written to ``{output_dir}/report.json`` and printed in the paper's Table 2 layout.

Launch (from the repo root; see the configs' headers):
    tune run --nproc_per_node 8 eval_mme_emotion --config qwen2_5_omni/7B_eval_mme_emotion checkpoint_dir=<hf dir>
    tune run eval_mme_emotion --config debug/eval_mme_emotion_tiny      # one CPU process, tiny models

What a demanding user should know:
- Files (all in ``output_dir``): ``answers/<mode>/<TASK>.jsonl`` (stage A, one record per clip,
  appended per batch, resumable like eval_mer's predictions; refuses to resume answers made with
  other settings, ``answers/settings.json``), ``steps/<mode>/<TASK>.json`` and
  ``judged/<mode>/<TASK>.json`` (the official step-file and judge-output layouts, rewritten at
  the end of each stage), ``report.json``. ``python -m merr1.score mme --task overall --judged
  {output_dir}/judged/slow`` re-scores the judged files with the official arithmetic.
- Stages C and D run on rank 0 only, after the other ranks have finished stage A and left; the
  answer model is freed first. Every extractor/judge reply is cached in ``cache_path``, keyed by
  the SHA-256 of the full request (``merr1.components.judge``): a killed run resumes without
  paying any answered request twice, and changing the judge re-sends everything.
- ``resume: false`` deletes the answers, steps and judged files (not the request cache).
- Numbers from different judges or extractors are not comparable (``report.json`` says which
  were used); the local-checkpoint backends make the whole benchmark run offline.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from torchtune import config
from tqdm import tqdm

from merr1.components import distributed, evaluation, hf_checkpoint, mme_emotion
from merr1.components.data.frames import count_frames, png_data_url, read_frames
from merr1.components.generation import SamplingConfig, StopStrings, generate, media_token_ids
from merr1.components.judge import ChatRequest, RequestCache, run_cached
from merr1.components.metric_logging import atomic_write_text, save_config, to_jsonable
from merr1.components.models import resolve_dtype
from merr1.components.tokenizer import stop_token_ids

log = logging.getLogger("merr1.eval_mme_emotion")

MODES = ("slow", "fast")
# Every top-level key the recipe reads; anything else in the config is a typo.
CONFIG_KEYS = {
    "output_dir", "seed", "device", "dtype", "checkpoint_dir", "tokenizer", "model", "data", "tasks", "modes",
    "collator", "num_workers", "batch_size", "max_samples", "sampling", "extractor", "judge", "cache_path", "resume",
}  # fmt: skip
SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "stop_strings"}
# What the stored answers depend on (answers/settings.json).
ANSWER_SETTING_KEYS = ("checkpoint_dir", "tokenizer", "model", "dtype", "seed", "sampling", "data")


def _check_keys(what: str, cfg: DictConfig, expected: set[str]) -> None:
    unknown, missing = sorted(set(cfg.keys()) - expected), sorted(expected - set(cfg.keys()))
    if unknown or missing:
        raise ValueError(f"{what} keys: unknown {unknown}, missing {missing} (recipe reads {sorted(expected)})")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class EvalMMEEmotionRecipe:
    """MME-Emotion stages A (answers), C (steps), D (judge), E (metrics). ``setup``, ``evaluate``, ``cleanup``."""

    def __init__(self, cfg: DictConfig) -> None:
        _check_keys("config", cfg, CONFIG_KEYS)
        _check_keys("sampling", cfg.sampling, SAMPLING_KEYS)
        self._world_size, self._rank = distributed.init_distributed()
        self._is_rank_zero = self._rank == 0
        self._device = distributed.device_for_rank(cfg.device)
        self._dtype = resolve_dtype(cfg.dtype)
        self._output_dir = Path(cfg.output_dir)
        self._seed = distributed.set_seed(cfg.seed, self._rank)
        self._tasks = [mme_emotion.check_task(t) for t in cfg.tasks]
        self._modes = list(cfg.modes)
        if not self._tasks or len(set(self._tasks)) != len(self._tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct tasks of {list(mme_emotion.TASKS)}")
        if not self._modes or len(set(self._modes)) != len(self._modes) or set(self._modes) - set(MODES):
            raise ValueError(f"modes must be a non-empty list of distinct modes of {list(MODES)}, got {self._modes}")
        if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {cfg.batch_size!r}")
        if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {cfg.num_workers!r}")
        if cfg.max_samples is not None and (not isinstance(cfg.max_samples, int) or cfg.max_samples < 1):
            raise ValueError(f"max_samples must be a positive integer or null (all), got {cfg.max_samples!r}")
        self._batch_size, self._max_samples = cfg.batch_size, cfg.max_samples
        self._resume = bool(cfg.resume)
        self._cache_path = Path(cfg.cache_path)
        self._runtime: dict[str, Any] = {}

    # ------------------------------------------------------------------------------- setup
    def setup(self, cfg: DictConfig) -> None:
        cfg_dict = OmegaConf.to_container(cfg, resolve=True)
        if self._is_rank_zero:
            self._output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg_dict, self._output_dir / "config.yaml")
        self._tokenizer = config.instantiate(cfg.tokenizer)
        # Data first: a missing file or a bad row (strict) fails before the model is built.
        self._data = {(task, mode): config.instantiate(cfg.data, self._tokenizer, task=task, mode=mode)
                      for task in self._tasks for mode in self._modes}  # fmt: skip
        self._backends = self._setup_backends(cfg)
        self._answer_settings = {key: cfg_dict[key] for key in ANSWER_SETTING_KEYS}
        self._check_settings(self._answer_settings)
        self._collator = config.instantiate(cfg.collator, self._tokenizer)
        self._num_workers = cfg.num_workers
        self._model = self._setup_model(cfg)
        tok, stops = self._tokenizer, list(cfg.sampling.stop_strings)
        self._sampling = SamplingConfig(
            max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
            top_p=cfg.sampling.top_p, top_k=cfg.sampling.top_k, eos_token_ids=stop_token_ids(tok),
            pad_token_id=tok.pad_token_id, suppress_token_ids=media_token_ids(self._model.config),
            stop_strings=StopStrings.from_tokenizer(tok, stops) if stops else None,
        )  # fmt: skip
        self._generator = torch.Generator(self._device).manual_seed(self._seed)
        if self._is_rank_zero:
            sizes = ", ".join(f"{t}: {len(self._data[t, self._modes[0]])}" for t in self._tasks)
            log.info("MME-Emotion: %s; modes %s; %d ranks; %.1fM parameters", sizes, self._modes, self._world_size,
                     sum(p.numel() for p in self._model.parameters()) / 1e6)  # fmt: skip

    def _setup_backends(self, cfg: DictConfig) -> dict[str, Any]:
        """Rank 0 builds the extractor and judge backends now, so that a bad component or a
        missing API key fails before stage A (local models are loaded only when first used)."""
        backends, problem = {}, None
        if self._is_rank_zero:
            try:
                backends = {"C": config.instantiate(cfg.extractor), "D": config.instantiate(cfg.judge)}
            except (ValueError, TypeError, ImportError, AttributeError) as e:
                problem = f"extractor/judge config: {type(e).__name__}: {e}"
        problem = self._broadcast(problem)
        if problem:
            raise ValueError(problem)
        return backends

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Stored answers must come from the same settings; ``resume: false`` deletes old outputs."""
        problem = None
        if self._is_rank_zero:
            if not self._resume:
                for folder in ("answers", "steps", "judged"):
                    shutil.rmtree(self._output_dir / folder, ignore_errors=True)
            path = self._output_dir / "answers" / "settings.json"
            old = json.loads(path.read_text()) if path.is_file() else settings
            changed = [f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in ANSWER_SETTING_KEYS
                       if old.get(k) != settings[k]]  # fmt: skip
            if changed:
                problem = (f"{path.parent} holds answers made with other settings ({'; '.join(changed)}): use another "
                           f"output_dir, or resume=false to delete them and start over")  # fmt: skip
            else:
                _write_json(path, settings)
        problem = self._broadcast(problem)
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------------------------- stages
    def evaluate(self) -> None:
        """Stage A on every rank; then rank 0 alone runs C, D and E."""
        for task in self._tasks:
            for mode in self._modes:
                self._answer(task, mode)
        self._model = None
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        distributed.barrier()
        distributed.destroy()  # the other ranks are done; rank 0 needs no collective from here on
        if not self._is_rank_zero:
            return
        cache = RequestCache(self._cache_path)
        steps = self._run_stage("C", cache, self._extract_steps, "steps")
        judged = self._run_stage("D", cache, lambda b, c, t, m: self._judge(b, c, t, m, steps[t, m]), "judged")
        report = self._report(judged)
        atomic_write_text(self._output_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
        print(mme_emotion.format_report(report), flush=True)
        log.info("report: %s", self._output_dir / "report.json")

    def _answer(self, task: str, mode: str) -> None:
        """Stage A for one task and mode: generate the missing answers (data parallel), rank 0 appends."""
        data = self._data[task, mode]
        path = self._output_dir / "answers" / mode / f"{task}.jsonl"
        names = data.names[: self._max_samples]
        done = []
        if self._is_rank_zero:
            done = list(evaluation.load_records(path, set(data.names), ("name", "model_response")))
        done_set = set(self._broadcast(done))
        missing = [n for n in names if n not in done_set]
        if not missing:
            return
        index = {n: i for i, n in enumerate(data.names)}
        shard = [index[n] for n in missing[self._rank :: self._world_size]]
        num_steps = math.ceil(math.ceil(len(missing) / self._world_size) / self._batch_size)
        batches = iter(DataLoader(Subset(data, shard), batch_size=self._batch_size, shuffle=False,
                                  collate_fn=self._collator, num_workers=self._num_workers))  # fmt: skip
        progress = tqdm(total=len(missing), desc=f"A answers {task} {mode}", disable=not self._is_rank_zero,
                        dynamic_ncols=True)  # fmt: skip
        start = time.perf_counter()
        for _ in range(num_steps):
            batch = next(batches, None)
            records = self._predict_batch(batch) if batch is not None else []
            gathered = [r for part in self._gather(records) for r in part]
            if self._is_rank_zero:
                evaluation.append_records(path, gathered)
                progress.update(len(gathered))
        progress.close()
        seconds = time.perf_counter() - start
        self._runtime[f"answers.{task}.{mode}"] = {"num_generated": len(missing), "seconds": seconds}

    @torch.inference_mode()
    def _predict_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        prompt_ids = batch["prompt_ids"].to(self._device)  # [B, P] left-padded
        prompt_mask = batch["prompt_mask"].to(self._device)  # [B, P]
        media = {k: v.to(self._device) for k, v in batch["media"].items()} if batch["media"] else None
        rollouts = generate(
            self._model, prompt_ids, prompt_mask, self._sampling, media=media, generator=self._generator
        )
        response_ids, response_mask = rollouts.response_ids.cpu(), rollouts.response_mask.cpu()
        records = []
        for b, name in enumerate(batch["names"]):
            text = self._tokenizer.decode(response_ids[b][response_mask[b]], skip_special_tokens=True)
            records.append({"name": name, "video_id": name, "ground_truth": batch["label"][b],
                            "model_response": batch["response_prefix"][b] + text,
                            "finished": bool(rollouts.finished[b]),
                            "num_response_tokens": int(response_mask[b].sum())})  # fmt: skip
        return records

    def _run_stage(self, stage: str, cache: RequestCache, run, folder: str) -> dict:
        """Run ``run(backend, cache, task, mode)`` with the stage's backend for every task and
        mode, write each result list to ``{folder}/<mode>/<TASK>.json``, free the backend."""
        backend = self._backends[stage]
        self._runtime[f"backend.{stage}"] = backend.describe()
        start, results = time.perf_counter(), {}
        try:
            for mode in self._modes:
                for task in self._tasks:
                    results[task, mode] = run(backend, cache, task, mode)
                    _write_json(self._output_dir / folder / mode / f"{task}.json", results[task, mode])
        finally:
            backend.close()
        self._runtime[f"stage.{stage}.seconds"] = time.perf_counter() - start
        return results

    def _answers(self, task: str, mode: str) -> list[dict[str, Any]]:
        data = self._data[task, mode]
        path = self._output_dir / "answers" / mode / f"{task}.jsonl"
        records = evaluation.load_records(path, set(data.names), ("name", "model_response"))
        names = data.names[: self._max_samples]
        missing = [n for n in names if n not in records]
        if missing:
            raise RuntimeError(f"{path} lacks {len(missing)} answers after stage A (e.g. {missing[:3]})")
        return [records[n] for n in names]

    def _extract_steps(self, backend, cache: RequestCache, task: str, mode: str) -> list[dict[str, Any]]:
        """Stage C: the official step-file records of one task and mode."""
        answers = self._answers(task, mode)
        def request(a: dict) -> ChatRequest:
            messages = mme_emotion.extraction_messages(task, a["model_response"])
            return ChatRequest(messages, mme_emotion.EXTRACTION_PARAMS, mme_emotion.EXTRACTION_RETRY[task],
                               tag=f"steps/{task}/{mode}/{a['video_id']}")  # fmt: skip

        requests = [lambda a=a: request(a) for a in answers]
        replies = run_cached(backend, requests, cache, desc=f"C steps {task} {mode}")
        return [{"video_id": a["video_id"], "ground_truth": a["ground_truth"], "model_response": a["model_response"],
                 "step": r.text if r.error is None else mme_emotion.extraction_error_step(r.error)}
                for a, r in zip(answers, replies)]  # fmt: skip

    def _judge(self, backend, cache: RequestCache, task: str, mode: str, steps: list[dict]) -> list[dict[str, Any]]:
        """Stage D: the official judge-output records of one task and mode (score null = dropped)."""
        data = self._data[task, mode]
        clues = {s.video_id: s.audio_clue for s in data.samples}
        frames = {s["video_id"]: count_frames(data.frames_dir, s["video_id"]) for s in steps}
        sendable = [s for s in steps if frames[s["video_id"]]]  # no frame cache entry or no frame: not sent

        def request(s: dict) -> ChatRequest:
            urls = [png_data_url(png) for png in read_frames(data.frames_dir, s["video_id"])]
            messages = mme_emotion.judge_messages(task, clues[s["video_id"]], s["ground_truth"], s["step"], urls)
            return ChatRequest(messages, mme_emotion.JUDGE_PARAMS, mme_emotion.JUDGE_RETRY[task],
                               tag=f"judge/{task}/{mode}/{s['video_id']}")  # fmt: skip

        sent = run_cached(backend, [lambda s=s: request(s) for s in sendable], cache, desc=f"D judge {task} {mode}")
        replies = dict(zip((s["video_id"] for s in sendable), sent))
        self._runtime[f"judge_failures.{task}.{mode}"] = {
            "no_frames": sum(frames[s["video_id"]] is None for s in steps),
            "no_decodable_frame": sum(frames[s["video_id"]] == 0 for s in steps),
            "request_failed": sum(r.error is not None for r in replies.values()),
        }
        out = []
        for s in steps:
            reply = replies.get(s["video_id"])
            ok = reply is not None and reply.error is None
            out.append({**s, "score": reply.text if ok else None, "input_tokens": reply.input_tokens if ok else 0,
                        "output_tokens": reply.output_tokens if ok else 0})  # fmt: skip
        return out

    # ------------------------------------------------------------------------------- report
    def _report(self, judged: dict) -> dict[str, Any]:
        """Stage E: per-task and pooled official metrics per mode, plus the settings used."""
        modes = {}
        for mode in self._modes:
            tasks = {}
            for task in self._tasks:
                path = self._output_dir / "judged" / mode / f"{task}.json"
                scores = mme_emotion.score_task(judged[task, mode], task, source=str(path))
                tasks[task] = {**scores, "num_samples": len(judged[task, mode]),
                               "num_bad_rows": len(self._data[task, mode].bad_rows),
                               "judge_failures": self._runtime[f"judge_failures.{task}.{mode}"]}  # fmt: skip
            overall = mme_emotion.score_overall({t: judged[t, mode] for t in self._tasks})
            modes[mode] = {"tasks": tasks, "overall": overall, "task_mean": mme_emotion.task_mean(tasks)}
        judge, extractor = self._runtime["backend.D"], self._runtime["backend.C"]
        report = {
            "benchmark": "MME-Emotion",
            "modes": modes,
            "judge": judge,
            "extractor": extractor,
            "judge_name": f"{judge['backend']} {judge.get('model', '')}".strip(),
            "extractor_name": f"{extractor['backend']} {extractor.get('model', '')}".strip(),
            "answers": {**self._answer_settings, "modes": self._modes},
            "comparability": mme_emotion.COMPARABILITY_NOTE,
            "runtime": {"num_ranks": self._world_size,
                        **{k: v for k, v in self._runtime.items() if k.startswith(("answers.", "stage."))}},
        }  # fmt: skip
        if judge["backend"] == "local":
            report["judge_name"] = f"local {judge['model']['_component_']}"
        if extractor["backend"] == "local":
            report["extractor_name"] = f"local {extractor['model']['_component_']}"
        return to_jsonable(report)

    def cleanup(self) -> None:
        distributed.destroy()

    # --------------------------------------------------------------------------------------------
    # Copied from recipes/eval_mer.py (model build, broadcast, gather). Issue 11 moves these into
    # shared components; replace this block by those calls when it lands.
    def _setup_model(self, cfg: DictConfig) -> torch.nn.Module:
        # Skeleton on every rank; rank 0 reads the weights and broadcasts them (no FSDP: each rank
        # keeps the whole model for its own shard of the data).
        model = config.instantiate(cfg.model, dtype=self._dtype, device="meta")
        if cfg.checkpoint_dir is not None:
            hf_checkpoint.load_hf_checkpoint(model, cfg.checkpoint_dir, self._device)
        else:  # random initialisation from the builder's seed (tiny models, smoke tests)
            full = None
            if self._is_rank_zero:
                full = config.instantiate(cfg.model, dtype=self._dtype, device="cpu").state_dict()
            hf_checkpoint.load_full_state_dict(model, full, self._device)
        model.eval()
        model.requires_grad_(False)
        return model

    def _broadcast(self, obj: Any) -> Any:
        if self._world_size == 1:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def _gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` on rank 0 (in rank order); ``[]`` on the other ranks."""
        if self._world_size == 1:
            return [obj]
        out = [None] * self._world_size if self._is_rank_zero else None
        dist.gather_object(obj, out, dst=0)
        return out if self._is_rank_zero else []


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    recipe = EvalMMEEmotionRecipe(cfg)
    try:
        recipe.setup(cfg)
        recipe.evaluate()
    finally:
        recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
