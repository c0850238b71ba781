"""merr1.components.data.mme_emotion: the released layout with bad rows, the stage-A prompts and
media, the generated sample set, and the prepare step (PyAV)."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from merr1.components.data import media as data_media
from merr1.components.data.frames import cache_name, count_frames, decode_png, read_frames
from merr1.components.data.mme_emotion import (
    MMEEmotionDataset,
    audio_clue_file,
    ensure_mme_emotion_sample,
    load_task,
    make_mme_emotion_sample,
    prepare_caches,
    question_file,
    task_video_ids,
)
from merr1.components.mme_emotion import TASKS, load_questions
from merr1.components.tokenizer import tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[4]
LABELS = ["Anger", "Sadness", "Neutral"]


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mme") / "s"
    ensure_mme_emotion_sample(out)
    return out


def write_layout(root, task, questions, clues):
    for path, data in ((question_file(root, task), questions), (audio_clue_file(root, task), clues)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))


def q(video_id, label="Anger", label_set=LABELS):
    return {"video_id": video_id, "label": label, "label_set": label_set}


def clue(video_id, text="loud voice"):
    return {"video_id": video_id, "ground_truth": "x", "audio_clue": text}


def test_layout_paths():
    assert question_file("D", "ER-Lab") == Path("D/ER-Lab/question/ER_Lab.json")
    assert audio_clue_file("D", "FG-SA") == Path("D/FG-SA/audio_clue/FG_SA_qwen2_audio_clues.json")
    with pytest.raises(ValueError, match="unknown MME-Emotion task"):
        question_file("D", "ER_Lab")


def test_bad_rows_are_reported_by_name(tmp_path):
    questions = [
        q("A/video/1.mp4"),
        q("A/video/2.mp4", label=""),  # empty label
        "not a record",
        q("A/video/1.mp4"),  # duplicate
        q("A/video/3.mp4"),  # no audio clue
        q("A/video/4.mp4", label_set="Anger"),  # label_set not a list
        q("A/video/5.mp4"),  # clue not a string
        q("A/video/6.mp4"),  # a later clue record wins
    ]
    clues = [clue("A/video/1.mp4"), {"audio_clue": "no id"}, clue("A/video/5.mp4", None), clue("A/video/6.mp4", "old"),
             clue("A/video/6.mp4", "new")]  # fmt: skip
    write_layout(tmp_path, "ER-Lab", questions, clues)
    loaded = load_task(tmp_path, "ER-Lab")
    kept = [(s.video_id, s.audio_clue) for s in loaded.samples]
    assert kept == [("A/video/1.mp4", "loud voice"), ("A/video/6.mp4", "new")]
    assert loaded.samples[0].label_set == tuple(LABELS)
    assert [(b.name, b.kind) for b in loaded.bad_rows] == [
        ("A/video/2.mp4", "malformed record"),
        ("ER_Lab.json record 2", "malformed record"),
        ("A/video/1.mp4", "duplicate video_id"),
        ("A/video/3.mp4", "missing audio clue"),
        ("A/video/4.mp4", "malformed record"),
        ("A/video/5.mp4", "missing audio clue"),
    ]
    with pytest.raises(ValueError, match="6 bad row"):
        load_task(tmp_path, "ER-Lab", strict=True)


def test_missing_and_malformed_files_fail_loudly(tmp_path):
    with pytest.raises(FileNotFoundError, match="ER_Lab.json"):
        load_task(tmp_path, "ER-Lab")
    write_layout(tmp_path, "SA", {"not": "a list"}, [])
    with pytest.raises(ValueError, match="SA.json: expected a JSON list"):
        load_task(tmp_path, "SA")
    write_layout(tmp_path, "IR", [q("a")], [])
    audio_clue_file(tmp_path, "IR").write_text("[{")
    with pytest.raises(ValueError, match="IR_qwen2_audio_clues.json: invalid JSON"):
        load_task(tmp_path, "IR")
    write_layout(tmp_path, "FG-ER", [q("a")], [])
    with pytest.raises(ValueError, match="no usable sample"):
        load_task(tmp_path, "FG-ER")


def test_sample_set_layout_and_determinism(sample_dir, tmp_path):
    info = json.loads((sample_dir / "mme_emotion_info.json").read_text())
    assert info["tasks"] == list(TASKS) and info["num_per_task"] == 4
    for task in TASKS:
        loaded = load_task(sample_dir, task, strict=True)
        assert len(loaded.samples) == 4
        for s in loaded.samples:
            assert count_frames(sample_dir / "frames_cache", s.video_id) >= 2
            assert data_media.cache_path(sample_dir / "media_cache", cache_name(s.video_id)).is_file()
            parts = s.label.split({"FG-ER": ";", "ML-ER": ","}.get(task, "\x00"))
            assert set(parts) <= set(s.label_set) and len(parts) >= (2 if task == "ML-ER" else 1)
    sa = {s.video_id for s in load_task(sample_dir, "SA").samples}
    assert len(sa & {s.video_id for s in load_task(sample_dir, "FG-SA").samples}) == 2  # shared clips
    again = tmp_path / "again"
    make_mme_emotion_sample(again)

    def digest(root):
        files = [p for p in root.rglob("*") if p.is_file()]
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    assert digest(again) == digest(sample_dir)


@pytest.mark.parametrize("mode", ["slow", "fast"])
@pytest.mark.parametrize("audio_in_video", [True, False])
def test_stage_a_prompt_and_media(sample_dir, mode, audio_in_video):
    tok = tiny_tokenizer()
    ds = MMEEmotionDataset(tok, sample_dir, "FG-ER", mode, system_prompt=None, instruction="Answer now.",
                           num_mel_bins=16, use_audio_in_video=audio_in_video)  # fmt: skip
    sample = ds.samples[0]
    item = ds[0]
    text = tok.decode(item["prompt_ids"])
    question = load_questions()["FG-ER"]
    expected_text = f"{question}\nCandidate labels: {', '.join(sample.label_set)}.\nAnswer now."
    if audio_in_video:  # one interleaved block, as the Qwen2.5-Omni processor builds it (the default)
        assert text.startswith("<|im_start|>user\n<|vision_bos|><|audio_bos|><|VIDEO|>")
        assert "<|audio_eos|><|vision_eos|>" in text and bool(item["media"]["use_audio_in_video"])
    else:
        assert text.startswith("<|im_start|>user\n<|audio_bos|>") and "<|vision_bos|><|VIDEO|><|vision_eos|>" in text
        assert "use_audio_in_video" not in item["media"]
    assert text.split("<|vision_eos|>")[1].startswith(expected_text + "<|im_end|>\n<|im_start|>assistant\n")
    assert text.endswith("<think></think><answer>" if mode == "fast" else "assistant\n")
    assert item["response_prefix"] == ("<think></think><answer>" if mode == "fast" else "")
    assert item["name"] == sample.video_id and item["label"] == sample.label
    num_audio = int((item["prompt_ids"] == tok.convert_tokens_to_ids("<|AUDIO|>")).sum())
    frames = item["media"]["input_features"].shape[-1]
    assert num_audio == ((frames - 1) // 2 + 1 - 2) // 2 + 1  # the Thinker's audio token count
    assert ds.frames_dir == sample_dir / "frames_cache"


def test_default_instruction_is_the_response_formats(sample_dir):
    from merr1.components.data.prompts import MER_R1_INSTRUCTION

    ds = MMEEmotionDataset(tiny_tokenizer(), sample_dir, "SA", modalities=())
    text = tiny_tokenizer().decode(ds[0]["prompt_ids"])
    assert MER_R1_INSTRUCTION in text and ds[0]["media"] == {} and "<|AUDIO|>" not in text


def test_missing_media_and_too_long_prompts_are_bad_rows(sample_dir, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    ds0 = MMEEmotionDataset(tiny_tokenizer(), sample_dir, "IR", system_prompt=None, num_mel_bins=16)
    keep = ds0.samples[1].video_id
    name = data_media.cache_path(media, cache_name(keep)).name
    (media / name).symlink_to(sample_dir / "media_cache" / name)
    ds = MMEEmotionDataset(tiny_tokenizer(), sample_dir, "IR", system_prompt=None, media_dir=media, num_mel_bins=16)
    assert ds.names == [keep]
    assert {b.kind for b in ds.bad_rows} == {"missing media file"} and len(ds.bad_rows) == 3
    limit = len(ds0[0]["prompt_ids"]) - 1
    short = MMEEmotionDataset(tiny_tokenizer(), sample_dir, "IR", system_prompt=None, num_mel_bins=16,
                              max_seq_len=limit)  # fmt: skip
    assert "too long" in {b.kind for b in short.bad_rows}
    with pytest.raises(ValueError, match="bad row"):
        MMEEmotionDataset(tiny_tokenizer(), sample_dir, "IR", media_dir=media, num_mel_bins=16, strict=True)


# ---------------------------------------------------------------------------------------------
# Prepare step (PyAV)


def test_prepare_caches_from_videos(tmp_path):
    pytest.importorskip("av")
    from merr1.components.data.media import MediaConfig

    root = tmp_path / "set"
    make_mme_emotion_sample(root, num_per_task=1, with_videos=True)
    ids = task_video_ids(root)
    assert len(ids) == len(TASKS) - 1  # FG-SA's clip is SA's
    missing = ids[0]
    (root / "videos" / missing).unlink()
    media, frames = tmp_path / "media", tmp_path / "frames"
    report = prepare_caches(ids, root / "videos", media_dir=media, frames_dir=frames, config=MediaConfig.tiny(),
                            progress=False)  # fmt: skip
    assert report.written == {"media": len(ids) - 1, "frames": len(ids) - 1}
    assert [(v, k) for v, k, _ in report.failed] == [(missing, "media"), (missing, "frames")]
    assert read_frames(frames, missing) is None  # no entry: the judge drops it, like a missing video
    png = read_frames(frames, ids[1])
    assert len(png) == 3 and decode_png(png[0]).shape == (32, 32, 3)  # 2.5 s at 4 fps: frames 0, 4, 8
    entry = data_media.load_media(data_media.cache_path(media, cache_name(ids[1])))
    assert entry["input_features"].shape[1] == 16 and entry["video_grid_thw"].tolist() == [[1, 2, 2]]
    again = prepare_caches(ids, root / "videos", media_dir=media, frames_dir=frames, config=MediaConfig.tiny(),
                           progress=False)  # fmt: skip
    assert again.written == {"media": 0, "frames": 0}
    assert again.cached == {"media": len(ids) - 1, "frames": len(ids) - 1}


def test_prepare_script_frames_only(tmp_path):
    pytest.importorskip("av")
    path = REPO_ROOT / "scripts" / "prepare_mme_emotion.py"
    spec = importlib.util.spec_from_file_location("prepare_mme_emotion", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root = tmp_path / "set"
    make_mme_emotion_sample(root, num_per_task=1, with_videos=True)
    (root / "frames_cache").rename(root / "frames_generated")
    assert script.main(["--data_dir", str(root), "--video_dir", str(root / "videos"), "--no_media",
                        "--tasks", "ER-Lab", "SA", "--max_side", "8"]) == 0  # fmt: skip
    written = sorted(p.name for p in (root / "frames_cache").iterdir())
    assert written == sorted(cache_name(v) for v in task_video_ids(root, ["ER-Lab", "SA"]))
    assert decode_png(read_frames(root / "frames_cache", task_video_ids(root, ["SA"])[0])[0]).shape == (8, 8, 3)
    with pytest.raises(SystemExit):
        script.main(["--data_dir", str(root), "--video_dir", str(root / "videos")])  # media needs --processor/--tiny
