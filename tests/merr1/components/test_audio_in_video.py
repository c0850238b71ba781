"""Audio in video (Qwen2.5-Omni ``use_audio_in_video``, TMRoPE), end to end on the tiny Thinker.

What is compared with transformers' own code:
- the interleaved placeholder layout with ``Qwen2_5OmniProcessor.replace_video_with_audio_token``;
- the 3-D positions with ``Qwen2_5OmniThinkerModel.get_rope_index(..., use_audio_in_video=True)``
  (left-padded batches, clips of several lengths, audio longer or shorter than the video);
- merr1's prefill + decode logits (``generate``) and its prefix-shared teacher-forced logits with
  the Thinker's plain forward on the same full sequences (fp32; slow prompts, the fast-thinking
  template that SFCC and the evaluation use, and the EMO-R3 re-check prompts), G = 2;
- the SFT collator's packed positions and per-token losses with unpacked forwards.
"""

from types import SimpleNamespace

import pytest
import torch
from numerics import assert_close_to_scale

from merr1.components.data.collate import PromptCollator, SFTCollator, collate_media, mrope_position_ids
from merr1.components.data.prompts import (
    PromptEncoder,
    chunk_lengths,
    audio_in_video_chunks,
    build_chat_prompt,
    encode_fast_prefix,
    encode_text,
    num_audio_tokens,
    recheck_prompt_ids,
)
from merr1.components.data.collate import repeat_media
from merr1.components.generation import SamplingConfig, generate, media_token_ids, teacher_forced_logits
from merr1.components.models import tiny_thinker
from merr1.components.tokenizer import TINY_SPECIAL_TOKENS as S
from merr1.components.tokenizer import tiny_tokenizer

PATCH_DIM = 3 * 2 * 14 * 14

# (audio feature frames, video grid (t, h, w), second_per_grid): 3 s, 7.32 s (14 frames sampled at
# 1.91 fps), 1.5 s (4 frames at 2.67 fps), audio longer than the video, a sparse clip (spg 3: the
# temporal patches jump over chunk boundaries).
CLIPS = [
    (300, (2, 4, 4), 1.5),
    (732, (7, 2, 4), 2 / (14 / 183 * 25)),
    (150, (2, 2, 2), 0.75),
    (500, (1, 2, 2), 2.0),
    (400, (3, 2, 2), 3.0),
]


@pytest.fixture(scope="module")
def thinker():
    return tiny_thinker(seed=0).eval()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def clip_media(frames: int, grid, second_per_grid: float, seed: int) -> dict[str, torch.Tensor]:
    """One sample's cached media (as a cache entry loaded by the data sets) with the flag."""
    gen = torch.Generator().manual_seed(seed)
    t, h, w = grid
    return {
        "input_features": torch.randn(1, 16, frames, generator=gen),
        "feature_attention_mask": torch.ones(1, frames, dtype=torch.long),
        "pixel_values_videos": torch.randn(t * h * w, PATCH_DIM, generator=gen),
        "video_grid_thw": torch.tensor([grid]),
        "video_second_per_grid": torch.tensor([second_per_grid], dtype=torch.float32),
        "use_audio_in_video": torch.tensor(True),
    }


def clip_prompt(encoder: PromptEncoder, clip, subtitle: str, fast: bool = False) -> list[int]:
    frames, grid, spg = clip
    num_audio, num_video = num_audio_tokens(frames), grid[0] * grid[1] * grid[2] // 4
    chunks = audio_in_video_chunks(num_audio, grid, float(torch.tensor(spg, dtype=torch.float32)))
    return encoder.encode(subtitle, num_audio, num_video, fast, audio_in_video=chunks)


def samples(tok, clips, fast=False):
    encoder = PromptEncoder(tok, system_prompt=None, instruction="List the emotions.")
    subtitles = ["I am fine.", "Why would you say that to me?", "no", "Well.", "It is over now, all of it."]
    return [
        {"name": f"c{i}", "prompt_ids": torch.tensor(clip_prompt(encoder, clip, subtitles[i], fast)),
         "media": clip_media(*clip, seed=i)}
        for i, clip in enumerate(clips)
    ]  # fmt: skip


def rope_reference(thinker, ids, mask, media):
    """transformers' positions for a (padded) batch: [3, B, L] and the deltas [B, 1]."""
    return thinker.model.get_rope_index(
        ids, None, media["video_grid_thw"], mask, True, media["feature_attention_mask"].sum(-1),
        media["video_second_per_grid"],
    )  # fmt: skip


# --- layout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_audio, grid, second_per_grid, expected",
    [
        (37, (2, 40, 72), 0.75, [(1440, 37)]),  # 1.5 s 1080p: one chunk
        (183, (7, 20, 36), 1.0457143, [(360, 50), (360, 50), (360, 50), (180, 33)]),  # 7.32 s 720p
        (750, (30, 18, 30), 1.0, [(270, 50)] * 15),  # 30 s 240p: 2 temporal patches + 50 audio tokens each
        (125, (1, 2, 2), 2.0, [(1, 50), (0, 50), (0, 25)]),  # audio longer than the video
        (10, (3, 2, 2), 3.0, [(1, 10), (1, 0), (1, 0)]),  # patches at 0, 75, 150: one chunk each
    ],
)
def test_audio_in_video_chunks(num_audio, grid, second_per_grid, expected):
    assert audio_in_video_chunks(num_audio, grid, second_per_grid) == expected


@pytest.mark.parametrize(
    "runs, expected",
    [
        ([(0, 3), (25, 3)], [6]),
        ([(0, 2), (75, 2)], [2, 2]),
        ([(0, 2), (125, 2)], [2, 1, 1]),  # a jump over two boundaries closes a one-token chunk
        ([(k, 1) for k in range(101)], [50, 50, 1]),
    ],
)
def test_chunk_lengths_follow_get_chunked_index(runs, expected):
    assert chunk_lengths(runs, 50) == expected


def _processor_layout(num_audio, grid, second_per_grid):
    """transformers' own placeholder string (Qwen2_5OmniProcessor.replace_video_with_audio_token),
    called on a stand-in for the processor's token attributes (no tokenizer or image stack needed)."""
    from transformers import Qwen2_5OmniProcessor

    fake = SimpleNamespace(
        audio_bos_token="<|audio_bos|>", audio_eos_token="<|audio_eos|>", video_token="<|VIDEO|>",
        audio_token="<|AUDIO|>", video_processor=SimpleNamespace(merge_size=2),
    )  # fmt: skip
    fake.get_chunked_index = lambda indices, per_chunk: Qwen2_5OmniProcessor.get_chunked_index(fake, indices, per_chunk)
    return Qwen2_5OmniProcessor.replace_video_with_audio_token(
        fake,
        {"video_grid_thw": [list(grid)], "video_second_per_grid": [second_per_grid]},
        0,
        {"num_audio_tokens": [num_audio]},
        0,
        position_id_per_seconds=25,
        seconds_per_chunk=2.0,
    )


@pytest.mark.parametrize("num_audio, grid, second_per_grid", [(37, (2, 40, 72), 0.75), (183, (7, 20, 36), 2 / (14 / 183 * 25)),
                                                             (750, (30, 18, 30), 1.0), (125, (1, 2, 2), 2.0), (60, (5, 4, 6), 1.2)])  # fmt: skip
def test_layout_equals_the_processors(num_audio, grid, second_per_grid):
    chunks = audio_in_video_chunks(num_audio, grid, second_per_grid)
    num_video = grid[0] * grid[1] * grid[2] // 4
    ours = build_chat_prompt("x", num_audio=num_audio, num_video=num_video, system_prompt=None, audio_in_video=chunks)
    # The chat template writes <|vision_bos|><|VIDEO|><|vision_eos|>; the processor replaces <|VIDEO|>.
    theirs = "<|vision_bos|>" + _processor_layout(num_audio, grid, second_per_grid) + "<|vision_eos|>"
    assert ours == f"<|im_start|>user\n{theirs}x<|im_end|>\n<|im_start|>assistant\n"


# --- positions ------------------------------------------------------------------------------------


def test_positions_equal_get_rope_index_left_padded(thinker, tok):
    batch = PromptCollator(tok)(samples(tok, CLIPS))
    ids, mask, media = batch["prompt_ids"], batch["prompt_mask"], batch["media"]
    assert bool(media["use_audio_in_video"]) and (mask[:, 0] == 0).any()
    expected, _ = rope_reference(thinker, ids, mask, media)
    for b in range(len(CLIPS)):
        row = ids[b][mask[b].bool()]
        got = mrope_position_ids(
            row, media["video_grid_thw"][b : b + 1], media["video_second_per_grid"][b : b + 1],
            video_token_id=S["<|VIDEO|>"], audio_token_id=S["<|AUDIO|>"], vision_start_token_id=S["<|vision_bos|>"],
            audio_start_token_id=S["<|audio_bos|>"], use_audio_in_video=True,
        )  # fmt: skip
        assert torch.equal(got, expected[:, b, mask[b].bool()])


def test_positions_refuse_a_plain_video_block_with_the_flag(tok):
    ids = torch.tensor([1, S["<|vision_bos|>"], S["<|VIDEO|>"], S["<|vision_eos|>"], 11])
    with pytest.raises(ValueError, match="outside an audio-in-video block"):
        mrope_position_ids(
            ids, torch.tensor([[1, 2, 2]]), torch.tensor([1.0]), video_token_id=S["<|VIDEO|>"],
            audio_token_id=S["<|AUDIO|>"], vision_start_token_id=S["<|vision_bos|>"],
            audio_start_token_id=S["<|audio_bos|>"], use_audio_in_video=True,
        )  # fmt: skip


def test_collate_refuses_a_batch_mixing_the_layouts():
    interleaved = clip_media(40, (1, 2, 2), 1.0, seed=0)
    separate = {k: v for k, v in clip_media(40, (1, 2, 2), 1.0, seed=1).items() if k != "use_audio_in_video"}
    assert "use_audio_in_video" not in collate_media([separate, separate])
    assert bool(collate_media([interleaved, interleaved])["use_audio_in_video"])
    with pytest.raises(ValueError, match="mixes samples"):
        collate_media([interleaved, separate])


# --- logits: prefill + decode, teacher forcing, fast template, EMO-R3 re-check -------------------


def _prompts(tok, kind):
    items = samples(tok, CLIPS[:3], fast=kind == "fast")
    if kind == "recheck":  # the EMO-R3 re-check turn copies the rollout prompt's media block verbatim
        for item, query in zip(items, ["Is the person happy? Answer yes or no.", "Really?", "Sad?"]):
            item["prompt_ids"] = torch.tensor(recheck_prompt_ids(tok, query, item["prompt_ids"].tolist(), use_media=True))
    return PromptCollator(tok)(items)


@pytest.mark.parametrize("kind", ["slow", "fast", "recheck"])
def test_generate_and_teacher_forced_logits_equal_the_plain_forward(thinker, tok, kind):
    batch = _prompts(tok, kind)
    ids, mask, media = batch["prompt_ids"], batch["prompt_mask"], batch["media"]
    num_prompts, num_samples, prompt_len = ids.shape[0], 2, ids.shape[1]
    assert (mask[:, 0] == 0).any(), "the batch must contain a left-padded row"
    config = SamplingConfig(max_new_tokens=6, temperature=0.0, suppress_token_ids=media_token_ids(thinker.config))
    recorded = []
    handle = thinker.lm_head.register_forward_hook(lambda module, args, out: recorded.append(out.detach().float()))
    try:
        rollouts = generate(thinker, ids, mask, config, num_samples=num_samples, media=media)
    finally:
        handle.remove()

    # transformers' plain forward over every full sequence [prompt; response] (B*G rows).
    full_ids = torch.cat([ids.repeat_interleave(num_samples, 0), rollouts.response_ids], 1)
    full_mask = torch.cat([mask.repeat_interleave(num_samples, 0), rollouts.response_mask.long()], 1)
    with torch.no_grad():
        reference = thinker(input_ids=full_ids, attention_mask=full_mask,
                            **repeat_media(media, num_prompts, num_samples)).logits.float()  # fmt: skip
    predicting = reference[:, prompt_len - 1 : -1]  # [R, T, V]: the logits that predict each response token

    # Prefill (one row per prompt, then replicated) and every decode step.
    steps = rollouts.response_ids.shape[1]
    assert len(recorded) == steps  # prefill + (steps - 1) decode steps
    got = torch.stack([recorded[0].repeat_interleave(num_samples, 0), *recorded[1:]], 1)  # [R, T, V]
    valid = rollouts.response_mask  # [R, T]
    assert_close_to_scale(got[valid], predicting[valid], rtol=1e-5)

    # Prefix-shared teacher forcing (prompt once, G responses on its cache).
    with torch.no_grad():
        forced = teacher_forced_logits(
            thinker, ids, mask, rollouts.response_ids, rollouts.response_mask, rollouts.response_mask,
            num_samples=num_samples, media=media,
        ).float()  # fmt: skip
    assert_close_to_scale(forced, predicting[valid], rtol=1e-5)


def test_plain_forward_depends_on_the_flag(thinker, tok):
    """The flag is not decorative: the same interleaved prompt without it gets other positions."""
    batch = _prompts(tok, "slow")
    with torch.no_grad():
        on = thinker(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], **batch["media"]).logits
        off_media = {k: v for k, v in batch["media"].items() if k != "use_audio_in_video"}
        off = thinker(input_ids=batch["prompt_ids"], attention_mask=batch["prompt_mask"], **off_media).logits
    assert not torch.allclose(on, off, atol=1e-3)


def test_fast_prompt_is_the_slow_prompt_plus_the_prefill(tok):
    slow, fast = samples(tok, CLIPS[:1])[0]["prompt_ids"], samples(tok, CLIPS[:1], fast=True)[0]["prompt_ids"]
    assert fast.tolist() == slow.tolist() + encode_fast_prefix(tok)


# --- SFT packing ------------------------------------------------------------------------------------


def _sft_items(tok):
    items = []
    for i, item in enumerate(samples(tok, CLIPS[:3])):
        target = torch.tensor(encode_text(tok, f"<think>cue {i}</think><answer>sad</answer><|im_end|>"))
        items.append({
            "name": item["name"], "input_ids": torch.cat([item["prompt_ids"], target]),
            "labels": torch.cat([torch.full_like(item["prompt_ids"], -100), target]), "media": item["media"],
        })  # fmt: skip
    return items


def test_packed_sft_positions_and_losses_equal_unpacked(thinker, tok):
    items = _sft_items(tok)
    capacity = sum(len(i["input_ids"]) for i in items)
    packed = SFTCollator(tok, packed=True, max_packed_tokens=capacity, mrope=True)(items)
    assert packed["input_ids"].shape[0] == 1 and bool(packed["use_audio_in_video"])
    # Each sample's block of rows 1-3 equals get_rope_index of that sample alone.
    order = sorted(items, key=lambda s: -len(s["input_ids"]))  # first-fit decreasing
    at = 0
    for item in order:
        n = len(item["input_ids"])
        one = collate_media([item["media"]])
        expected, _ = rope_reference(thinker, item["input_ids"][None], torch.ones(1, n, dtype=torch.long), one)
        assert torch.equal(packed["position_ids"][1:, 0, at : at + n], expected[:, 0])
        assert torch.equal(packed["position_ids"][0, 0, at : at + n], torch.arange(n))
        at += n
    with torch.no_grad():
        got = thinker(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False).logits[0]  # [L, V]
        at, losses_packed, losses_single = 0, [], []
        for item in order:
            n = len(item["input_ids"])
            single = SFTCollator(tok)([item])
            logits = thinker(**{k: v for k, v in single.items() if k != "labels"}, use_cache=False).logits[0]
            labels = item["labels"][1:]
            keep = labels != -100
            losses_single.append(torch.nn.functional.cross_entropy(logits[:-1][keep], labels[keep], reduction="none"))
            losses_packed.append(torch.nn.functional.cross_entropy(got[at : at + n - 1][keep], labels[keep], reduction="none"))
            at += n
    assert_close_to_scale(torch.cat(losses_packed), torch.cat(losses_single), rtol=1e-5)


def test_prompt_collator_refuses_a_plain_layout_with_audio_in_video_media(tok):
    """A second-pass prompt built from placeholder counts (plain layout) would silently get text
    positions for its video tokens: refused, naming recheck_prompt_ids; the copied block passes."""
    item = samples(tok, CLIPS[:1])[0]
    num_audio = int((item["prompt_ids"] == S["<|AUDIO|>"]).sum())
    num_video = int((item["prompt_ids"] == S["<|VIDEO|>"]).sum())
    plain = build_chat_prompt("Sad?", num_audio=num_audio, num_video=num_video, system_prompt=None)
    with pytest.raises(ValueError, match="recheck_prompt_ids"):
        PromptCollator(tok)([{"name": "q", "prompt_ids": torch.tensor(encode_text(tok, plain)), "media": item["media"]}])
    copied = recheck_prompt_ids(tok, "Sad?", item["prompt_ids"].tolist(), use_media=True)
    batch = PromptCollator(tok)([{"name": "q", "prompt_ids": torch.tensor(copied), "media": item["media"]}])
    assert bool(batch["media"]["use_audio_in_video"])
