"""MME-Emotion data: the released layout, the model-under-test prompts (stage A), a generated sample set.

Released layout (FunAudioLLM/MME-Emotion, ``MME-Emotion-Dataset/`` up to commit 777e8c3; the
videos come from the Hugging Face dataset ``Karl28/MME-Emotion``), per task ``<T>`` (file stem
``<T_>``, e.g. ``ER_Lab``)::

    {data_dir}/<T>/question/<T_>.json                       [{"video_id", "label", "label_set"}, ...]
    {data_dir}/<T>/audio_clue/<T_>_qwen2_audio_clues.json   [{"video_id", "ground_truth", "audio_clue"}, ...]
    {video_dir}/<video_id>                                  e.g. IEMOCAP/video/Ses05M_script01_1_F034.mp4

plus merr1's caches, made once by ``scripts/prepare_mme_emotion.py`` (PyAV) and named by
``frames.cache_name(video_id)``: ``{media_dir}/<name>.safetensors`` (the Thinker's inputs for the
model under test: the clip's own audio track and its video, see ``merr1.components.data.media``)
and ``{frames_dir}/<name>/NN.png`` (the judge's frames, ``merr1.components.data.frames``).
Defaults: ``{data_dir}/media_cache`` and ``{data_dir}/frames_cache``.

Loading (``load_task``) follows the official scripts: samples in question-file order; the label
is ``label`` (the official response files carry it as ``ground_truth``); the audio clues are
indexed by ``video_id`` (a later record of the same id wins, as the official dict does). Bad
rows are reported by name and skipped: a malformed record, a duplicate ``video_id``, and a sample
without an audio clue (the official judge stage drops those, so no metric changes). ``strict``
makes any bad row an error. Audio-clue records without a ``video_id`` are logged and ignored
(the official script crashes on them).

The question for the model under test (stage A) is NOT published (``docs/mme_emotion.md``).
merr1's reconstruction: the per-task question of the project page's case figures
(``questions.json``), then the task's candidate labels (``label_set``, JSON order, joined by
", "), then an answer-format instruction (default: the response format's own instruction, i.e.
the prompt the MER-R1 models are trained with), through ``question_template``. The model sees
the clip's audio and video (the paper's omni models did) and the system prompt of the config.
Slow mode: the model thinks, then answers; fast mode: the assistant turn is prefilled with the
format's empty reasoning (``<think></think><answer>``). ``model_response`` (stage C's input) is
the full response: the prefill plus the generated text.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from merr1.components.data.collate import USE_AUDIO_IN_VIDEO
from merr1.components.data import media as data_media
from merr1.components.data.datasets import BadRow, BadRowError, _report_bad_rows, _SampleEncoder
from merr1.components.data.frames import cache_name, frames_entry, write_frames
from merr1.components.data.prompts import QWEN_OMNI_SYSTEM_PROMPT, build_chat_prompt, encode_pieces, encode_text
from merr1.components.mme_emotion import (
    LABEL_SEPARATORS,
    TASKS,
    check_task,
    load_questions,
    render_template,
    task_file_stem,
)

log = logging.getLogger(__name__)

MEDIA_DIR = "media_cache"
FRAMES_DIR = "frames_cache"
DEFAULT_QUESTION_TEMPLATE = "{question}\nCandidate labels: {candidate_labels}.\n{instruction}"


def question_file(data_dir: str | Path, task: str) -> Path:
    """``{data_dir}/<T>/question/<T_>.json``."""
    return Path(data_dir) / check_task(task) / "question" / f"{task_file_stem(task)}.json"


def audio_clue_file(data_dir: str | Path, task: str) -> Path:
    """``{data_dir}/<T>/audio_clue/<T_>_qwen2_audio_clues.json``."""
    return Path(data_dir) / check_task(task) / "audio_clue" / f"{task_file_stem(task)}_qwen2_audio_clues.json"


@dataclass(frozen=True)
class MMESample:
    """One question record with its audio clue."""

    video_id: str
    label: str
    label_set: tuple[str, ...]
    audio_clue: str


@dataclass
class MMETask:
    """A task's usable samples (question-file order) and its skipped rows."""

    task: str
    samples: list[MMESample]
    bad_rows: list[BadRow] = field(default_factory=list)


def _read_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"MME-Emotion file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _audio_clues(path: Path) -> dict[str, Any]:
    clues: dict[str, Any] = {}
    for index, record in enumerate(_read_json_list(path)):
        if not isinstance(record, dict) or not isinstance(record.get("video_id"), str):
            log.warning("%s: record %d has no video_id; ignored", path, index)
            continue
        clues[record["video_id"]] = record.get("audio_clue")  # a later duplicate wins (official dict)
    return clues


def _question_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if not isinstance(record.get("video_id"), str) or not record["video_id"]:
        return "no video_id"
    if not isinstance(record.get("label"), str) or not record["label"].strip():
        return f"label {record.get('label')!r} is not a non-empty string"
    label_set = record.get("label_set")
    if not isinstance(label_set, list) or not label_set or not all(isinstance(x, str) for x in label_set):
        return f"label_set {label_set!r} is not a non-empty list of strings"
    return None


def load_task(data_dir: str | Path, task: str, strict: bool = False) -> MMETask:
    """A task's samples from the released layout (module docstring); ValueError when ``strict``
    and a row is bad, or when no sample is usable."""
    questions_path, clues_path = question_file(data_dir, task), audio_clue_file(data_dir, task)
    records = _read_json_list(questions_path)
    clues = _audio_clues(clues_path)
    samples, bad, seen = [], [], set()
    for index, record in enumerate(records):
        problem = _question_problem(record)
        if problem is not None:
            has_id = isinstance(record, dict) and isinstance(record.get("video_id"), str) and record["video_id"]
            bad.append(BadRow(record["video_id"] if has_id else f"{questions_path.name} record {index}",
                              "malformed record", problem))  # fmt: skip
            continue
        video_id = record["video_id"]
        if video_id in seen:
            bad.append(BadRow(video_id, "duplicate video_id"))
            continue
        seen.add(video_id)
        clue = clues.get(video_id)
        if not isinstance(clue, str):
            detail = f"not in {clues_path.name}" if clue is None else repr(clue)
            bad.append(BadRow(video_id, "missing audio clue", detail))
            continue
        samples.append(MMESample(video_id, record["label"], tuple(record["label_set"]), clue))
    _report_bad_rows(f"MME-Emotion {task} ({questions_path})", bad, len(samples), strict)
    return MMETask(task, samples, bad)


def question_text(task: str, label_set: Sequence[str], template: str, instruction: str) -> str:
    """The user text of stage A: ``template`` with ``{question}`` (the task's question),
    ``{candidate_labels}`` (``label_set`` joined by ", ") and ``{instruction}`` filled."""
    values = {"question": load_questions()[check_task(task)], "candidate_labels": ", ".join(label_set),
              "instruction": instruction}  # fmt: skip
    return render_template(template, values)


class MMEEmotionDataset(Dataset):
    """One MME-Emotion task as prompts for the model under test (stage A), slow or fast mode.

    Args:
        tokenizer: HF tokenizer with the Qwen special tokens.
        data_dir: the released annotation folder (``<T>/question``, ``<T>/audio_clue``).
        task: one of ``merr1.components.mme_emotion.TASKS``.
        mode: "slow" (think then answer) or "fast" (prefilled empty reasoning).
        response_format: "mer_r1", "videoauto_r1" or "emo_r3" (default instruction and fast prefix).
        system_prompt: system turn (None: none).
        question_template: see ``question_text``.
        instruction: the answer-format text; None = the response format's own instruction.
        modalities: subset of ("audio", "video") read from the media cache; () for text-only models.
        media_dir: media cache (default ``{data_dir}/media_cache``).
        frames_dir: judge frames (default ``{data_dir}/frames_cache``); not read here.
        max_seq_len: prompts longer than this are bad rows ("too long"); None = no limit.
        strict: raise on the first bad row instead of skipping it.
        spatial_merge_size, num_mel_bins, use_audio_in_video, position_id_per_seconds,
        seconds_per_chunk: as ``merr1.components.data.MERUniBenchDataset`` (audio in video: on for
            clips with audio and video, the Qwen2.5-Omni default).

    Attributes:
        samples: the usable ``MMESample``s in file order; ``names``: their video ids.
        bad_rows: skipped rows (layout problems and missing/inconsistent media).
    """

    def __init__(
        self,
        tokenizer,
        data_dir: str | Path,
        task: str,
        mode: str = "slow",
        *,
        response_format: str = "mer_r1",
        system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
        question_template: str = DEFAULT_QUESTION_TEMPLATE,
        instruction: str | None = None,
        modalities: Sequence[str] = ("audio", "video"),
        media_dir: str | Path | None = None,
        frames_dir: str | Path | None = None,
        max_seq_len: int | None = None,
        strict: bool = False,
        spatial_merge_size: int = 2,
        num_mel_bins: int | None = None,
        use_audio_in_video: bool = True,
        position_id_per_seconds: int = 25,
        seconds_per_chunk: float = 2.0,
    ):
        if mode not in ("slow", "fast"):
            raise ValueError(f"mode must be 'slow' or 'fast', got {mode!r}")
        data_dir = Path(data_dir)
        self.task, self.mode = check_task(task), mode
        self.encoder = _SampleEncoder(tokenizer, response_format, system_prompt, instruction, modalities,
                                      spatial_merge_size, num_mel_bins, use_audio_in_video, position_id_per_seconds,
                                      seconds_per_chunk)  # fmt: skip
        fmt = self.encoder.format
        self.system_prompt = system_prompt
        self.question_template = question_template
        self.instruction = fmt.instruction if instruction is None else instruction
        self.response_prefix = fmt.fast_prefix if mode == "fast" else ""
        self._prefix_ids = encode_pieces(tokenizer, fmt.fast_prefix_pieces()) if mode == "fast" else []
        self.media_dir = Path(media_dir) if media_dir is not None else data_dir / MEDIA_DIR
        self.frames_dir = Path(frames_dir) if frames_dir is not None else data_dir / FRAMES_DIR
        loaded = load_task(data_dir, task, strict)
        self.samples: list[MMESample] = []
        self.bad_rows: list[BadRow] = list(loaded.bad_rows)
        self._media: list[tuple[int, int, Path | None, tuple | None]] = []
        media_bad: list[BadRow] = []
        for sample in loaded.samples:
            try:
                counts = self._media_counts(sample)
                length = len(self.prompt_ids(sample, counts[0], counts[1], counts[3]))
                if max_seq_len is not None and length > max_seq_len:
                    raise BadRowError("too long", f"prompt has {length} tokens > max_seq_len={max_seq_len}")
            except BadRowError as e:
                media_bad.append(BadRow(sample.video_id, e.kind, e.detail))
                continue
            self.samples.append(sample)
            self._media.append(counts)
        self.bad_rows += media_bad
        if media_bad:
            _report_bad_rows(f"MME-Emotion {task} media ({self.media_dir})", media_bad, len(self.samples), strict)

    def _media_counts(self, sample: MMESample) -> tuple[int, int, Path | None, tuple | None]:
        """(audio tokens, video tokens, cache path, audio-in-video chunks or None)."""
        if not self.encoder.modalities:
            return 0, 0, None, None
        path = data_media.cache_path(self.media_dir, cache_name(sample.video_id))
        num_audio, num_video, chunks = self.encoder.media_counts(path)
        return num_audio, num_video, path, chunks

    def prompt_ids(
        self, sample: MMESample, num_audio: int = 0, num_video: int = 0, audio_in_video: tuple | None = None
    ) -> list[int]:
        """Token ids of the chat prompt (media placeholders expanded, interleaved with audio in
        video; fast mode: with the prefill)."""
        text = question_text(self.task, sample.label_set, self.question_template, self.instruction)
        prompt = build_chat_prompt(text, num_audio=num_audio, num_video=num_video, system_prompt=self.system_prompt,
                                   audio_in_video=audio_in_video)  # fmt: skip
        return encode_text(self.encoder.tokenizer, prompt) + self._prefix_ids

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def names(self) -> list[str]:
        return [s.video_id for s in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        num_audio, num_video, path, chunks = self._media[index]
        media = {}
        if path is not None:
            loaded = data_media.load_media(path)
            media = {k: loaded[k] for k in self.encoder.media_keys}
            if chunks is not None:
                media[USE_AUDIO_IN_VIDEO] = torch.tensor(True)
        return {
            "name": sample.video_id,
            "prompt_ids": torch.tensor(self.prompt_ids(sample, num_audio, num_video, chunks), dtype=torch.long),
            "label": sample.label,
            "response_prefix": self.response_prefix,
            "media": media,
        }


# ---------------------------------------------------------------------------------------------
# YAML builders (the recipe passes the tokenizer, task and mode)


def mme_emotion_dataset(tokenizer, data_dir: str, task: str, mode: str = "slow", **kwargs) -> MMEEmotionDataset:
    """One MME-Emotion task from the released layout; kwargs as ``MMEEmotionDataset``."""
    return MMEEmotionDataset(tokenizer, data_dir, task, mode, **kwargs)


def mme_emotion_sample(
    tokenizer, task: str, mode: str = "slow", data_dir: str = "data/mme_emotion_sample", **kwargs
) -> MMEEmotionDataset:
    """One task of the generated MME-Emotion sample set (written into ``data_dir`` on first use)."""
    from merr1.components.data.sample import ensure_generated

    ensure_generated(data_dir, make_mme_emotion_sample, SAMPLE_INFO, GENERATOR_VERSION)
    return MMEEmotionDataset(tokenizer, data_dir, task, mode, **kwargs)


# ---------------------------------------------------------------------------------------------
# Generated sample set (same layout; tiny media; deterministic)

SAMPLE_INFO = "mme_emotion_info.json"
GENERATOR_VERSION = 1
DEFAULT_NUM_PER_TASK = 4
VIDEOS_DIR = "videos"

# Per task: (source folder, candidate labels) pairs as in the released files (label sets are the
# public data sets' category names; the clips here are synthetic).
SAMPLE_SOURCES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "ER-Lab": (("IEMOCAP", ("Anger", "Sadness", "Surprise", "Happiness", "Excited", "Fear", "Frustration",
                            "Neutral", "Other")),),
    "ER-Wild": (("MELD", ("neutral", "surprise", "joy", "disgust", "anger", "fear", "sadness")),
                ("DFEW", ("neutral", "happy", "angry", "sad", "fear", "surprise", "disgust"))),
    "Noise-ER": (("MER2024", ("happy", "neutral", "angry", "surprise", "sad", "worried")),),
    "FG-ER": (("BOLD", ("Excitement", "Engagement", "Fatigue", "Disquietment", "Anticipation", "Fear", "Affection",
                        "Confidence", "Happiness", "Sadness", "Peace", "Anger", "Doubt/Confusion", "Surprise")),),
    "ML-ER": (("MAFW", ("disappointment", "fear", "contempt", "disgust", "sadness", "anger", "anxiety", "happiness",
                        "surprise", "helplessness")),),
    "SA": (("CMU-MOSI", ("negative", "neutral", "positive")), ("MELD", ("positive", "negative", "neutral"))),
    "FG-SA": (("CMU-MOSI", ("very strong negative", "strong negative", "negative", "weak negative", "neutral",
                            "weak positive", "positive", "strong positive", "very strong positive")),),
    "IR": (("MC-EIU", ("neutral", "questioning", "consoling", "suggesting", "encouraging", "agreeing", "wishing",
                       "acknowledging")),),
}  # fmt: skip
_VOICE = ("raised and forceful", "soft and slow", "trembling", "bright and quick", "flat and low", "hesitant")
_CUE = ("emphasis on certain words", "long pauses", "a sigh at the end", "laughter in the background",
        "a rising pitch", "a steady rhythm")  # fmt: skip
# Sentiment tasks share clips (SA and FG-SA, as in the release: 298 common CMU-MOSI clips).
_SHARED_CLIPS = {"FG-SA": "SA"}


def _draw_label(rng: random.Random, task: str, label_set: Sequence[str]) -> str:
    if task not in LABEL_SEPARATORS:
        return label_set[int(rng.random() * len(label_set))]
    low = 1 if task == "FG-ER" else 2  # FG-ER: 1-8 labels; ML-ER: 2-5 labels (released ranges)
    count = low + int(rng.random() * 3)
    chosen = sorted(range(len(label_set)), key=lambda _: rng.random())[:count]
    return LABEL_SEPARATORS[task].join(label_set[i] for i in chosen)


def _tiny_frames(gen: torch.Generator, count: int, size: int = 28) -> list[torch.Tensor]:
    """Smooth random colour gradients with a little noise (uint8 [size, size, 3])."""
    frames = []
    ramp = torch.linspace(0, 1, size)
    for _ in range(count):
        corners = torch.rand(2, 3, generator=gen) * 255  # colour at the top-left and bottom-right
        t = ((ramp[:, None] + ramp[None, :]) / 2)[..., None]  # [size, size, 1]
        image = corners[0] * (1 - t) + corners[1] * t + torch.randn(size, size, 3, generator=gen) * 6
        frames.append(image.clamp(0, 255).round().to(torch.uint8))
    return frames


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tiny_clip(path: Path, gen: torch.Generator, seconds: float = 2.5, fps: int = 4, size: int = 32) -> None:
    """A tiny mp4 (H.264 video, AAC mono audio at 16 kHz) for prepare-step tests; needs PyAV."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    num_frames, rate = int(seconds * fps), 16000
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for frame in _tiny_frames(gen, num_frames, size):
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame.numpy(), format="rgb24")))
        container.mux(video.encode())
        tone = np.sin(2 * math.pi * 220 * np.arange(int(seconds * rate)) / rate).astype(np.float32) * 0.3
        samples = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
        samples.sample_rate = rate
        container.mux(audio.encode(samples))
        container.mux(audio.encode())


def make_mme_emotion_sample(
    out_dir: str | Path, seed: int = 0, *, num_per_task: int = DEFAULT_NUM_PER_TASK, with_videos: bool = False
) -> dict[str, Any]:
    """Write a tiny MME-Emotion-layout set: every task's question and audio-clue files, the media
    cache (random tensors of the tiny Thinker's shapes) and the judge frame cache (2-10 tiny PNG
    frames per clip); with ``with_videos`` also tiny mp4 clips under ``videos/`` (PyAV).

    Deterministic: texts from ``random.Random(seed)``, tensors from a seeded ``torch.Generator``
    (the mp4 files depend on the encoder build). Returns the info (also written, last).
    """
    from merr1.components.data.sample import _tiny_media

    out = Path(out_dir)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    video_ids: dict[str, list[str]] = {}
    for task in TASKS:
        questions, clues = [], []
        shared = video_ids.get(_SHARED_CLIPS.get(task, ""), [])
        for i in range(num_per_task):
            source, label_set = SAMPLE_SOURCES[task][i % len(SAMPLE_SOURCES[task])]
            video_id = f"{source}/video/{task_file_stem(task).lower()}_{i:03d}.mp4"
            if i < len(shared) and i % 2 == 0:
                video_id = shared[i]
            label = _draw_label(rng, task, label_set)
            voice, cue = _VOICE[int(rng.random() * len(_VOICE))], _CUE[int(rng.random() * len(_CUE))]
            questions.append({"video_id": video_id, "label": label, "label_set": list(label_set)})
            text = f"The speaker's voice is {voice}, with {cue}, which suggests {label}."
            clues.append({"video_id": video_id, "ground_truth": label, "audio_clue": text})
        video_ids[task] = [q["video_id"] for q in questions]
        _write_json(question_file(out, task), questions)
        _write_json(audio_clue_file(out, task), clues)
    unique = list(dict.fromkeys(v for ids in video_ids.values() for v in ids))
    for video_id in unique:
        data_media.save_media(data_media.cache_path(out / MEDIA_DIR, cache_name(video_id)), _tiny_media(gen))
        write_frames(out / FRAMES_DIR, video_id, _tiny_frames(gen, 2 + int(torch.randint(0, 9, (1,), generator=gen))))
        if with_videos:
            write_tiny_clip(out / VIDEOS_DIR / video_id, gen)
    info = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_per_task": num_per_task,
        "tasks": list(TASKS),
        "num_videos": len(unique),
        "media_dir": MEDIA_DIR,
        "frames_dir": FRAMES_DIR,
        "videos_dir": VIDEOS_DIR if with_videos else None,
    }
    _write_json(out / SAMPLE_INFO, info)
    return info


def ensure_mme_emotion_sample(data_dir: str | Path, seed: int = 0, **kwargs) -> dict[str, Any]:
    """Generate the MME-Emotion sample set into ``data_dir`` unless it is there; return its info."""
    from merr1.components.data.sample import ensure_generated

    return ensure_generated(data_dir, make_mme_emotion_sample, SAMPLE_INFO, GENERATOR_VERSION, seed, **kwargs)


# ---------------------------------------------------------------------------------------------
# Preparing the caches from the videos (scripts/prepare_mme_emotion.py; PyAV)


@dataclass
class PrepareReport:
    """What ``prepare_caches`` did per cache: entries written, already there, and failures."""

    written: dict[str, int] = field(default_factory=lambda: {"media": 0, "frames": 0})
    cached: dict[str, int] = field(default_factory=lambda: {"media": 0, "frames": 0})
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (video_id, cache, reason)


def task_video_ids(data_dir: str | Path, tasks: Sequence[str] = TASKS) -> list[str]:
    """Every distinct ``video_id`` of the tasks' question files, in file order."""
    ids: dict[str, None] = {}
    for task in tasks:
        for record in _read_json_list(question_file(data_dir, task)):
            if isinstance(record, dict) and isinstance(record.get("video_id"), str) and record["video_id"]:
                ids.setdefault(record["video_id"], None)
    return list(ids)


def _media_entry(path: Path, modalities: Sequence[str], config, featurizer) -> dict[str, torch.Tensor]:
    from merr1.components.data.frames import read_audio_track

    media: dict[str, torch.Tensor] = {}
    if "audio" in modalities:
        waveform, rate = read_audio_track(path, config.sampling_rate)
        media.update(featurizer(waveform, rate))
    if "video" in modalities:
        media.update(data_media.video_media(data_media.PyAVFrameSource(path), config))
    return media


def prepare_caches(
    video_ids: Sequence[str],
    video_dir: str | Path,
    *,
    media_dir: str | Path | None,
    frames_dir: str | Path | None,
    config=None,
    modalities: Sequence[str] = ("audio", "video"),
    max_side: int | None = None,
    progress: bool = True,
) -> PrepareReport:
    """Decode each clip ``{video_dir}/{video_id}`` once into the media cache (the model under
    test's inputs: the clip's own audio track and its video) and the judge frame cache.

    Idempotent (existing entries are kept). A missing or undecodable clip is reported (video id,
    cache, reason; also logged) and gets no entry, so the judge drops it as the official script
    does; a clip whose video decodes to no frame gets an empty frame entry (also dropped).

    Args:
        video_ids: clips to prepare.
        video_dir: root the video ids are relative to.
        media_dir: media cache folder; None skips the media cache.
        frames_dir: judge frame folder; None skips the frames.
        config: ``MediaConfig`` (e.g. ``MediaConfig.from_pretrained(checkpoint)``; needed for media).
        modalities: media the cache entries hold.
        max_side: judge frames larger than this are scaled down (None: native, official).
        progress: show a tqdm bar.
    """
    from tqdm import tqdm

    from merr1.components.data.frames import decode_judge_frames, write_frames

    if media_dir is not None and config is None:
        raise ValueError("prepare_caches needs a MediaConfig to build the media cache")
    featurizer = data_media.AudioFeaturizer(config) if media_dir is not None and "audio" in modalities else None
    report = PrepareReport()
    for video_id in tqdm(video_ids, desc="prepare MME-Emotion", disable=not progress):
        path = Path(video_dir) / video_id
        name = cache_name(video_id)
        jobs = []
        if media_dir is not None:
            jobs.append(("media", data_media.cache_path(media_dir, name)))
        if frames_dir is not None:
            jobs.append(("frames", frames_entry(frames_dir, video_id)))
        for kind, target in jobs:
            if target.exists():
                report.cached[kind] += 1
                continue
            try:
                if not path.is_file():
                    raise ValueError(f"video file missing: {path}")
                if kind == "media":
                    data_media.save_media(target, _media_entry(path, modalities, config, featurizer))
                else:
                    write_frames(frames_dir, video_id, decode_judge_frames(path, max_side=max_side))
            except ImportError:
                raise
            except Exception as e:  # PyAV raises its own error types on broken files
                log.warning("prepare: %s (%s): %s", video_id, kind, e)
                report.failed.append((video_id, kind, str(e)))
                continue
            report.written[kind] += 1
    log.info("prepare: written %s, already there %s, failed %d (of %d clips)", report.written, report.cached,
             len(report.failed), len(video_ids))  # fmt: skip
    return report
