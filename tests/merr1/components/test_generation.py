"""Tests for merr1.components.generation (rollout sampling, issue 4 item 3)."""

import copy
import math
import os

import pytest
import torch
from numerics import assert_close_to_scale

from merr1.components.generation import (
    Rollouts,
    SamplingConfig,
    StopStrings,
    filter_logits,
    gathered_parameters,
    generate,
    media_token_ids,
    repeat_media,
    sample_next_tokens,
    teacher_forced_logits,
)
from merr1.components.models import tiny_qwen2, tiny_thinker
from merr1.components.tokenizer import TINY_SPECIAL_TOKENS, tiny_tokenizer

S = TINY_SPECIAL_TOKENS
# Media placeholders and boundaries: a sampled one would break the teacher-forced Thinker forward.
MEDIA_IDS = [S[t] for t in ("<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>")]
MEDIA_IDS += [S["<|vision_bos|>"], S["<|vision_eos|>"]]


@pytest.fixture(scope="module")
def thinker():
    return tiny_thinker(seed=0).eval()


@pytest.fixture(scope="module")
def qwen2():
    return tiny_qwen2(seed=0).eval()


def thinker_batch(model, audio_frames=(40, 24), video_grids=((1, 4, 4), (1, 4, 6)), text_lens=(5, 11), seed=0):
    """Left-padded Thinker prompts, each with one audio and one video, and their media kwargs."""
    gen = torch.Generator().manual_seed(seed)
    num_prompts = len(text_lens)
    rows, patches = [], []
    features = torch.zeros(num_prompts, 16, max(audio_frames))
    feature_mask = torch.zeros(num_prompts, max(audio_frames), dtype=torch.long)
    for b in range(num_prompts):
        num_audio = int(model.model.audio_tower._get_feat_extract_output_lengths(torch.tensor(audio_frames[b]))[1])
        t, h, w = video_grids[b]
        text = torch.randint(10, 500, (text_lens[b],), generator=gen).tolist()
        rows.append(
            [S["<|im_start|>"], S["<|audio_bos|>"]]
            + [S["<|AUDIO|>"]] * num_audio
            + [S["<|audio_eos|>"], S["<|vision_bos|>"]]
            + [S["<|VIDEO|>"]] * (t * h * w // 4)
            + [S["<|vision_eos|>"]]
            + text
        )
        features[b, :, : audio_frames[b]] = torch.randn(16, audio_frames[b], generator=gen)
        feature_mask[b, : audio_frames[b]] = 1
        patches.append(torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=gen))
    ids, mask = left_pad(rows)
    media = dict(
        input_features=features,
        feature_attention_mask=feature_mask,
        pixel_values_videos=torch.cat(patches),
        video_grid_thw=torch.tensor(video_grids),
        video_second_per_grid=torch.ones(num_prompts),
    )
    return ids, mask, media


def text_batch(lengths=(7, 3, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return left_pad([torch.randint(10, 500, (n,), generator=gen).tolist() for n in lengths])


def left_pad(rows):
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    return ids, mask


def model_and_batch(name, thinker, qwen2):
    if name == "thinker":
        ids, mask, media = thinker_batch(thinker)
        return thinker, ids, mask, media
    ids, mask = text_batch()
    return qwen2, ids, mask, None


def teacher_forced_logprobs(model, prompt_ids, prompt_mask, rollouts, temperature, num_samples, media=None):
    """log_softmax(logits / temperature) of the response tokens from one full forward pass."""
    num_prompts, prompt_len = prompt_ids.shape
    ids = torch.cat([prompt_ids.repeat_interleave(num_samples, 0), rollouts.response_ids], 1)
    mask = torch.cat([prompt_mask.repeat_interleave(num_samples, 0), rollouts.response_mask.long()], 1)
    kwargs = {}
    if media is not None:
        kwargs = repeat_media(media, num_prompts, num_samples)
    else:  # text-only LMs do not derive positions from a left-padded mask
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits.float()
    logits = logits[:, prompt_len - 1 : -1] / temperature  # [R, T, V] predicting the response
    logprobs = logits.log_softmax(-1).gather(-1, rollouts.response_ids[..., None]).squeeze(-1)
    return logprobs.masked_fill(~rollouts.response_mask, 0.0)


# --- greedy equals transformers' generate -------------------------------------------------------


@pytest.mark.parametrize("name", ["thinker", "qwen2"])
def test_greedy_matches_transformers_generate(name, thinker, qwen2):
    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    assert (mask[:, 0] == 0).any(), "the batch must contain a left-padded row"
    config = SamplingConfig(max_new_tokens=12, temperature=0.0)
    rollouts = generate(model, ids, mask, config, media=media)
    expected = model.generate(
        input_ids=ids,
        attention_mask=mask,
        **(media or {}),
        do_sample=False,
        max_new_tokens=12,
        eos_token_id=None,
        pad_token_id=0,
    )[:, ids.shape[1] :]
    assert torch.equal(rollouts.response_ids, expected)
    assert rollouts.response_mask.all() and not rollouts.finished.any()


def test_greedy_right_padded_equals_left_padded(qwen2):
    ids, mask = text_batch()
    right_ids, right_mask = torch.zeros_like(ids), torch.zeros_like(mask)
    for b in range(len(ids)):
        n = int(mask[b].sum())
        right_ids[b, :n], right_mask[b, :n] = ids[b, -n:], 1
    config = SamplingConfig(max_new_tokens=6, temperature=0.0)
    left = generate(qwen2, ids, mask, config)
    right = generate(qwen2, right_ids, right_mask, config)
    assert torch.equal(left.response_ids, right.response_ids)


# --- log-probs equal a teacher-forced pass -----------------------------------------------------


@pytest.mark.parametrize(
    "name, temperature, top_k, top_p",
    [
        ("thinker", 1.0, 0, 1.0),
        ("thinker", 0.7, 20, 0.9),
        ("qwen2", 1.0, 0, 1.0),
        ("qwen2", 1.3, 0, 0.8),
        ("qwen2", 0.0, 0, 1.0),  # greedy: log-probs at temperature 1
    ],
)
def test_logprobs_match_teacher_forced_forward(name, temperature, top_k, top_p, thinker, qwen2):
    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    config = SamplingConfig(
        max_new_tokens=10, temperature=temperature, top_k=top_k, top_p=top_p, suppress_token_ids=MEDIA_IDS
    )
    gen = torch.Generator().manual_seed(1)
    rollouts = generate(model, ids, mask, config, num_samples=3, media=media, generator=gen)
    expected = teacher_forced_logprobs(model, ids, mask, rollouts, temperature or 1.0, 3, media)
    assert rollouts.logprobs.shape == (3 * len(ids), 10)
    # Decoding with a KV cache vs one teacher-forced forward: float32 round-off ~1e-7 of the
    # largest |log-prob| (~7) measured; 1e-5 of it leaves a 100x margin.
    assert_close_to_scale(rollouts.logprobs, expected, rtol=1e-5, what="log-probs")


# --- reproducibility and group sampling --------------------------------------------------------


def test_per_row_generators_make_rows_independent_of_their_batch(qwen2):
    """Row generators: a prompt sampled alone gives the tokens it gets inside a bigger batch."""
    model = qwen2
    ids = torch.tensor([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25]])
    mask = (ids != 0).long()
    config = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=50)

    def gens(keys):
        return [torch.Generator().manual_seed(k) for k in keys]

    both = generate(model, ids, mask, config, num_samples=2, generator=gens([1, 2, 3, 4]))
    second = generate(model, ids[1:], mask[1:], config, num_samples=2, generator=gens([3, 4]))
    width = second.response_ids.shape[1]
    assert torch.equal(both.response_ids[2:, :width], second.response_ids)
    assert_close_to_scale(both.logprobs[2:, :width], second.logprobs, rtol=1e-5, what="log-probs")  # batch size only
    assert not torch.equal(both.response_ids[2], both.response_ids[3])
    with pytest.raises(ValueError, match="row generators"):
        generate(model, ids, mask, config, num_samples=2, generator=gens([1, 2]))


@pytest.mark.parametrize("name", ["thinker", "qwen2"])
def test_same_seed_same_rollouts_independent_of_global_rng(name, thinker, qwen2):
    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    config = SamplingConfig(max_new_tokens=8, temperature=1.0, top_p=0.95)

    def run(seed, global_seed):
        torch.manual_seed(global_seed)
        gen = torch.Generator().manual_seed(seed)
        return generate(model, ids, mask, config, num_samples=4, media=media, generator=gen)

    first, again, other = run(7, 0), run(7, 123), run(8, 0)
    assert torch.equal(first.response_ids, again.response_ids)
    assert torch.equal(first.logprobs, again.logprobs)
    assert not torch.equal(first.response_ids, other.response_ids)
    # the G samples of one prompt differ from each other
    assert not torch.equal(first.response_ids[0], first.response_ids[1])


@pytest.mark.parametrize("name", ["thinker", "qwen2"])
def test_prefill_once_equals_prefilling_every_copy(name, thinker, qwen2):
    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    num_samples = 3
    config = SamplingConfig(max_new_tokens=8, temperature=1.0)
    gen = torch.Generator().manual_seed(5)
    once = generate(model, ids, mask, config, num_samples=num_samples, media=media, generator=gen)
    every_media = repeat_media(media, len(ids), num_samples) if media else None
    every = generate(
        model,
        ids.repeat_interleave(num_samples, 0),
        mask.repeat_interleave(num_samples, 0),
        config,
        media=every_media,
        generator=torch.Generator().manual_seed(5),
    )
    assert torch.equal(once.response_ids, every.response_ids)
    assert_close_to_scale(once.logprobs, every.logprobs, rtol=1e-5, what="log-probs")  # same math, other batch


def test_repeat_media_orders_rows_prompt_major(thinker):
    _, _, media = thinker_batch(thinker)
    repeated = repeat_media(media, num_prompts=2, num_samples=3)
    grid = media["video_grid_thw"]
    assert torch.equal(repeated["video_grid_thw"], grid.repeat_interleave(3, 0))
    assert torch.equal(repeated["input_features"], media["input_features"].repeat_interleave(3, 0))
    first, second = media["pixel_values_videos"].split(grid.prod(-1).tolist())
    assert torch.equal(repeated["pixel_values_videos"], torch.cat([first] * 3 + [second] * 3))


def test_repeat_media_rejects_uneven_items(thinker):
    _, _, media = thinker_batch(thinker)
    with pytest.raises(ValueError, match="not a multiple of 3 prompts"):
        repeat_media(media, num_prompts=3, num_samples=2)


# --- stopping ----------------------------------------------------------------------------------


def _expected_length(tokens, stop_seq, eos):
    """Reference: index of the first token that ends the row, + 1 (len(tokens) if none)."""
    for t in range(len(tokens)):
        if tokens[t] in eos or tokens[max(0, t + 1 - len(stop_seq)) : t + 1] == stop_seq:
            return t + 1
    return len(tokens)


def test_stop_sequence_and_eos_end_rows(qwen2):
    ids, mask = text_batch()
    config = SamplingConfig(max_new_tokens=12, temperature=1.0)
    # Rows are independent and draw the same noise, so a run with stops reproduces this run's
    # tokens up to each row's stop.
    free = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0)).response_ids
    stop_seq, eos = free[0, 3:5].tolist(), [int(free[1, 2])]
    config = SamplingConfig(
        max_new_tokens=12, temperature=1.0, stop_sequences=[[999], stop_seq], eos_token_ids=eos, pad_token_id=0
    )
    rollouts = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0))
    lengths = rollouts.response_mask.sum(-1).tolist()
    assert lengths == [_expected_length(free[b].tolist(), stop_seq, eos) for b in range(3)]
    assert lengths[:2] == [5, 3]  # row 0 by the 2-token stop sequence, row 1 by EOS
    for b, n in enumerate(lengths):
        assert torch.equal(rollouts.response_ids[b, :n], free[b, :n])  # the stop token is included
        assert (rollouts.response_ids[b, n:] == 0).all() and (rollouts.logprobs[b, n:] == 0).all()
        assert rollouts.response_mask[b, :n].all() and (rollouts.logprobs[b, :n] < 0).all()
    assert rollouts.finished.tolist() == [n < 12 for n in lengths]


def test_loop_stops_early_when_all_rows_finished(qwen2):
    ids, mask = text_batch()
    config = SamplingConfig(max_new_tokens=12, temperature=1.0)
    free = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0)).response_ids
    eos = sorted({int(free[b, 1]) for b in range(3)})
    config = SamplingConfig(max_new_tokens=12, temperature=1.0, eos_token_ids=eos)
    rollouts = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0))
    assert rollouts.response_ids.shape[1] == 2
    assert rollouts.finished.all()


@pytest.mark.parametrize("max_new_tokens", [1, 5])
def test_max_new_tokens_truncates_unfinished_rows(max_new_tokens, thinker):
    ids, mask, media = thinker_batch(thinker)
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    rollouts = generate(thinker, ids, mask, config, num_samples=2, media=media, generator=gen)
    assert isinstance(rollouts, Rollouts)
    assert rollouts.response_ids.shape == rollouts.logprobs.shape == (4, max_new_tokens)
    assert rollouts.response_mask.all() and not rollouts.finished.any()
    assert rollouts.logprobs.dtype == torch.float32 and (rollouts.logprobs < 0).all()


def _run_stop_strings(token_ids, strings):
    """Feed ``token_ids`` through the stop matcher; return the first step that stops (or None)."""
    from merr1.components.generation import _StopMatcher

    tokenizer = tiny_tokenizer()
    config = SamplingConfig(max_new_tokens=64, stop_strings=StopStrings.from_tokenizer(tokenizer, strings))
    tokens = torch.tensor([token_ids])
    matcher = _StopMatcher(config, num_rows=1, vocab_size=600, device=torch.device("cpu"))
    for step in range(len(token_ids)):
        if matcher(tokens, step)[0]:
            return step
    return None


@pytest.mark.parametrize(
    "text, strings, expected_stop_text",
    [
        ("</answer>", ["</answer>"], "</answer>"),
        ("happy.</answer>\nmore", ["</answer>"], "happy.</answer>"),  # '.</' merged by BPE
        ("<think>x</think><answer>sad</answer> tail", ["</answer>"], "<think>x</think><answer>sad</answer>"),
        ("<answer>sad", ["</answer>"], None),  # no false positive on the opening tag
        ("a </answer", ["</answer>"], None),  # incomplete
        ("ok\n\nthen", ["\n\n", "</answer>"], "ok\n\n"),
        ("abc<|im_end|>", ["<|im_end|>"], None),  # special tokens are stripped, as in decoded text
    ],
)
def test_stop_strings_match_text_across_bpe_merges(text, strings, expected_stop_text):
    tokenizer = tiny_tokenizer()
    token_ids = tokenizer.encode(text, add_special_tokens=False)
    step = _run_stop_strings(token_ids, strings)
    if expected_stop_text is None:
        assert step is None
    else:
        assert step is not None
        stop_text = tokenizer.decode(token_ids[: step + 1])
        assert stop_text.startswith(expected_stop_text)  # may carry chars merged after the stop
        assert not any(s in tokenizer.decode(token_ids[:step]) for s in strings)


def test_stop_strings_ignore_ids_past_the_tokenizer_vocabulary():
    """Model vocabularies are padded past the tokenizer's; such ids decode to nothing."""
    tokenizer = tiny_tokenizer()
    head = tokenizer.encode("sad</answer", add_special_tokens=False)
    tail = tokenizer.encode(">", add_special_tokens=False)
    assert len(tokenizer) < 599
    assert _run_stop_strings(head + [599] + tail, ["</answer>"]) == len(head) + 1


def test_stop_strings_in_generation(qwen2):
    """A stop string starting mid-token in the model's own output ends the row where it completes."""
    tokenizer = tiny_tokenizer()
    table = StopStrings.from_tokenizer(tokenizer, ["x"])
    ids, mask = text_batch()
    config = SamplingConfig(max_new_tokens=12, temperature=1.0)
    free = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0)).response_ids
    row, step, stop = _mid_token_stop_string(table, free)
    config = SamplingConfig(
        max_new_tokens=12, temperature=1.0, stop_strings=StopStrings.from_tokenizer(tokenizer, [stop])
    )
    rollouts = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0))
    assert int(rollouts.response_mask[row].sum()) == step + 1
    assert rollouts.finished[row]


def _mid_token_stop_string(table, responses):
    """(row, step, text): text starts inside token step-2 and first completes inside token step."""
    for row in range(len(responses)):
        pieces = [bytes(table.token_bytes[t, : table.token_lengths[t]].tolist()) for t in responses[row].tolist()]
        starts = [len(b"".join(pieces[:i])) for i in range(len(pieces) + 1)]
        for step in range(2, len(pieces)):
            if len(pieces[step - 2]) < 2 or len(pieces[step]) < 2:
                continue
            stop = b"".join(pieces)[starts[step - 2] + 1 : starts[step] + 1]
            if stop not in b"".join(pieces[:step]):
                try:
                    return row, step, stop.decode()
                except UnicodeDecodeError:
                    continue
    raise AssertionError("no multi-byte tokens in the sampled responses")


def test_stop_strings_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        StopStrings.from_tokenizer(tiny_tokenizer(), [""])


# --- top-k / top-p -----------------------------------------------------------------------------

PROBS = [0.5, 0.2, 0.15, 0.1, 0.05]


@pytest.mark.parametrize(
    "top_k, top_p, kept",
    [
        (0, 1.0, [0, 1, 2, 3, 4]),
        (1, 1.0, [0]),
        (3, 1.0, [0, 1, 2]),
        (5, 1.0, [0, 1, 2, 3, 4]),
        (9, 1.0, [0, 1, 2, 3, 4]),
        (0, 0.4, [0]),  # the first token alone reaches 0.4
        (0, 0.6, [0, 1]),  # 0.5 < 0.6 -> token 1 is needed
        (0, 0.8, [0, 1, 2]),  # 0.85 crosses 0.8
        (0, 0.9, [0, 1, 2, 3]),
        (0, 0.01, [0]),  # at least one token
        (2, 0.9, [0, 1]),  # top-k first: 0.5/0.7 < 0.9, 1.0 >= 0.9
        (3, 0.6, [0, 1]),  # renormalised top-3: 0.59 < 0.6 -> keep 2
    ],
)
def test_filter_logits_keeps_expected_tokens(top_k, top_p, kept):
    # shuffled vocabulary order so sorting is exercised
    perm = torch.tensor([3, 0, 4, 1, 2])
    logits = torch.tensor(PROBS).log()[perm][None]  # position i holds token perm[i]
    filtered = filter_logits(logits, top_k, top_p)
    kept_tokens = sorted(perm[torch.isfinite(filtered[0])].tolist())
    assert kept_tokens == kept
    assert torch.equal(filtered[torch.isfinite(filtered)], logits[torch.isfinite(filtered)])


@pytest.mark.parametrize("top_k, top_p", [(0, 0.3), (0, 0.9), (7, 1.0), (50, 0.7), (1, 0.5)])
def test_filter_logits_matches_transformers_warpers(top_k, top_p):
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(top_k)) * 3
    expected = logits
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = filter_logits(logits, top_k, top_p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(expected))


@pytest.mark.parametrize(
    "temperature, top_k, top_p, expected",
    [
        (1.0, 0, 1.0, PROBS),
        (1.0, 2, 1.0, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0]),
        (1.0, 0, 0.8, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]),
        (0.5, 0, 1.0, [p * p / sum(q * q for q in PROBS) for p in PROBS]),
    ],
)
def test_sampling_frequencies_follow_truncated_distribution(temperature, top_k, top_p, expected):
    num_draws = 40_000
    logits = torch.tensor(PROBS).log().expand(num_draws, -1).contiguous()
    config = SamplingConfig(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p)
    tokens, logprobs = sample_next_tokens(logits, config, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=5).double() / num_draws
    for f, e in zip(freq.tolist(), expected):
        assert f == 0 if e == 0 else abs(f - e) < 4 * math.sqrt(e * (1 - e) / num_draws)
    # log-probs are those of the untruncated tempered distribution
    untruncated = (logits[0] / temperature).log_softmax(-1)
    torch.testing.assert_close(logprobs, untruncated[tokens])


def test_greedy_sampling_takes_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    tokens, logprobs = sample_next_tokens(logits, SamplingConfig(max_new_tokens=1, temperature=0.0))
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(logprobs, logits.log_softmax(-1)[[0, 1], [1, 0]])


def test_media_token_ids(thinker, qwen2):
    assert media_token_ids(thinker.config) == sorted(MEDIA_IDS)
    assert media_token_ids(qwen2.config) == []


def test_suppressed_tokens_are_never_sampled_and_keep_logprobs():
    logits = torch.tensor(PROBS).log().expand(20_000, -1).contiguous()
    config = SamplingConfig(max_new_tokens=1, temperature=1.0, suppress_token_ids=[0, 3])
    tokens, logprobs = sample_next_tokens(logits, config, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    assert freq[0] == 0 and freq[3] == 0
    assert abs(freq[1] - 0.2 / 0.4) < 0.02
    torch.testing.assert_close(logprobs, logits[0].log_softmax(-1)[tokens])  # untruncated
    greedy = SamplingConfig(max_new_tokens=1, temperature=0.0, suppress_token_ids=[0])
    assert sample_next_tokens(logits[:2], greedy)[0].tolist() == [1, 1]


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=4, temperature=-0.1), "temperature"),
        (dict(max_new_tokens=4, temperature=float("nan")), "temperature"),
        (dict(max_new_tokens=4, top_p=0.0), "top_p"),
        (dict(max_new_tokens=4, top_p=1.5), "top_p"),
        (dict(max_new_tokens=4, top_k=-1), "top_k"),
        (dict(max_new_tokens=4, stop_sequences=[[5], []]), "stop_sequences"),
    ],
)
def test_sampling_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_generate_rejects_bad_input(qwen2, thinker):
    ids, mask = text_batch()
    config = SamplingConfig(max_new_tokens=2)
    with pytest.raises(ValueError, match="must both be"):
        generate(qwen2, ids, mask[:, 1:], config)
    with pytest.raises(ValueError, match="num_samples"):
        generate(qwen2, ids, mask, config, num_samples=0)
    with pytest.raises(ValueError, match="text-only"):
        generate(qwen2, ids, mask, config, media={"input_features": torch.zeros(3, 16, 8)})
    with pytest.raises(ValueError, match="unknown media keys"):
        generate(thinker, ids, mask, config, media={"audio": torch.zeros(3)})
    empty_row = mask.clone()
    empty_row[1] = 0
    with pytest.raises(ValueError, match="at least one token"):
        generate(qwen2, ids, empty_row, config)
    with pytest.raises(ValueError, match="empty prompt batch"):
        generate(qwen2, ids[:0], mask[:0], config)


def test_generate_leaves_model_state_unchanged(thinker):
    ids, mask, media = thinker_batch(thinker)
    with torch.no_grad():
        before = thinker(input_ids=ids, attention_mask=mask, **media).logits
    deltas = thinker.model.rope_deltas
    generate(thinker, ids, mask, SamplingConfig(max_new_tokens=3), num_samples=2, media=media)
    assert thinker.model.rope_deltas is deltas
    with torch.no_grad():
        after = thinker(input_ids=ids, attention_mask=mask, **media).logits
    assert torch.equal(before, after)


def test_gathered_parameters_is_a_noop_without_fsdp(qwen2):
    weights = {k: v.clone() for k, v in qwen2.state_dict().items()}
    with gathered_parameters(qwen2):
        pass
    assert all(torch.equal(v, weights[k]) for k, v in qwen2.state_dict().items())


# --- FSDP2: gather once per rollout phase ------------------------------------------------------


def _fsdp_worker(rank: int, world_size: int, store_path: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
    try:
        model = tiny_thinker(seed=0)
        fresh = tiny_thinker(seed=0)  # sharded like model, never used for generation
        reference = tiny_thinker(seed=0)  # unsharded
        ids, mask, media = thinker_batch(model)

        def rollout(m, max_new_tokens):
            config = SamplingConfig(
                max_new_tokens=max_new_tokens, temperature=1.0, top_k=50, suppress_token_ids=MEDIA_IDS
            )
            return generate(m, ids, mask, config, num_samples=2, media=media, generator=torch.Generator().manual_seed(3))

        expected = rollout(reference, 6)
        mesh = init_device_mesh("cpu", (world_size,))
        for m in (model, fresh):
            for layer in m.model.language_model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(m.model.audio_tower, mesh=mesh)
            fully_shard(m.model.visual, mesh=mesh)
            fully_shard(m, mesh=mesh)

        num_all_gathers = [0]
        original = dist.all_gather_single

        def counting_all_gather(*args, **kwargs):
            num_all_gathers[0] += 1
            return original(*args, **kwargs)

        dist.all_gather_single = counting_all_gather
        counts = {}
        for max_new_tokens in (1, 6):
            start = num_all_gathers[0]
            got = rollout(model, max_new_tokens)
            counts[max_new_tokens] = num_all_gathers[0] - start
        assert counts[1] == counts[6] == 5, counts  # one per FSDP module (2 layers, 2 towers, root)
        assert torch.equal(got.response_ids, expected.response_ids)
        torch.testing.assert_close(got.logprobs, expected.logprobs, atol=1e-5, rtol=0)

        # One rollout phase spanning several generate calls gathers once.
        start = num_all_gathers[0]
        with gathered_parameters(model):
            rollout(model, 3)
            rollout(model, 4)
        assert num_all_gathers[0] - start == 5

        # Parameters are sharded again; a training step communicates exactly like on a model
        # that never generated (reshard-after-forward restored) and matches the unsharded model.
        assert isinstance(model.model.language_model.layers[0].mlp.up_proj.weight, DTensor)
        full_ids = torch.cat([ids.repeat_interleave(2, 0), got.response_ids], 1)
        full_mask = torch.cat([mask.repeat_interleave(2, 0), got.response_mask.long()], 1)
        full_media = repeat_media(media, 2, 2)
        losses, train_all_gathers = [], []
        for m in (model, fresh, reference):
            start = num_all_gathers[0]
            out = m(input_ids=full_ids, attention_mask=full_mask, labels=full_ids, **full_media)
            out.loss.backward()
            losses.append(out.loss)
            train_all_gathers.append(num_all_gathers[0] - start)
        dist.all_gather_single = original
        assert train_all_gathers[0] == train_all_gathers[1] > 5, train_all_gathers
        torch.testing.assert_close(losses[0], losses[2], atol=1e-5, rtol=1e-5)
        reference_grads = dict(reference.named_parameters())
        for name, param in model.named_parameters():
            if param.grad is None:
                assert reference_grads[name].grad is None, name
                continue
            expected_grad = reference_grads[name].grad
            # Scale-relative: entries near 0 differ by round-off of the largest terms (sums over
            # ~10^3 products: ~1e-5 of the largest entry at worst; measured bit-identical).
            assert_close_to_scale(param.grad.full_tensor(), expected_grad, rtol=1e-4, what=name)
    finally:
        dist.destroy_process_group()


def test_fsdp2_rollouts_gather_once_and_training_still_works(tmp_path):
    import torch.multiprocessing as mp

    # fork: the workers reuse the already imported torch/transformers (spawn re-imports them).
    mp.start_processes(_fsdp_worker, args=(2, os.fspath(tmp_path / "store")), nprocs=2, start_method="fork")


# --- teacher-forced logits with the prompt computed once ------------------------------------------


@pytest.mark.parametrize("name", ["thinker", "qwen2"])
def test_teacher_forced_logits_equal_the_full_forward_values_and_gradients(name, thinker, qwen2):
    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    model = copy.deepcopy(model).train()
    G = 3
    config = SamplingConfig(max_new_tokens=7, suppress_token_ids=media_token_ids(model.config) if media else [])
    rollouts = generate(model, ids, mask, config, num_samples=G, media=media, generator=torch.Generator().manual_seed(0))
    response_ids, response_mask = rollouts.response_ids, rollouts.response_mask
    targets = response_mask.clone()
    targets[0, 1] = False  # an arbitrary subset of the response tokens

    # Reference: one forward over [prompt; response] per row, read before each target token.
    num_prompts, prompt_len = ids.shape
    full_ids = torch.cat([ids.repeat_interleave(G, 0), response_ids], 1)
    full_mask = torch.cat([mask.repeat_interleave(G, 0), response_mask.long()], 1)
    kwargs = repeat_media(media, num_prompts, G) if media is not None else {
        "position_ids": (full_mask.cumsum(-1) - 1).clamp_min(0)}  # fmt: skip
    full = model(input_ids=full_ids, attention_mask=full_mask, **kwargs).logits[:, prompt_len - 1 : -1][targets]
    full.square().mean().backward()
    expected_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()

    shared = teacher_forced_logits(model, ids, mask, response_ids, response_mask, targets, num_samples=G, media=media)
    assert shared.shape == full.shape
    # The same float32 math with the prompt's keys/values computed once: measured 2.4e-7 of the
    # largest logit; 1e-5 of it leaves a 40x margin.
    assert_close_to_scale(shared, full.detach(), rtol=1e-5, what="logits")
    shared.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(expected_grads)
    for got, want in zip(grads, expected_grads):
        assert_close_to_scale(got, want, rtol=1e-4, what="gradient")  # measured 2e-6 of the largest entry


def test_teacher_forced_logits_checks_its_inputs(qwen2):
    ids, mask = text_batch()
    response = torch.ones(2 * len(ids), 3, dtype=torch.long)
    full = torch.ones_like(response, dtype=torch.bool)
    with pytest.raises(ValueError, match="response rows"):
        teacher_forced_logits(qwen2, ids, mask, response, full, full, num_samples=3)
    partial = full.clone()
    partial[:, -1] = False
    with pytest.raises(ValueError, match="within response_mask"):
        teacher_forced_logits(qwen2, ids, mask, response, partial, full, num_samples=2)


def test_preallocated_cache_layer_writes_in_place_and_refuses_overflow():
    from transformers.cache_utils import DynamicLayer

    from merr1.components.generation import _preallocated_layer_class

    layer = DynamicLayer()
    layer.update(torch.ones(2, 1, 3, 4), torch.ones(2, 1, 3, 4))
    grown = _preallocated_layer_class()(layer, capacity=5)
    keys, values = grown.update(torch.full((2, 1, 1, 4), 2.0), torch.full((2, 1, 1, 4), 3.0))
    assert keys.shape == (2, 1, 4, 4) and grown.get_seq_length() == 4
    assert keys[0, 0, :, 0].tolist() == [1.0, 1.0, 1.0, 2.0] and values[0, 0, -1, 0] == 3.0
    assert keys.data_ptr() == grown._keys.data_ptr()  # a view of the buffer, no copy
    grown.update(torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
    with pytest.raises(ValueError, match="past the preallocated cache"):
        grown.update(torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4))
