"""merr1's video inputs equal transformers' own Qwen2.5-Omni processor, tensor for tensor.

The comparison runs in a subprocess (``qwen_omni_video_reference.py``: what is compared and how,
and why a torchvision stand-in is used when torchvision cannot be imported). Results of the full
table are in ``docs/qwen2_5_omni_inputs.md``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from qwen_omni_video_reference import CLIPS, write_torchvision_standin  # noqa: E402

# Under 2 s (1080p), 7.3 s (720p), 30 s (240p) and a tiny 0.5 s clip; three with audio in video.
DEFAULT_CLIPS = ["1.5 s 1080p 30 fps", "7.3 s 720p 25 fps", "30 s 240p 30 fps", "0.5 s 100x80 10 fps"]


def _run(tmp_path: Path, clips: list[str], real_torchvision: bool) -> list[dict]:
    out = tmp_path / "reference.json"
    env = dict(os.environ)
    path = [str(write_torchvision_standin(tmp_path / "standin"))] if not real_torchvision else []
    env["PYTHONPATH"] = os.pathsep.join(path + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    args = [sys.executable, str(HERE / "qwen_omni_video_reference.py"), str(out), *clips]
    if real_torchvision:
        args += ["--torchvision", "real"]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check(results: list[dict], clips: list[str]) -> None:
    assert [r["clip"] for r in results] == clips
    for r in results:
        what = r["clip"]
        assert r["sampled_frames"] == r["transformers_sampled_frames"], what
        assert r["indices_equal_qwen_omni_utils"], what
        assert r["grid_merr1"] == r["grid_transformers"], what
        assert r["second_per_grid_merr1"] == r["second_per_grid_transformers"], what
        assert r["pixel_values_equal"], f"{what}: max |diff| {r['pixel_values_max_abs_diff']}"
        assert r["video_tokens_merr1"] == r["video_tokens_transformers"], what
        if CLIPS[what][4]:
            assert r["audio_frames_merr1"] == r["audio_frames_transformers"], what
            assert r["audio_features_max_abs_diff"] == 0.0, what
            assert r["audio_in_video_ids_equal"], what


def test_video_inputs_equal_the_processors(tmp_path):
    _check(_run(tmp_path, DEFAULT_CLIPS, real_torchvision=False), DEFAULT_CLIPS)


@pytest.mark.slow
def test_every_clip_of_the_table_equals_the_processors(tmp_path):
    _check(_run(tmp_path, list(CLIPS), real_torchvision=False), list(CLIPS))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
def test_video_inputs_equal_the_processor_with_real_torchvision(tmp_path):
    _check(_run(tmp_path, list(CLIPS), real_torchvision=True), list(CLIPS))
