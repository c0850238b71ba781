"""Evaluate a checkpoint on MER-UniBench-format data: slow vs fast thinking, scores and diagnostics.

For every data set of the config and both modes (METHOD section 1) the model answers every
sample: slow = think then answer; fast = the assistant turn prefilled with the empty reasoning
``<think></think><answer>``. Greedy by default. Then, on rank 0: the MER-UniBench scores of each
set and mode (METHOD section 3), the benchmark means (section 6), and the paper's slow-vs-fast
diagnostics (section 6; definitions in ``merr1.components.diagnostics``), written to
``{output_dir}/report.json`` and printed as tables.

Launch (from the repo root; see the configs' headers):
    tune run --nproc_per_node 8 eval_mer --config qwen2_5_omni/7B_eval checkpoint_dir=<hf dir>
    tune run eval_mer --config debug/eval_tiny checkpoint_dir=outputs/sft_tiny/hf   # one CPU process

What a demanding user should know:
- Data parallel, no FSDP: every rank holds the whole model (the 7B Thinker is ~17 GB in bf16, so
  one process per GPU), rank 0 reads the checkpoint and broadcasts it. Each rank answers a strided
  shard of the samples still missing; after every batch the ranks' records are gathered to
  rank 0, which appends them to ``{output_dir}/predictions/<dataset>.<mode>.jsonl`` (flushed and
  fsynced). Only rank 0 touches the output folder.
- Resume: a rerun with the same ``output_dir`` reads the prediction files back, keeps every
  well-formed record of a known name (a torn last line, duplicates and stale names are dropped
  with a warning) and generates only the missing names (``resume: false`` deletes them and
  starts over). Scores are always recomputed from the files, so a finished run can be re-scored
  (or given more data sets) for free. The run refuses to resume answers made with another model
  config, ``checkpoint_dir``, dtype, seed, sampling or data set config
  (``predictions/settings.json``); a re-trained checkpoint at the same path is not detected.
- A record: ``name``, ``response`` (the full response: prefill + generated text, special tokens
  removed), ``answer`` (``extract_answer`` of the response, null without one), ``words``
  (its parsed emotion words), ``finished`` (stopped at ``</answer>`` or EOS within
  ``max_new_tokens``), ``num_response_tokens`` and ``answer_start_log_conf`` (the 31 category
  log-confidences at the answer start, flat over the 5 wheels; null for sentiment sets, when
  diagnostics are off, or when a slow response never writes the answer tag).
- Greedy decoding gives the same answers for any number of ranks up to float round-off of
  batching (padding); with ``batch_size: 1`` they are identical. Sampling
  (``sampling.temperature > 0``) draws from a per-rank generator seeded ``seed + rank``.
- Generation stops at a stop string (``</answer>``, matched on text) or EOS (the tokenizer's EOS,
  ``<|im_end|>`` and the pad token ``<|endoftext|>``); the Thinker's media tokens are never
  generated.
- Sentiment sets: after generation rank 0 frees the model, maps each answer's emotion words to
  positive/negative/neutral with ``sentiment_mapper`` (the protocol's LLM, or the documented
  lexicon fallback; ``report.json`` says which), caches the mapping in
  ``predictions/<dataset>.<mode>.sentiment.jsonl`` and scores WAF.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import math
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from torchtune import config

from merr1.components import diagnostics, distributed, evaluation, training
from merr1.components.calibration import CategoryFirstTokens, category_log_confidence
from merr1.components.config_checks import Above, AtLeast, Component, check_config, expand_list_item_overrides
from merr1.components.data.collate import pad_sequences
from merr1.components.early_exit import EarlyExitRecord, early_exit_generate, summarize_early_exit
from merr1.components.emotion_wheel import ANSWER_FALLBACKS, extract_answer, parse_emotion_list
from merr1.components.generation import SamplingConfig, StopStrings, generate, media_token_ids
from merr1.components.metric_logging import atomic_write_text, progress_bar, save_config, to_jsonable
from merr1.components.models import is_thinker, logits_only_at, resolve_dtype
from merr1.components.tokenizer import stop_token_ids

log = logging.getLogger("merr1.eval")

MODES = evaluation.MODES
# Every key the recipe reads, with what it accepts; checked before anything is built (issue 11).
CONFIG_SPEC = {
    "output_dir": str,
    "seed": int,
    "device": Literal["cpu", "cuda", "auto"],
    "dtype": Literal["fp32", "bf16"],
    "checkpoint_dir": str | None,
    "tokenizer": Component(),
    "model": Component(keywords=("dtype", "device")),
    "datasets": [Component(positional=1, keywords=("mode",))],  # (tokenizer, mode=slow|fast)
    "collator": Component(positional=1),  # (tokenizer)
    "num_workers": Annotated[int, AtLeast(0)],
    "batch_size": Annotated[int, AtLeast(1)],
    "max_samples": Annotated[int, AtLeast(1)] | None,
    "sampling": {"max_new_tokens": Annotated[int, AtLeast(1)], "temperature": Annotated[float, AtLeast(0)],
                 "top_p": Annotated[float, Above(0)], "top_k": Annotated[int, AtLeast(0)],
                 "stop_strings": list[str]},  # fmt: skip
    "answer_fallback": Literal[ANSWER_FALLBACKS],
    "diagnostics": {"enabled": bool, "answer_tag": str, "num_hard_negatives": Annotated[int, AtLeast(1)]},
    # VideoAuto-R1 inference in slow mode (merr1.components.early_exit): answer a1, stop when confident.
    "early_exit": {"enabled": bool, "threshold": Annotated[float, Above(0)], "answer_max_new_tokens": Annotated[int, AtLeast(1)],
                   "decode_all": bool},  # fmt: skip
    "sentiment_mapper": Component(),
    "resume": bool,
}


class EvalRecipe:
    """Slow/fast generation, scores and diagnostics. ``setup``, ``evaluate``, ``cleanup``."""

    def __init__(self, cfg: DictConfig) -> None:
        check_config(cfg, CONFIG_SPEC)
        if not cfg.datasets:
            raise ValueError("datasets: give at least one evaluation data set")
        process = training.init_process(cfg.device, cfg.seed)  # seeds seed + rank
        self._device, self._world_size, self._rank = process.device, process.world_size, process.rank
        self._is_rank_zero = process.is_rank_zero
        self._seed = cfg.seed + self._rank  # sampling (temperature > 0) draws from a per-rank generator
        self._dtype = resolve_dtype(cfg.dtype)
        self._output_dir = Path(cfg.output_dir)
        self._batch_size = cfg.batch_size
        self._max_samples = cfg.max_samples
        self._answer_fallback = cfg.answer_fallback
        self._resume = bool(cfg.resume)
        self._diagnostics = bool(cfg.diagnostics.enabled)
        self._answer_tag = cfg.diagnostics.answer_tag
        self._num_hard_negatives = cfg.diagnostics.num_hard_negatives
        self._early_exit = OmegaConf.to_container(cfg.early_exit) if cfg.early_exit.enabled else None
        self._runtime: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------------------- setup
    def setup(self, cfg: DictConfig) -> None:
        cfg_dict = OmegaConf.to_container(cfg, resolve=True)
        if self._is_rank_zero:
            self._output_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg_dict, self._output_dir / "config.yaml")
        self._tokenizer = config.instantiate(cfg.tokenizer)
        # Data first: a missing file or a bad row (strict) fails before the model is built.
        self._datasets = self._setup_datasets(cfg)
        self._check_settings(evaluation.generation_settings(cfg_dict, list(self._datasets)))
        self._collator = config.instantiate(cfg.collator, self._tokenizer)
        self._num_workers = cfg.num_workers
        self._sentiment_mapper = config.instantiate(cfg.sentiment_mapper)
        self._model = self._setup_model(cfg)
        tok = self._tokenizer
        self._sampling = SamplingConfig(
            max_new_tokens=cfg.sampling.max_new_tokens,
            temperature=cfg.sampling.temperature,
            top_p=cfg.sampling.top_p,
            top_k=cfg.sampling.top_k,
            eos_token_ids=stop_token_ids(tok),
            pad_token_id=tok.pad_token_id,
            stop_strings=StopStrings.from_tokenizer(tok, list(cfg.sampling.stop_strings)),
            suppress_token_ids=media_token_ids(self._model.config),
        )
        self._generator = torch.Generator(self._device).manual_seed(self._seed)
        self._table = CategoryFirstTokens(self._tokenizer) if self._diagnostics else None
        if self._is_rank_zero:
            sets = ", ".join(f"{n}: {d['task']}, {len(d['names'])}" for n, d in self._datasets.items())
            log.info(
                "eval: %d data sets (%s), %d ranks, %.1fM parameters, dtype %s, device %s, %s decoding",
                len(self._datasets), sets,
                self._world_size, sum(p.numel() for p in self._model.parameters()) / 1e6, cfg.dtype, self._device,
                "greedy" if self._sampling.temperature == 0 else f"temperature {self._sampling.temperature}",
            )  # fmt: skip

    def _setup_datasets(self, cfg: DictConfig) -> dict[str, dict[str, Any]]:
        """name -> {"task", "slow"/"fast" datasets, "names" (evaluated, in order), "labels", bad rows}."""
        out: dict[str, dict[str, Any]] = {}
        for ds_cfg in cfg.datasets:
            by_mode = {mode: config.instantiate(ds_cfg, self._tokenizer, mode=mode) for mode in MODES}
            slow, fast = by_mode["slow"], by_mode["fast"]
            name = slow.name
            if name in out or not name or "/" in name or name.startswith("."):
                raise ValueError(f"data set names must be unique file-name-safe strings, got {name!r} "
                                 f"(set `name` in each data set's config)")  # fmt: skip
            fast_names = set(fast.names)
            names = [n for n in slow.names if n in fast_names]  # a prompt may be too long in one mode only
            # Bad rows of either mode, each counted once (most are bad in both modes).
            bad = Counter((r.name, r.kind, r.detail) for r in slow.bad_rows) | Counter(
                (r.name, r.kind, r.detail) for r in fast.bad_rows
            )
            kinds = Counter()
            for (_, kind, _), count in bad.items():
                kinds[kind] += count
            out[name] = {
                "task": slow.task,
                "benchmark": slow.benchmark,  # official MER-UniBench id (Table 1) or None
                **by_mode,
                "names": names[: self._max_samples],
                "labels": {r.name: r.label for r in slow.records},
                "num_bad_rows": bad.total(),
                "bad_rows_by_kind": dict(sorted(kinds.items())),
            }
        return out

    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Stored predictions must come from the same settings (``evaluation`` module docstring).

        Rank 0 decides (and with ``resume: false`` deletes the old predictions); every rank raises.
        """
        folder = self._output_dir / "predictions"
        problem = None
        if self._is_rank_zero:
            if not self._resume:
                shutil.rmtree(folder, ignore_errors=True)
            path = folder / evaluation.SETTINGS_FILE
            old = {"generation": settings["generation"], "datasets": {}}
            if path.is_file():
                old = json.loads(path.read_text())
            mismatch = evaluation.settings_mismatch(old, settings)
            if mismatch:
                problem = (f"{folder} holds answers made with other settings ({'; '.join(mismatch)}): use another "
                           f"output_dir, or resume=false to delete them and start over")  # fmt: skip
            else:
                folder.mkdir(parents=True, exist_ok=True)
                merged = {"generation": settings["generation"], "datasets": {**old["datasets"], **settings["datasets"]}}
                atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
        problem = distributed.broadcast_object(problem)
        if problem:
            raise ValueError(problem)

    def _setup_model(self, cfg: DictConfig) -> torch.nn.Module:
        # No FSDP: each rank keeps the whole model (stored in ``dtype``) for its own shard of the
        # data; rank 0 reads the weights and broadcasts them.
        spec = training.ModelSpec(functools.partial(config.instantiate, cfg.model), cfg.checkpoint_dir, self._dtype)
        return training.build_model(spec, role="eval", device=self._device, sharded=False)

    # ------------------------------------------------------------------------------- generation
    def evaluate(self) -> None:
        """Generate what is missing, then (rank 0) map sentiments, score and report."""
        for name, entry in self._datasets.items():
            for mode in MODES:
                self._generate(name, entry, mode)
        self._model = None  # free the Thinker before a sentiment LLM is loaded
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        if self._is_rank_zero:
            report = self._report()
            atomic_write_text(self._output_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
            print(evaluation.format_tables(report), flush=True)
            log.info("report: %s", self._output_dir / "report.json")

    def _generate(self, name: str, entry: dict[str, Any], mode: str) -> None:
        path = evaluation.prediction_path(self._output_dir, name, mode)
        names = entry["names"]
        done: list[str] = []
        if self._is_rank_zero:
            done = list(evaluation.load_records(path, set(entry[mode].names), ("name", "response", "answer")))
        done_set = set(distributed.broadcast_object(done))
        missing = [n for n in names if n not in done_set]
        if self._is_rank_zero and done_set:
            log.info("%s %s: %d of %d answers found in %s, generating %d", name, mode,
                     len(names) - len(missing), len(names), path, len(missing))  # fmt: skip
        if not missing:
            return
        index = {n: i for i, n in enumerate(entry[mode].names)}
        shard = [index[n] for n in missing[self._rank :: self._world_size]]
        num_steps = math.ceil(math.ceil(len(missing) / self._world_size) / self._batch_size)
        loader = DataLoader(Subset(entry[mode], shard), batch_size=self._batch_size, shuffle=False,
                            collate_fn=self._collator, num_workers=self._num_workers)  # fmt: skip
        batches = iter(loader)
        progress = progress_bar(len(missing), f"{name} {mode}", disable=not self._is_rank_zero)
        start, num_tokens = time.perf_counter(), 0
        for _ in range(num_steps):
            batch = next(batches, None)
            records = self._predict_batch(batch, entry, mode) if batch is not None else []
            gathered = [r for part in distributed.gather_objects(records) for r in part]
            if self._is_rank_zero:
                evaluation.append_records(path, gathered)
                num_tokens += sum(r["num_response_tokens"] for r in gathered)
                progress.update(len(gathered))
        progress.close()
        seconds = time.perf_counter() - start
        self._runtime[f"{name}.{mode}"] = {"num_generated": len(missing), "seconds": seconds,
                                           "samples_per_second": len(missing) / seconds,
                                           "tokens_per_second": num_tokens / seconds}  # fmt: skip
        if self._is_rank_zero:
            log.info("%s %s: %d answers in %.1f s (%.2f samples/s, %.0f generated tokens/s over %d ranks)",
                     name, mode, len(missing), seconds, len(missing) / seconds, num_tokens / seconds,
                     self._world_size)  # fmt: skip

    @torch.inference_mode()
    def _predict_batch(self, batch: dict[str, Any], entry: dict[str, Any], mode: str) -> list[dict[str, Any]]:
        prompt_ids = batch["prompt_ids"].to(self._device)  # [B, P] left-padded
        prompt_mask = batch["prompt_mask"].to(self._device)  # [B, P]
        media = {k: v.to(self._device) for k, v in batch["media"].items()} if batch["media"] else None
        if mode == "slow" and self._early_exit is not None:
            return self._predict_early_exit(batch["names"], prompt_ids, prompt_mask, media)
        rollouts = generate(
            self._model, prompt_ids, prompt_mask, self._sampling, media=media, generator=self._generator
        )
        if self._diagnostics and entry["task"] != "sentiment":
            confidences = self._answer_start_confidence(prompt_ids, prompt_mask, media, rollouts, mode)
        else:
            confidences = [None] * len(prompt_ids)
        fmt = entry[mode].encoder.format
        scheme = fmt.answer_scheme if mode == "slow" else fmt.fast_answer_scheme
        response_ids, response_mask = rollouts.response_ids.cpu(), rollouts.response_mask.cpu()
        records = []
        for b, name in enumerate(batch["names"]):
            generated = self._tokenizer.decode(response_ids[b][response_mask[b]], skip_special_tokens=True)
            response = batch["response_prefix"][b] + generated
            answer = extract_answer(response, scheme, self._answer_fallback)
            records.append({
                "name": name,
                "response": response,
                "answer": answer,
                "words": parse_emotion_list(answer),
                "finished": bool(rollouts.finished[b]),
                "num_response_tokens": int(response_mask[b].sum()),
                "answer_start_log_conf": confidences[b],
            })  # fmt: skip
        return records

    def _predict_early_exit(self, names: list[str], prompt_ids, prompt_mask, media) -> list[dict[str, Any]]:
        """VideoAuto-R1 inference (``early_exit`` config): the record's answer is a1 when a1 is
        confident, else a2; the ``early_exit`` field keeps a1, a2, the confidence and the tokens."""
        settings = {k: v for k, v in self._early_exit.items() if k != "enabled"}
        results = early_exit_generate(
            self._model, self._tokenizer, prompt_ids, prompt_mask, self._sampling, media=media,
            generator=self._generator, **settings,
        )  # fmt: skip
        return [
            {"name": name, "response": r.response, "answer": r.answer or None, "words": parse_emotion_list(r.answer),
             "finished": r.finished, "num_response_tokens": r.num_tokens, "answer_start_log_conf": None,
             "early_exit": dataclasses.asdict(r)}
            for name, r in zip(names, results)
        ]  # fmt: skip

    def _answer_start_confidence(self, prompt_ids, prompt_mask, media, rollouts, mode) -> list[list[float] | None]:
        """conf(c) at the answer start of each row (diagnostics module docstring): one forward.

        Slow: context = prompt + the response up to the token that starts the answer; fast: the
        prefilled prompt itself (it ends where the answer starts, on a token boundary).
        """
        contexts, spellings, found = [], [], []
        for b in range(len(prompt_ids)):
            prompt = prompt_ids[b][prompt_mask[b].bool()]
            start: tuple[int, str] | None = (0, "")
            response = prompt[:0]
            if mode == "slow":
                response = rollouts.response_ids[b][rollouts.response_mask[b]]
                start = diagnostics.answer_start(response.tolist(), self._table.token_bytes, self._answer_tag)
            t, glue = start or (0, "")
            contexts.append(torch.cat([prompt, response[:t]]))
            spellings.append(self._table.spelling_index(glue))
            found.append(start is not None)
        ids = pad_sequences(contexts, self._tokenizer.pad_token_id, "left")  # [B, L]
        mask = pad_sequences([torch.ones_like(c) for c in contexts], 0, "left")  # [B, L]
        last = torch.zeros_like(mask, dtype=torch.bool)
        last[:, -1] = True
        kwargs = dict(media or {})
        if not is_thinker(self._model):  # text-only LMs need explicit positions for left padding
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
        with logits_only_at(self._model, last):
            logits = self._model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits  # [B, V]
        conf = category_log_confidence(logits, torch.tensor(spellings), self._table)  # [B, C]
        return [row if ok else None for row, ok in zip(conf.tolist(), found)]

    # ------------------------------------------------------------------------------- report
    def _records(self, name: str, entry: dict[str, Any], mode: str) -> dict[str, dict]:
        path = evaluation.prediction_path(self._output_dir, name, mode)
        records = evaluation.load_records(path, set(entry[mode].names), ("name", "response", "answer"))
        missing = [n for n in entry["names"] if n not in records]
        if missing:
            raise RuntimeError(f"{path} lacks {len(missing)} answers after generation (e.g. {missing[:3]})")
        return {n: records[n] for n in entry["names"]}

    def _sentiments(self, name: str, mode: str, records: dict[str, dict]) -> dict[str, str]:
        """name -> mapped sentiment, reusing the cached mapping of unchanged answers."""
        path = evaluation.prediction_path(self._output_dir, name, mode, "sentiment")
        mapper = self._sentiment_mapper.describe()
        inputs = {n: r["words"] for n, r in records.items()}
        cached = evaluation.load_records(path, set(records), ("name", "words", "sentiment", "mapper"))
        out = {n: c["sentiment"] for n, c in cached.items() if c["words"] == inputs[n] and c["mapper"] == mapper}
        todo = [n for n in records if n not in out]
        if todo:
            start = time.perf_counter()
            out.update(zip(todo, self._sentiment_mapper([inputs[n] for n in todo])))
            log.info("%s %s: mapped %d answers to sentiments with the %s mapper in %.1f s",
                     name, mode, len(todo), mapper["name"], time.perf_counter() - start)  # fmt: skip
        evaluation.write_records(path, [{"name": n, "words": inputs[n], "sentiment": out[n], "mapper": mapper}
                                        for n in records])  # fmt: skip
        return {n: out[n] for n in records}

    def _report(self) -> dict[str, Any]:
        datasets = {}
        for name, entry in self._datasets.items():
            labels = {n: entry["labels"][n] for n in entry["names"]}
            records = {mode: self._records(name, entry, mode) for mode in MODES}
            scores = {}
            for mode in MODES:
                answers = {n: r["answer"] or "" for n, r in records[mode].items()}
                sentiments = self._sentiments(name, mode, records[mode]) if entry["task"] == "sentiment" else None
                scores[mode] = evaluation.score_mode(entry["task"], labels, answers, sentiments)
                scores[mode]["num_answered"] = sum(r["answer"] is not None for r in records[mode].values())
                scores[mode]["num_finished"] = sum(r["finished"] for r in records[mode].values())
            diag = None
            if entry["task"] != "sentiment":
                diag = evaluation.slow_fast_diagnostics(
                    labels, records, scores, num_hard_negatives=self._num_hard_negatives
                )
            if self._early_exit is not None and entry["task"] != "sentiment":
                diag = dict(diag or {}, early_exit=summarize_early_exit(
                    [EarlyExitRecord(**records["slow"][n]["early_exit"]) for n in entry["names"]],
                    [parse_emotion_list(labels[n]) if isinstance(labels[n], str) else [] for n in entry["names"]],
                ))  # fmt: skip
            datasets[name] = {
                "task": entry["task"],
                "benchmark": entry["benchmark"],
                "official_metric": evaluation.OFFICIAL_METRIC[entry["task"]],
                "num_samples": len(entry["names"]),
                "num_bad_rows": entry["num_bad_rows"],
                "bad_rows_by_kind": entry["bad_rows_by_kind"],
                **scores,
                "diagnostics": diag,
            }
        self._sentiment_mapper.close()
        report = {
            "datasets": datasets,
            "means": evaluation.benchmark_means(datasets),
            "sentiment_mapper": self._sentiment_mapper.describe()["name"],
            "sentiment_mapper_config": self._sentiment_mapper.describe(),
            "sampling": {
                "max_new_tokens": self._sampling.max_new_tokens, "temperature": self._sampling.temperature,
                "top_p": self._sampling.top_p, "top_k": self._sampling.top_k,
            },  # fmt: skip
            "answer_fallback": self._answer_fallback,
            "early_exit": self._early_exit,
            "runtime": {"num_ranks": self._world_size, "generation": self._runtime},
        }
        return to_jsonable(report)

    def cleanup(self) -> None:
        distributed.destroy()


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    recipe = EvalRecipe(cfg)
    try:  # the process group is released also when a run fails
        recipe.setup(cfg)
        recipe.evaluate()
    finally:
        recipe.cleanup()


if __name__ == "__main__":
    sys.argv = expand_list_item_overrides(sys.argv)  # `datasets.N.key=value` overrides of list items
    sys.exit(recipe_main())
