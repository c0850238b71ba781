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

import functools
import gc
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from torchtune import config

from merr1.components import distributed, evaluation, mme_emotion, training
from merr1.components.config_checks import Above, AtLeast, Component, check_config, expand_list_item_overrides
from merr1.components.data.frames import count_frames, png_data_url, read_frames
from merr1.components.generation import SamplingConfig, StopStrings, generate, media_token_ids
from merr1.components.judge import ChatRequest, RequestCache, run_cached
from merr1.components.metric_logging import atomic_write_text, progress_bar, save_config, to_jsonable
from merr1.components.models import resolve_dtype
from merr1.components.tokenizer import stop_token_ids

log = logging.getLogger("merr1.eval_mme_emotion")

MODES = ("slow", "fast")
# Every key the recipe reads, with what it accepts; checked before anything is built (issue 11).
CONFIG_SPEC = {
    "output_dir": str,
    "seed": int,
    "device": Literal["cpu", "cuda", "auto"],
    "dtype": Literal["fp32", "bf16"],
    "checkpoint_dir": str | None,
    "tokenizer": Component(),
    "model": Component(keywords=("dtype", "device")),
    "data": Component(positional=1, keywords=("task", "mode")),  # (tokenizer, task=..., mode=...)
    "tasks": list[Literal[mme_emotion.TASKS]],
    "modes": list[Literal[MODES]],
    "collator": Component(positional=1),  # (tokenizer)
    "num_workers": Annotated[int, AtLeast(0)],
    "batch_size": Annotated[int, AtLeast(1)],
    "max_samples": Annotated[int, AtLeast(1)] | None,
    "sampling": {"max_new_tokens": Annotated[int, AtLeast(1)], "temperature": Annotated[float, AtLeast(0)],
                 "top_p": Annotated[float, Above(0)], "top_k": Annotated[int, AtLeast(0)],
                 "stop_strings": list[str] | None},  # fmt: skip
    "extractor": Component(),
    "judge": Component(),
    "cache_path": str,
    "resume": bool,
}
# What the stored answers depend on (answers/settings.json).
ANSWER_SETTING_KEYS = ("checkpoint_dir", "tokenizer", "model", "dtype", "seed", "sampling", "data")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class EvalMMEEmotionRecipe:
    """MME-Emotion stages A (answers), C (steps), D (judge), E (metrics). ``setup``, ``evaluate``, ``cleanup``."""

    def __init__(self, cfg: DictConfig) -> None:
        check_config(cfg, CONFIG_SPEC)
        process = training.init_process(cfg.device, cfg.seed)  # seeds seed + rank
        self._device, self._world_size, self._rank = process.device, process.world_size, process.rank
        self._is_rank_zero = process.is_rank_zero
        self._seed = cfg.seed + self._rank  # sampling (temperature > 0) draws from a per-rank generator
        self._dtype = resolve_dtype(cfg.dtype)
        self._output_dir = Path(cfg.output_dir)
        self._tasks = [mme_emotion.check_task(t) for t in cfg.tasks]
        self._modes = list(cfg.modes)
        if not self._tasks or len(set(self._tasks)) != len(self._tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct tasks of {list(mme_emotion.TASKS)}")
        if not self._modes or len(set(self._modes)) != len(self._modes) or set(self._modes) - set(MODES):
            raise ValueError(f"modes must be a non-empty list of distinct modes of {list(MODES)}, got {self._modes}")
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
        problem = distributed.broadcast_object(problem)
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
        problem = distributed.broadcast_object(problem)
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
        done_set = set(distributed.broadcast_object(done))
        missing = [n for n in names if n not in done_set]
        if not missing:
            return
        index = {n: i for i, n in enumerate(data.names)}
        shard = [index[n] for n in missing[self._rank :: self._world_size]]
        num_steps = math.ceil(math.ceil(len(missing) / self._world_size) / self._batch_size)
        batches = iter(DataLoader(Subset(data, shard), batch_size=self._batch_size, shuffle=False,
                                  collate_fn=self._collator, num_workers=self._num_workers))  # fmt: skip
        progress = progress_bar(len(missing), f"A answers {task} {mode}", disable=not self._is_rank_zero)  # fmt: skip
        start = time.perf_counter()
        for _ in range(num_steps):
            batch = next(batches, None)
            records = self._predict_batch(batch) if batch is not None else []
            gathered = [r for part in distributed.gather_objects(records) for r in part]
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

    def _setup_model(self, cfg: DictConfig) -> torch.nn.Module:
        # No FSDP: each rank keeps the whole model (stored in ``dtype``) for its own shard of the
        # data; rank 0 reads the weights and broadcasts them.
        spec = training.ModelSpec(functools.partial(config.instantiate, cfg.model), cfg.checkpoint_dir, self._dtype)
        return training.build_model(spec, role="eval", device=self._device, sharded=False)


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
    sys.argv = expand_list_item_overrides(sys.argv)  # `key.N.sub=value` overrides of list items
    sys.exit(recipe_main())
