"""Media cache: each clip decoded once into exactly the Thinker's multimodal forward kwargs.

Cache format (one file per sample name, ``{media_dir}/{name}.safetensors``), tensors for ONE sample:

=========================  ==================  =========  ==========================================
key                        shape               dtype      meaning
=========================  ==================  =========  ==========================================
``input_features``         [1, n_mels, F]      float*     log-mel frames (only the F valid frames)
``feature_attention_mask`` [1, F]              int64      all ones (kept so the dict is a forward kwarg set)
``pixel_values_videos``    [t*h*w, C*2*14*14]  float*     normalized, patchified frames
``video_grid_thw``         [1, 3]              int64      patch grid (t, h, w)
``video_second_per_grid``  [1]                 float32    seconds per temporal patch (2 / sampled fps)
=========================  ==================  =========  ==========================================

(*) stored in ``cache_dtype`` (bfloat16 by default: the Thinker casts its encoder inputs to its own
dtype, so bf16 storage loses nothing for bf16 training and halves the disk). Audio-only or
video-only entries hold only their keys. Files are written atomically (temp file + rename).

Audio: WhisperFeatureExtractor log-mel (16 kHz, hop 160) on the valid frames only: identical to
the Qwen2.5-Omni processor's features (which pads to its max length) on the frames the model
reads; clips longer than the extractor's ``n_samples`` are truncated as the processor does. The
waveform comes from ``audio/{name}.wav`` or from the clip's own audio track (``read_audio_track``,
PyAV): all channels averaged to mono (as qwen-omni-utils' ``librosa.load(path, sr=16000)``), then
resampled linearly (librosa uses soxr; a deliberate, documented deviation).

Video, exactly the real Qwen2.5-Omni pipeline (qwen-omni-utils' frame sampling, then the
transformers Qwen2.5-Omni processor; checked tensor for tensor against transformers' processor in
``tests/merr1/components/data/test_video_reference.py``, see ``docs/qwen2_5_omni_inputs.md``):

- frames: ``fps`` (2) per second of the clip, clamped to [``min_frames`` (4), min(``max_frames``
  (768), number of frames)], rounded DOWN to a multiple of the temporal patch (2); a clip with
  fewer than 2 frames is refused. Indices ``round(linspace(0, N - 1, n))``. So a 1.5 s clip gives 4
  frames (the minimum), a 7.3 s clip 14, a 30 s clip 60.
- ``video_second_per_grid`` = temporal patch / the rate actually sampled (``n / N * video fps``),
  e.g. 1.046 for a 7.32 s clip at 25 fps (14 of 183 frames), not 2 / ``fps``.
- size: ``smart_resize`` to multiples of patch*merge (28) within the VIDEO pixel range
  [``min_pixels``, ``max_pixels``] = [128*28*28, 768*28*28] per frame (never the image processor's
  ``min_pixels``/``max_pixels`` of ``preprocessor_config.json``), the maximum lowered to an even
  share of a total budget of ``max_video_tokens`` tokens (qwen-omni-utils' VIDEO_TOTAL_PIXELS,
  floored at 1.05 * ``min_pixels``); a 10 s 720p clip becomes 20 frames of 560x1008 pixels
  (7,200 video tokens; the image range would give 728x1288 and 11,960).
- resampling: bicubic with antialiasing on the uint8 frames (torch's native uint8 kernel: what
  torchvision's ``resize`` runs for uint8 frames on CPU, where qwen-omni-utils and the processor run);
- rescale and normalize fused as transformers does (``(x - 255 * mean) / (255 * std)`` in float32),
  patchify with temporal patch 2, patch 14, merge 2.
Decoding mp4 needs PyAV (the ``media`` extra: ``pip install merr1[media]``), imported lazily.
"""

from __future__ import annotations

import json
import logging
import math
import os
import wave
from dataclasses import asdict, dataclass, field
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


RESCALE_FACTOR = 1 / 255  # uint8 -> [0, 1], fused into the normalization as transformers does


@dataclass
class MediaConfig:
    """Audio feature and video patch settings (defaults: the real Qwen2.5-Omni video pipeline's).

    The video pixel range is per FRAME and is the video one (qwen-omni-utils' VIDEO_MIN_PIXELS /
    VIDEO_MAX_PIXELS, the Qwen2.5-Omni processor's video ``size``), not the image processor's.
    """

    n_mels: int = 128
    sampling_rate: int = 16000
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 768 * 28 * 28
    max_video_tokens: int | None = 128000  # per-frame cap from a total budget (qwen-omni-utils); None: off
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
        """Read a checkpoint's processor configs.

        ``preprocessor_config.json`` (required) gives the audio features (``feature_size``,
        ``sampling_rate``) and what the image and video processors share (patch sizes, mean/std);
        its ``min_pixels``/``max_pixels`` are the IMAGE range and are ignored. The video range,
        frame rate and frame bounds keep the Qwen2.5-Omni video defaults unless a
        ``video_preprocessor_config.json`` sets them (``size`` or ``min_pixels``/``max_pixels``,
        ``fps``, ``min_frames``, ``max_frames``). Unknown keys are ignored.
        """
        path = Path(path)
        main = path / "preprocessor_config.json"
        if not main.is_file():
            raise FileNotFoundError(f"no preprocessor_config.json in {path}")
        cfg = cls(feature_extractor_dir=str(path))
        data = json.loads(main.read_text())
        cfg.n_mels = int(data.get("feature_size", cfg.n_mels))
        cfg.sampling_rate = int(data.get("sampling_rate", cfg.sampling_rate))
        cfg._read_shared(data)
        video_file = path / "video_preprocessor_config.json"
        if video_file.is_file():
            video = json.loads(video_file.read_text())
            cfg._read_shared(video)
            for key in ("min_frames", "max_frames"):
                if video.get(key) is not None:
                    setattr(cfg, key, int(video[key]))
            if video.get("fps") is not None:
                cfg.fps = float(video["fps"])
            size = video.get("size") or {}
            cfg.min_pixels = int(video.get("min_pixels") or size.get("shortest_edge") or cfg.min_pixels)
            cfg.max_pixels = int(video.get("max_pixels") or size.get("longest_edge") or cfg.max_pixels)
        return cfg

    def _read_shared(self, data: dict) -> None:
        for key in ("patch_size", "temporal_patch_size", "merge_size"):
            if data.get(key) is not None:
                setattr(self, key, int(data[key]))
        if data.get("image_mean") is not None:
            self.image_mean = tuple(float(x) for x in data["image_mean"])
            self.image_std = tuple(float(x) for x in data["image_std"])

    def settings(self) -> dict:
        """The settings that determine the cached tensors (recorded in the cache folder)."""
        out = {k: v for k, v in asdict(self).items() if k != "feature_extractor_dir"}
        out["image_mean"], out["image_std"] = list(self.image_mean), list(self.image_std)
        return out


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


def inspect_media(
    path: str | Path,
) -> tuple[dict[str, tuple[int, ...]], tuple[int, int, int] | None, float | None]:
    """Shapes of a cache entry's tensors (header only), its video grid (t, h, w) and its
    ``video_second_per_grid`` (float32 value), the last two None without video."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        grid, second_per_grid = None, None
        if "video_grid_thw" in shapes:
            grid = tuple(int(x) for x in f.get_tensor("video_grid_thw").reshape(-1).tolist())
        if "video_second_per_grid" in shapes:
            second_per_grid = float(f.get_tensor("video_second_per_grid").reshape(-1)[0])
    return shapes, grid, second_per_grid


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


def read_audio_track(path: str | Path) -> tuple[torch.Tensor, int]:
    """The audio track of a video file, decoded with PyAV (the ``media`` extra).

    Returns:
        (mono waveform = the mean of the channels, float32 [N]; the track's sampling rate).

    Raises:
        ValueError: the file has no audio track (or it decodes to nothing).
    """
    try:
        import av
    except ImportError as e:
        raise ImportError("decoding video needs PyAV: pip install 'merr1[media]' (or pip install av)") from e
    chunks: list[torch.Tensor] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("the video has no audio track")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        planar = av.AudioResampler(format="fltp")  # float32 planar, same layout and rate
        for frame in container.decode(stream):
            for out in planar.resample(frame):
                chunks.append(torch.from_numpy(out.to_ndarray().copy()))  # [channels, n]
        for out in planar.resample(None):
            chunks.append(torch.from_numpy(out.to_ndarray().copy()))
    if not chunks or sum(c.shape[-1] for c in chunks) == 0:
        raise ValueError("the video's audio track is empty")
    return torch.cat(chunks, dim=-1).mean(dim=0).float(), int(rate)


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


def num_sampled_frames(num_frames: int, video_fps: float, config: MediaConfig) -> int:
    """How many frames the real pipeline samples from a clip (qwen-omni-utils' ``smart_nframes``).

    ``fps`` frames per second of the clip, clamped to [ceil(``min_frames``), floor(min(``max_frames``,
    num_frames))] (both rounded to the temporal patch) and to ``num_frames``, then rounded DOWN to a
    multiple of the temporal patch.

    Raises:
        ValueError: the clip has too few frames for one temporal patch.
    """
    factor = config.temporal_patch_size
    min_frames = math.ceil(config.min_frames / factor) * factor
    max_frames = math.floor(min(config.max_frames, num_frames) / factor) * factor
    wanted = num_frames / video_fps * config.fps
    count = math.floor(min(max(wanted, min_frames), max_frames, num_frames) / factor) * factor
    if not factor <= count <= num_frames:
        raise ValueError(f"a video of {num_frames} frames gives {count} sampled frames; at least {factor} are needed")
    return count


def sample_frames(num_frames: int, video_fps: float, config: MediaConfig) -> tuple[list[int], float]:
    """The frames the real pipeline samples and the rate it sampled them at.

    Returns:
        (indices ``round(linspace(0, num_frames - 1, n))``, sampled fps ``n / num_frames * video_fps``),
        n = ``num_sampled_frames(...)``, as qwen-omni-utils' video readers.
    """
    count = num_sampled_frames(num_frames, video_fps, config)
    indices = torch.linspace(0, num_frames - 1, count).round().long().tolist()
    return indices, count / max(num_frames, 1e-6) * video_fps


def video_max_pixels(num_frames: int, config: MediaConfig) -> float:
    """Per-frame pixel cap: ``max_pixels``, lowered to an even share of the total budget of
    ``max_video_tokens`` tokens (floored at 1.05 * ``min_pixels``), as qwen-omni-utils' ``fetch_video``."""
    if config.max_video_tokens is None:
        return config.max_pixels
    factor = config.patch_size * config.merge_size
    total_pixels = int(config.max_video_tokens * factor * factor * 0.9)
    share = total_pixels / num_frames * config.temporal_patch_size
    return min(config.max_pixels, max(min(config.max_pixels, share), int(config.min_pixels * 1.05)))


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
    """Sampled uint8 frames [T, H, W, 3] -> resized, rescaled and normalized float32 [T, 3, H', W'].

    Bicubic resize with antialiasing on the uint8 frames (torch's native uint8 kernel, which
    torchvision's ``resize`` uses for uint8 on CPU), then ``(x - 255 mean) / (255 std)`` in float32
    (transformers' fused rescale + normalize).
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    x = frames.permute(0, 3, 1, 2).contiguous().cpu()  # [T, 3, H, W] uint8
    height, width = x.shape[-2:]
    factor = config.patch_size * config.merge_size
    new_h, new_w = smart_resize(height, width, factor, config.min_pixels, video_max_pixels(x.shape[0], config))
    if (new_h, new_w) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(config.image_mean) * (1.0 / RESCALE_FACTOR)
    std = torch.tensor(config.image_std) * (1.0 / RESCALE_FACTOR)
    return (x.float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def video_media(source: FrameSource, config: MediaConfig) -> dict[str, torch.Tensor]:
    """Cached video kwargs for one clip: sample, resize, normalize, patchify (module docstring)."""
    indices, sampled_fps = sample_frames(source.num_frames, source.fps, config)
    frames = preprocess_frames(source.get_frames(indices), config)
    patches, grid = patchify_video(frames, config.patch_size, config.temporal_patch_size, config.merge_size)
    return {
        "pixel_values_videos": patches.to(getattr(torch, config.cache_dtype)),
        "video_grid_thw": torch.tensor([grid], dtype=torch.long),
        "video_second_per_grid": torch.tensor([config.temporal_patch_size / sampled_fps], dtype=torch.float32),
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


AUDIO_SOURCES = ("auto", "wav", "video")
SETTINGS_FILE = "media_settings.json"


@dataclass
class PrepareReport:
    """What ``prepare_media`` did: names written, skipped (already cached) and failed (name, why)."""

    num_written: int = 0
    num_cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _entry_audio(name, audio_files, video_files, audio_source, featurizer) -> dict[str, torch.Tensor]:
    if audio_source == "wav" or (audio_source == "auto" and name in audio_files):
        if name not in audio_files:
            raise ValueError("missing audio file")
        path, read = audio_files[name], read_wav
    else:
        if name not in video_files:
            raise ValueError("missing audio file and no video to take the audio from")
        path, read = video_files[name], read_audio_track
    try:
        waveform, rate = read(path)
        return featurizer(waveform, rate)
    except ImportError:
        raise
    except Exception as e:
        raise ValueError(f"unreadable audio {path}: {e}") from e


def build_media_entry(
    name: str,
    audio_files: dict[str, Path],
    video_files: dict[str, Path],
    modalities: Sequence[str],
    config: MediaConfig,
    featurizer: AudioFeaturizer | None,
    frame_source: Callable[[Path], FrameSource],
    audio_source: str = "auto",
) -> dict[str, torch.Tensor]:
    """Decode one sample's media into cache kwargs; ValueError naming what is missing/unreadable.

    ``audio_source``: "wav" reads ``audio_files`` only, "video" the video file's own audio track,
    "auto" the .wav when there is one, else the video's track.
    """
    media: dict[str, torch.Tensor] = {}
    if "audio" in modalities:
        media.update(_entry_audio(name, audio_files, video_files, audio_source, featurizer))
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


def cache_settings(
    config: MediaConfig, modalities: Sequence[str], audio_source: str, featurizer: AudioFeaturizer | None
) -> dict:
    """Everything that determines a cache entry's tensors (written to ``SETTINGS_FILE``)."""
    settings = {"modalities": sorted(modalities), "video": config.settings()}
    if featurizer is not None:
        ext = featurizer.extractor
        settings["audio"] = {
            "source": audio_source,
            "feature_size": ext.feature_size,
            "sampling_rate": ext.sampling_rate,
            "n_fft": ext.n_fft,
            "hop_length": ext.hop_length,
            "n_samples": ext.n_samples,
            "dither": float(getattr(ext, "dither", 0.0)),
        }
    return json.loads(json.dumps(settings))  # plain JSON types, comparable with a file's


def check_cache_settings(out_dir: str | Path, settings: dict) -> None:
    """Refuse a cache folder made with other settings (or with unknown ones), else record them.

    Raises:
        ValueError: naming the differing settings and how to rebuild.
    """
    out_dir = Path(out_dir)
    file = out_dir / SETTINGS_FILE
    rebuild = (
        f"rebuild it: delete the folder (rm -r {out_dir}) and run scripts/prepare_media.py again, "
        f"or write the new cache elsewhere (--out)"
    )
    if file.is_file():
        recorded = json.loads(file.read_text())
        if recorded != settings:
            diff = _settings_diff(recorded, settings)
            raise ValueError(f"media cache {out_dir} was made with other settings ({'; '.join(diff)}); {rebuild}")
        return
    if out_dir.is_dir() and any(out_dir.glob(f"*{CACHE_SUFFIX}")):
        raise ValueError(f"media cache {out_dir} has entries but no {SETTINGS_FILE} (made with unknown settings); {rebuild}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, file)


def _settings_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    diff = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff += _settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            diff.append(f"{prefix}{key}: cache {a!r}, now {b!r}")
    return diff


def prepare_media(
    out_dir: str | Path,
    *,
    audio_dir: str | Path | None,
    video_dir: str | Path | None,
    config: MediaConfig,
    names: Sequence[str] | None = None,
    modalities: Sequence[str] = ("audio", "video"),
    audio_source: str = "auto",
    frame_source: Callable[[Path], FrameSource] = PyAVFrameSource,
    progress: bool = True,
) -> PrepareReport:
    """Decode every sample's audio and video once into ``out_dir/{name}.safetensors``.

    Idempotent: names whose cache file exists are skipped. The settings (``config``, modalities,
    audio source and the audio feature extractor's parameters) are recorded in
    ``out_dir/media_settings.json``; a folder made with other settings is refused before anything
    is decoded (ValueError saying how to rebuild), so a cache never mixes two settings. A sample
    with a missing or unreadable file is reported (name and reason, also logged) and skipped.

    Args:
        out_dir: the media cache folder.
        audio_dir: folder of ``{name}.wav`` files.
        video_dir: folder of ``{name}.mp4`` (or .avi/.mkv/.mov/.webm) files (needed for "video", and
            for audio taken from the clips).
        config: feature settings (``MediaConfig.from_pretrained(checkpoint)`` for real models).
        names: samples to prepare (default: every file stem found in the folders).
        modalities: which media each entry must hold.
        audio_source: "auto" (the .wav when ``audio_dir`` has one, else the clip's own audio track),
            "video" (always the clip's track: the audio the model hears with ``use_audio_in_video``)
            or "wav" (only .wav files).
        frame_source: opens a video file (PyAV by default; tests pass a fake).
        progress: show a tqdm bar.
    """
    from tqdm import tqdm

    if audio_source not in AUDIO_SOURCES:
        raise ValueError(f"audio_source must be one of {AUDIO_SOURCES}, got {audio_source!r}")
    audio_files = find_media_files(audio_dir, (".wav",)) if audio_dir and "audio" in modalities else {}
    video_needed = "video" in modalities or ("audio" in modalities and audio_source != "wav")
    video_files = find_media_files(video_dir, VIDEO_EXTENSIONS) if video_dir and video_needed else {}
    if names is None:
        names = sorted(set(audio_files) | set(video_files))
    featurizer = AudioFeaturizer(config) if "audio" in modalities else None
    check_cache_settings(out_dir, cache_settings(config, modalities, audio_source, featurizer))
    report = PrepareReport()
    for name in tqdm(names, desc="prepare media", disable=not progress):
        path = cache_path(out_dir, name)
        if path.is_file():
            report.num_cached += 1
            continue
        try:
            media = build_media_entry(
                name, audio_files, video_files, modalities, config, featurizer, frame_source, audio_source
            )
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
