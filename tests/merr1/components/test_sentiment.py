"""Emotion words -> sentiment (merr1.components.sentiment): lexicon table, reply cleaning, LLM plumbing."""

import pytest

from merr1.components.emotion_wheel import EmotionWheels
from merr1.components.sentiment import (
    CATEGORY_POLARITY,
    SENTIMENT_PROMPT,
    LexiconSentimentMapper,
    LLMSentimentMapper,
    clean_response,
    format_words,
)
from merr1.score import score_sentiment


@pytest.mark.parametrize(
    "words, expected",
    [
        (["happy"], "positive"),  # happy/happy/joyful/joy/powerful: 5 positive wheels
        (["sad"], "negative"),  # sad on every wheel
        (["angry", "worried"], "negative"),
        (["calm"], "positive"),  # happy/happy/peaceful/joy/peaceful
        (["happy", "sad"], "neutral"),  # one positive word, one negative word: tie
        (["happy", "sad", "angry"], "negative"),  # majority over words
        (["surprised"], "neutral"),  # surprised (abstains) x2, powerful (+), fear (-), unmapped: word tie
        (["surprised", "happy"], "positive"),  # a tied word casts no vote
        (["fear"], "positive"),  # mapping quirk: scared (-) on W1, positive via "fearless" on W2-W5
        (["relaxed"], "positive"),  # unmapped on W1/W2, peaceful/joy/peaceful
        (["neutral"], "neutral"),  # maps to nothing
        (["xyzzy"], "neutral"),  # unknown word
        ([], "neutral"),  # no answer
        (["Happy "], "positive"),  # words are normalised by the wheel mapping
    ],
)
def test_lexicon_mapper(words, expected):
    assert LexiconSentimentMapper()([words]) == [expected]


def test_lexicon_covers_every_wheel_category():
    wheels = EmotionWheels.load()
    categories = {c for k in range(wheels.NUM_WHEELS) for c in wheels.categories(k)}
    assert categories == set(CATEGORY_POLARITY)
    assert LexiconSentimentMapper().describe() == {"name": "lexicon"}


def test_lexicon_output_feeds_the_scorer():
    mapper = LexiconSentimentMapper()
    preds = dict(zip("abc", mapper([["happy"], ["sad"], []])))
    out = score_sentiment(preds, {"a": 1.5, "b": -2.0, "c": -0.5})
    assert out["accuracy"] == 1.0  # "neutral" counts as not positive, like "negative"


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("positive", "positive"),
        ("  negative\n", "negative"),
        ("Output: positive", "positive"),
        ("output：negative", "negative"),
        ("输出: neutral", "neutral"),
        ("Positive", "Positive"),  # no lower-casing: the scorer's exact match decides
        ("positive.", "positive."),
        ("pos\nitive", "positive"),  # newlines removed
        ("Input: Output: positive", "Output: positive"),  # each label is dropped once, in order
        ("", ""),
    ],
)
def test_clean_response(reply, expected):
    assert clean_response(reply) == expected


def test_prompt_is_the_protocols():
    prompt = SENTIMENT_PROMPT.format(words=format_words(["happy", "excited"]))
    assert prompt.startswith("Please act as an expert in the field of emotions. " + " " * 12 + "We provide")
    assert prompt.endswith("Input: []; Output: neutral " + " " * 12 + "Input: [happy, excited]; Output: ")
    assert "[positive, negative, neutral]" in prompt
    assert format_words([]) == "[]"


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory):
    """A random tiny Qwen2 causal LM + the tiny tokenizer (with its chat template), saved in HF format."""
    from merr1.components.models import tiny_qwen2
    from merr1.components.tokenizer import tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_llm")
    tiny_qwen2(seed=0).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_llm_mapper_plumbing(tiny_llm_dir):
    inputs = [["happy"], ["sad", "angry"], [], ["surprised", "nervous", "lonely"]]
    mapper = LLMSentimentMapper(str(tiny_llm_dir), batch_size=3, max_new_tokens=6, dtype="fp32", device="cpu")
    prompts = mapper.prompts(inputs)
    assert prompts[1] == (
        "<|im_start|>user\n" + SENTIMENT_PROMPT.format(words="[sad, angry]") + "<|im_end|>\n<|im_start|>assistant\n"
    )
    replies = mapper(inputs)
    assert len(replies) == 4 and all(isinstance(r, str) for r in replies)
    assert all(r == clean_response(r) for r in replies)  # already cleaned
    # Deterministic (greedy) and independent of the batch split (left padding + attention mask).
    assert mapper(inputs) == replies
    one_by_one = LLMSentimentMapper(str(tiny_llm_dir), batch_size=1, max_new_tokens=6, dtype="fp32", device="cpu")
    assert one_by_one(inputs) == replies
    assert mapper([]) == []
    assert mapper.describe()["name"] == "llm"
    mapper.close()
    assert mapper._model is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model_path=""), "model_path"),
        (dict(model_path="x", batch_size=0), "batch_size"),
        (dict(model_path="x", temperature=-1.0), "temperature"),
        (dict(model_path="x", device="tpu"), "device"),
    ],
)
def test_llm_mapper_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLMSentimentMapper(**kwargs)
