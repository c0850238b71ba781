"""Judge frames (MME-Emotion's "visual clue"): the official frame rule, a PNG frame cache, data URLs.

The MME-Emotion judge sees the first 10 of the frames taken one per second: with the video's
frame rate ``fps``, every ``int(fps * 1)``-th decoded frame starting with the first
(``eval_cot_gpt4o.py`` L19-40), at native resolution. merr1's media cache holds the Thinker's
preprocessed patches, not such frames, so a prepare step (``scripts/prepare_mme_emotion.py``,
PyAV from the optional ``media`` extra) decodes each clip once and writes its frames here:

    {frames_dir}/{cache_name(video_id)}/00.png, 01.png, ...   (at most 10; none = no decodable frame)

Why PNG written by this module: the run time may use only the standard library and torch, so
frames are encoded with ``zlib`` (8-bit RGB, every row with PNG filter 2 "Up", which compresses
camera frames well and decodes as one cumulative sum over rows) and sent to an HTTP judge as
``data:image/png;base64`` URLs; the local Thinker judge decodes them back with ``decode_png``.
Deviation: the official code sends OpenCV's default JPEG (quality 95), so pixel values differ by
JPEG's loss; the frame selection and the resolution are the official ones. The cache costs about
half the raw size (e.g. ~0.5-1.5 MB per 720p frame); ``prepare_mme_emotion.py --max_side``
downsizes when that matters (another deviation, off by default).

A video id (``"IEMOCAP/video/x.mp4"``) names a cache entry through ``cache_name``: the id
percent-encoded with no safe characters (``"IEMOCAP%2Fvideo%2Fx.mp4"``), injective and file-name
safe. The media cache of the model under test uses the same names.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import zlib
from pathlib import Path
from urllib.parse import quote

import torch

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_DATA_URL_PREFIX = "data:image/png;base64,"
_FILTER_NONE, _FILTER_SUB, _FILTER_UP = 0, 1, 2


def cache_name(video_id: str) -> str:
    """The file-name-safe cache name of a video id (percent-encoding, injective)."""
    if not isinstance(video_id, str) or not video_id:
        raise ValueError(f"video_id must be a non-empty string, got {video_id!r}")
    name = quote(video_id, safe="")
    if name in (".", ".."):
        raise ValueError(f"video_id {video_id!r} cannot name a cache entry")
    return name


# ---------------------------------------------------------------------------------------------
# PNG (8-bit RGB) with the standard library


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(frame: torch.Tensor, level: int = 6) -> bytes:
    """uint8 RGB frame [H, W, 3] -> PNG bytes (every row filtered with "Up")."""
    if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[2] != 3 or 0 in frame.shape:
        raise ValueError(f"expected a uint8 frame [H, W, 3], got {frame.dtype} {tuple(frame.shape)}")
    height, width = int(frame.shape[0]), int(frame.shape[1])
    rows = frame.reshape(height, width * 3).to(torch.int16)  # [H, W*3]
    up = torch.empty_like(rows)
    up[0] = rows[0]
    up[1:] = rows[1:] - rows[:-1]
    filtered = torch.cat([torch.full((height, 1), _FILTER_UP, dtype=torch.int16), up % 256], dim=1)
    raw = filtered.to(torch.uint8).numpy().tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, RGB, deflate, no interlace
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, level)) + _chunk(b"IEND", b"")


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> uint8 RGB frame [H, W, 3].

    Reads what ``encode_png`` writes: 8-bit RGB, not interlaced, row filters None, Sub or Up
    (other PNGs raise ``ValueError``; re-create such frames with ``prepare_mme_emotion.py``).
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    pos, header, idat = len(PNG_SIGNATURE), None, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG chunk")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None or not idat:
        raise ValueError("PNG without IHDR or IDAT")
    width, height, depth, color, _, _, interlace = header
    if (depth, color, interlace) != (8, 2, 0):
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {color}, interlace {interlace}); "
                         f"expected 8-bit RGB written by merr1")  # fmt: skip
    raw = zlib.decompress(b"".join(idat))
    stride = width * 3 + 1
    if len(raw) != height * stride:
        raise ValueError(f"PNG data has {len(raw)} bytes, expected {height * stride}")
    rows = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(height, stride)
    filters, pixels = rows[:, 0], rows[:, 1:].to(torch.int64)  # [H], [H, W*3]
    if bool((filters == _FILTER_UP).all()):  # the fast path: decoded rows = cumulative sum of rows
        return (pixels.cumsum(0) % 256).to(torch.uint8).view(height, width, 3)
    out = torch.empty_like(pixels)
    previous = torch.zeros(width * 3, dtype=torch.int64)
    for r in range(height):
        kind = int(filters[r])
        if kind == _FILTER_NONE:
            row = pixels[r]
        elif kind == _FILTER_UP:
            row = (pixels[r] + previous) % 256
        elif kind == _FILTER_SUB:  # each channel: cumulative sum along the row
            row = (pixels[r].view(width, 3).cumsum(0) % 256).view(-1)
        else:
            raise ValueError(f"PNG filter type {kind} (row {r}) is not supported; expected frames written by merr1")
        out[r] = row
        previous = row
    return out.to(torch.uint8).view(height, width, 3)


def png_data_url(png: bytes) -> str:
    """``data:image/png;base64,...`` for an image part of a chat-completions request."""
    return PNG_DATA_URL_PREFIX + base64.b64encode(png).decode("ascii")


def decode_data_url(url: str) -> bytes:
    """The bytes of a base64 ``data:`` URL."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ValueError(f"not a base64 data URL: {url[:40]!r}...")
    return base64.b64decode(payload, validate=True)


# ---------------------------------------------------------------------------------------------
# The official frame rule and the frame cache


def frame_interval(fps: float, interval_s: float = 1.0) -> int:
    """Keep every ``int(fps * interval_s)``-th frame; ValueError below one (the official code then
    divides by zero)."""
    interval = int(fps * interval_s)
    if interval < 1:
        raise ValueError(f"frame rate {fps} fps gives a frame interval of {interval}")
    return interval


def select_judge_frames(frames, fps: float, max_frames: int = 10, interval_s: float = 1.0) -> list:
    """The official visual clue: decoded frames 0, k, 2k, ... (k = ``frame_interval(fps)``), the
    first ``max_frames`` of them. ``frames`` is any iterable in decoding order (read lazily)."""
    interval = frame_interval(fps, interval_s)
    kept = []
    for index, frame in enumerate(frames):
        if index % interval == 0:
            kept.append(frame)
            if len(kept) == max_frames:
                break
    return kept


def frames_entry(frames_dir: str | Path, video_id: str) -> Path:
    """The cache folder of one video's judge frames."""
    return Path(frames_dir) / cache_name(video_id)


def write_frames(frames_dir: str | Path, video_id: str, frames: list[torch.Tensor]) -> Path:
    """Write a video's judge frames (uint8 [H, W, 3] each) atomically: temp folder, then rename."""
    entry = frames_entry(frames_dir, video_id)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for i, frame in enumerate(frames):
        (tmp / f"{i:02d}.png").write_bytes(encode_png(frame))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    return entry


def count_frames(frames_dir: str | Path, video_id: str) -> int | None:
    """How many frames a video's cache entry holds (without reading them); None without an entry."""
    entry = frames_entry(frames_dir, video_id)
    return len(list(entry.glob("*.png"))) if entry.is_dir() else None


def read_frames(frames_dir: str | Path, video_id: str) -> list[bytes] | None:
    """A video's cached PNG frames in order; None when the video has no cache entry."""
    entry = frames_entry(frames_dir, video_id)
    if not entry.is_dir():
        return None
    return [p.read_bytes() for p in sorted(entry.glob("*.png"))]


# ---------------------------------------------------------------------------------------------
# Decoding clips with PyAV (prepare step only; the ``media`` extra)


def _import_av():
    try:
        import av
    except ImportError as e:
        raise ImportError("decoding video needs PyAV: pip install 'merr1[media]' (or pip install av)") from e
    return av


def decode_judge_frames(path: str | Path, max_frames: int = 10, max_side: int | None = None) -> list[torch.Tensor]:
    """The official visual clue of a video file: ``select_judge_frames`` over its decoded frames.

    Args:
        path: video file.
        max_frames: frames kept (official: 10).
        max_side: None keeps the native resolution (official); else frames whose longer side
            exceeds it are scaled down (aspect ratio kept) by the decoder.

    Returns:
        uint8 frames [H, W, 3] (an empty list when nothing decodes).
    """
    av = _import_av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"{path}: video has no frame rate")

        def rgb(frame):
            width, height = frame.width, frame.height
            if max_side is not None and max(width, height) > max_side:
                scale = max_side / max(width, height)
                width, height = max(1, round(width * scale)), max(1, round(height * scale))
            return torch.from_numpy(frame.to_ndarray(format="rgb24", width=width, height=height))

        decoded = container.decode(video=0)
        return [rgb(frame) for frame in select_judge_frames(decoded, float(rate), max_frames)]


def read_audio_track(path: str | Path, sampling_rate: int = 16000) -> tuple[torch.Tensor, int]:
    """The audio track of a video file as a mono float32 waveform [N] in [-1, 1] at ``sampling_rate``
    (ValueError if the file has no audio stream or it decodes to nothing)."""
    av = _import_av()
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(torch.from_numpy(out.to_ndarray().reshape(-1).copy()))
        for out in resampler.resample(None):
            chunks.append(torch.from_numpy(out.to_ndarray().reshape(-1).copy()))
    if not chunks or sum(c.numel() for c in chunks) == 0:
        raise ValueError(f"{path}: the audio stream decodes to no samples")
    return torch.cat(chunks).float(), sampling_rate
