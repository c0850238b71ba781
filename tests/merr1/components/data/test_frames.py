"""merr1.components.data.frames: stdlib PNG, the official 1-fps frame rule, the frame cache, PyAV decoding."""

import struct
import zlib

import pytest
import torch

from merr1.components.data.frames import (
    cache_name,
    count_frames,
    decode_data_url,
    decode_judge_frames,
    decode_png,
    encode_png,
    png_data_url,
    read_audio_track,
    read_frames,
    select_judge_frames,
    write_frames,
)


def random_frame(h, w, seed=0):
    return torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (37, 53), (28, 28)])
def test_png_round_trip(shape):
    frame = random_frame(*shape)
    assert torch.equal(decode_png(encode_png(frame)), frame)


def test_png_is_standard(tmp_path):
    image = pytest.importorskip("PIL.Image")
    frame = random_frame(17, 29)
    path = tmp_path / "f.png"
    path.write_bytes(encode_png(frame))
    with image.open(path) as img:
        assert img.mode == "RGB" and img.size == (29, 17)
        assert torch.equal(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(17, 29, 3), frame)


def _png(rows: list[tuple[int, list[int]]], width: int, header=(8, 2, 0)) -> bytes:
    raw = b"".join(bytes([f]) + bytes(r) for f, r in rows)
    ihdr = struct.pack(">IIBBBBB", width, len(rows), header[0], header[1], 0, 0, header[2])

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_png_filters_none_sub_up_hand_derived():
    # 2x2 image: row 0 "None" = pixels (10,20,30), (40,50,60); row 1 "Sub": first pixel (1,2,3),
    # second = first + (5,5,5); row 2 "Up": row 1 + (250, 0, 1) each, mod 256.
    png = _png([(0, [10, 20, 30, 40, 50, 60]), (1, [1, 2, 3, 5, 5, 5]), (2, [250, 0, 1, 250, 0, 1])], width=2)
    expected = torch.tensor([[[10, 20, 30], [40, 50, 60]], [[1, 2, 3], [6, 7, 8]], [[251, 2, 4], [0, 7, 9]]],
                            dtype=torch.uint8)  # fmt: skip
    assert torch.equal(decode_png(png), expected)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GIF89a", "not a PNG"),
        (_png([(4, [0, 0, 0])], width=1), "filter type 4"),
        (_png([(0, [0, 0])], width=1, header=(16, 2, 0)), "unsupported PNG"),
        (_png([(0, [0, 0, 0])], width=1, header=(8, 2, 1)), "unsupported PNG"),
    ],
)
def test_png_refuses_what_it_cannot_read(data, message):
    with pytest.raises(ValueError, match=message):
        decode_png(data)


def test_data_url_round_trip():
    png = encode_png(random_frame(3, 4))
    url = png_data_url(png)
    assert url.startswith("data:image/png;base64,") and decode_data_url(url) == png
    with pytest.raises(ValueError, match="data URL"):
        decode_data_url("http://example.com/x.png")


@pytest.mark.parametrize(
    "num_frames, fps, expected",
    [
        (400, 25.0, [0, 25, 50, 75, 100, 125, 150, 175, 200, 225]),  # the first 10 of 16
        (100, 29.97, [0, 29, 58, 87]),  # int(29.97) = 29
        (10, 4.0, [0, 4, 8]),
        (1, 30.0, [0]),
        (5, 1.5, [0, 1, 2, 3, 4]),  # int(1.5) = 1: every frame
        (0, 25.0, []),
    ],
)
def test_official_frame_rule(num_frames, fps, expected):
    assert select_judge_frames(range(num_frames), fps) == expected


def test_frame_rate_below_one_is_refused():
    with pytest.raises(ValueError, match="interval of 0"):
        select_judge_frames(range(5), 0.5)


@pytest.mark.parametrize(
    "video_id, name",
    [
        ("IEMOCAP/video/Ses05M_script01_1_F034.mp4", "IEMOCAP%2Fvideo%2FSes05M_script01_1_F034.mp4"),
        ("a%2Fb", "a%252Fb"),  # "%" is escaped too, so names are injective
        ("MC-EIU/video/x y.mkv", "MC-EIU%2Fvideo%2Fx%20y.mkv"),
    ],
)
def test_cache_name(video_id, name):
    assert cache_name(video_id) == name


@pytest.mark.parametrize("bad", ["", ".", "..", None])
def test_cache_name_refuses(bad):
    with pytest.raises(ValueError):
        cache_name(bad)


def test_frame_cache(tmp_path):
    frames = [random_frame(4, 6, seed=i) for i in range(3)]
    write_frames(tmp_path, "A/video/x.mp4", frames)
    stored = read_frames(tmp_path, "A/video/x.mp4")
    assert [torch.equal(decode_png(p), f) for p, f in zip(stored, frames)] == [True] * 3
    assert count_frames(tmp_path, "A/video/x.mp4") == 3
    write_frames(tmp_path, "A/video/x.mp4", frames[:1])  # replaced, not merged
    assert count_frames(tmp_path, "A/video/x.mp4") == 1
    write_frames(tmp_path, "A/video/empty.mp4", [])
    assert read_frames(tmp_path, "A/video/empty.mp4") == [] and count_frames(tmp_path, "A/video/empty.mp4") == 0
    assert read_frames(tmp_path, "A/video/none.mp4") is None and count_frames(tmp_path, "A/video/none.mp4") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A%2Fvideo%2Fempty.mp4", "A%2Fvideo%2Fx.mp4"]


def test_pyav_frames_and_audio_of_a_tiny_clip(tmp_path):
    pytest.importorskip("av")
    from merr1.components.data.mme_emotion import write_tiny_clip

    path = tmp_path / "clip.mp4"
    write_tiny_clip(path, torch.Generator().manual_seed(0), seconds=2.5, fps=4, size=32)  # 10 frames
    frames = decode_judge_frames(path)
    assert len(frames) == 3 and all(f.shape == (32, 32, 3) and f.dtype == torch.uint8 for f in frames)  # 0, 4, 8
    assert [f.shape for f in decode_judge_frames(path, max_side=16)] == [(16, 16, 3)] * 3
    assert len(decode_judge_frames(path, max_frames=2)) == 2
    waveform, rate = read_audio_track(path)
    assert rate == 16000 and waveform.dtype == torch.float32
    assert 0 <= waveform.numel() / rate - 2.5 < 0.2  # AAC adds priming/padding frames of 1024 samples
    assert 0.1 < float(waveform.abs().max()) <= 1.0  # the 0.3-amplitude tone survives AAC
