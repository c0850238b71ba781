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
    generate,
    media_token_ids,
    sample_next_tokens,
    teacher_forced_logits,
)
from merr1.components.data.collate import repeat_media
from merr1.components.models import tiny_qwen2, tiny_thinker
from merr1.components.parallel import gathered_parameters
from merr1.components.tokenizer import TINY_SPECIAL_TOKENS, tiny_tokenizer
from numerics import assert_close_to_scale

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

        def rollout(m, max_new_tokens, backend="eager"):
            config = SamplingConfig(
                max_new_tokens=max_new_tokens, temperature=1.0, top_k=50, suppress_token_ids=MEDIA_IDS,
                decode_backend=backend,
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
        # FSDP2's all-gather: dist.all_gather_single from torch 2.13, all_gather_into_tensor before
        # (torch 2.11 on the GPU machine).
        collective = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
        original = getattr(dist, collective)

        def counting_all_gather(*args, **kwargs):
            num_all_gathers[0] += 1
            return original(*args, **kwargs)

        setattr(dist, collective, counting_all_gather)
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

        # The static-cache decode step (the code CUDA graphs capture): same rollouts, FSDP's hooks
        # idle while it runs, and its buffers freed when the gathered block ends.
        from merr1.components import generation

        start = num_all_gathers[0]
        with gathered_parameters(model):
            got_static = rollout(model, 6, backend="static")
            assert model in generation._DECODERS
        assert model not in generation._DECODERS
        assert num_all_gathers[0] - start == 5
        assert torch.equal(got_static.response_ids, expected.response_ids)
        torch.testing.assert_close(got_static.logprobs, expected.logprobs, atol=1e-5, rtol=0)

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
        setattr(dist, collective, original)
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


# --- static KV cache and CUDA-graph decoding (issue 17) ---------------------------------------


def _rollouts_per_row(model, ids, mask, media, G, backend, seed=0, **sampling):
    config = SamplingConfig(
        max_new_tokens=sampling.pop("max_new_tokens", 9),
        suppress_token_ids=media_token_ids(model.config),
        decode_backend=backend,
        **sampling,
    )
    generators = [torch.Generator(device=ids.device).manual_seed(seed + r) for r in range(len(ids) * G)]
    return generate(model, ids, mask, config, num_samples=G, media=media, generator=generators)


def _assert_same_rollouts(got, expected, what):
    assert torch.equal(got.response_ids, expected.response_ids), what
    assert torch.equal(got.response_mask, expected.response_mask), what
    assert torch.equal(got.finished, expected.finished), what
    # float32 log-probs of magnitude <= ~15: summation-order round-off of the attention over the
    # static buffer's masked positions stays far below 1e-5 of that.
    assert_close_to_scale(got.logprobs, expected.logprobs, rtol=1e-5, what=what)


@pytest.mark.parametrize("name", ["thinker", "qwen2"])
@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9)],
    ids=["greedy", "T=1", "T=0.7,top-k,top-p"],
)
def test_static_decoding_equals_eager_token_for_token(name, sampling, thinker, qwen2):
    """The static-cache step (the code the CUDA graphs capture, run eagerly) samples the same tokens."""
    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    G = 3  # 6 or 9 rows: padded to a row bucket of 8 or 16
    expected = _rollouts_per_row(model, ids, mask, media, G, "eager", **sampling)
    got = _rollouts_per_row(model, ids, mask, media, G, "static", **sampling)
    _assert_same_rollouts(got, expected, f"{name} {sampling}")


def test_static_decoding_with_eager_attention_equals_eager_decoding():
    """``eager`` attention gets an additive mask instead of a boolean one."""
    model = tiny_qwen2(seed=1).eval()
    model.config._attn_implementation = "eager"
    assert model.model.layers[0].self_attn.config._attn_implementation == "eager"
    ids, mask = text_batch()
    expected = _rollouts_per_row(model, ids, mask, None, 2, "eager", temperature=1.0)
    got = _rollouts_per_row(model, ids, mask, None, 2, "static", temperature=1.0)
    _assert_same_rollouts(got, expected, "eager attention")


def test_static_decoding_buckets_grow_and_are_reused(monkeypatch, qwen2):
    """Small buckets: steps cross several attended lengths, capacity grows, row buckets are evicted."""
    from merr1.components import generation

    monkeypatch.setattr(generation, "ATTEND_MULTIPLE", 4)
    monkeypatch.setattr(generation, "CAPACITY_MULTIPLE", 8)
    monkeypatch.setattr(generation, "MAX_STATIC_DECODERS", 2)
    model = copy.deepcopy(qwen2)
    ids, mask = text_batch()  # 3 prompts of width 7
    decoders = lambda: generation._DECODERS.get(model, {})  # noqa: E731
    for max_new_tokens in (9, 3, 14):  # capacity 7 + 9 -> 16; reused for 10; grown to 24 for 21
        expected = _rollouts_per_row(qwen2, ids, mask, None, 2, "eager", max_new_tokens=max_new_tokens)
        got = _rollouts_per_row(model, ids, mask, None, 2, "static", max_new_tokens=max_new_tokens)
        _assert_same_rollouts(got, expected, f"max_new_tokens {max_new_tokens}")
        assert list(decoders()) == [8]  # 6 rows -> bucket 8
        if max_new_tokens == 9:
            first = decoders()[8]
            assert first.capacity == 16
        elif max_new_tokens == 3:
            assert decoders()[8] is first  # a smaller need reuses the buffers
    assert decoders()[8].capacity == 24 and decoders()[8] is not first
    for G, bucket in ((1, 4), (5, 16)):  # 3 and 15 rows: new buckets, the least recently used goes
        expected = _rollouts_per_row(qwen2, ids, mask, None, G, "eager", temperature=1.0)
        _assert_same_rollouts(_rollouts_per_row(model, ids, mask, None, G, "static", temperature=1.0), expected, G)
    assert list(decoders()) == [4, 16]
    generation.release_decode_graphs(model)
    assert not decoders()


@pytest.mark.parametrize(
    "num_rows, bucket", [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (16, 16), (17, 24), (64, 64), (65, 72)]
)
def test_bucket_rows(num_rows, bucket):
    from merr1.components.generation import bucket_rows

    assert bucket_rows(num_rows) == bucket


@pytest.mark.parametrize("backend", ["static", "eager"])
def test_static_decoding_stops_like_eager(backend, qwen2):
    """Stop sequences, EOS and the all-finished early exit behave the same on both paths."""
    ids, mask = text_batch()
    free = generate(qwen2, ids, mask, SamplingConfig(max_new_tokens=12), generator=torch.Generator().manual_seed(0))
    stop_seq, eos = free.response_ids[0, 3:5].tolist(), [int(free.response_ids[1, 2])]
    config = SamplingConfig(max_new_tokens=12, stop_sequences=[stop_seq], eos_token_ids=eos, decode_backend=backend)
    rollouts = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0))
    assert rollouts.response_mask.sum(-1).tolist()[:2] == [5, 3]
    all_stop = sorted({int(free.response_ids[b, 1]) for b in range(3)})
    config = SamplingConfig(max_new_tokens=12, eos_token_ids=all_stop, decode_backend=backend)
    early = generate(qwen2, ids, mask, config, generator=torch.Generator().manual_seed(0))
    assert early.response_ids.shape[1] == 2 and early.finished.all()


def _unsupported_attention_model(qwen2):
    model = copy.deepcopy(qwen2)
    model.config._attn_implementation = "flex_attention"
    return model


@pytest.mark.parametrize(
    "backend, device, model_kind, expected",
    [
        ("auto", "cpu", "ok", "eager"),
        ("auto", "cuda", "ok", "cuda_graph"),  # only the device type is read: no GPU needed
        ("auto", "cuda", "flex", "eager"),  # unsupported model: auto falls back
        ("eager", "cuda", "ok", "eager"),
        ("static", "cpu", "ok", "static"),
        ("cuda_graph", "cuda", "ok", "cuda_graph"),
        ("cuda_graph", "cpu", "ok", "needs a CUDA device"),
        ("static", "cpu", "flex", "does not support this model"),
        ("graphs", "cpu", "ok", "unknown decode_backend"),
    ],
)
def test_resolve_decode_backend(backend, device, model_kind, expected, qwen2):
    from merr1.components.generation import resolve_decode_backend

    model = qwen2 if model_kind == "ok" else _unsupported_attention_model(qwen2)
    if expected in ("eager", "static", "cuda_graph"):
        assert resolve_decode_backend(backend, model, torch.device(device)) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            resolve_decode_backend(backend, model, torch.device(device))


def test_sampling_config_rejects_unknown_decode_backend():
    with pytest.raises(ValueError, match="decode_backend"):
        SamplingConfig(max_new_tokens=4, decode_backend="compile")


def test_static_decoding_under_inference_mode_then_no_grad(qwen2):
    """Buffers made under an inference-mode caller (the eval recipe) stay usable under no_grad."""
    model = copy.deepcopy(qwen2)
    ids, mask = text_batch()
    expected = _rollouts_per_row(qwen2, ids, mask, None, 1, "eager", temperature=1.0)
    with torch.inference_mode():
        first = _rollouts_per_row(model, ids, mask, None, 1, "static", temperature=1.0)
    second = _rollouts_per_row(model, ids, mask, None, 1, "static", temperature=1.0)
    _assert_same_rollouts(first, expected, "inference mode")
    _assert_same_rollouts(second, expected, "no_grad after inference mode")


# --- rollout batches (issue 17) -------------------------------------------------------------


@pytest.mark.parametrize(
    "num_prompts, size, expected",
    [(5, 2, [(0, 2), (2, 4), (4, 5)]), (4, 4, [(0, 4)]), (3, 8, [(0, 3)]), (1, 1, [(0, 1)])],
)
def test_rollout_batches(num_prompts, size, expected):
    from merr1.components.generation import rollout_batches

    assert [(s.start, s.stop) for s in rollout_batches(num_prompts, size)] == expected


def test_rollout_batches_rejects_bad_size():
    from merr1.components.generation import rollout_batches

    with pytest.raises(ValueError, match="rollout_batch_size"):
        rollout_batches(4, 0)


def test_concat_rollouts_right_pads_to_the_widest():
    from merr1.components.generation import concat_rollouts

    a = Rollouts(torch.tensor([[5, 6, 7]]), torch.tensor([[True, True, True]]), torch.tensor([[-1.0, -2.0, -3.0]]),
                 torch.tensor([False]))  # fmt: skip
    b = Rollouts(torch.tensor([[8], [9]]), torch.tensor([[True], [True]]), torch.tensor([[-4.0], [-5.0]]),
                 torch.tensor([True, True]))  # fmt: skip
    out = concat_rollouts([a, b], pad_token_id=0)
    assert out.response_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 0, 0]]
    assert out.response_mask.tolist() == [[True] * 3, [True, False, False], [True, False, False]]
    assert out.logprobs.tolist() == [[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]
    assert out.finished.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="at least one"):
        concat_rollouts([], pad_token_id=0)


@pytest.mark.parametrize("name", ["thinker", "qwen2"])
@pytest.mark.parametrize("rollout_batch_size", [1, 2])
def test_generate_in_batches_equals_one_call(name, rollout_batch_size, thinker, qwen2):
    """Per-row generators: batching (with media split per prompt) changes no token."""
    from merr1.components.generation import generate_in_batches

    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    G = 2
    config = SamplingConfig(max_new_tokens=8, temperature=1.0, suppress_token_ids=media_token_ids(model.config))
    gens = lambda: [torch.Generator().manual_seed(r) for r in range(len(ids) * G)]  # noqa: E731
    expected = generate(model, ids, mask, config, num_samples=G, media=media, generator=gens())
    got = generate_in_batches(
        model, ids, mask, config, rollout_batch_size=rollout_batch_size, num_samples=G, media=media, generator=gens()
    )
    width = int(got.response_mask.sum(-1).max())
    assert width == got.response_ids.shape[1] == expected.response_ids.shape[1]
    _assert_same_rollouts(got, expected, f"{name}, batches of {rollout_batch_size}")


def test_select_media_picks_prompts_in_order(thinker):
    from merr1.components.data.collate import select_media

    _, _, media = thinker_batch(thinker, audio_frames=(40, 24, 32), video_grids=((1, 4, 4), (1, 4, 6), (1, 4, 4)),
                                text_lens=(5, 11, 3))  # fmt: skip
    picked = select_media(media, 3, torch.tensor([2, 0]))
    assert torch.equal(picked["input_features"], media["input_features"][[2, 0]])
    assert picked["video_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]
    patches = media["pixel_values_videos"].split([16, 24, 16])
    assert torch.equal(picked["pixel_values_videos"], torch.cat([patches[2], patches[0]]))


# --- CUDA graphs (run with -m gpu) ------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _to_cuda(ids, mask, media):
    media = {k: v.cuda() if torch.is_tensor(v) else v for k, v in (media or {}).items()} or None
    return ids.cuda(), mask.cuda(), media


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("name", ["thinker", "qwen2"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=50)], ids=["greedy", "T=1"])
def test_cuda_graph_decoding_equals_eager_on_gpu(name, sampling, thinker, qwen2):
    model, ids, mask, media = model_and_batch(name, thinker, qwen2)
    model = copy.deepcopy(model).cuda()
    ids, mask, media = _to_cuda(ids, mask, media)
    expected = _rollouts_per_row(model, ids, mask, media, 3, "eager", max_new_tokens=40, **sampling)
    static = _rollouts_per_row(model, ids, mask, media, 3, "static", max_new_tokens=40, **sampling)
    graphs = _rollouts_per_row(model, ids, mask, media, 3, "cuda_graph", max_new_tokens=40, **sampling)
    _assert_same_rollouts(static, expected, "static vs eager")
    _assert_same_rollouts(graphs, expected, "cuda_graph vs eager")
    auto = _rollouts_per_row(model, ids, mask, media, 3, "auto", max_new_tokens=40, **sampling)
    _assert_same_rollouts(auto, expected, "auto (= cuda_graph on CUDA) vs eager")


@pytest.mark.gpu
@gpu
def test_cuda_graphs_are_reused_and_recaptured_when_parameters_move(monkeypatch, qwen2):
    from merr1.components import generation

    monkeypatch.setattr(generation, "ATTEND_MULTIPLE", 8)  # several graphs per decode
    model = copy.deepcopy(qwen2).cuda()
    ids, mask, _ = _to_cuda(*text_batch(), None)

    def rollouts(backend):
        return _rollouts_per_row(model, ids, mask, None, 2, backend, max_new_tokens=20, temperature=1.0)

    expected = rollouts("eager")
    _assert_same_rollouts(rollouts("cuda_graph"), expected, "first")
    decoder = generation._DECODERS[model][8]
    captured = dict(decoder.graphs)
    assert sorted(captured) == [8, 16, 24, 32]  # prompt 7 + 19 fed tokens
    _assert_same_rollouts(rollouts("cuda_graph"), expected, "replayed")
    assert all(decoder.graphs[k][0] is captured[k][0] for k in captured)  # replayed, not re-captured
    model.cpu().cuda()  # new parameter addresses: the graphs are stale
    _assert_same_rollouts(rollouts("cuda_graph"), expected, "moved")
    assert all(decoder.graphs[k][0] is not captured[k][0] for k in captured)


@pytest.mark.gpu
@gpu
def test_cuda_graphs_under_bf16_autocast_match_static_decoding(qwen2):
    """Graphs captured under autocast do not point into autocast's per-region weight cache."""
    model = copy.deepcopy(qwen2).cuda()
    ids, mask, _ = _to_cuda(*text_batch(), None)
    results = {}
    for backend in ("static", "cuda_graph", "cuda_graph"):  # the second graph call is a new autocast region
        with torch.autocast("cuda", dtype=torch.bfloat16):
            results.setdefault(backend, []).append(
                _rollouts_per_row(model, ids, mask, None, 2, backend, max_new_tokens=24, temperature=1.0)
            )
    for got in results["cuda_graph"]:
        _assert_same_rollouts(got, results["static"][0], "bf16 autocast")


def _fsdp_cuda_graph_worker(rank: int, world_size: int, store_path: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from merr1.components import generation

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
    try:
        model, reference = tiny_thinker(seed=0).cuda(), tiny_thinker(seed=0).cuda()
        ids, mask, media = _to_cuda(*thinker_batch(model))
        expected = _rollouts_per_row(reference, ids, mask, media, 2, "eager", temperature=1.0)
        for layer in model.model.language_model.layers:
            fully_shard(layer)
        fully_shard(model.model.audio_tower)
        fully_shard(model.model.visual)
        fully_shard(model)
        for _ in range(2):  # a second rollout phase re-captures on the newly gathered parameters
            with gathered_parameters(model):
                got = _rollouts_per_row(model, ids, mask, media, 2, "cuda_graph", temperature=1.0)
                assert generation._DECODERS[model][4].graphs
            assert model not in generation._DECODERS  # released with the gathered parameters
            _assert_same_rollouts(got, expected, "FSDP2 + CUDA graphs")
        full_ids = torch.cat([ids.repeat_interleave(2, 0), got.response_ids], 1)
        full_mask = torch.cat([mask.repeat_interleave(2, 0), got.response_mask.long()], 1)
        loss = model(input_ids=full_ids, attention_mask=full_mask, labels=full_ids, **repeat_media(media, 2, 2)).loss
        loss.backward()  # training still works after the captures
        assert torch.isfinite(loss)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@gpu
def test_fsdp2_cuda_graph_rollouts_on_one_gpu(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_fsdp_cuda_graph_worker, args=(1, os.fspath(tmp_path / "store")), nprocs=1, start_method="spawn")


def test_static_decoders_do_not_keep_the_model_alive(qwen2):
    import gc
    import weakref

    model = copy.deepcopy(qwen2)
    ids, mask = text_batch()
    _rollouts_per_row(model, ids, mask, None, 1, "static")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
