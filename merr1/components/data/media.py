"""Media cache: each clip decoded once into exactly the Thinker's multimodal forward kwargs.

Cache format (one file per sample name, ``{media_dir}/{name}.safetensors``), tensors for ONE sample:

=========================  ==================  =========  ==========================================
key                        shape               dtype      meaning
=========================  ==================  =========  ==========================================
``input_features``         [1, n_mels, F]      float*     log-mel frames (only the F valid frames)
``feature_attention_mask`` [1, F]              int64      all ones (kept so the dict is a forward kwarg set)
``pixel_values_videos``    [t*h*w, C*2*14*14]  float*     normalized, patchified frames
``video_grid_thw``         [1, 3]              int64      patch grid (t, h, w)
``video_second_per_grid``  [1]                 float32    seconds per temporal patch (2 / fps)
=========================  ==================  =========  ==========================================

(*) stored in ``cache_dtype`` (bfloat16 by default: the Thinker casts its encoder inputs to its own
dtype, so bf16 storage loses nothing for bf16 training and halves the disk). Audio-only or
video-only entries hold only their keys. Files are written atomically (temp file + rename).

Audio: WhisperFeatureExtractor log-mel (16 kHz, hop 160) on the valid frames only: identical to
the Qwen2.5-Omni processor's features (which pads to its max length) on the frames the model
reads; clips longer than the extractor's ``n_samples`` are truncated as the processor does.

Video: Qwen2.5-VL frame sampling (``fps`` frames per second, between ``min_frames`` and
``max_frames``, a multiple of the temporal patch), ``smart_resize`` to multiples of patch*merge
(28) within [min_pixels, max_pixels] (optionally capped per frame by a total token budget, as
qwen-vl-utils does), bicubic resize with antialiasing (torch), rescale 1/255, normalize with the
processor's mean/std, patchify with temporal patch 2, patch 14, merge 2.
Decoding mp4 needs PyAV (the ``media`` extra: ``pip install merr1[media]``), imported lazily.
"""

from __future__ import annotations

import json
import logging
import math
import os
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

log = logging.getLogger(__name__)

MEDIA_KEYS = (
    "input_features",
    "feature_attention_mask",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
)
AUDIO_KEYS = ("input_features", "feature_attention_mask")
VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw", "video_second_per_grid")
CACHE_SUFFIX = ".safetensors"

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class MediaConfig:
    """Audio feature and video patch settings (defaults: the Qwen2.5-Omni processor's)."""

    n_mels: int = 128
    sampling_rate: int = 16000
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    max_video_tokens: int | None = 128000  # per-frame cap from a total budget (qwen-vl-utils); None: off
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    cache_dtype: str = "bfloat16"
    feature_extractor_dir: str | None = field(default=None, repr=False)

    @classmethod
    def tiny(cls) -> "MediaConfig":
        """Settings matching the tiny Thinker: 16 mel bins, one 28x28 frame pair (one video token)."""
        return cls(n_mels=16, min_frames=2, max_frames=2, min_pixels=28 * 28, max_pixels=28 * 28,
                   max_video_tokens=None)  # fmt: skip

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MediaConfig":
        """Read a checkpoint's processor configs (``preprocessor_config.json``, and
        ``video_preprocessor_config.json`` when present); unknown keys are ignored."""
        path = Path(path)
        cfg = cls(feature_extractor_dir=str(path))
        found = False
        for fname in ("preprocessor_config.json", "video_preprocessor_config.json"):
            file = path / fname
            if not file.is_file():
                continue
            found = True
            data = json.loads(file.read_text())
            cfg.n_mels = int(data.get("feature_size", cfg.n_mels))
            cfg.sampling_rate = int(data.get("sampling_rate", cfg.sampling_rate))
            for key in ("patch_size", "temporal_patch_size", "merge_size", "min_frames", "max_frames"):
                if key in data:
                    setattr(cfg, key, int(data[key]))
            size = data.get("size") or {}
            cfg.min_pixels = int(data.get("min_pixels", size.get("shortest_edge", cfg.min_pixels)))
            cfg.max_pixels = int(data.get("max_pixels", size.get("longest_edge", cfg.max_pixels)))
            if "image_mean" in data:
                cfg.image_mean = tuple(float(x) for x in data["image_mean"])
                cfg.image_std = tuple(float(x) for x in data["image_std"])
        if not found:
            raise FileNotFoundError(f"no preprocessor_config.json in {path}")
        return cfg


# ---------------------------------------------------------------------------------------------
# Cache files


def cache_path(media_dir: str | Path, name: str) -> Path:
    """Where the cache entry of sample ``name`` lives; names must be plain file names."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"sample name {name!r} cannot be used as a cache file name")
    return Path(media_dir) / f"{name}{CACHE_SUFFIX}"


def save_media(path: str | Path, media: dict[str, torch.Tensor]) -> None:
    """Write one cache entry atomically (temp file in the same folder + rename)."""
    from safetensors.torch import save_file

    unknown = set(media) - set(MEDIA_KEYS)
    if unknown:
        raise ValueError(f"unknown media keys {sorted(unknown)}; expected a subset of {MEDIA_KEYS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in media.items()}, str(tmp))
    os.replace(tmp, path)


def load_media(path: str | Path) -> dict[str, torch.Tensor]:
    """Read one cache entry (raises on a missing or corrupt file)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def inspect_media(path: str | Path) -> tuple[dict[str, tuple[int, ...]], tuple[int, int, int] | None]:
    """Shapes of a cache entry's tensors (header only) and its video grid (t, h, w) if any."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        grid = None
        if "video_grid_thw" in shapes:
            grid = tuple(int(x) for x in f.get_tensor("video_grid_thw").reshape(-1).tolist())
    return shapes, grid


def validate_media(shapes: dict[str, tuple[int, ...]], modalities: tuple[str, ...], n_mels: int | None = None) -> None:
    """Check a cache entry holds consistent tensors for ``modalities``; ValueError naming the problem."""
    if "audio" in modalities:
        for key in AUDIO_KEYS:
            if key not in shapes:
                raise ValueError(f"no audio in media cache (missing {key})")
        feats, mask = shapes["input_features"], shapes["feature_attention_mask"]
        if len(feats) != 3 or feats[0] != 1 or mask != (1, feats[2]) or feats[2] < 1:
            raise ValueError(f"audio shapes {feats} / {mask} are not [1, n_mels, F] / [1, F]")
        if n_mels is not None and feats[1] != n_mels:
            raise ValueError(f"audio has {feats[1]} mel bins, the model expects {n_mels}")
    if "video" in modalities:
        for key in VIDEO_KEYS:
            if key not in shapes:
                raise ValueError(f"no video in media cache (missing {key})")
        if shapes["video_grid_thw"] != (1, 3) or shapes["video_second_per_grid"] != (1,):
            raise ValueError(f"video grid shapes {shapes['video_grid_thw']} / {shapes['video_second_per_grid']}")
        if len(shapes["pixel_values_videos"]) != 2:
            raise ValueError(f"pixel_values_videos shape {shapes['pixel_values_videos']} is not 2-D")


# ---------------------------------------------------------------------------------------------
# Audio


def read_wav(path: str | Path) -> tuple[torch.Tensor, int]:
    """Read a PCM .wav with the stdlib ``wave`` module.

    Returns:
        (mono waveform in [-1, 1], float32 [N]; sampling rate).
    """
    with wave.open(str(path), "rb") as f:
        num_channels, width, rate, num_frames = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
        raw = f.readframes(num_frames)
    if num_frames == 0:
        raise ValueError("empty audio")
    if width == 1:
        samples = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).float() - 128.0) / 128.0
    elif width == 2:
        samples = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768.0
    elif width == 3:
        b = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, 3).long()
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = torch.where(value >= 1 << 23, value - (1 << 24), value).float() / float(1 << 23)
    elif width == 4:
        samples = torch.frombuffer(bytearray(raw), dtype=torch.int32).float() / float(1 << 31)
    else:
        raise ValueError(f"unsupported sample width {width} bytes")
    return samples.reshape(-1, num_channels).mean(dim=1), rate


def write_wav(path: str | Path, waveform: torch.Tensor, sampling_rate: int) -> None:
    """Write a mono 16-bit PCM .wav (waveform in [-1, 1], [N])."""
    pcm = (waveform.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sampling_rate)
        f.writeframes(pcm.numpy().tobytes())


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Linear-interpolation resampling (adequate for speech features; no anti-alias filter)."""
    if orig_rate == new_rate:
        return waveform
    num_out = max(1, round(waveform.numel() * new_rate / orig_rate))
    return torch.nn.functional.interpolate(
        waveform.view(1, 1, -1), size=num_out, mode="linear", align_corners=False
    ).view(-1)


class AudioFeaturizer:
    """Waveform -> cached audio kwargs with a WhisperFeatureExtractor (the Qwen2.5-Omni one when
    ``config.feature_extractor_dir`` is a checkpoint, else one built with ``config.n_mels`` bins)."""

    def __init__(self, config: MediaConfig):
        from transformers import WhisperFeatureExtractor

        if config.feature_extractor_dir is not None:
            self.extractor = WhisperFeatureExtractor.from_pretrained(config.feature_extractor_dir)
        else:
            self.extractor = WhisperFeatureExtractor(feature_size=config.n_mels, sampling_rate=config.sampling_rate)
        self.config = config

    def __call__(self, waveform: torch.Tensor, sampling_rate: int) -> dict[str, torch.Tensor]:
        ext = self.extractor
        waveform = resample(waveform.float(), sampling_rate, ext.sampling_rate)
        # Zero-pad to the clip plus one FFT window instead of the extractor's full max length
        # (30 s for Whisper, 300 s for Qwen2.5-Omni): every valid frame sees the same samples and
        # the log-mel floor (global max - 8) is set by real frames, so the valid frames are
        # identical to the processor's (tested) at a fraction of the cost.
        length = min(ext.n_samples, math.ceil((waveform.numel() + ext.n_fft) / ext.hop_length) * ext.hop_length)
        out = ext(
            waveform.numpy(),
            sampling_rate=ext.sampling_rate,
            padding="max_length",
            max_length=length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        num_frames = int(out["attention_mask"].sum())
        features = out["input_features"][:, :, :num_frames]  # [1, n_mels, F]
        return {
            "input_features": features.to(getattr(torch, self.config.cache_dtype)),
            "feature_attention_mask": torch.ones(1, num_frames, dtype=torch.long),
        }


# ---------------------------------------------------------------------------------------------
# Video


class FrameSource(Protocol):
    """A decoded video: frame count, frame rate, and random access to RGB frames."""

    num_frames: int
    fps: float

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        """uint8 frames [len(indices), H, W, 3] at the given (sorted) indices."""
        ...


class PyAVFrameSource:
    """Frames of a video file decoded with PyAV (one counting pass when the container has no
    frame count, then one decoding pass that converts only the sampled frames)."""

    def __init__(self, path: str | Path):
        try:
            import av
        except ImportError as e:
            raise ImportError("decoding video needs PyAV: pip install 'merr1[media]' (or pip install av)") from e
        self._av = av
        self.path = str(path)
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise ValueError("video has no frame rate")
            self.fps = float(rate)
            self.num_frames = stream.frames or sum(1 for _ in container.decode(video=0))
        if self.num_frames < 1:
            raise ValueError("video has no frames")

    def get_frames(self, indices: list[int]) -> torch.Tensor:
        wanted = {}
        for pos, idx in enumerate(indices):
            wanted.setdefault(idx, []).append(pos)
        out: list[torch.Tensor | None] = [None] * len(indices)
        with self._av.open(self.path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    array = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                    for pos in wanted[i]:
                        out[pos] = array
                if i >= indices[-1]:
                    break
        missing = [indices[p] for p, f in enumerate(out) if f is None]
        if missing:
            raise ValueError(f"could not decode frames {missing[:5]} (video shorter than its header says)")
        return torch.stack(out)


def sample_frame_indices(num_frames: int, video_fps: float, config: MediaConfig) -> list[int]:
    """Qwen2.5-VL fps sampling: ``config.fps`` frames per second, clamped to [min_frames,
    max_frames] and to the video length, rounded down to a multiple of the temporal patch
    (at least one patch; short videos repeat frames)."""
    tp = config.temporal_patch_size
    max_frames = math.floor(min(config.max_frames, num_frames) / tp) * tp
    wanted = num_frames / video_fps * config.fps
    wanted = min(max(wanted, config.min_frames), max_frames, num_frames)
    count = max(tp, math.floor(wanted / tp) * tp)
    return [min(int(i * num_frames / count), num_frames - 1) for i in range(count)]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize target: both sides multiples of ``factor``, area in [min, max] pixels,
    aspect ratio kept as closely as possible."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is above 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify_video(
    frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Flatten normalized frames into Qwen2.5-VL patches.

    Args:
        frames: [T, C, H, W] float, H and W multiples of patch_size * merge_size. T is padded to a
            multiple of temporal_patch_size by repeating the last frame.

    Returns:
        (patches [t*h*w, C*temporal_patch_size*patch_size**2] in merge-window order, grid (t, h, w)).
    """
    num_frames, channels, height, width = frames.shape
    if height % (patch_size * merge_size) or width % (patch_size * merge_size):
        raise ValueError(f"frame size {height}x{width} is not a multiple of {patch_size * merge_size}")
    if pad := -num_frames % temporal_patch_size:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    grid_t = frames.shape[0] // temporal_patch_size
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = frames.reshape(
        grid_t, temporal_patch_size, channels,
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )  # fmt: skip
    # -> [t, h/m, w/m, m, m, C, tp, p, p]: the merge window's 4 patches are consecutive rows.
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return flat, (grid_t, grid_h, grid_w)


def preprocess_frames(frames: torch.Tensor, config: MediaConfig) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> resized, rescaled and normalized float [T, 3, H', W']."""
    x = frames.permute(0, 3, 1, 2).float()
    height, width = x.shape[-2:]
    max_pixels = config.max_pixels
    factor = config.patch_size * config.merge_size
    if config.max_video_tokens is not None:
        # qwen-vl-utils: share a total pixel budget across frames (per temporal patch).
        total_pixels = int(config.max_video_tokens * factor * factor * 0.9)
        max_pixels = max(
            min(max_pixels, total_pixels * config.temporal_patch_size // x.shape[0]), int(config.min_pixels * 1.05)
        )
    new_h, new_w = smart_resize(height, width, factor, config.min_pixels, max_pixels)
    if (new_h, new_w) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 255.0).round()
    mean = torch.tensor(config.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(config.image_std).view(1, -1, 1, 1)
    return (x / 255.0 - mean) / std


def video_media(source: FrameSource, config: MediaConfig) -> dict[str, torch.Tensor]:
    """Cached video kwargs for one clip: sample, resize, normalize, patchify."""
    indices = sample_frame_indices(source.num_frames, source.fps, config)
    frames = preprocess_frames(source.get_frames(indices), config)
    patches, grid = patchify_video(frames, config.patch_size, config.temporal_patch_size, config.merge_size)
    return {
        "pixel_values_videos": patches.to(getattr(torch, config.cache_dtype)),
        "video_grid_thw": torch.tensor([grid], dtype=torch.long),
        "video_second_per_grid": torch.tensor([config.temporal_patch_size / config.fps], dtype=torch.float32),
    }


# ---------------------------------------------------------------------------------------------
# Building the cache (scripts/prepare_media.py)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def find_media_files(folder: str | Path, extensions: Sequence[str]) -> dict[str, Path]:
    """name (file stem) -> path for the files in ``folder`` with one of ``extensions``."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions}


@dataclass
class PrepareReport:
    """What ``prepare_media`` did: names written, skipped (already cached) and failed (name, why)."""

    num_written: int = 0
    num_cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def build_media_entry(
    name: str,
    audio_files: dict[str, Path],
    video_files: dict[str, Path],
    modalities: Sequence[str],
    config: MediaConfig,
    featurizer: AudioFeaturizer | None,
    frame_source: Callable[[Path], FrameSource],
) -> dict[str, torch.Tensor]:
    """Decode one sample's media into cache kwargs; ValueError naming what is missing/unreadable."""
    media: dict[str, torch.Tensor] = {}
    if "audio" in modalities:
        if name not in audio_files:
            raise ValueError("missing audio file")
        try:
            waveform, rate = read_wav(audio_files[name])
            media.update(featurizer(waveform, rate))
        except Exception as e:
            raise ValueError(f"unreadable audio {audio_files[name]}: {e}") from e
    if "video" in modalities:
        if name not in video_files:
            raise ValueError("missing video file")
        try:
            media.update(video_media(frame_source(video_files[name]), config))
        except ImportError:
            raise
        except Exception as e:
            raise ValueError(f"unreadable video {video_files[name]}: {e}") from e
    return media


def prepare_media(
    out_dir: str | Path,
    *,
    audio_dir: str | Path | None,
    video_dir: str | Path | None,
    config: MediaConfig,
    names: Sequence[str] | None = None,
    modalities: Sequence[str] = ("audio", "video"),
    frame_source: Callable[[Path], FrameSource] = PyAVFrameSource,
    progress: bool = True,
) -> PrepareReport:
    """Decode every sample's audio (.wav) and video once into ``out_dir/{name}.safetensors``.

    Idempotent: names whose cache file exists are skipped. A sample with a missing or
    unreadable file is reported (name and reason, also logged) and skipped; the others go on.

    Args:
        out_dir: the media cache folder.
        audio_dir: folder of ``{name}.wav`` files (needed for "audio").
        video_dir: folder of ``{name}.mp4`` (or .avi/.mkv/.mov/.webm) files (needed for "video").
        config: feature settings (``MediaConfig.from_pretrained(checkpoint)`` for real models).
        names: samples to prepare (default: every file stem found in the folders).
        modalities: which media each entry must hold.
        frame_source: opens a video file (PyAV by default; tests pass a fake).
        progress: show a tqdm bar.
    """
    from tqdm import tqdm

    audio_files = find_media_files(audio_dir, (".wav",)) if audio_dir and "audio" in modalities else {}
    video_files = find_media_files(video_dir, VIDEO_EXTENSIONS) if video_dir and "video" in modalities else {}
    if names is None:
        names = sorted(set(audio_files) | set(video_files))
    featurizer = AudioFeaturizer(config) if "audio" in modalities else None
    report = PrepareReport()
    for name in tqdm(names, desc="prepare media", disable=not progress):
        path = cache_path(out_dir, name)
        if path.is_file():
            report.num_cached += 1
            continue
        try:
            media = build_media_entry(name, audio_files, video_files, modalities, config, featurizer, frame_source)
        except ValueError as e:
            log.warning("prepare_media: skipping %s: %s", name, e)
            report.failed.append((name, str(e)))
            continue
        save_media(path, media)
        report.num_written += 1
    log.info(
        "prepare_media: wrote %d, already cached %d, failed %d (of %d) into %s",
        report.num_written, report.num_cached, len(report.failed), len(names), out_dir,
    )  # fmt: skip
    return report
