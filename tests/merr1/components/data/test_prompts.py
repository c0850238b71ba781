import pytest
import torch

from merr1.components.data.prompts import (
    FAST_THINKING_PREFIX,
    QWEN_OMNI_SYSTEM_PROMPT,
    RESPONSE_FORMATS,
    PromptEncoder,
    build_prompt,
    encode_fast_prefix,
    encode_prompt,
    encode_target,
    format_answer,
    get_response_format,
    media_placeholder,
    num_audio_tokens,
    num_video_tokens,
    split_reason_steps,
)
from merr1.components.tokenizer import TINY_SPECIAL_TOKENS, tiny_tokenizer

REAL_QWEN_IDS = {  # Qwen2.5-Omni's special-token ids (the same strings as the tiny tokenizer's)
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
    "<|vision_bos|>": 151652,
    "<|vision_eos|>": 151653,
    "<|IMAGE|>": 151655,
    "<|VIDEO|>": 151656,
}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def qwen_like_tok():
    """A byte-level BPE tokenizer whose special tokens sit at the real Qwen2.5-Omni ids (after a
    large gap), so no code can rely on the tiny tokenizer's ids 0..9."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # bytes only, no merges
    vocab.update(REAL_QWEN_IDS)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in REAL_QWEN_IDS if t not in ("<|endoftext|>", "<|im_end|>")]})
    for token, idx in REAL_QWEN_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == idx
    return tokenizer


def test_fast_prefix_constant():
    assert FAST_THINKING_PREFIX == "<think></think><answer>"
    assert RESPONSE_FORMATS["mer_r1"].fast_prefix == FAST_THINKING_PREFIX


@pytest.mark.parametrize(
    "fmt, reason, labels, target, fast_prefix, scheme, fast_scheme",
    [
        ("mer_r1", "R.", ["sad", "angry"], "<think>R.</think><answer>sad, angry</answer>",
         "<think></think><answer>", "answer", "answer"),
        ("mer_r1", "R.", [], "<think>R.</think><answer>neutral</answer>", "<think></think><answer>", "answer", "answer"),
        ("videoauto_r1", "R.", ["happy"], "\\boxed{happy}<think>R.</think>\\boxed{happy}", "\\boxed{", "videoauto_a2",
         "videoauto_a1"),
        ("emo_r3", "A. B. C.", ["sad"],
         "<step1>A.</step1><step2>B.</step2><step3>C.</step3><answer>sad</answer>",
         "<step1></step1><step2></step2><step3></step3><answer>", "answer", "answer"),
    ],
)  # fmt: skip
def test_response_formats(fmt, reason, labels, target, fast_prefix, scheme, fast_scheme):
    f = get_response_format(fmt)
    assert f.format_target(reason, labels) == target
    assert f.fast_prefix == fast_prefix
    assert (f.answer_scheme, f.fast_answer_scheme) == (scheme, fast_scheme)


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown response format"):
        get_response_format("r2d2")


@pytest.mark.parametrize(
    "reason, steps",
    [
        ("", ("", "", "")),
        ("One.", ("One.", "", "")),
        ("One. Two!", ("One.", "Two!", "")),
        ("A. B. C. D. E.", ("A. B.", "C.", "D. E.")),
        ("A. B. C.", ("A.", "B.", "C.")),
        ("A. B. C. D. E. F.", ("A. B.", "C. D.", "E. F.")),
        ("A. B. C. D.", ("A.", "B. C.", "D.")),
    ],
)
def test_split_reason_steps(reason, steps):
    assert split_reason_steps(reason) == steps


@pytest.mark.parametrize("labels, answer", [([], "neutral"), (["sad"], "sad"), (["sad", "mad"], "sad, mad")])
def test_format_answer(labels, answer):
    assert format_answer(labels) == answer


# (F mel frames -> tokens), hand-derived: a = (F - 1) // 2 + 1, tokens = (a - 2) // 2 + 1.
@pytest.mark.parametrize("frames, tokens", [(3, 1), (4, 1), (5, 1), (7, 2), (8, 2), (16, 4), (24, 6), (100, 25), (3000, 750)])
def test_num_audio_tokens(frames, tokens):
    assert num_audio_tokens(frames) == tokens


def test_num_audio_tokens_matches_the_thinker():
    from merr1.components.models import tiny_thinker

    model = tiny_thinker()
    frames = torch.arange(3, 400)
    expected = model.model.audio_tower._get_feat_extract_output_lengths(frames)[1]
    assert [num_audio_tokens(int(f)) for f in frames] == expected.tolist()


def test_num_audio_tokens_rejects_empty():
    with pytest.raises(ValueError):
        num_audio_tokens(0)


@pytest.mark.parametrize("grid, tokens", [((1, 2, 2), 1), ((2, 2, 2), 2), ((2, 4, 6), 12), ((10, 16, 28), 1120)])
def test_num_video_tokens(grid, tokens):
    assert num_video_tokens(grid) == tokens


def test_num_video_tokens_rejects_unmergeable_grid():
    with pytest.raises(ValueError, match="merge size"):
        num_video_tokens((1, 3, 2))


def test_media_placeholder_audio_before_video():
    assert media_placeholder(0, 0) == ""
    assert media_placeholder(2, 0) == "<|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|>"
    assert media_placeholder(0, 1) == "<|vision_bos|><|VIDEO|><|vision_eos|>"
    assert media_placeholder(1, 2) == "<|audio_bos|><|AUDIO|><|audio_eos|><|vision_bos|><|VIDEO|><|VIDEO|><|vision_eos|>"


def test_build_prompt_exact_string():
    fmt = RESPONSE_FORMATS["mer_r1"]
    prompt = build_prompt(" I lost it. ", num_audio=1, num_video=1)
    assert prompt == (
        f"<|im_start|>system\n{QWEN_OMNI_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|><|vision_bos|><|VIDEO|><|vision_eos|>"
        f'Subtitle: "I lost it."\n{fmt.instruction}<|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    assert build_prompt(" I lost it. ", num_audio=1, num_video=1, fast=True) == prompt + FAST_THINKING_PREFIX


def test_build_prompt_text_only_and_overrides():
    prompt = build_prompt("Hi.", "emo_r3", system_prompt=None, instruction="Emotions?")
    assert prompt == '<|im_start|>user\nSubtitle: "Hi."\nEmotions?<|im_end|>\n<|im_start|>assistant\n'
    assert "<|AUDIO|>" not in build_prompt("Hi.") and "<|VIDEO|>" not in build_prompt("Hi.")


@pytest.mark.parametrize("tokenizer_name", ["tok", "qwen_like_tok"])
@pytest.mark.parametrize("fmt", sorted(RESPONSE_FORMATS))
@pytest.mark.parametrize("num_audio, num_video", [(0, 0), (3, 0), (0, 2), (4, 5)])
def test_encode_prompt(request, tokenizer_name, fmt, num_audio, num_video):
    tokenizer = request.getfixturevalue(tokenizer_name)
    subtitle = "They cancelled the match again, this is so unfair!"
    for fast in (False, True):
        ids = encode_prompt(tokenizer, subtitle, fmt, num_audio=num_audio, num_video=num_video, fast=fast)
        # Lossless: the ids decode to the prompt string.
        assert tokenizer.decode(ids) == build_prompt(subtitle, fmt, num_audio=num_audio, num_video=num_video, fast=fast)
        ids_t = torch.tensor(ids)
        assert int((ids_t == tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum()) == num_audio
        assert int((ids_t == tokenizer.convert_tokens_to_ids("<|VIDEO|>")).sum()) == num_video
    slow = encode_prompt(tokenizer, subtitle, fmt, num_audio=num_audio, num_video=num_video)
    fast = encode_prompt(tokenizer, subtitle, fmt, num_audio=num_audio, num_video=num_video, fast=True)
    assert fast == slow + encode_fast_prefix(tokenizer, fmt)


def test_placeholder_expansion_equals_tokenizing_the_expanded_string(tok):
    header = build_prompt("", num_audio=7, num_video=3).split('Subtitle: "')[0]
    encoder = PromptEncoder(tok)
    ids = encoder.encode("", num_audio=7, num_video=3)
    direct = tok(header, add_special_tokens=False)["input_ids"]
    assert ids[: len(direct)] == direct


def test_prompt_encoder_length_and_batch(tok):
    encoder = PromptEncoder(tok, "mer_r1", None, "Emotions?")
    subs = ["I miss my dog.", "", "Yes! We won the game!"]
    batch = encoder.encode_subtitles(subs)
    assert batch == [encoder.encode_subtitle(s) for s in subs]
    for sub, sub_ids in zip(subs, batch):
        for fast in (False, True):
            ids = encoder.assemble(sub_ids, 4, 2, fast)
            assert len(ids) == encoder.prompt_length(len(sub_ids), 4, 2, fast)
            assert ids == encoder.encode(sub, 4, 2, fast)


@pytest.mark.parametrize("tokenizer_name", ["tok", "qwen_like_tok"])
@pytest.mark.parametrize("fmt", sorted(RESPONSE_FORMATS))
def test_fast_prefix_is_a_token_prefix_of_an_empty_reasoning_target(request, tokenizer_name, fmt):
    tokenizer = request.getfixturevalue(tokenizer_name)
    prefix = encode_fast_prefix(tokenizer, fmt)
    target, _ = encode_target(tokenizer, "", ["sad", "angry"], fmt)
    assert target[: len(prefix)] == prefix
    assert tokenizer.decode(prefix) == get_response_format(fmt).fast_prefix


@pytest.mark.parametrize("fmt", sorted(RESPONSE_FORMATS))
def test_encode_target(tok, fmt):
    reason = "The cancelled match makes them angry. Losing their dog makes them sad. They seem worried too."
    ids, dropped = encode_target(tok, reason, ["angry", "sad"], fmt)
    assert dropped == 0
    assert ids[-1] == TINY_SPECIAL_TOKENS["<|im_end|>"]
    assert tok.decode(ids[:-1]) == get_response_format(fmt).format_target(reason, ["angry", "sad"])


@pytest.mark.parametrize("fmt", sorted(RESPONSE_FORMATS))
def test_encode_target_truncates_reasoning_only(tok, fmt):
    reason = "The cancelled match makes them angry. Losing their dog makes them sad. They seem worried too."
    full, _ = encode_target(tok, reason, ["angry", "sad"], fmt)
    ids, dropped = encode_target(tok, reason, ["angry", "sad"], fmt, max_reason_tokens=4)
    num_reason = len(tok(reason, add_special_tokens=False)["input_ids"])
    assert dropped == num_reason - 4
    assert len(ids) <= len(full) - dropped + 3  # emo_r3 re-splits the kept text: a token or two may differ
    text = tok.decode(ids[:-1])
    answer = "angry, sad"
    assert text.count(answer) == (2 if fmt == "videoauto_r1" else 1)
    assert "worried" not in text
    empty, dropped_all = encode_target(tok, reason, ["angry", "sad"], fmt, max_reason_tokens=0)
    assert dropped_all == num_reason
    assert tok.decode(empty[:-1]) == get_response_format(fmt).format_target("", ["angry", "sad"])


def test_build_chat_prompt_is_a_plain_user_turn():
    from merr1.components.data.prompts import build_chat_prompt

    text = build_chat_prompt("Can this text describe the input? Answer yes or no.", num_audio=2, num_video=1,
                             system_prompt="S")  # fmt: skip
    assert text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
        "<|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|><|vision_bos|><|VIDEO|><|vision_eos|>"
        "Can this text describe the input? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "Subtitle" not in build_chat_prompt("x", system_prompt=None)
    assert build_chat_prompt("x", system_prompt=None) == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("num_audio, num_video", [(2, 1), (0, 3), (1, 0), (0, 0)])
@pytest.mark.parametrize("system_prompt", ["S", None])
def test_recheck_prompt_copies_the_rollout_setup_and_equals_the_chat_prompt(num_audio, num_video, system_prompt):
    from merr1.components.data.prompts import build_chat_prompt, build_prompt, encode_text, recheck_prompt_ids
    from merr1.components.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    rollout_prompt = encode_text(
        tok, build_prompt("I am fine.", num_audio=num_audio, num_video=num_video, system_prompt=system_prompt)
    )
    query = "Which emotion best describes the text above?"
    ids = recheck_prompt_ids(tok, query, rollout_prompt, use_media=True)
    assert ids == encode_text(
        tok, build_chat_prompt(query, num_audio=num_audio, num_video=num_video, system_prompt=system_prompt)
    )
    text_only = recheck_prompt_ids(tok, query, rollout_prompt, use_media=False)
    assert text_only == encode_text(tok, build_chat_prompt(query, system_prompt=system_prompt))


def test_recheck_prompt_keeps_an_interleaved_media_layout_verbatim():
    from merr1.components.data.prompts import recheck_prompt_ids
    from merr1.components.tokenizer import TINY_SPECIAL_TOKENS as S
    from merr1.components.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    # audio-in-video: <vision_bos><audio_bos> video chunk, audio chunk, video chunk ... <audio_eos><vision_eos>
    block = [S["<|vision_bos|>"], S["<|audio_bos|>"], S["<|VIDEO|>"], S["<|AUDIO|>"], S["<|VIDEO|>"],
             S["<|AUDIO|>"], S["<|audio_eos|>"], S["<|vision_eos|>"]]  # fmt: skip
    prompt = [S["<|im_start|>"], 100, 101] + block + [102, S["<|im_end|>"]]
    ids = recheck_prompt_ids(tok, "Yes or no?", prompt, use_media=True)
    start = ids.index(S["<|vision_bos|>"])
    assert ids[start : start + len(block)] == block
