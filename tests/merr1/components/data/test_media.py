import importlib.util
import sys
import json
import math
import wave

import pytest
import torch

from merr1.components.data import media as data_media
from merr1.components.data.media import (
    AudioFeaturizer,
    MediaConfig,
    cache_path,
    load_media,
    patchify_video,
    prepare_media,
    preprocess_frames,
    read_wav,
    num_sampled_frames,
    resample,
    sample_frames,
    save_media,
    smart_resize,
    video_media,
    write_wav,
)


class FakeFrames:
    """A FrameSource over synthetic frames (no video decoding library needed)."""

    def __init__(self, num_frames=30, fps=10.0, height=50, width=70, value=None):
        self.num_frames, self.fps = num_frames, fps
        self.height, self.width, self.value = height, width, value
        self.requested = None

    def get_frames(self, indices):
        self.requested = list(indices)
        if self.value is not None:
            return torch.full((len(indices), self.height, self.width, 3), self.value, dtype=torch.uint8)
        base = torch.arange(self.height * self.width * 3).reshape(self.height, self.width, 3) % 251
        return torch.stack([((base + 7 * i) % 256).to(torch.uint8) for i in indices])


def _sine(seconds, rate=16000, freq=440.0):
    t = torch.arange(int(seconds * rate)) / rate
    return 0.5 * torch.sin(2 * math.pi * freq * t)


# ---------------------------------------------------------------------------------------------
# Audio


@pytest.mark.parametrize("width, tol", [(1, 1 / 100), (2, 1 / 30000), (3, 1e-6), (4, 1e-6)])
def test_read_wav_sample_widths(tmp_path, width, tol):
    signal = _sine(0.01, rate=8000)
    path = tmp_path / f"w{width}.wav"
    scale = 2 ** (8 * width - 1) - 1
    ints = (signal * scale).round().long()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(width)
        f.setframerate(8000)
        stereo = torch.stack([ints, ints], dim=1).reshape(-1)
        if width == 1:
            raw = bytes((stereo + 128).tolist())
        else:
            raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in stereo.tolist())
        f.writeframes(raw)
    waveform, rate = read_wav(path)
    assert rate == 8000 and waveform.shape == signal.shape
    assert torch.allclose(waveform, signal, atol=tol + 1 / scale)


def test_write_read_roundtrip(tmp_path):
    signal = _sine(0.05)
    write_wav(tmp_path / "a.wav", signal, 16000)
    waveform, rate = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and torch.allclose(waveform, signal, atol=1 / 16000)


def test_read_wav_empty(tmp_path):
    write_wav(tmp_path / "e.wav", torch.zeros(0), 16000)
    with pytest.raises(ValueError, match="empty"):
        read_wav(tmp_path / "e.wav")


@pytest.mark.parametrize("n, orig, new, expected", [(16000, 16000, 16000, 16000), (44100, 44100, 16000, 16000), (800, 8000, 16000, 1600)])
def test_resample_lengths(n, orig, new, expected):
    out = resample(torch.full((n,), 0.25), orig, new)
    assert out.numel() == expected and torch.allclose(out, torch.full_like(out, 0.25))


@pytest.mark.parametrize("seconds", [0.0101, 0.1, 0.5, 2.0, 7.3])
def test_audio_featurizer_matches_the_fully_padded_extractor(seconds):
    """Same valid frames as the processor's 30 s (Whisper) / 300 s (Omni) max-length padding."""
    from transformers import WhisperFeatureExtractor

    g = torch.Generator().manual_seed(0)
    waveform = _sine(seconds) * torch.rand(int(seconds * 16000), generator=g)
    cfg = MediaConfig.tiny()
    cfg.cache_dtype = "float32"
    media = AudioFeaturizer(cfg)(waveform, 16000)
    num_frames = math.ceil(waveform.numel() / 160)
    assert media["input_features"].shape == (1, 16, num_frames)
    assert media["feature_attention_mask"].tolist() == [[1] * num_frames]
    reference = WhisperFeatureExtractor(feature_size=16)(
        waveform.numpy(), sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt"
    )
    assert int(reference["attention_mask"].sum()) == num_frames
    torch.testing.assert_close(media["input_features"], reference["input_features"][:, :, :num_frames], atol=1e-5, rtol=1e-5)
    assert AudioFeaturizer(MediaConfig.tiny())(waveform, 16000)["input_features"].dtype == torch.bfloat16


def test_audio_featurizer_truncates_like_the_processor():
    cfg = MediaConfig.tiny()
    featurizer = AudioFeaturizer(cfg)
    featurizer.extractor.n_samples = 16000  # pretend a 1 s maximum
    media = featurizer(_sine(1.7), 16000)
    assert media["input_features"].shape == (1, 16, 100)


def test_audio_featurizer_resamples():
    media = AudioFeaturizer(MediaConfig.tiny())(_sine(0.5, rate=8000), 8000)
    assert media["input_features"].shape == (1, 16, 50)


def test_media_config_from_pretrained(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "feature_size": 128, "sampling_rate": 16000, "min_pixels": 3136, "max_pixels": 12845056,
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
    }))  # fmt: skip
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 1000, "longest_edge": 2000}}))
    cfg = MediaConfig.from_pretrained(tmp_path)
    assert (cfg.n_mels, cfg.min_pixels, cfg.max_pixels) == (128, 1000, 2000)
    assert cfg.image_mean == (0.5, 0.5, 0.5) and cfg.image_std == (0.25, 0.25, 0.25)
    assert cfg.feature_extractor_dir == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        MediaConfig.from_pretrained(tmp_path / "nowhere")


def test_media_config_from_the_real_checkpoint_keeps_the_video_pixel_range():
    """The real preprocessor_config.json holds the IMAGE range (3,136 .. 12,845,056): never used for video."""
    from pathlib import Path

    cfg = MediaConfig.from_pretrained(Path(__file__).parents[3] / "fixtures" / "qwen2_5_omni")
    assert (cfg.min_pixels, cfg.max_pixels) == (128 * 28 * 28, 768 * 28 * 28)
    assert (cfg.fps, cfg.min_frames, cfg.max_frames, cfg.n_mels, cfg.sampling_rate) == (2.0, 4, 768, 128, 16000)
    assert (cfg.patch_size, cfg.temporal_patch_size, cfg.merge_size) == (14, 2, 2)


@pytest.mark.parametrize(
    "video_config, expected",
    [
        ({"min_pixels": 1000, "max_pixels": 2000, "fps": 1.0, "max_frames": 64}, (1000, 2000, 1.0, 4, 64)),
        ({"size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}, "min_frames": 8}, (3136, 1003520, 2.0, 8, 768)),
        ({"do_resize": True}, (100352, 602112, 2.0, 4, 768)),  # unrelated keys: the video defaults stay
    ],
)
def test_media_config_video_preprocessor_config_overrides(tmp_path, video_config, expected):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"feature_size": 128, "min_pixels": 3136, "max_pixels": 12845056}))
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video_config))
    cfg = MediaConfig.from_pretrained(tmp_path)
    assert (cfg.min_pixels, cfg.max_pixels, cfg.fps, cfg.min_frames, cfg.max_frames) == expected


# ---------------------------------------------------------------------------------------------
# Video


@pytest.mark.parametrize(
    "height, width, min_pixels, max_pixels, expected",
    [
        (480, 640, 128 * 28 * 28, 768 * 28 * 28, (476, 644)),
        (1080, 1920, 128 * 28 * 28, 768 * 28 * 28, (560, 1008)),
        (20, 20, 128 * 28 * 28, 768 * 28 * 28, (336, 336)),
        (50, 70, 784, 784, (28, 28)),
    ],
)
def test_smart_resize(height, width, min_pixels, max_pixels, expected):
    assert smart_resize(height, width, 28, min_pixels, max_pixels) == expected


def test_smart_resize_rejects_extreme_aspect():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000, 28, 784, 10**6)


@pytest.mark.parametrize(
    "num_frames, fps, indices, sampled_fps",
    [
        # 3.8 s at 2 fps = 7.6 -> 6 frames (rounded down to a multiple of 2); round(linspace(0, 94, 6))
        (95, 25.0, [0, 19, 38, 56, 75, 94], 6 / 95 * 25),
        (45, 30.0, [0, 15, 29, 44], 4 / 45 * 30),  # 1.5 s: 3 frames -> the minimum 4
        (3, 30.0, [0, 2], 20.0),  # min_frames 4 capped by the clip's own length (3, rounded down to 2)
        (40, 10.0, [0, 6, 11, 17, 22, 28, 33, 39], 2.0),  # 4 s at 2 fps = 8
        (183, 25.0, [round(i * 182 / 13) for i in range(14)], 14 / 183 * 25),  # 7.32 s: 14.64 -> 14
        (900, 30.0, [round(i * 899 / 59) for i in range(60)], 2.0),  # 30 s -> 60 frames
    ],
)
def test_sample_frames(num_frames, fps, indices, sampled_fps):
    got, got_fps = sample_frames(num_frames, fps, MediaConfig())
    assert got == indices
    assert got_fps == pytest.approx(sampled_fps, rel=1e-12)


def test_a_7_3_s_clip_has_second_per_grid_from_the_sampled_rate():
    media = video_media(FakeFrames(num_frames=183, fps=25.0, value=90), MediaConfig(cache_dtype="float32"))
    assert media["video_grid_thw"].tolist() == [[7, 20, 28]]  # 14 frames; 50x70 upscaled to 280x392 (min_pixels)
    assert media["video_second_per_grid"].item() == pytest.approx(2 / (14 / 183 * 25), rel=1e-6)  # 1.0457


@pytest.mark.parametrize("num_frames, fps", [(1, 30.0), (0, 25.0)])
def test_sample_frames_refuses_clips_without_one_temporal_patch(num_frames, fps):
    with pytest.raises(ValueError, match="at least 2 are needed"):
        num_sampled_frames(num_frames, fps, MediaConfig())


def test_sample_frames_caps_at_max_frames():
    assert num_sampled_frames(10000, 25.0, MediaConfig()) == 768


@pytest.mark.parametrize(
    "height, width, num_frames, expected",
    [
        (720, 1280, 20, (560, 1008)),  # 10 s 720p: the video max 768*28*28, not the image 12,845,056
        (1080, 1920, 4, (560, 1008)),
        (240, 426, 60, (252, 420)),
        (80, 100, 4, (308, 364)),  # upscaled to the video min 128*28*28
    ],
)
def test_video_frame_size(height, width, num_frames, expected):
    frames = torch.zeros(num_frames, height, width, 3, dtype=torch.uint8)
    assert tuple(preprocess_frames(frames, MediaConfig()).shape[-2:]) == expected


@pytest.mark.parametrize(
    "num_frames, max_pixels",
    [(4, 602112), (300, 602112), (768, 90316800 / 768 * 2)],  # 128k tokens * 784 * 0.9 shared by 768 frames
)
def test_video_max_pixels_shares_the_total_budget(num_frames, max_pixels):
    assert data_media.video_max_pixels(num_frames, MediaConfig()) == pytest.approx(max_pixels, rel=1e-12)
    assert data_media.video_max_pixels(num_frames, MediaConfig(max_video_tokens=None)) == 602112


def test_a_long_720p_clip_gets_smaller_frames():
    # 768 frames: 235,200 pixels per frame at most -> 336x644 instead of 560x1008
    assert smart_resize(720, 1280, 28, 128 * 28 * 28, data_media.video_max_pixels(768, MediaConfig())) == (336, 644)
def test_patchify_layout_matches_a_loop_reference():
    frames = torch.randn(4, 3, 56, 84)  # T=4 -> t=2; h=4, w=6 patches
    patches, grid = patchify_video(frames)
    assert grid == (2, 4, 6) and patches.shape == (2 * 4 * 6, 3 * 2 * 14 * 14)
    rows = []
    for t in range(2):
        for bh in range(2):
            for bw in range(3):
                for i in range(2):
                    for j in range(2):
                        y, x = (bh * 2 + i) * 14, (bw * 2 + j) * 14
                        block = frames[2 * t : 2 * t + 2, :, y : y + 14, x : x + 14]  # [tp, C, p, p]
                        rows.append(block.permute(1, 0, 2, 3).reshape(-1))
    assert torch.equal(patches, torch.stack(rows))


def test_patchify_pads_odd_frame_counts_and_checks_size():
    patches, grid = patchify_video(torch.randn(3, 3, 28, 28))
    assert grid == (2, 2, 2) and patches.shape == (8, 1176)
    with pytest.raises(ValueError, match="multiple of 28"):
        patchify_video(torch.randn(2, 3, 30, 28))


def test_preprocess_frames_normalizes():
    cfg = MediaConfig(min_pixels=28 * 28, max_pixels=28 * 28, max_video_tokens=None)
    out = preprocess_frames(torch.full((2, 28, 28, 3), 128, dtype=torch.uint8), cfg)
    expected = [(128 / 255 - m) / s for m, s in zip(cfg.image_mean, cfg.image_std)]
    assert out.shape == (2, 3, 28, 28)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(expected), atol=1e-6)  # values ~0.3: 1e-6 is float32 rounding
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(torch.zeros(2, 28, 28, 3), cfg)


def test_video_media_tiny_and_default():
    source = FakeFrames(num_frames=30, fps=10.0)
    tiny = video_media(source, MediaConfig.tiny())
    assert source.requested == [0, 29]
    assert tiny["pixel_values_videos"].shape == (4, 1176)
    assert tiny["video_grid_thw"].tolist() == [[1, 2, 2]]
    assert tiny["video_second_per_grid"].tolist() == [3.0]  # 2 frames of a 3 s clip: sampled at 2/3 fps
    full = video_media(FakeFrames(num_frames=30, fps=10.0), MediaConfig())
    t, h, w = full["video_grid_thw"][0].tolist()
    assert t == 3 and h * 14 * w * 14 >= 128 * 28 * 28  # 3 s at 2 fps -> 6 frames; upscaled to min_pixels
    assert full["pixel_values_videos"].shape == (t * h * w, 1176)


def test_pyav_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError, installed or not
    with pytest.raises(ImportError, match=r"merr1\[media\]"):
        data_media.PyAVFrameSource("clip.mp4")


def _write_mp4(path, colors, fps=10, size=(64, 48)):
    """A tiny mp4 whose frame i is filled with colors[i] (RGB), encoded with PyAV."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for color in colors:
            image = np.empty((size[1], size[0], 3), dtype=np.uint8)
            image[:] = color
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_pyav_decodes_a_real_mp4_into_the_cache(tmp_path):
    """The `media` extra's real path: mp4 -> PyAV frames -> patches in the cache (no fake source)."""
    pytest.importorskip("av", reason="the media extra (PyAV) is installed by .ci/run; pip install 'merr1[media]'")
    video_dir, audio_dir, out_dir = tmp_path / "video", tmp_path / "audio", tmp_path / "cache"
    video_dir.mkdir()
    audio_dir.mkdir()
    colors = [(200, 30, 30)] * 10 + [(30, 30, 200)] * 10  # 2 s at 10 fps: red, then blue
    _write_mp4(video_dir / "clip.mp4", colors)
    write_wav(audio_dir / "clip.wav", torch.sin(torch.arange(16000) / 10.0) * 0.1, 16000)

    source = data_media.PyAVFrameSource(video_dir / "clip.mp4")
    assert source.num_frames == 20 and source.fps == 10.0
    frames = source.get_frames([0, 19])  # [2, H, W, 3] uint8
    assert frames.shape == (2, 48, 64, 3)
    assert frames[0, ..., 0].float().mean() > 150 and frames[1, ..., 2].float().mean() > 150

    report = prepare_media(out_dir, audio_dir=audio_dir, video_dir=video_dir, config=MediaConfig.tiny(), progress=False)
    assert report.num_written == 1 and not report.failed
    entry = load_media(out_dir / "clip.safetensors")
    t, h, w = entry["video_grid_thw"][0].tolist()
    assert entry["pixel_values_videos"].shape == (t * h * w, 1176)
    assert entry["input_features"].shape[1] == MediaConfig.tiny().n_mels


# ---------------------------------------------------------------------------------------------
# Cache files and prepare_media


def test_cache_path_and_save_validation(tmp_path):
    assert cache_path(tmp_path, "sample_1") == tmp_path / "sample_1.safetensors"
    for bad in ("", "a/b", "..", "a\\b"):
        with pytest.raises(ValueError, match="cache file name"):
            cache_path(tmp_path, bad)
    with pytest.raises(ValueError, match="unknown media keys"):
        save_media(tmp_path / "x.safetensors", {"pixel_values": torch.zeros(1)})


def _fake_clips(root, names, broken_audio=(), missing_video=()):
    (root / "audio").mkdir(parents=True)
    (root / "video").mkdir()
    for i, name in enumerate(names):
        if name in broken_audio:
            (root / "audio" / f"{name}.wav").write_bytes(b"RIFF....garbage")
        else:
            write_wav(root / "audio" / f"{name}.wav", _sine(0.1 + 0.05 * i), 16000)
        if name not in missing_video:
            (root / "video" / f"{name}.mp4").write_bytes(b"")  # opened by the fake frame source only


def test_prepare_media_end_to_end(tmp_path, caplog):
    names = ["clip_a", "clip_b", "clip_c", "clip_d"]
    _fake_clips(tmp_path, names, broken_audio={"clip_c"}, missing_video={"clip_d"})
    out = tmp_path / "media_cache"
    report = prepare_media(
        out, audio_dir=tmp_path / "audio", video_dir=tmp_path / "video", config=MediaConfig.tiny(),
        frame_source=lambda path: FakeFrames(), progress=False,
    )  # fmt: skip
    assert report.num_written == 2 and report.num_cached == 0
    assert [(n, why.split(" ")[0] + " " + why.split(" ")[1]) for n, why in report.failed] == [
        ("clip_c", "unreadable audio"), ("clip_d", "missing video")
    ]  # fmt: skip
    assert any("clip_c" in r.message for r in caplog.records)
    media = load_media(cache_path(out, "clip_a"))
    assert set(media) == set(data_media.MEDIA_KEYS)
    assert media["input_features"].shape == (1, 16, 10)
    # Idempotent: a second run only counts the existing entries.
    again = prepare_media(
        out, audio_dir=tmp_path / "audio", video_dir=tmp_path / "video", config=MediaConfig.tiny(),
        frame_source=lambda path: FakeFrames(), progress=False,
    )  # fmt: skip
    assert again.num_written == 0 and again.num_cached == 2 and len(again.failed) == 2
    # Audio only: no video needed.
    audio_only = prepare_media(
        tmp_path / "audio_cache", audio_dir=tmp_path / "audio", video_dir=None, config=MediaConfig.tiny(),
        modalities=("audio",), progress=False,
    )  # fmt: skip
    assert audio_only.num_written == 3
    assert set(load_media(cache_path(tmp_path / "audio_cache", "clip_d"))) == set(data_media.AUDIO_KEYS)


def test_prepared_media_feed_the_tiny_thinker(tmp_path):
    """Cache entries from real wav decoding + the video path load as a dataset and run the model."""
    from merr1.components.data import mer_unibench
    from merr1.components.data.collate import PromptCollator
    from merr1.components.models import tiny_thinker
    from merr1.components.tokenizer import tiny_tokenizer

    names = ["c0", "c1", "c2"]
    _fake_clips(tmp_path, names)
    data_dir = tmp_path / "set"
    prepare_media(
        data_dir / "media_cache", audio_dir=tmp_path / "audio", video_dir=tmp_path / "video",
        config=MediaConfig.tiny(), frame_source=lambda path: FakeFrames(num_frames=60, fps=10.0), progress=False,
    )  # fmt: skip
    (data_dir / "labels.csv").write_text("name,label\n" + "".join(f"{n},sad\n" for n in names))
    (data_dir / "subtitle.csv").write_text("name,english\n" + "".join(f"{n},I miss you.\n" for n in names))
    tok = tiny_tokenizer()
    ds = mer_unibench(tok, data_dir, num_mel_bins=16)
    assert len(ds) == 3 and not ds.bad_rows
    batch = PromptCollator(tok)([ds[i] for i in range(3)])
    model = tiny_thinker().eval()
    with torch.no_grad():
        logits = model(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], **batch["media"]).logits
    assert torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="16 mel bins, the model expects 128"):
        mer_unibench(tok, data_dir, num_mel_bins=128)


# ---------------------------------------------------------------------------------------------
# Audio from the clip, recorded cache settings


def _write_av_clip(path, seconds=1.0, rate=22050, channels=2, fps=10, codec="pcm_s16le"):
    """A clip with a video stream and a stereo sine audio track (left 440 Hz, right silent), PyAV."""
    import av
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    left = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    samples = np.stack([left, np.zeros_like(left)]) if channels == 2 else left[None]
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream(codec, rate=rate)
        audio.layout = "stereo" if channels == 2 else "mono"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        step = 1024
        for start in range(0, samples.shape[1], step):
            chunk = np.ascontiguousarray(samples[:, start : start + step].T.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=audio.layout.name)
            frame.sample_rate, frame.pts = rate, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)
    return left.astype(np.float32) / 32768.0


def test_read_audio_track_is_the_channel_mean(tmp_path):
    pytest.importorskip("av", reason="the media extra (PyAV) is installed by .ci/run; pip install 'merr1[media]'")
    left = _write_av_clip(tmp_path / "clip.mkv")  # lossless PCM: the samples come back exactly
    waveform, rate = data_media.read_audio_track(tmp_path / "clip.mkv")
    assert rate == 22050 and waveform.shape == (len(left),)
    assert torch.allclose(waveform, torch.from_numpy(left) / 2, atol=1e-6)  # (left + silent right) / 2


def test_read_audio_track_refuses_a_silent_video(tmp_path):
    pytest.importorskip("av", reason="the media extra (PyAV) is installed by .ci/run; pip install 'merr1[media]'")
    _write_mp4(tmp_path / "silent.mp4", [(0, 0, 0)] * 4)
    with pytest.raises(ValueError, match="no audio track"):
        data_media.read_audio_track(tmp_path / "silent.mp4")


@pytest.mark.parametrize(
    "audio_source, wav_names, expected",
    [
        ("auto", {"a"}, {"a": "wav", "b": "clip"}),  # audio/ lacks b: its clip's own track
        ("video", {"a", "b"}, {"a": "clip", "b": "clip"}),
        ("wav", {"a"}, {"a": "wav", "b": None}),  # b fails: missing audio file
    ],
)
def test_prepare_media_takes_the_audio_from_the_clip(tmp_path, audio_source, wav_names, expected):
    pytest.importorskip("av", reason="the media extra (PyAV) is installed by .ci/run; pip install 'merr1[media]'")
    (tmp_path / "audio").mkdir()
    (tmp_path / "video").mkdir()
    for name in ("a", "b"):
        _write_av_clip(tmp_path / "video" / f"{name}.mkv", seconds=1.0)
    for name in wav_names:  # a .wav of a different length (0.5 s) tells the sources apart
        write_wav(tmp_path / "audio" / f"{name}.wav", _sine(0.5), 16000)
    report = prepare_media(
        tmp_path / "cache", audio_dir=tmp_path / "audio", video_dir=tmp_path / "video", config=MediaConfig.tiny(),
        names=["a", "b"], modalities=("audio",), audio_source=audio_source, progress=False,
    )  # fmt: skip
    frames = {"wav": 50, "clip": 100}  # 0.5 s / 1 s of 10 ms mel frames
    for name, source in expected.items():
        if source is None:
            assert [n for n, _ in report.failed] == [name]
            continue
        assert load_media(cache_path(tmp_path / "cache", name))["input_features"].shape[-1] == frames[source], name
    settings = json.loads((tmp_path / "cache" / data_media.SETTINGS_FILE).read_text())
    assert settings["audio"]["source"] == audio_source and settings["modalities"] == ["audio"]


def test_cache_settings_refuse_other_settings_and_unknown_caches(tmp_path):
    cfg = MediaConfig.tiny()
    settings = data_media.cache_settings(cfg, ("audio", "video"), "auto", AudioFeaturizer(cfg))
    data_media.check_cache_settings(tmp_path / "c", settings)
    data_media.check_cache_settings(tmp_path / "c", settings)  # same: fine
    other = data_media.cache_settings(MediaConfig(), ("audio", "video"), "auto", AudioFeaturizer(cfg))
    with pytest.raises(ValueError, match=r"video.max_pixels: cache 784, now 602112.*rm -r"):
        data_media.check_cache_settings(tmp_path / "c", other)
    (tmp_path / "legacy").mkdir()
    save_media(tmp_path / "legacy" / "x.safetensors", {"video_second_per_grid": torch.ones(1)})
    with pytest.raises(ValueError, match="no media_settings.json"):
        data_media.check_cache_settings(tmp_path / "legacy", settings)
