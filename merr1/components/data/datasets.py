"""Datasets: MER-Caption+ (SFT and RL) and MER-UniBench-format evaluation sets.

MER-Caption+ (METHOD section 1), files in ``data_dir``:

- ``track2_train_mercaptionplus.csv``: ``name, openset`` (a list string such as
  ``['worried', 'sad']``; empty or ``[]`` means "neutral");
- ``track3_train_mercaptionplus.csv``: ``name, reason`` (needed in ``sft`` mode only);
- ``subtitle_chieng.csv``: ``name, chinese, english`` (only ``english`` is read);
- ``media_cache/{name}.safetensors``: the decoded media (``merr1.components.data.media``; made by
  ``scripts/prepare_media.py`` from the official ``video/`` and ``audio/`` folders).

MER-UniBench evaluation sets come either from the official release, read as released by
``merr1.components.data.mer_unibench_release`` (``mer_unibench_official``; docs/mer_unibench.md), or from
merr1's own simple layout, one folder per data set:

- ``labels.csv`` whose second column names the task:
  ``name, openset`` -> fine-grained (OV-MERD+ style list string; empty -> neutral),
  ``name, label``   -> basic emotion (one word, e.g. MER2023/MER2024/MELD/IEMOCAP),
  ``name, score``   -> sentiment (a number, e.g. MOSI/MOSEI/SIMS/SIMSv2);
- ``subtitle.csv``: ``name, english`` (other columns ignored);
- ``media_cache/{name}.safetensors``.

SFT/RL partition (paper: 5k random samples for SFT, the rest for RL): ``split_sft_rl`` ranks the
unique names by SHA-256 of ``"{seed}\\0{name}"`` and takes the first ``num_sft_samples`` for SFT.
It is deterministic across machines and Python versions and does not depend on row order; it is
computed on every name of the openset file, before bad rows are dropped, so a missing media file
never moves other samples between the splits.

Items (dicts; ``SFTCollator`` / ``PromptCollator`` from ``merr1.components.data.collate``, also
importable from ``merr1.components.data``, turn lists of them into batches):

- ``sft`` mode: ``name``, ``input_ids`` [L], ``labels`` [L] (-100 on the prompt; the target and
  the closing ``<|im_end|>`` are supervised), ``media`` (per-sample Thinker kwargs, {} text-only);
- ``rl`` mode: ``name``, ``prompt_ids`` [P], ``labels`` (parsed GT words, [] = neutral), ``media``;
- evaluation: ``name``, ``prompt_ids`` (fast mode: with the prefill), ``labels`` (parsed GT words;
  [] for sentiment), ``label`` (the raw label cell; a float for sentiment), ``response_prefix``
  (the prefill text to prepend to a generated continuation), ``media``.

Missing values: a subtitle or openset cell that pandas' ``read_csv`` would read as NaN (an empty
cell or one of its default NA strings such as ``NA``, ``None``, ``null``, ``nan``; the official
code reads every CSV with pandas) is an empty subtitle / the neutral label, as in the official code.

Audio in video (``use_audio_in_video``, on by default): when a set has both audio and video, the
audio is the clip's own sound track (``scripts/prepare_media.py`` takes it from ``audio/{name}.wav``
or from the clip), so the prompts interleave it with the video chunk by chunk, exactly as the
Qwen2.5-Omni processor does with ``use_audio_in_video=True`` (``prompts.audio_in_video_chunks``), and
each item's ``media`` carries ``use_audio_in_video`` so the Thinker aligns audio and video in time
(TMRoPE). Why on: Qwen2.5-Omni is pre-trained on video with its own audio this way, and MER clips
are talking faces whose tone and expressions belong together in time. Turn it off
(``dataset.use_audio_in_video=false``) for audio that is not the clip's track, or to reproduce a
run with separate blocks (audio first, then video); a cache is the same either way.

Bad rows (duplicate name, unknown label format, empty basic label or unreadable score, missing or
empty reason in ``sft`` mode, missing subtitle row, missing/unreadable/inconsistent media entry,
too long) are logged with their name and reason, counted in one summary line and skipped; with
``strict=True`` they raise ``ValueError`` instead, and so does a data set left with no sample.
Missing CSV files or columns raise immediately (before any training starts).

``max_seq_len`` (SFT): the reasoning is truncated at its end so that prompt + target fits; the
answer is never cut. A sample whose prompt + empty reasoning + answer is still too long is
dropped as a bad row ("too long"). In ``rl``/evaluation mode prompts longer than ``max_seq_len``
are dropped the same way (a prompt is never truncated).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from merr1.components.config_checks import forwards_kwargs_to
from merr1.components.data import media as data_media
from merr1.components.data.collate import IGNORE_INDEX
from merr1.components.emotion_wheel import parse_emotion_list
from merr1.components.data.collate import USE_AUDIO_IN_VIDEO
from merr1.components.data.prompts import (
    QWEN_OMNI_SYSTEM_PROMPT,
    PromptEncoder,
    ResponseFormat,
    audio_in_video_chunks,
    encode_target,
    num_audio_tokens,
    num_video_tokens,
)

__all__ = [
    "BadRow",
    "BadRowError",
    "EvalRow",
    "EvalSet",
    "MERCaptionPlusDataset",
    "MERUniBenchDataset",
    "mer_caption_plus",
    "mer_caption_plus_sample",
    "mer_unibench",
    "mer_unibench_sample",
    "parse_openset",
    "is_pandas_na",
    "parse_openset_cell",
    "read_csv",
    "read_eval_folder",
    "read_subtitles",
    "split_sft_rl",
]

log = logging.getLogger(__name__)

TRACK2_CSV = "track2_train_mercaptionplus.csv"
TRACK3_CSV = "track3_train_mercaptionplus.csv"
SUBTITLE_CSV = "subtitle_chieng.csv"
EVAL_LABELS_CSV = "labels.csv"
EVAL_SUBTITLE_CSV = "subtitle.csv"
MEDIA_DIR = "media_cache"
EVAL_TASKS = {"openset": "ovmerd", "label": "basic", "score": "sentiment"}
_MAX_LOGGED_BAD_ROWS = 20


# ---------------------------------------------------------------------------------------------
# Labels and partition


@dataclass
class BadRow:
    """A skipped row: sample name, the kind of problem (counted in the summary) and details."""

    name: str
    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.kind}" + (f": {self.detail}" if self.detail else "")


class BadRowError(ValueError):
    """A row that cannot be used (kind: short category, detail: specifics)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail



# The official MER-UniBench split rule (METHOD section 2, step 1), one implementation for labels,
# rewards and scores.
parse_openset = parse_emotion_list


# pandas.read_csv's default NA strings (pandas._libs.parsers.STR_NA_VALUES, pandas 2.x): the
# official code reads every CSV with pandas, so these cells are NaN there (an empty subtitle, the
# neutral label). Compared with the raw cell, unstripped, as pandas does.
PANDAS_NA_STRINGS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
})  # fmt: skip


def is_pandas_na(cell: str) -> bool:
    """Whether ``pandas.read_csv`` (default settings) reads this raw CSV cell as NaN."""
    return cell in PANDAS_NA_STRINGS


def parse_openset_cell(text: str) -> list[str]:
    """A MER-Caption+/OV-MERD+ openset cell -> GT words; BadRowError for an unknown format.

    ``""``, ``"[]"`` and pandas' NA strings (``is_pandas_na``) are the neutral label (an empty
    list). Any other cell must split into items that each contain a letter (so ``"["``,
    ``"[,]"`` or ``"[1, 2]"`` are rejected).
    """
    stripped = text.strip()
    if stripped in ("", "[]") or is_pandas_na(text):
        return []
    words = parse_openset(stripped)
    if not words or any(not re.search(r"[^\W\d_]", w) for w in words):
        raise BadRowError("unknown label format", repr(text))
    return words


def split_sft_rl(names: Iterable[str], num_sft_samples: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """The deterministic SFT/RL partition (paper: random 5k for SFT, the rest for RL).

    Args:
        names: sample names (duplicates are merged).
        num_sft_samples: how many names go to SFT.
        seed: partition seed.

    Returns:
        (sft_names, rl_names), each sorted.
    """
    unique = sorted(set(names))
    if not 0 <= num_sft_samples <= len(unique):
        raise ValueError(f"num_sft_samples={num_sft_samples} but there are {len(unique)} distinct names")
    ranked = sorted(unique, key=lambda n: hashlib.sha256(f"{seed}\0{n}".encode()).digest())
    chosen = set(ranked[:num_sft_samples])
    return [n for n in unique if n in chosen], [n for n in unique if n not in chosen]


# ---------------------------------------------------------------------------------------------
# Files


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file (a leading BOM is dropped); clear errors naming the file and line.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not UTF-8 (names the line and byte, e.g. a Latin-1 or GBK export).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path}: line {line} is not UTF-8 (byte 0x{data[err.start]:02x} at column {column}): "
            "save the file as UTF-8 (e.g. `iconv -f GBK -t UTF-8`)"
        ) from err


def read_csv_rows(path: str | Path) -> list[list[str]]:
    """All rows of a UTF-8 CSV file as lists of cells (the header first)."""
    return list(csv.reader(io.StringIO(read_text_file(path), newline="")))


def read_csv(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, str]]:
    """Rows of a UTF-8 CSV file as dicts (names stripped); clear errors for a missing file or
    column (``name`` is always required) and a file that is not UTF-8 (``read_text_file``)."""
    path = Path(path)
    required = ("name", *[c for c in required if c != "name"])
    reader = csv.DictReader(io.StringIO(read_text_file(path), newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {columns}")
    rows = []
    for row in reader:
        row = {(k or "").strip(): (v if v is not None else "") for k, v in row.items()}
        row["name"] = row["name"].strip()
        rows.append(row)
    return rows


def read_subtitles(path: str | Path, column: str = "english") -> dict[str, str]:
    """name -> subtitle (``name`` and ``column``; other columns ignored). A cell pandas reads as
    NaN is ``""`` (the official ``if pd.isna(subtitle): subtitle = ""``); a repeated name keeps
    its last row (the official dict does the same)."""
    rows = read_csv(path, ("name", column))
    return {row["name"]: "" if is_pandas_na(row[column]) else row[column].strip() for row in rows}


@dataclass
class _Record:
    name: str
    words: list[str]
    subtitle_ids: torch.Tensor  # [S] int32 (the prompt is assembled in __getitem__)
    num_audio: int
    num_video: int
    media_path: Path | None
    target_ids: torch.Tensor | None = None  # [T] SFT target incl. <|im_end|>
    label: Any = None
    audio_in_video: tuple[tuple[int, int], ...] | None = None  # interleaved chunks (video, audio tokens)


class _SampleEncoder:
    """Shared by all datasets: prompt ids (placeholders from the cached media shapes) and media."""

    def __init__(
        self,
        tokenizer,
        response_format: str,
        system_prompt: str | None,
        instruction: str | None,
        modalities: Sequence[str],
        spatial_merge_size: int,
        num_mel_bins: int | None,
        use_audio_in_video: bool = True,
        position_id_per_seconds: int = 25,
        seconds_per_chunk: float = 2.0,
    ):
        self.tokenizer = tokenizer
        self.prompts = PromptEncoder(tokenizer, response_format, system_prompt, instruction)
        self.format: ResponseFormat = self.prompts.format
        self.modalities = tuple(modalities)
        unknown = set(self.modalities) - {"audio", "video"}
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; use a subset of ['audio', 'video']")
        self.spatial_merge_size = spatial_merge_size
        self.num_mel_bins = num_mel_bins
        self.media_keys = (data_media.AUDIO_KEYS if "audio" in self.modalities else ()) + (
            data_media.VIDEO_KEYS if "video" in self.modalities else ()
        )
        self.audio_in_video = use_audio_in_video and {"audio", "video"} <= set(self.modalities)
        self.position_id_per_seconds = position_id_per_seconds
        self.seconds_per_chunk = seconds_per_chunk

    def media_counts(self, path: Path) -> tuple[int, int, tuple[tuple[int, int], ...] | None]:
        """(num audio tokens, num video tokens, audio-in-video chunks or None) of a cache entry;
        BadRowError if unusable."""
        if not path.is_file():
            raise BadRowError("missing media file", str(path))
        try:
            shapes, grid, second_per_grid = data_media.inspect_media(path)
        except Exception as e:  # safetensors raises its own error types on corrupt files
            raise BadRowError("unreadable media", f"{path}: {e}") from e
        try:
            data_media.validate_media(shapes, self.modalities, self.num_mel_bins)
            num_audio = num_audio_tokens(shapes["input_features"][2]) if "audio" in self.modalities else 0
            if "audio" in self.modalities and num_audio < 1:
                raise ValueError(f"audio of {shapes['input_features'][2]} frames gives no audio token")
            num_video = 0
            if "video" in self.modalities:
                num_video = num_video_tokens(grid, self.spatial_merge_size)
                if shapes["pixel_values_videos"][0] != grid[0] * grid[1] * grid[2]:
                    raise ValueError(f"video has {shapes['pixel_values_videos'][0]} patches for grid {grid}")
            chunks = None
            if self.audio_in_video:
                chunks = tuple(
                    audio_in_video_chunks(
                        num_audio, grid, second_per_grid, spatial_merge_size=self.spatial_merge_size,
                        position_id_per_seconds=self.position_id_per_seconds, seconds_per_chunk=self.seconds_per_chunk,
                    )
                )  # fmt: skip
        except ValueError as e:
            raise BadRowError("inconsistent media", f"{path}: {e}") from e
        return num_audio, num_video, chunks

    def tokenize_subtitles(self, subtitles: dict[str, str], names: set[str]) -> dict[str, list[int]]:
        """name -> subtitle token ids for the ``names`` that have a subtitle (one tokenizer call)."""
        wanted = [n for n in subtitles if n in names]
        return dict(zip(wanted, self.prompts.encode_subtitles([subtitles[n] for n in wanted])))

    def prompt_length(self, num_subtitle_tokens: int, num_audio: int, num_video: int, fast: bool = False) -> int:
        return self.prompts.prompt_length(num_subtitle_tokens, num_audio, num_video, fast, self.audio_in_video)

    def prompt_ids(self, record: "_Record", fast: bool = False) -> torch.Tensor:
        ids = self.prompts.assemble(
            record.subtitle_ids.tolist(), record.num_audio, record.num_video, fast, record.audio_in_video
        )
        return torch.tensor(ids, dtype=torch.long)

    def load_media(self, record: "_Record") -> dict[str, torch.Tensor]:
        if record.media_path is None:
            return {}
        media = data_media.load_media(record.media_path)
        out = {k: media[k] for k in self.media_keys}
        if record.audio_in_video is not None:
            out[USE_AUDIO_IN_VIDEO] = torch.tensor(True)
        return out


def _report_bad_rows(what: str, bad_rows: list[BadRow], num_kept: int, strict: bool) -> None:
    if num_kept == 0 and not bad_rows:  # strict or not: a data set without a sample trains nothing
        raise ValueError(f"{what}: no sample: the label file has a header but no data rows, or the split selects none")
    if not bad_rows:
        log.info("%s: %d samples", what, num_kept)
        return
    if strict:
        raise ValueError(f"{what}: {len(bad_rows)} bad row(s) (strict=True); first: {bad_rows[0]}")
    if num_kept == 0:
        raise ValueError(f"{what}: no usable sample, all {len(bad_rows)} rows are bad; first: {bad_rows[0]}")
    for row in bad_rows[:_MAX_LOGGED_BAD_ROWS]:
        log.warning("%s: skipping %s", what, row)
    counts: dict[str, int] = {}
    for row in bad_rows:
        counts[row.kind] = counts.get(row.kind, 0) + 1
    more = len(bad_rows) - _MAX_LOGGED_BAD_ROWS
    log.warning(
        "%s: %d samples, skipped %d bad rows (%s)%s",
        what,
        num_kept,
        len(bad_rows),
        ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        f"; {more} not listed above, see dataset.bad_rows" if more > 0 else "",
    )


# ---------------------------------------------------------------------------------------------
# MER-Caption+


class MERCaptionPlusDataset(Dataset):
    """MER-Caption+ for SFT (prompt + target) or RL (prompt + GT words). See the module docstring.

    Args:
        tokenizer: HF tokenizer with the Qwen special tokens (tiny or real).
        data_dir: folder with the official CSVs (and ``media_cache/``).
        split: "sft", "rl" (the partition of ``split_sft_rl``) or "all".
        mode: "sft" or "rl"; None = same as ``split`` (required when split="all").
        num_sft_samples: SFT partition size (paper: 5000).
        partition_seed: partition seed.
        response_format: "mer_r1", "videoauto_r1" or "emo_r3" (prompt instruction and SFT target).
        system_prompt: system turn (None: no system turn).
        instruction: replaces the format's instruction text (None: the format's own).
        modalities: subset of ("audio", "video"); () for text-only models.
        media_dir: media cache folder (default ``{data_dir}/media_cache``).
        max_seq_len: see the module docstring; None = no limit.
        strict: raise on the first bad row instead of skipping.
        spatial_merge_size: vision merge size (2 for Qwen2.5-Omni).
        num_mel_bins: if given, cached audio must have this many mel bins.
        use_audio_in_video: interleave each clip's audio with its video (module docstring); only
            acts when ``modalities`` has both audio and video.
        position_id_per_seconds, seconds_per_chunk: the Thinker config's (25 and 2 for Qwen2.5-Omni).
    """

    def __init__(
        self,
        tokenizer,
        data_dir: str | Path,
        split: str = "sft",
        *,
        mode: str | None = None,
        num_sft_samples: int = 5000,
        partition_seed: int = 0,
        response_format: str = "mer_r1",
        system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
        instruction: str | None = None,
        modalities: Sequence[str] = ("audio", "video"),
        media_dir: str | Path | None = None,
        max_seq_len: int | None = None,
        strict: bool = False,
        spatial_merge_size: int = 2,
        num_mel_bins: int | None = None,
        use_audio_in_video: bool = True,
        position_id_per_seconds: int = 25,
        seconds_per_chunk: float = 2.0,
    ):
        if split not in ("sft", "rl", "all"):
            raise ValueError(f"split must be 'sft', 'rl' or 'all', got {split!r}")
        mode = mode if mode is not None else split
        if mode not in ("sft", "rl"):
            raise ValueError(f"mode must be 'sft' or 'rl', got {mode!r} (set mode when split='all')")
        self.mode = mode
        self.split = split
        data_dir = Path(data_dir)
        self.encoder = _SampleEncoder(
            tokenizer, response_format, system_prompt, instruction, modalities, spatial_merge_size, num_mel_bins,
            use_audio_in_video, position_id_per_seconds, seconds_per_chunk,
        )  # fmt: skip
        media_dir = Path(media_dir) if media_dir is not None else data_dir / MEDIA_DIR

        # All files are opened first: a missing CSV fails before anything else happens.
        label_rows = read_csv(data_dir / TRACK2_CSV, ("name", "openset"))
        reasons = (
            {row["name"]: row["reason"] for row in read_csv(data_dir / TRACK3_CSV, ("name", "reason"))}
            if mode == "sft"
            else {}
        )
        subtitles = read_subtitles(data_dir / SUBTITLE_CSV)

        all_names = [row["name"] for row in label_rows]
        if split == "all":
            selected = set(all_names)
        else:
            sft_names, rl_names = split_sft_rl(all_names, num_sft_samples, partition_seed)
            selected = set(sft_names if split == "sft" else rl_names)
        subtitle_ids = self.encoder.tokenize_subtitles(subtitles, selected)

        self.records: list[_Record] = []
        self.bad_rows: list[BadRow] = []
        self.num_truncated = 0
        seen: set[str] = set()
        for row in label_rows:
            name = row["name"]
            if name not in selected:
                continue
            if name in seen:
                self.bad_rows.append(BadRow(name, "duplicate name"))
                continue
            seen.add(name)
            try:
                record = self._make_record(row, reasons, subtitle_ids, media_dir, max_seq_len)
            except BadRowError as e:
                self.bad_rows.append(BadRow(name, e.kind, e.detail))
                continue
            self.records.append(record)
        _report_bad_rows(f"MER-Caption+ {split}/{mode} ({data_dir})", self.bad_rows, len(self.records), strict)
        if self.num_truncated:
            log.info("MER-Caption+ %s: truncated the reasoning of %d samples (max_seq_len)", split, self.num_truncated)

    def _make_record(self, row, reasons, subtitle_ids, media_dir, max_seq_len) -> _Record:
        name = row["name"]
        words = parse_openset_cell(row["openset"])
        if name not in subtitle_ids:
            raise BadRowError("missing subtitle")
        num_audio, num_video, chunks, media_path = 0, 0, None, None
        if self.encoder.modalities:
            media_path = data_media.cache_path(media_dir, name)
            num_audio, num_video, chunks = self.encoder.media_counts(media_path)
        ids = subtitle_ids[name]
        prompt_len = self.encoder.prompt_length(len(ids), num_audio, num_video)
        record = _Record(
            name, words, torch.tensor(ids, dtype=torch.int32), num_audio, num_video, media_path, audio_in_video=chunks
        )
        if self.mode == "rl":
            if max_seq_len is not None and prompt_len > max_seq_len:
                raise BadRowError("too long", f"prompt has {prompt_len} tokens > max_seq_len={max_seq_len}")
            return record
        reason = reasons.get(name, "").strip()
        if not reason:
            raise BadRowError("missing reason")
        target, _ = encode_target(self.encoder.tokenizer, reason, words, self.encoder.format)
        if max_seq_len is not None and prompt_len + len(target) > max_seq_len:
            target = self._truncate(reason, words, max_seq_len - prompt_len, prompt_len)
            self.num_truncated += 1
        record.target_ids = torch.tensor(target, dtype=torch.int32)
        return record

    def _truncate(self, reason: str, words: list[str], budget: int, prompt_len: int) -> list[int]:
        tokenizer, fmt = self.encoder.tokenizer, self.encoder.format
        empty, _ = encode_target(tokenizer, reason, words, fmt, max_reason_tokens=0)
        if len(empty) > budget:
            raise BadRowError("too long", f"prompt ({prompt_len}) + answer ({len(empty)}) tokens > max_seq_len")
        # Re-tokenized step boundaries (emo_r3) can add a token or two: shrink until it fits.
        keep = budget - len(empty)
        while True:
            target, _ = encode_target(tokenizer, reason, words, fmt, max_reason_tokens=keep)
            if len(target) <= budget:
                return target
            keep -= len(target) - budget

    def __len__(self) -> int:
        return len(self.records)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        prompt = self.encoder.prompt_ids(record)
        media = self.encoder.load_media(record)
        if self.mode == "rl":
            return {"name": record.name, "prompt_ids": prompt, "labels": list(record.words), "media": media}
        target = record.target_ids.long()
        return {
            "name": record.name,
            "input_ids": torch.cat([prompt, target]),
            "labels": torch.cat([torch.full_like(prompt, IGNORE_INDEX), target]),
            "media": media,
        }


# ---------------------------------------------------------------------------------------------
# MER-UniBench evaluation sets


@dataclass
class EvalRow:
    """One evaluation sample as read from its files, before the media and prompt checks.

    ``label`` is the GT as scored (an openset cell, a basic-emotion word, or a sentiment score);
    ``words`` its parsed GT words ([] for sentiment); ``subtitle`` None when the subtitle file
    has no row for the name; ``problem`` set when the label cannot be used (the row is then
    reported as a bad row with that kind and detail).
    """

    name: str
    label: Any = None
    words: list[str] = field(default_factory=list)
    subtitle: str | None = None
    problem: BadRowError | None = None


@dataclass
class EvalSet:
    """An evaluation set read from disk: rows in evaluation order plus where its media cache is.

    Attributes:
        name: data set name for reports and prediction files.
        task: "ovmerd", "basic" or "sentiment".
        rows: every sample (bad ones included, with ``problem``), in file order.
        media_dir: the media cache folder (``{name}.safetensors`` per sample).
        source: where it was read from (for messages).
        benchmark: the official MER-UniBench data set id (e.g. "MER2023") or None.
    """

    name: str
    task: str
    rows: list[EvalRow]
    media_dir: Path
    source: str
    benchmark: str | None = None


def _eval_label(task: str, cell: str) -> tuple[Any, list[str]]:
    """(raw label, parsed GT words) of one labels.csv cell; BadRowError for a bad cell."""
    if task == "ovmerd":
        return cell, parse_openset_cell(cell)
    if task == "basic":
        word = cell.strip().lower()
        if not word:
            raise BadRowError("empty label")
        if not re.search(r"[^\W\d_]", word):
            raise BadRowError("unknown label format", repr(cell))
        return cell.strip(), [word]
    try:
        score = float(cell)
    except ValueError:
        raise BadRowError("unreadable score", repr(cell)) from None
    if not math.isfinite(score):
        raise BadRowError("unreadable score", repr(cell))
    return score, []


def read_eval_folder(data_dir: str | Path, media_dir: str | Path | None = None, name: str | None = None) -> EvalSet:
    """An evaluation set in merr1's own layout (module docstring): ``labels.csv`` (its label
    column names the task), ``subtitle.csv``, ``media_cache/`` (or ``media_dir``).

    Raises:
        FileNotFoundError / ValueError: a missing file or column, or not exactly one label column.
    """
    data_dir = Path(data_dir)
    rows = read_csv(data_dir / EVAL_LABELS_CSV, ("name",))
    header = [c.strip() for c in read_csv_rows(data_dir / EVAL_LABELS_CSV)[0]]
    columns = [c for c in header if c in EVAL_TASKS]
    if len(columns) != 1:
        raise ValueError(
            f"{data_dir / EVAL_LABELS_CSV} must have exactly one label column of {list(EVAL_TASKS)}; header {header}"
        )
    task = EVAL_TASKS[columns[0]]
    subtitles = read_subtitles(data_dir / EVAL_SUBTITLE_CSV)
    out = []
    for row in rows:
        entry = EvalRow(row["name"], subtitle=subtitles.get(row["name"]))
        try:
            entry.label, entry.words = _eval_label(task, row[columns[0]])
        except BadRowError as e:
            entry.problem = e
        out.append(entry)
    return EvalSet(
        name or data_dir.name, task, out, Path(media_dir) if media_dir is not None else data_dir / MEDIA_DIR,
        str(data_dir),
    )  # fmt: skip


class MERUniBenchDataset(Dataset):
    """One MER-UniBench evaluation set, prompts in slow or fast mode.

    Args:
        tokenizer: HF tokenizer.
        data_dir: the data set's folder in merr1's layout (``labels.csv``, ``subtitle.csv``,
            ``media_cache/``; see the module docstring), or an already read ``EvalSet`` (the
            official release's readers in ``merr1.components.data.mer_unibench_release``).
        mode: "slow" (think then answer) or "fast" (prefilled empty reasoning).
        response_format, system_prompt, instruction, modalities, max_seq_len, strict,
        spatial_merge_size, num_mel_bins, use_audio_in_video, position_id_per_seconds,
        seconds_per_chunk: as in ``MERCaptionPlusDataset``.
        media_dir: media cache folder (default: ``{data_dir}/media_cache`` / the EvalSet's).
        name: data set name for reports (default: the folder name / the EvalSet's).

    Attributes:
        task: "ovmerd", "basic" or "sentiment" (from the labels.csv header / the EvalSet).
        benchmark: the official MER-UniBench id (e.g. "MER2023") or None (merr1's layout).
        response_prefix: the prefill text ("" in slow mode).
    """

    def __init__(
        self,
        tokenizer,
        data_dir: str | Path | EvalSet,
        mode: str = "slow",
        *,
        response_format: str = "mer_r1",
        system_prompt: str | None = QWEN_OMNI_SYSTEM_PROMPT,
        instruction: str | None = None,
        modalities: Sequence[str] = ("audio", "video"),
        media_dir: str | Path | None = None,
        max_seq_len: int | None = None,
        strict: bool = False,
        spatial_merge_size: int = 2,
        num_mel_bins: int | None = None,
        name: str | None = None,
        use_audio_in_video: bool = True,
        position_id_per_seconds: int = 25,
        seconds_per_chunk: float = 2.0,
    ):
        if mode not in ("slow", "fast"):
            raise ValueError(f"mode must be 'slow' or 'fast', got {mode!r}")
        if isinstance(data_dir, EvalSet):
            eval_set = data_dir
            media_dir = Path(media_dir) if media_dir is not None else eval_set.media_dir
            name = name or eval_set.name
        else:
            eval_set = read_eval_folder(data_dir, media_dir, name)
            media_dir, name = eval_set.media_dir, eval_set.name
        self.name = name
        self.mode = mode
        self.task = eval_set.task
        self.benchmark = eval_set.benchmark
        self.encoder = _SampleEncoder(
            tokenizer, response_format, system_prompt, instruction, modalities, spatial_merge_size, num_mel_bins,
            use_audio_in_video, position_id_per_seconds, seconds_per_chunk,
        )  # fmt: skip
        self.response_prefix = self.encoder.format.fast_prefix if mode == "fast" else ""
        subtitle_ids = self.encoder.tokenize_subtitles(
            {r.name: r.subtitle for r in eval_set.rows if r.subtitle is not None and r.problem is None},
            {r.name for r in eval_set.rows},
        )

        self.records: list[_Record] = []
        self.bad_rows: list[BadRow] = []
        seen: set[str] = set()
        for row in eval_set.rows:
            if row.name in seen:
                self.bad_rows.append(BadRow(row.name, "duplicate name"))
                continue
            seen.add(row.name)
            try:
                self.records.append(self._make_record(row, subtitle_ids, media_dir, max_seq_len))
            except BadRowError as e:
                self.bad_rows.append(BadRow(row.name, e.kind, e.detail))
        _report_bad_rows(f"{self.task} set {self.name} ({eval_set.source})", self.bad_rows, len(self.records), strict)

    def _make_record(self, row: EvalRow, subtitle_ids, media_dir: Path, max_seq_len: int | None) -> _Record:
        if row.problem is not None:
            raise row.problem
        if not row.name:
            raise BadRowError("empty name")
        if row.name not in subtitle_ids:
            raise BadRowError("missing subtitle")
        num_audio, num_video, chunks, media_path = 0, 0, None, None
        if self.encoder.modalities:
            try:
                media_path = data_media.cache_path(media_dir, row.name)
            except ValueError as e:
                raise BadRowError("unusable name", str(e)) from None
            num_audio, num_video, chunks = self.encoder.media_counts(media_path)
        ids = subtitle_ids[row.name]
        prompt_len = self.encoder.prompt_length(len(ids), num_audio, num_video, self.mode == "fast")
        if max_seq_len is not None and prompt_len > max_seq_len:
            raise BadRowError("too long", f"prompt has {prompt_len} tokens > max_seq_len={max_seq_len}")
        return _Record(row.name, list(row.words), torch.tensor(ids, dtype=torch.int32), num_audio, num_video,
                       media_path, label=row.label, audio_in_video=chunks)  # fmt: skip

    def __len__(self) -> int:
        return len(self.records)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "name": record.name,
            "prompt_ids": self.encoder.prompt_ids(record, fast=self.mode == "fast"),
            "labels": list(record.words),
            "label": record.label,
            "response_prefix": self.response_prefix,
            "media": self.encoder.load_media(record),
        }


# ---------------------------------------------------------------------------------------------
# YAML builders (torchtune's instantiate calls these with the YAML kwargs; the recipe passes the
# tokenizer, positionally or as tokenizer=...).


@forwards_kwargs_to(MERCaptionPlusDataset)
def mer_caption_plus(tokenizer, data_dir: str, split: str = "sft", **kwargs) -> MERCaptionPlusDataset:
    """MER-Caption+ from the official files in ``data_dir``; kwargs as ``MERCaptionPlusDataset``."""
    return MERCaptionPlusDataset(tokenizer, data_dir, split, **kwargs)


def _sample_info(data_dir: str | Path) -> dict[str, Any]:
    from merr1.components.data.sample import ensure_sample_data

    return ensure_sample_data(data_dir)


@forwards_kwargs_to(MERCaptionPlusDataset)
def mer_caption_plus_sample(
    tokenizer,
    data_dir: str = "data/sample",
    split: str = "sft",
    *,
    num_sft_samples: int | None = None,
    partition_seed: int | None = None,
    **kwargs,
) -> MERCaptionPlusDataset:
    """The generated sample set (created in ``data_dir`` on first use, then loaded).

    The sample's SFT labels are deliberately under-covering for the names of ITS partition
    (recorded in ``sample_info.json``), so by default the partition is read from there; other
    values are allowed but mix the label regimes (a warning says so).
    """
    info = _sample_info(data_dir)
    if num_sft_samples is None:
        num_sft_samples = info["num_sft_samples"]
    if partition_seed is None:
        partition_seed = info["partition_seed"]
    if (num_sft_samples, partition_seed) != (info["num_sft_samples"], info["partition_seed"]):
        log.warning(
            "sample data was generated for num_sft_samples=%d, partition_seed=%d; using %d, %d mixes "
            "the SFT (under-covering) and RL (full) labels",
            info["num_sft_samples"], info["partition_seed"], num_sft_samples, partition_seed,
        )  # fmt: skip
    return MERCaptionPlusDataset(
        tokenizer,
        Path(data_dir) / info["mer_caption_plus_dir"],
        split,
        num_sft_samples=num_sft_samples,
        partition_seed=partition_seed,
        **kwargs,
    )


@forwards_kwargs_to(MERUniBenchDataset)
def mer_unibench(tokenizer, data_dir: str, mode: str = "slow", **kwargs) -> MERUniBenchDataset:
    """One MER-UniBench-format evaluation set; kwargs as ``MERUniBenchDataset``."""
    return MERUniBenchDataset(tokenizer, data_dir, mode, **kwargs)


@forwards_kwargs_to(MERUniBenchDataset)
def mer_unibench_sample(
    tokenizer,
    dataset: str = "ovmerd",
    data_dir: str = "data/sample",
    mode: str = "slow",
    **kwargs,
) -> MERUniBenchDataset:
    """One generated sample evaluation set: ``dataset`` in "ovmerd", "basic", "sentiment"."""
    info = _sample_info(data_dir)
    if dataset not in info["eval_sets"]:
        raise ValueError(f"unknown sample evaluation set {dataset!r}; expected one of {sorted(info['eval_sets'])}")
    return MERUniBenchDataset(tokenizer, Path(data_dir) / info["eval_sets"][dataset], mode, **kwargs)

