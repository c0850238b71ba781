"""A small, deterministic, LEARNABLE sample data set in the MER-Caption+ / MER-UniBench formats.

``make_sample_data(out_dir, seed)`` writes (about 2 s and 33 MB with media, 0.2 s and 1 MB text-only)::

    out_dir/
      sample_info.json                  # written last: marks a complete set; sizes, partition, stats
      mer_caption_plus/                 # MER-Caption+ format (merr1.components.data)
        track2_train_mercaptionplus.csv # name, openset  (SFT names: under-covering labels)
        track3_train_mercaptionplus.csv # name, reason
        subtitle_chieng.csv             # name, chinese (empty), english
        full_openset.csv                # name, openset: the complete labels (not read by training)
        media_cache/{name}.safetensors
      eval/{ovmerd,basic,sentiment}/    # MER-UniBench format: labels.csv, subtitle.csv, media_cache/

How it can be learned (the CPU quick start trains a tiny model from scratch on it):

- Four emotion concepts whose words map to one level-1 category on EVERY emotion wheel, a
  different one per concept (checked against the official wheel files when the words were chosen;
  the lists are embedded here and nothing reads the wheel files at run time):
  joy (happy, joyful) -> happy / happy / joyful / joy / powerful;
  sadness (sad, unhappy, lonely) -> sad on all five;
  anger (angry, furious, annoyed) -> mad / angry / mad / anger / mad;
  fear (worried, scared, nervous) -> scared / fearful / scared / fear / scared.
- A sample has 1 (40%), 2 (40%) or 3 (20%) distinct concepts; the English subtitle holds one
  templated cue sentence per concept (e.g. "They cancelled the match again, this is so unfair!"),
  with random fillers. The label lists one word per concept, in subtitle order; the reason is one
  short templated sentence per listed word naming the cue without the fillers ("The unfair
  cancellation makes them angry."; reasons that copied the fillers made a tiny model garble them
  at temperature 1 and GRPO then only learned to list fewer emotions). Media are random tensors
  of the tiny Thinker's shapes (16 mel bins, 8-24 frames = 2-6 audio tokens; one 28x28 frame
  pair = 1 video token, 10% of clips two pairs): they carry no signal, the subtitle does.
- Deliberately under-covering SFT labels: for the names of the SFT partition
  (``split_sft_rl(names, num_sft_samples, partition_seed)``), 60% of the multi-emotion samples list
  only one of their emotions (reason and answer), and 10% of all SFT samples get one wrong extra
  emotion. The RL names and all evaluation sets have full labels. SFT therefore teaches the
  format and the cue -> word map but under-predicts; GRPO with recall + precision rewards can
  then visibly raise recall (docs/design_notes.md, "The CPU quick start can honestly learn"; measured
  in benchmarks/RESULTS.md: held-out recall 0.83 -> 0.95 at precision 0.94 -> 0.98).
- Evaluation sets: ``ovmerd`` (openset lists, same distribution as training), ``basic`` (one
  concept, label happy/sad/angry/worried), ``sentiment`` (MOSI-style scores: joy in [0.5, 3],
  1-2 negative concepts in [-3, -0.5], and 8% neutral subtitles with score 0, which the metric
  drops).

Determinism: every random choice comes from ``random.Random(seed).random()`` and media from a
seeded ``torch.Generator``, so the same seed and arguments give byte-identical files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from merr1.components.data import media as data_media
from merr1.components.data.datasets import (
    EVAL_LABELS_CSV,
    EVAL_SUBTITLE_CSV,
    MEDIA_DIR,
    SUBTITLE_CSV,
    TRACK2_CSV,
    TRACK3_CSV,
    parse_openset,
    split_sft_rl,
)
from merr1.components.data.prompts import RESPONSE_FORMATS, QWEN_OMNI_SYSTEM_PROMPT, build_prompt

log = logging.getLogger(__name__)

SAMPLE_INFO = "sample_info.json"
GENERATOR_VERSION = 2  # bump when the generated content changes: older sets are regenerated
DEFAULT_NUM_TRAIN = 2600
DEFAULT_NUM_SFT = 600
DEFAULT_NUM_EVAL = 100

# Emotion words per concept (each maps to one category per wheel, see the module docstring).
SAMPLE_EMOTIONS: dict[str, tuple[str, ...]] = {
    "joy": ("happy", "joyful"),
    "sadness": ("sad", "unhappy", "lonely"),
    "anger": ("angry", "furious", "annoyed"),
    "fear": ("worried", "scared", "nervous"),
}
# The single label of the basic-emotion set (MER2023-style class names).
BASIC_LABELS = {"joy": "happy", "sadness": "sad", "anger": "angry", "fear": "worried"}

_FILLERS: dict[str, tuple[str, ...]] = {
    "good": ("new job", "puppy", "tickets", "scholarship", "promotion", "new bike"),
    "event": ("match", "contest", "concert", "trip", "wedding", "game"),
    "person": ("brother", "sister", "friend", "dog", "grandmother", "father"),
    "thing": ("phone", "car", "money", "bag", "watch", "laptop"),
    "test": ("exam", "interview", "test", "audition", "surgery"),
    "place": ("house", "hallway", "garden", "basement", "car park"),
}

# (subtitle sentence with {slot}s for fillers, the cue the reason names) per concept. A cue names the
# sentence's situation without its fillers: the reason classifies the subtitle, it does not copy it.
_CUES: dict[str, tuple[tuple[str, str], ...]] = {
    "joy": (
        ("We finally got the {good}, this is the best day ever!", "the good news"),
        ("I can't stop smiling since the {event}.", "the smiling"),
        ("Ha ha, the {event} was so much fun!", "the fun"),
        ("My friends threw me a party for the {good}, I love them!", "the party"),
        ("Yes! We won the {event}!", "the win"),
        ("Look at this {good}, it is wonderful!", "the wonderful surprise"),
    ),
    "sadness": (
        ("I miss my {person} so much.", "missing someone"),
        ("Nobody came to the {event}, I sat there alone.", "being alone"),
        ("I lost my {thing} and nothing feels right anymore.", "the loss"),
        ("My {person} moved away and the house feels empty.", "the empty house"),
        ("I cried all night after the {event}.", "the crying"),
        ("It is over, I will never see my {person} again.", "the goodbye"),
    ),
    "anger": (
        ("How dare you take my {thing} without asking!", "the theft"),
        ("They cancelled the {event} again, this is so unfair!", "the unfair cancellation"),
        ("Stop lying to me about the {thing}!", "the lies"),
        ("I told you three times, why do you never listen?", "not being heard"),
        ("Who broke my {thing}? I am sick of this!", "the broken things"),
        ("You ruined the {event} for everyone!", "the ruined plans"),
    ),
    "fear": (
        ("What if I fail the {test} tomorrow?", "the coming test"),
        ("I heard footsteps outside the {place} last night.", "the footsteps"),
        ("My hands are shaking, the {test} starts soon.", "the shaking hands"),
        ("Please don't leave me alone in this dark {place}.", "the dark"),
        ("The doctor still has not called about my {person}.", "the waiting"),
        ("Did you hear that noise in the {place}?", "the strange noise"),
    ),
}
_NEUTRAL_SENTENCES = (
    "I will take the bus to the {place} at nine.",
    "The {event} starts at seven, see you there.",
    "Can you pass me the {thing}, please?",
    "We need to buy milk before the {event}.",
)
_REASON = "{cue} makes them {word}."
_WRONG_REASON = "They seem {word} too."


# ---------------------------------------------------------------------------------------------
# Random helpers built on Random.random() only (its sequence is stable across Python versions).


def _pick(rng: random.Random, seq: Sequence[Any]) -> Any:
    return seq[int(rng.random() * len(seq))]


def _shuffled(rng: random.Random, seq: Sequence[Any]) -> list[Any]:
    items = list(seq)
    for i in range(len(items) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        items[i], items[j] = items[j], items[i]
    return items


def _fill(rng: random.Random, template: str) -> tuple[str, dict[str, str]]:
    values = {slot: _pick(rng, words) for slot, words in _FILLERS.items() if "{" + slot + "}" in template}
    return template.format(**values), values


def _num_concepts(rng: random.Random) -> int:
    u = rng.random()
    return 1 if u < 0.4 else 2 if u < 0.8 else 3


def _draw_sample(rng: random.Random, concepts: Sequence[str]) -> dict[str, Any]:
    """Subtitle, per-concept (word, reason sentence) for the given concepts, in subtitle order."""
    sentences, parts = [], []
    for concept in concepts:
        sentence_tpl, cue_tpl = _pick(rng, _CUES[concept])
        sentence, values = _fill(rng, sentence_tpl)
        word = _pick(rng, SAMPLE_EMOTIONS[concept])
        sentences.append(sentence)
        cue = cue_tpl.format(**values)
        parts.append((concept, word, _REASON.format(cue=cue[0].upper() + cue[1:], word=word)))
    return {"subtitle": " ".join(sentences), "parts": parts}


def _openset(words: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{w}'" for w in words) + "]"


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _tiny_media(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random media of the tiny Thinker's shapes (bf16 as the media cache stores them)."""
    num_frames = int(torch.randint(8, 25, (1,), generator=gen))
    grid_t = 2 if float(torch.rand(1, generator=gen)) < 0.1 else 1
    return {
        "input_features": torch.randn(1, 16, num_frames, generator=gen).to(torch.bfloat16),
        "feature_attention_mask": torch.ones(1, num_frames, dtype=torch.long),
        "pixel_values_videos": torch.randn(grid_t * 4, 3 * 2 * 14 * 14, generator=gen).to(torch.bfloat16),
        "video_grid_thw": torch.tensor([[grid_t, 2, 2]], dtype=torch.long),
        "video_second_per_grid": torch.tensor([1.0], dtype=torch.float32),
    }


def _write_media(media_dir: Path, names: Sequence[str], gen: torch.Generator) -> None:
    for name in names:
        data_media.save_media(data_media.cache_path(media_dir, name), _tiny_media(gen))


# ---------------------------------------------------------------------------------------------


def make_sample_data(
    out_dir: str | Path,
    seed: int = 0,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_sft_samples: int = DEFAULT_NUM_SFT,
    num_eval: int = DEFAULT_NUM_EVAL,
    partition_seed: int = 0,
    with_media: bool = True,
) -> dict[str, Any]:
    """Write the sample data set into ``out_dir`` (created; existing files are overwritten).

    Args:
        out_dir: destination folder.
        seed: generator seed (texts, labels and media).
        num_train: MER-Caption+ rows (SFT + RL).
        num_sft_samples: size of the SFT partition (its labels are under-covering).
        num_eval: rows per evaluation set.
        partition_seed: seed of ``split_sft_rl`` (the datasets must use the same one).
        with_media: write the media caches (False: text only, for text-only models).

    Returns:
        The contents of ``sample_info.json`` (also written, last).
    """
    out = Path(out_dir)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    concepts = list(SAMPLE_EMOTIONS)

    # MER-Caption+ training rows.
    names = [f"sample_{i:05d}" for i in range(num_train)]
    sft_names = set(split_sft_rl(names, num_sft_samples, partition_seed)[0])
    track2, track3, subtitles, full = [], [], [], []
    stats = {"sft": _Stats(), "rl": _Stats()}
    for name in names:
        chosen = _shuffled(rng, concepts)[: _num_concepts(rng)]
        sample = _draw_sample(rng, chosen)
        parts = sample["parts"]
        listed = list(parts)
        wrong = None
        if name in sft_names:
            if len(parts) > 1 and rng.random() < 0.6:
                listed = [_pick(rng, parts)]  # under-covering: one emotion only
            if rng.random() < 0.1:
                absent = [c for c in concepts if c not in chosen]
                wrong_concept = _pick(rng, absent) if absent else None
                if wrong_concept is not None:
                    wrong = _pick(rng, SAMPLE_EMOTIONS[wrong_concept])
        words = [w for _, w, _ in listed] + ([wrong] if wrong else [])
        reason = " ".join(r for _, _, r in listed) + (f" {_WRONG_REASON.format(word=wrong)}" if wrong else "")
        track2.append((name, _openset(words)))
        track3.append((name, reason))
        subtitles.append((name, "", sample["subtitle"]))
        full.append((name, _openset([w for _, w, _ in parts])))
        stats["sft" if name in sft_names else "rl"].add(len(parts), len(listed), wrong is not None)

    caption_dir = out / "mer_caption_plus"
    _write_csv(caption_dir / TRACK2_CSV, ("name", "openset"), track2)
    _write_csv(caption_dir / TRACK3_CSV, ("name", "reason"), track3)
    _write_csv(caption_dir / SUBTITLE_CSV, ("name", "chinese", "english"), subtitles)
    _write_csv(caption_dir / "full_openset.csv", ("name", "openset"), full)
    if with_media:
        _write_media(caption_dir / MEDIA_DIR, names, gen)

    # Evaluation sets (full labels).
    eval_sets = {"ovmerd": "eval/ovmerd", "basic": "eval/basic", "sentiment": "eval/sentiment"}
    ovmerd_rows, ovmerd_subs = [], []
    for i in range(num_eval):
        chosen = _shuffled(rng, concepts)[: _num_concepts(rng)]
        sample = _draw_sample(rng, chosen)
        ovmerd_rows.append((f"ovmerd_{i:04d}", _openset([w for _, w, _ in sample["parts"]])))
        ovmerd_subs.append((f"ovmerd_{i:04d}", sample["subtitle"]))
    basic_rows, basic_subs = [], []
    for i in range(num_eval):
        concept = _pick(rng, concepts)
        basic_rows.append((f"basic_{i:04d}", BASIC_LABELS[concept]))
        basic_subs.append((f"basic_{i:04d}", _draw_sample(rng, [concept])["subtitle"]))
    senti_rows, senti_subs = [], []
    negative = [c for c in concepts if c != "joy"]
    for i in range(num_eval):
        u = rng.random()
        if u < 0.08:
            subtitle, _ = _fill(rng, _pick(rng, _NEUTRAL_SENTENCES))
            score = 0.0
        elif u < 0.43:
            subtitle = _draw_sample(rng, ["joy"])["subtitle"]
            score = 0.5 + 2.5 * rng.random()
        else:
            chosen = _shuffled(rng, negative)[: 1 + int(rng.random() < 0.4)]
            subtitle = _draw_sample(rng, chosen)["subtitle"]
            score = -(0.5 + 2.5 * rng.random())
        senti_rows.append((f"senti_{i:04d}", f"{score:.1f}"))
        senti_subs.append((f"senti_{i:04d}", subtitle))
    for key, column, rows, subs in (
        ("ovmerd", "openset", ovmerd_rows, ovmerd_subs),
        ("basic", "label", basic_rows, basic_subs),
        ("sentiment", "score", senti_rows, senti_subs),
    ):
        folder = out / eval_sets[key]
        _write_csv(folder / EVAL_LABELS_CSV, ("name", column), rows)
        _write_csv(folder / EVAL_SUBTITLE_CSV, ("name", "english"), subs)
        if with_media:
            _write_media(folder / MEDIA_DIR, [r[0] for r in rows], gen)

    info = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_sft_samples": num_sft_samples,
        "partition_seed": partition_seed,
        "num_eval": num_eval,
        "with_media": with_media,
        "mer_caption_plus_dir": "mer_caption_plus",
        "eval_sets": eval_sets,
        "emotions": {k: list(v) for k, v in SAMPLE_EMOTIONS.items()},
        "stats": {split: s.as_dict() for split, s in stats.items()},
    }
    (out / SAMPLE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


class _Stats:
    """Label statistics of one split: concepts per sample, label recall vs the full labels."""

    def __init__(self):
        self.num_samples = 0
        self.num_by_size = {1: 0, 2: 0, 3: 0}
        self.num_under_covered = 0
        self.num_wrong_extra = 0
        self.recall_sum = 0.0

    def add(self, num_true: int, num_listed: int, wrong: bool) -> None:
        self.num_samples += 1
        self.num_by_size[num_true] += 1
        self.num_under_covered += num_listed < num_true
        self.num_wrong_extra += wrong
        self.recall_sum += num_listed / num_true

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "num_by_num_emotions": {str(k): v for k, v in self.num_by_size.items()},
            "num_under_covered": self.num_under_covered,
            "num_wrong_extra": self.num_wrong_extra,
            "label_recall": round(self.recall_sum / max(self.num_samples, 1), 4),
        }


def ensure_sample_data(data_dir: str | Path, seed: int = 0, **kwargs) -> dict[str, Any]:
    """Generate the sample set into ``data_dir`` unless it is already there; return its info
    (``ensure_generated`` with ``make_sample_data``)."""
    return ensure_generated(data_dir, make_sample_data, SAMPLE_INFO, GENERATOR_VERSION, seed, **kwargs)


def ensure_generated(data_dir: str | Path, make, info_name: str, version: int, seed: int = 0, **kwargs) -> dict[str, Any]:
    """Run ``make(folder, seed, **kwargs)`` into ``data_dir`` unless a complete set is there.

    ``make`` writes the info file ``info_name`` last (it marks a complete set) with a
    ``generator_version``; a set written by another generator version is replaced (with a
    warning). Generation goes to a temporary sibling folder renamed into place, so concurrent
    callers (several ranks) and interrupted runs never leave a half-written set behind.

    Returns:
        The contents of the info file.
    """
    data_dir = Path(data_dir)
    info_path = data_dir / info_name
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("generator_version") == version:
            return info
        log.warning(
            "%s was written by sample generator version %s (current: %d); regenerating it",
            data_dir, info.get("generator_version"), version,
        )  # fmt: skip
        stale = data_dir.with_name(f".{data_dir.name}.stale{os.getpid()}")
        try:
            os.replace(data_dir, stale)
            shutil.rmtree(stale)
        except FileNotFoundError:  # another process moved it first
            pass
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"{data_dir} exists but holds no {info_name}: not a complete sample set; remove it")
    log.info("generating the sample data set into %s (seed %d)", data_dir, seed)
    tmp = data_dir.with_name(f".{data_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp, seed, **kwargs)
    try:
        if data_dir.exists():
            data_dir.rmdir()  # empty (checked above)
        os.replace(tmp, data_dir)
    except OSError:
        if not info_path.is_file():  # not another process that won the race
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads(info_path.read_text())


def sample_corpus(data_dir: str | Path) -> list[str]:
    """Every text of a generated sample set (prompts of all formats, subtitles, reasons, answers),
    e.g. to train the tiny tokenizer on (``train_tiny_tokenizer(sample_corpus(...))``)."""
    info = ensure_sample_data(data_dir)
    root = Path(data_dir)
    texts = [QWEN_OMNI_SYSTEM_PROMPT]
    texts += [build_prompt("", fmt, num_audio=1, num_video=1) for fmt in RESPONSE_FORMATS.values()]
    caption = root / info["mer_caption_plus_dir"]
    with (caption / TRACK3_CSV).open(newline="", encoding="utf-8") as f:
        reasons = {row["name"]: row["reason"] for row in csv.DictReader(f)}
    with (caption / "full_openset.csv").open(newline="", encoding="utf-8") as f:
        full = {row["name"]: row["openset"] for row in csv.DictReader(f)}
    for name, reason in reasons.items():
        words = parse_openset(full[name])
        texts += [fmt.format_target(reason, words) for fmt in RESPONSE_FORMATS.values()]
    files = [caption / SUBTITLE_CSV] + [root / d / EVAL_SUBTITLE_CSV for d in info["eval_sets"].values()]
    for path in files:
        with path.open(newline="", encoding="utf-8") as f:
            texts += [row["english"] for row in csv.DictReader(f)]
    return texts
