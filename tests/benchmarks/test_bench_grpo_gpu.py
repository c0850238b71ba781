import importlib.util
import json
import types
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from merr1.components.tokenizer import tiny_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_grpo_gpu.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_grpo_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and the config's `_component_` paths look it up
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def test_synthetic_tokenizer_has_the_qwen_special_ids_after_the_regular_tokens():
    tokenizer = bench.synthetic_qwen_tokenizer(num_regular_tokens=1000)
    assert len(tokenizer) == 1000 + len(bench.QWEN_SPECIAL_TOKENS)
    expected = {"<|endoftext|>": 1000, "<|im_end|>": 1002, "<|AUDIO|>": 1003, "<|vision_bos|>": 1009, "<|VIDEO|>": 1013}
    for token, token_id in expected.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (1002, 1000)
    text = "<|im_start|>user\nHow are you?<|im_end|>\n<think>fine</think><answer>happy</answer>"
    ids = tokenizer(text)["input_ids"]
    assert max(i for i in ids if i < 1000) < 1000 and tokenizer.decode(ids) == text


def test_synthetic_tokenizer_real_size_matches_the_thinker_token_ids():
    config = bench.thinker_config("7B")
    first = bench.QWEN_FIRST_SPECIAL_ID
    ids = {token: first + i for i, token in enumerate(bench.QWEN_SPECIAL_TOKENS)}
    assert ids["<|AUDIO|>"] == config.audio_token_index
    assert ids["<|audio_bos|>"] == config.audio_start_token_id
    assert ids["<|audio_eos|>"] == config.audio_end_token_id
    assert ids["<|IMAGE|>"] == config.image_token_index
    assert ids["<|VIDEO|>"] == config.video_token_index
    assert ids["<|vision_bos|>"] == config.vision_start_token_id
    assert ids["<|vision_eos|>"] == config.vision_end_token_id
    assert first + len(bench.QWEN_SPECIAL_TOKENS) <= config.text_config.vocab_size


# Placeholders: audio frames F -> ((F - 1) // 2 + 1 - 2) // 2 + 1 tokens; video t*h*w/4.
@pytest.mark.parametrize(
    "audio_frames, grid, num_audio, num_video",
    [(400, (4, 24, 24), 100, 576), (500, (5, 24, 24), 125, 720), (200, (2, 8, 8), 50, 32)],
)
def test_synthetic_dataset_items(audio_frames, grid, num_audio, num_video):
    tokenizer = tiny_tokenizer()
    dataset = bench.SyntheticRLDataset(tokenizer, 3, audio_frames, grid, num_mel_bins=16, subtitle_words=5)
    assert len(dataset) == 3
    audio_id, video_id = tokenizer.convert_tokens_to_ids(["<|AUDIO|>", "<|VIDEO|>"])
    for i, item in enumerate(dataset):
        assert int((item["prompt_ids"] == audio_id).sum()) == num_audio
        assert int((item["prompt_ids"] == video_id).sum()) == num_video
        assert item["media"]["input_features"].shape == (1, 16, audio_frames)
        assert item["media"]["pixel_values_videos"].shape == (grid[0] * grid[1] * grid[2], 1176)
        assert item["media"]["video_grid_thw"].tolist() == [list(grid)]
        assert len(item["labels"]) == 1 + i % 3


def test_write_answers_overwrites_head_and_tail_only():
    tokenizer = tiny_tokenizer()
    T = 40
    ids = torch.full((4, T), 300)
    mask = torch.ones(4, T, dtype=torch.bool)
    mask[1, 35:] = False  # length 35
    mask[3, 3:] = False  # too short: left as sampled
    rollout = types.SimpleNamespace(response_ids=ids, response_mask=mask, labels=[["sad", "angry"], ["happy"]])
    bench.write_answers(rollout, tokenizer, group_size=2)
    texts = tokenizer.batch_decode([row[m].tolist() for row, m in zip(ids, mask)], skip_special_tokens=True)
    assert texts[0].startswith("<think>") and texts[0].endswith("</think><answer>sad</answer>")
    assert texts[1].endswith("</think><answer>sad, angry, calm</answer>")
    assert texts[2].endswith("</think><answer>happy</answer>")
    assert ids[3, :3].tolist() == [300, 300, 300]
    assert ids[1, 34] == tokenizer.eos_token_id and ids[1, 35:].tolist() == [300] * 5  # padding untouched


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--prompts-per-step", "6", "--micro-batch-prompts", "4"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--tiny", "--steps", "0"])


def test_tiny_smoke_run_on_cpu():
    result = bench.main(["--tiny"])
    assert result.rollouts_per_s > 0 and result.rollouts_per_step == 8
    assert result.response_tokens == 32  # random weights: every response runs to the cap
    assert set(result.split_s) == set(bench.STEP_TIMES) and all(t > 0 for t in result.split_s.values())
    assert result.rewards["format"] == 1.0  # the written answers are well formed
    assert result.rewards["recall"] > 0


@pytest.mark.gpu
def test_gpu_7b_rollouts(tmp_path):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(SCRIPT), "--steps", "2", "--json", str(out)], check=True)
    result = json.loads(out.read_text())
    assert result["rollouts_per_s"] > 0 and result["response_tokens"] == 256
    assert 900 <= result["prompt_tokens"] <= 1300
    assert result["rewards"]["format"] == 1.0
