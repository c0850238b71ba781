import pytest

from merr1.components.tokenizer import (
    TINY_SPECIAL_TOKENS,
    load_tokenizer,
    tiny_tokenizer,
    token_bytes,
    train_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_special_tokens_sit_at_their_fixed_ids(tok):
    assert len(tok) == 512
    for token, idx in TINY_SPECIAL_TOKENS.items():
        assert tok.convert_tokens_to_ids(token) == idx
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 0
    # special tokens are never split, even next to text
    assert tok("<|AUDIO|><|AUDIO|>x", add_special_tokens=False)["input_ids"][:2] == [3, 3]


@pytest.mark.parametrize(
    "text",
    ["<think>The unfair cancellation makes them angry.</think><answer>angry, sad</answer>", "Ärger über café", ""],
)
def test_token_bytes_concatenate_to_the_decoded_text(tok, text):
    ids = tok(f"<|im_start|>{text}<|im_end|>", add_special_tokens=False)["input_ids"]
    pieces = token_bytes(tok, ids)
    assert pieces[0] == b"" and pieces[-1] == b""  # special tokens contribute nothing
    assert b"".join(pieces).decode("utf-8") == text == tok.decode(ids, skip_special_tokens=True)


def test_token_bytes_of_a_split_multibyte_character(tok):
    # "é" is two UTF-8 bytes; a byte-level token can hold one of them: the raw byte comes back.
    ids = [i for i in range(10, len(tok)) if token_bytes(tok, [i])[0] in (b"\xc3", b"\xa9")]
    assert ids, "the byte alphabet holds single-byte tokens"
    assert all(len(token_bytes(tok, [i])[0]) == 1 for i in ids)


def test_training_is_deterministic_and_keeps_special_ids():
    texts = ["<think>calm voice</think><answer>calm</answer>", "she is happy and a bit worried"] * 20
    a, b = train_tiny_tokenizer(texts, vocab_size=300), train_tiny_tokenizer(texts, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
    assert [a.convert_tokens_to_ids(t) for t in TINY_SPECIAL_TOKENS] == list(TINY_SPECIAL_TOKENS.values())


def test_missing_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_tiny_tokenizer"):
        tiny_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "nope")


def test_stop_token_ids_cover_end_of_turn_and_end_of_text(tok):
    from merr1.components.tokenizer import stop_token_ids

    assert stop_token_ids(tok) == [0, 2]  # <|endoftext|>, <|im_end|> (= eos)


def test_one_shared_token_bytes_table_per_tokenizer(tok):
    from merr1.components.calibration import CategoryFirstTokens
    from merr1.components.generation import StopStrings
    from merr1.components.tokenizer import token_bytes_table

    table = token_bytes_table(tok)
    assert token_bytes_table(tok) is table
    dense, lengths = table.dense()
    assert dense.shape[0] == lengths.shape[0] == len(tok)
    ids = list(range(len(tok)))
    expected = token_bytes(tok, ids)
    assert table(ids) == expected
    assert [bytes(dense[i, : lengths[i]].tolist()) for i in ids] == expected
    stops = StopStrings.from_tokenizer(tok, ["</answer>"])
    assert stops.token_bytes is dense  # generation's stop strings read the same table
    assert CategoryFirstTokens(tok).token_bytes is table  # and so does SFCC's word locator
