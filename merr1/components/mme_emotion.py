"""The MME-Emotion evaluation protocol (arXiv 2508.09210): prompts, judge requests, score parsing, metrics.

The official pipeline (FunAudioLLM/MME-Emotion; ``docs/mme_emotion.md`` has the full account):
(A) the model under test answers a per-task question about a clip; (C) a step extractor
(official: gpt-4.1-2025-04-14, temperature 0) rewrites the free-form answer as ``Step 1 ...
Step N`` inside ``<step></step>``, the last step stating the prediction; (D) a judge (official:
gpt-4o-2024-11-20, temperature 0, n 1) sees up to 10 frames (one per second), the pre-computed
Qwen2-Audio clue, the label and the steps, and scores every step as a fraction inside
``<score>...</score>``; (E) metrics. This module holds everything of (C)-(E) that is not
transport: the verbatim prompts (``merr1/assets/mme_emotion/prompts.json``, MIT, see its
``PROVENANCE.md``), the request messages, the official retry counts, the two official score
parsers and the official arithmetic. Plain Python (no torch), so ``python -m merr1.score mme``
stays light.

Metrics, exactly as the official ``cal_metrics.py`` scripts compute them:

- Per sample, with s_1..s_N the parsed step scores in textual order: recognition = s_N;
  reasoning = mean(s_1..s_{N-1}) = ``sum(...) / len(...)``, and 0.0 when N = 1 (the sample is
  kept); steps = N.
- Parsing (``parse_scores``): the text is ``str(score)`` (a null score reads ``"None"``); only
  the FIRST ``<score>...</score>`` span whose tags are on one line counts (``.`` does not cross
  newlines). ``strict`` (ER-Lab, ER-Wild, Noise-ER, SA, FG-SA, IR): every ``": d/1"`` (colon,
  ONE space, ONE digit, ``/1``) gives int(d); ``"1/10"`` therefore reads as ``1/1``, ``":1/1"``
  and ``"2/3"`` are ignored. ``fraction`` (FG-ER, ML-ER and the Overall script): every
  ``":\\s*n/d"`` gives n / d (0.0 when d = 0), never clipped, so 7/3 counts 2.33. ``\\d`` is
  Python's Unicode digit class, as in the official regexes.
- A sample whose parse is empty or has no span is DROPPED from numerator and denominator (judge
  failures, missing videos, unparseable replies alike).
- Per task: Rec = (sum of recognitions) / kept, Rea likewise, accumulated left to right in file
  order; CoT = alpha * Rec + (1 - alpha) * Rea with alpha = 0.5; each reported as
  ``f"{100 * x:.1f}"``. With no kept sample all three are 0 (the official ``if count else 0``).
- Overall: the 8 task files are CONCATENATED (in the Overall script's order ``OVERALL_ORDER``) and
  scored as one list with the fraction parser for every task: a sample-weighted (pooled) mean,
  not the mean of the task scores.
- Single-label task scripts also report per-category scores (grouped by the exact
  ``ground_truth`` string, sorted; ER-Wild merges angry/disgusted/happy/sad/surprised first).

Deliberate deviations (documented and tested): a record without ``score``, a kept record without
``ground_truth`` and a non-object record are ``ValueError`` naming the file and record (the
official scripts crash with a ``KeyError``/``TypeError``); a per-category ``ground_truth`` that
is not a string is used through ``str()`` for the JSON keys.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "mme_emotion"

# The paper's (and the leaderboard's) task order.
TASKS = ("ER-Lab", "ER-Wild", "Noise-ER", "FG-ER", "ML-ER", "SA", "FG-SA", "IR")
# The order in which eval_cot/Overall/metrics/cal_metrics.py concatenates the task files (L85-343;
# the same for all 20 models): it fixes the floating-point order of the pooled sums.
OVERALL_ORDER = ("ER-Lab", "ER-Wild", "ML-ER", "FG-ER", "Noise-ER", "IR", "SA", "FG-SA")
# Released sizes (question files at commit 777e8c3), for the report's sanity check.
NUM_SAMPLES = {"ER-Lab": 500, "ER-Wild": 1800, "Noise-ER": 500, "FG-ER": 500, "ML-ER": 600, "SA": 1600,
               "FG-SA": 500, "IR": 500}  # fmt: skip
# Multi-label tasks and the separator of their ``label`` strings.
LABEL_SEPARATORS = {"FG-ER": ";", "ML-ER": ","}
PARSERS = ("strict", "fraction")
TASK_PARSER = {task: "fraction" if task in LABEL_SEPARATORS else "strict" for task in TASKS}
# eval_cot/ER-Wild/metrics/cal_metrics.py L33-42: label synonyms merged for the category table.
ER_WILD_CATEGORY_MERGE = {"angry": "anger", "disgusted": "disgust", "happy": "happiness", "sad": "sadness",
                          "surprised": "surprise"}  # fmt: skip
DEFAULT_ALPHA = 0.5

OFFICIAL_EXTRACTOR_MODEL = "gpt-4.1-2025-04-14"
OFFICIAL_JUDGE_MODEL = "gpt-4o-2024-11-20"
# Judge visual clue: every int(fps * 1 s)-th decoded frame from the first, the first 10 of them.
MAX_JUDGE_FRAMES = 10
JUDGE_FRAME_INTERVAL_S = 1.0
# Request parameters besides model and messages (extract_step.py L43-46; eval_cot_gpt4o.py L104-109).
EXTRACTION_PARAMS = {"temperature": 0.0}
JUDGE_PARAMS = {"n": 1, "temperature": 0.0}


@dataclass(frozen=True)
class RetryPolicy:
    """Official retry rule of one stage and task: ``max_attempts`` tries, ``delay_s`` apart;
    ``timeout_s`` the HTTP timeout the official script sets (None: none set)."""

    max_attempts: int
    delay_s: float
    timeout_s: float | None


# extract_step/<T>/code/extract_step.py: 10 tries 2 s apart (ER-Wild 5); timeout 120 s in
# ER-Wild, Noise-ER, SA, FG-SA, IR. After the last failure the step text is "Error: <reason>".
EXTRACTION_RETRY = {
    task: RetryPolicy(5 if task == "ER-Wild" else 10, 2.0, None if task in ("ER-Lab", "FG-ER", "ML-ER") else 120.0)
    for task in TASKS
}
# eval_cot/<T>/code/eval_cot_gpt4o.py L49-50, L113-123: 20 tries (FG-ER/ML-ER 5), 3 s apart in
# ER-Lab else 2 s; timeout 120 s except ER-Lab and ER-Wild. After the last failure score = null.
JUDGE_RETRY = {
    task: RetryPolicy(
        5 if task in LABEL_SEPARATORS else 20,
        3.0 if task == "ER-Lab" else 2.0,
        None if task in ("ER-Lab", "ER-Wild") else 120.0,
    )
    for task in TASKS
}


def check_task(task: str) -> str:
    """``task`` if it is one of ``TASKS``; ValueError listing them otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown MME-Emotion task {task!r}; expected one of {list(TASKS)}")
    return task


def task_file_stem(task: str) -> str:
    """The task's file-name form: ``"ER-Lab"`` -> ``"ER_Lab"`` (question and audio-clue files)."""
    return check_task(task).replace("-", "_")


# ---------------------------------------------------------------------------------------------
# Prompts and requests


@functools.lru_cache(maxsize=None)
def load_prompts(asset_dir: str | None = None) -> dict[str, Any]:
    """The official prompt texts: ``{"system", "extract_step": {task}, "judge": {task}}``."""
    path = Path(asset_dir or ASSET_DIR) / "prompts.json"
    prompts = json.loads(path.read_text(encoding="utf-8"))
    for kind in ("extract_step", "judge"):
        missing = [t for t in TASKS if t not in prompts[kind]]
        if missing:
            raise ValueError(f"{path}: no {kind} prompt for {missing}")
    return prompts


@functools.lru_cache(maxsize=None)
def load_questions(asset_dir: str | None = None) -> dict[str, str]:
    """The per-task question for the model under test, as shown in the project page's figures."""
    path = Path(asset_dir or ASSET_DIR) / "questions.json"
    questions = json.loads(path.read_text(encoding="utf-8"))
    missing = [t for t in TASKS if t not in questions]
    if missing:
        raise ValueError(f"{path}: no question for {missing}")
    return questions


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``{name}`` placeholders with ``str(value)`` in one pass, as the official f-strings do
    (inserted text is never scanned again, so a clue containing ``{step}`` stays as is)."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"template placeholder {{{name}}} has no value (given: {sorted(values)})")
        return str(values[name])

    return _PLACEHOLDER.sub(fill, template)


def extraction_messages(task: str, model_response: Any) -> list[dict[str, Any]]:
    """Stage C chat messages: the system message, then the task's extraction prompt with the raw
    answer inserted between single quotes (``extract_step.py`` L8-37)."""
    prompts = load_prompts()
    text = render_template(prompts["extract_step"][check_task(task)], {"model_response": model_response})
    return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": text}]


def judge_messages(
    task: str, audio_clue: Any, ground_truth: Any, step: Any, frame_urls: Sequence[str]
) -> list[dict[str, Any]]:
    """Stage D chat messages (``eval_cot_gpt4o.py`` L63-96): the system message, then one user
    message whose content is the judge prompt's text part followed by one ``image_url`` part
    per frame (data URLs, no ``detail`` field).

    Args:
        task: one of ``TASKS``.
        audio_clue: the clip's audio clue (inserted verbatim).
        ground_truth: the label string (FG-ER/ML-ER: the raw joined string).
        step: the raw stage-C output, ``<step>`` tags included (or its "Error: ..." text).
        frame_urls: ``data:image/...;base64,...`` URLs, at most ``MAX_JUDGE_FRAMES``.
    """
    prompts = load_prompts()
    text = render_template(
        prompts["judge"][check_task(task)], {"audio_clue": audio_clue, "ground_truth": ground_truth, "step": step}
    )
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in frame_urls]
    return [{"role": "system", "content": prompts["system"]}, {"role": "user", "content": content}]


def extraction_error_step(reason: str) -> str:
    """The step text of a sample whose extraction failed every attempt (kept and judged as is)."""
    return f"Error: {reason}"


# ---------------------------------------------------------------------------------------------
# Parsing the judge's reply

_SCORE_SPAN = re.compile(r"<score>(.*?)</score>")
_STRICT_SCORE = re.compile(r": (\d)/1")
_FRACTION_SCORE = re.compile(r":\s*(\d+)/(\d+)")


def parse_scores(score: Any, parser: str) -> list[float] | None:
    """The step scores of one judge output, as the official ``parse_score`` functions read them.

    Args:
        score: the record's ``score`` value (the judge's text, or None after a failure); it is
            read as ``str(score)``.
        parser: ``"strict"`` (single-label task scripts) or ``"fraction"`` (FG-ER, ML-ER, Overall).

    Returns:
        The scores in textual order (ints for ``strict``, floats for ``fraction``); ``[]`` when the
        span has no score; None when there is no single-line ``<score>...</score>`` span.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; expected one of {PARSERS}")
    match = _SCORE_SPAN.search(str(score))
    if not match:
        return None
    if parser == "strict":
        return [int(m.group(1)) for m in _STRICT_SCORE.finditer(match.group(1))]
    scores = []
    for m in _FRACTION_SCORE.finditer(match.group(1)):
        numerator, denominator = int(m.group(1)), int(m.group(2))
        scores.append(0.0 if denominator == 0 else numerator / denominator)
    return scores


def sample_metrics(scores: Sequence[float]) -> tuple[float, float, int]:
    """(recognition, reasoning, number of steps) of one kept sample: the last score, the mean of
    the earlier ones (0.0 for a single step), and their count."""
    if not scores:
        raise ValueError("a sample without step scores is dropped, not scored")
    reasoning = sum(scores[:-1]) / len(scores[:-1]) if len(scores) > 1 else 0.0
    return scores[-1], reasoning, len(scores)


# ---------------------------------------------------------------------------------------------
# Aggregation


class _Totals:
    # The official running sums (floats accumulated left to right in record order).
    def __init__(self, zero: float):
        self.acc, self.reason, self.count, self.step = zero, zero, 0, 0

    def add(self, acc: float, reason: float, step: int) -> None:
        self.acc += acc
        self.reason += reason
        self.step += step
        self.count += 1

    def result(self, alpha: float, num_records: int | None = None) -> dict[str, Any]:
        count = self.count
        avg_acc = self.acc / count if count else 0
        avg_reason = self.reason / count if count else 0
        avg_step = self.step / count if count else 0
        combined = alpha * avg_acc + (1 - alpha) * avg_reason
        out = {
            "recognition": float(100 * avg_acc),
            "reasoning": float(100 * avg_reason),
            "cot": float(100 * combined),
            "avg_steps": float(avg_step),
            "reported": {  # the official text file's values (Python's .1f)
                "recognition": float(f"{100 * avg_acc:.1f}"),
                "reasoning": float(f"{100 * avg_reason:.1f}"),
                "cot": float(f"{100 * combined:.1f}"),
                "avg_steps": float(f"{avg_step:.1f}"),
            },
            "kept": count,
        }
        if num_records is not None:
            out["dropped"] = num_records - count
            out["num_records"] = num_records
        return out


def _record_name(record: Any, index: int, source: str) -> str:
    video = f" (video_id {record['video_id']!r})" if isinstance(record, dict) and "video_id" in record else ""
    return f"{source}: record {index}{video}"


def check_alpha(alpha: float) -> float:
    """alpha in [0, 1] (the official ``--alpha`` check)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return alpha


def score_records(
    records: Sequence[Any],
    parser: str,
    *,
    alpha: float = DEFAULT_ALPHA,
    categories: Mapping[str, str] | None = None,
    source: str = "judged records",
) -> dict[str, Any]:
    """Official metrics of a list of judge-output records (see the module docstring).

    Args:
        records: dicts with ``score`` (judge text or None) and ``ground_truth``, in file order.
        parser: ``"strict"`` or ``"fraction"``.
        alpha: CoT weight of recognition.
        categories: None for no per-category table; else a label-merge map ({} = none) and the
            result gets ``"categories"``: label -> the same scores, sorted by label.
        source: names the input in error messages (e.g. the file path).

    Returns:
        ``recognition``, ``reasoning``, ``cot`` (percent, unrounded), ``avg_steps``,
        ``reported`` (the same rounded as the official text file), ``kept``, ``dropped``,
        ``num_records``, ``alpha``, ``parser`` (+ ``categories``).

    Raises:
        ValueError: a record that is not an object, has no ``score``, or is kept without
            ``ground_truth`` (named by index and video_id).
    """
    check_alpha(alpha)
    zero = 0 if parser == "strict" else 0.0  # the official scripts' start values
    total = _Totals(zero)
    per_category: dict[Any, _Totals] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{_record_name(record, index, source)}: not a JSON object")
        if "score" not in record:
            raise ValueError(f'{_record_name(record, index, source)}: no "score" field')
        scores = parse_scores(record["score"], parser)
        if not scores:
            continue
        if "ground_truth" not in record:
            raise ValueError(f'{_record_name(record, index, source)}: no "ground_truth" field')
        acc, reason, steps = sample_metrics(scores)
        total.add(acc, reason, steps)
        if categories is not None:
            label = record["ground_truth"]
            if isinstance(label, (list, dict)):
                raise ValueError(f"{_record_name(record, index, source)}: ground_truth {label!r} is not a label")
            label = categories.get(label, label)
            per_category.setdefault(label, _Totals(zero)).add(acc, reason, steps)
    out = {**total.result(alpha, len(records)), "alpha": alpha, "parser": parser}
    if categories is not None:
        out["categories"] = {str(c): per_category[c].result(alpha) for c in sorted(per_category)}
    return out


def score_task(records: Sequence[Any], task: str, *, alpha: float = DEFAULT_ALPHA, source: str = "") -> dict[str, Any]:
    """A task's official metrics: its own parser, per-category scores for the single-label tasks."""
    parser = TASK_PARSER[check_task(task)]
    merge = None if task in LABEL_SEPARATORS else (ER_WILD_CATEGORY_MERGE if task == "ER-Wild" else {})
    out = score_records(records, parser, alpha=alpha, categories=merge, source=source or task)
    return {"task": task, **out}


def score_overall(
    records_by_task: Mapping[str, Sequence[Any]],
    *,
    alpha: float = DEFAULT_ALPHA,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Overall script's metrics: the tasks' records concatenated in ``OVERALL_ORDER`` (tasks
    absent from the mapping are skipped and listed) and scored with the fraction parser.

    Returns:
        As ``score_records`` plus ``tasks`` (the pooled tasks, in pooling order) and
        ``missing_tasks``; errors name the task's source (``sources[task]``, default the task).
    """
    unknown = sorted(set(records_by_task) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown MME-Emotion task(s) {unknown}; expected some of {list(TASKS)}")
    tasks = [t for t in OVERALL_ORDER if t in records_by_task]
    sources = sources or {}
    for task in tasks:  # validate with file-level names before pooling
        score_records(records_by_task[task], "fraction", alpha=alpha, source=sources.get(task, task))
    pooled = [r for task in tasks for r in records_by_task[task]]
    out = score_records(pooled, "fraction", alpha=alpha, source="pooled records")
    return {"task": "overall", **out, "tasks": tasks, "missing_tasks": [t for t in TASKS if t not in tasks]}


# ---------------------------------------------------------------------------------------------
# Report

COMPARABILITY_NOTE = (
    "MME-Emotion scores are judged by an LLM: numbers from different judge or step-extractor models (or "
    "prompts, or frame encodings) are not comparable. The official numbers use gpt-4.1-2025-04-14 (steps) and "
    "gpt-4o-2024-11-20 (judge); the MER-R1 paper replaced the judge with gemini-3.1-flash-lite-preview."
)


def task_mean(task_scores: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The unweighted mean over tasks of recognition, reasoning and CoT (percent): a macro
    average, NOT the official Overall (which pools the samples, ``score_overall``)."""
    tasks = [t for t in TASKS if t in task_scores]
    out: dict[str, Any] = {"num_tasks": len(tasks)}
    for key in ("recognition", "reasoning", "cot"):
        out[key] = sum(task_scores[t][key] for t in tasks) / len(tasks) if tasks else float("nan")
    return out


def format_report(report: Mapping[str, Any]) -> str:
    """The printed tables of ``recipes/eval_mme_emotion.py``'s report: the paper's Table 2 layout
    (per-task CoT, then pooled Recognition, Reasoning, CoT) per mode, then per-task details."""
    lines = [f"MME-Emotion (%), judge: {report['judge_name']}, steps: {report['extractor_name']}"]
    for mode, result in report["modes"].items():
        tasks = [t for t in TASKS if t in result["tasks"]]
        header = f"{'mode':<6}" + "".join(f"{t:>9}" for t in tasks) + f"{'Rec':>8}{'Rea':>8}{'CoT':>8}{'CoT mean':>10}"
        overall, mean = result["overall"], result["task_mean"]
        row = f"{mode:<6}" + "".join(f"{result['tasks'][t]['cot']:>9.1f}" for t in tasks)
        row += f"{overall['recognition']:>8.1f}{overall['reasoning']:>8.1f}{overall['cot']:>8.1f}{mean['cot']:>10.1f}"
        lines += ["", "per-task CoT; Rec/Rea/CoT pooled over all samples (official Overall); CoT mean = mean of tasks",
                  header, row, "", f"{mode}: {'task':<9}{'samples':>8}{'kept':>6}{'dropped':>8}{'Rec':>7}{'Rea':>7}"
                  f"{'CoT':>7}{'steps':>7}"]  # fmt: skip
        for t in tasks:
            s = result["tasks"][t]
            lines.append(f"{'':<{len(mode) + 2}}{t:<9}{s['num_samples']:>8}{s['kept']:>6}{s['dropped']:>8}"
                         f"{s['recognition']:>7.1f}{s['reasoning']:>7.1f}{s['cot']:>7.1f}"
                         f"{s['avg_steps']:>7.1f}")  # fmt: skip
    lines += ["", COMPARABILITY_NOTE]
    return "\n".join(lines)
