import importlib.util
import math
from pathlib import Path

import torch

from merr1.components.data.media import MEDIA_KEYS, cache_path, load_media, write_wav

REPO = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wavs(folder, names, broken=()):
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        if name in broken:
            (folder / f"{name}.wav").write_bytes(b"junk")
        else:
            t = torch.arange(1600 + 800 * i) / 16000
            write_wav(folder / f"{name}.wav", 0.3 * torch.sin(2 * math.pi * 300 * t), 16000)


def test_audio_only_tiny(tmp_path):
    script = _load("prepare_media")
    _wavs(tmp_path / "audio", ["a", "b", "c"])
    assert script.main(["--data_dir", str(tmp_path), "--tiny", "--modalities", "audio"]) == 0
    for i, name in enumerate(["a", "b", "c"]):
        media = load_media(cache_path(tmp_path / "media_cache", name))
        assert media["input_features"].shape == (1, 16, 10 + 5 * i)
        assert media["input_features"].dtype == torch.bfloat16


def test_strict_exit_status_and_shards(tmp_path, caplog):
    script = _load("prepare_media")
    names = ["a", "b", "c", "d"]
    _wavs(tmp_path / "audio", names, broken={"c"})
    out = tmp_path / "cache"
    base = ["--data_dir", str(tmp_path), "--tiny", "--modalities", "audio", "--out", str(out)]
    assert script.main(base + ["--shard", "0/2"]) == 0  # a, c (c fails, not strict)
    assert sorted(p.stem for p in out.glob("*.safetensors")) == ["a"]
    assert any("skipping c" in r.message for r in caplog.records)
    assert script.main(base + ["--shard", "1/2", "--strict"]) == 0  # b, d
    assert script.main(base + ["--strict"]) == 1  # c still fails
    assert sorted(p.stem for p in out.glob("*.safetensors")) == ["a", "b", "d"]


def test_names_csv_and_video_with_fake_frames(tmp_path, monkeypatch):
    from merr1.components.data import media as data_media

    class FakeFrames:
        num_frames, fps = 20, 10.0

        def __init__(self, path):
            self.path = path

        def get_frames(self, indices):
            return torch.full((len(indices), 40, 60, 3), 100, dtype=torch.uint8)

    script = _load("prepare_media")
    _wavs(tmp_path / "audio", ["x", "y"])
    (tmp_path / "video").mkdir()
    for name in ("x", "y"):
        (tmp_path / "video" / f"{name}.mp4").write_bytes(b"")
    (tmp_path / "names.csv").write_text("name,openset\nx,[]\n")
    real = data_media.prepare_media

    def with_fake(*args, **kwargs):
        return real(*args, frame_source=FakeFrames, **kwargs)

    monkeypatch.setattr(script, "prepare_media", with_fake)
    assert script.main(["--data_dir", str(tmp_path), "--tiny", "--names_csv", str(tmp_path / "names.csv")]) == 0
    cached = sorted(p.stem for p in (tmp_path / "media_cache").glob("*.safetensors"))
    assert cached == ["x"]
    media = load_media(cache_path(tmp_path / "media_cache", "x"))
    assert set(media) == set(MEDIA_KEYS) and media["video_grid_thw"].tolist() == [[1, 2, 2]]


def test_a_cache_made_with_other_settings_is_refused(tmp_path):
    import pytest

    script = _load("prepare_media")
    _wavs(tmp_path / "audio", ["a"])
    base = ["--data_dir", str(tmp_path), "--tiny", "--modalities", "audio"]
    assert script.main(base) == 0
    assert script.main(base) == 0  # same settings: entries are reused
    with pytest.raises(ValueError, match=r"other settings \(video.cache_dtype: cache 'bfloat16', now 'float32'\); rebuild it: delete"):
        script.main(base + ["--cache_dtype", "float32"])
    with pytest.raises(ValueError, match=r"audio.source: cache 'auto', now 'wav'"):
        script.main(base + ["--audio_source", "wav"])
