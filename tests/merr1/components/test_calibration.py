import math

import pytest
import torch

from merr1.components.tokenizer import token_bytes_table
from merr1.components.calibration import (
    CalibrationInputs,
    CategoryFirstTokens,
    SlowFastCalibration,
    WordLogits,
    category_log_confidence,
    locate_answer_words,
    slow_fast_gap,
    token_log_prob,
    token_logits_at,
)
from merr1.components.emotion_wheel import EmotionWheels
from merr1.components.tokenizer import tiny_tokenizer
from merr1.rewards import CalibrationRewards, RewardBatch

PREFIX = "<think></think><answer>"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def table(tok):
    return CategoryFirstTokens(tok)


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def batch_ids(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


# ---------------------------------------------------------------------------------------------
# First-token sets


@pytest.mark.parametrize("glue", ["", " ", ">"])
def test_first_token_sets_match_direct_encoding(tok, table, glue):
    wheels = EmotionWheels.load()
    spelling = table.spelling_index(glue)
    token_bytes = token_bytes_table(tok)
    num_deduplicated = 0
    for k in range(5):
        for name, words in wheels.category_words(k).items():
            expected = set()
            for w in words:
                first = enc(tok, glue + w)[0]
                if len(token_bytes([first])[0]) > len(glue):
                    expected.add(first)
            got = table.token_set(spelling, table.flat_index(k, name))
            assert got == expected, (k, name)
            num_deduplicated += len(words) - len(got)
    assert num_deduplicated > 0  # shared first tokens were counted once


def test_spellings_differ_and_are_cached(table):
    assert table.spellings[:2] == ["", " "]
    c = table.flat_index(1, "sad")
    assert table.token_set(0, c) != table.token_set(1, c)  # "sad" vs " sad" start differently
    assert table.spelling_index(" ") == 1
    ids, membership = table.first_tokens(0)
    assert membership.dtype == torch.bool and membership.shape == (ids.numel(), 31)


@pytest.fixture(scope="module")
def per_word_table(tok):
    return CategoryFirstTokens(tok, first_token_mass="per_word")


@pytest.mark.parametrize("glue", ["", " "])
def test_word_counts_match_direct_encoding(tok, per_word_table, glue):
    # per_word (Eq. 1 literally): the count of c's words whose first token (with the glue) is u
    wheels = EmotionWheels.load()
    spelling = per_word_table.spelling_index(glue)
    token_bytes = token_bytes_table(tok)
    token_ids, counts = per_word_table.word_counts(spelling)
    column = {t: u for u, t in enumerate(token_ids.tolist())}
    num_shared = 0
    for k in range(5):
        for name, words in wheels.category_words(k).items():
            expected: dict[int, int] = {}
            for w in words:
                first = enc(tok, glue + w)[0]
                if len(token_bytes([first])[0]) > len(glue):
                    expected[first] = expected.get(first, 0) + 1
            c = per_word_table.flat_index(k, name)
            got = {t: int(counts[column[t], c]) for t in token_ids.tolist() if counts[column[t], c] > 0}
            assert got == expected, (k, name)
            num_shared += sum(n > 1 for n in expected.values())
    assert num_shared > 0  # some first token starts several words of one category
    # the sets themselves do not depend on the reading
    assert per_word_table.token_set(spelling, 0) == CategoryFirstTokens(tok).token_set(spelling, 0)


def test_uniform_logits_per_word_count_words(per_word_table, table):
    # uniform p = 1/V: per_word conf = log(#words of c with a first token / V); distinct: #tokens
    vocab = 512
    spelling = torch.tensor([0, 1])
    per_word = category_log_confidence(torch.zeros(2, vocab), spelling, per_word_table)
    distinct = category_log_confidence(torch.zeros(2, vocab), spelling, per_word_table, first_token_mass="distinct_tokens")
    torch.testing.assert_close(distinct, category_log_confidence(torch.zeros(2, vocab), spelling, table))
    for s in (0, 1):
        _, counts = per_word_table.word_counts(s)
        for c in range(31):
            assert per_word[s, c].item() == pytest.approx(math.log(int(counts[:, c].sum()) / vocab), abs=1e-5)


def test_patched_logits_per_word(per_word_table):
    # A first token t shared by m >= 2 words of c gets logit log 3: p(t) = 3 / (V + 2), others 1 / (V + 2).
    # per_word: (N_c - m + 3 m) / (V + 2) with N_c the words of c; distinct: (n_c + 2) / (V + 2).
    vocab = 512
    token_ids, counts = per_word_table.word_counts(0)
    u, c = next((u, c) for u in range(len(token_ids)) for c in range(31) if counts[u, c] >= 2)
    m, words_c, tokens_c = int(counts[u, c]), int(counts[:, c].sum()), int((counts[:, c] > 0).sum())
    logits = torch.zeros(1, vocab)
    logits[0, token_ids[u]] = math.log(3.0)
    per_word = category_log_confidence(logits, torch.tensor([0]), per_word_table)
    distinct = category_log_confidence(logits, torch.tensor([0]), per_word_table, first_token_mass="distinct_tokens")
    assert per_word[0, c].item() == pytest.approx(math.log((words_c + 2 * m) / (vocab + 2)), abs=1e-5)
    assert distinct[0, c].item() == pytest.approx(math.log((tokens_c + 2) / (vocab + 2)), abs=1e-5)


def test_first_token_mass_in_the_component_and_a1_unaffected(tok):
    per_word = SlowFastCalibration(fast_prefix=PREFIX, first_token_mass="per_word")
    per_word.setup(tok)
    assert per_word.table.first_token_mass == "per_word"
    with pytest.raises(ValueError, match="first_token_mass"):
        SlowFastCalibration(first_token_mass="per_token")
    with pytest.raises(ValueError, match="first_token_mass"):
        CategoryFirstTokens(tok, first_token_mass="words")
    # A1 (word confidence) reads the word's own token: the same gaps under both readings
    g = torch.Generator().manual_seed(0)
    slow, fast = torch.randn(1, 512, generator=g), torch.randn(1, 512, generator=g)
    distinct_table = CategoryFirstTokens(tok)
    token = sorted(distinct_table.token_set(0, distinct_table.flat_index(0, "happy")))[0]
    words = _one_word(distinct_table, "happy", spelling=0, token=token)
    a1 = [slow_fast_gap(slow, fast, words, t, confidence="word") for t in (distinct_table, per_word.table)]
    assert torch.equal(a1[0], a1[1])


# ---------------------------------------------------------------------------------------------
# Confidence math on patched logits (hand-computable)


def test_uniform_logits_give_set_size_over_vocab(table):
    vocab = 512
    spelling = torch.tensor([0, 1])
    conf = category_log_confidence(torch.zeros(2, vocab), spelling, table)
    for s in (0, 1):
        for c in range(31):
            n = len(table.token_set(s, c))
            assert conf[s, c].item() == pytest.approx(math.log(n / vocab), abs=1e-5)


def test_patched_logits_conf_and_gap(table):
    # One token t of F(c) gets logit log 3 (probability 3 / (V + 2)), all others 0.
    vocab = 512
    c = table.flat_index(0, "happy")
    members = sorted(table.token_set(0, c))
    t = members[0]
    n = len(members)
    slow = torch.zeros(1, vocab)
    slow[0, t] = math.log(3.0)
    conf = category_log_confidence(slow, torch.tensor([0]), table)
    assert conf[0, c].item() == pytest.approx(math.log((n + 2) / (vocab + 2)), abs=1e-5)
    other = table.flat_index(0, "sad")
    if t not in table.token_set(0, other):
        n_other = len(table.token_set(0, other))
        assert conf[0, other].item() == pytest.approx(math.log(n_other / (vocab + 2)), abs=1e-5)
    # Gap on every wheel for a word located at that token: slow (patched) - fast (uniform).
    words = _one_word(table, "happy", spelling=0, token=t)
    gap = slow_fast_gap(slow, torch.zeros(1, vocab), words, table)
    for k in range(5):
        ck = words.category[0, k].item()
        members_k = table.token_set(0, ck)
        n_k = len(members_k)
        expected = math.log((n_k + 2 * (t in members_k)) / (vocab + 2)) - math.log(n_k / vocab)
        assert gap[0, k].item() == pytest.approx(expected, abs=1e-5)
    # A1: log p_slow(t) - log p_fast(t) = log(3 / (V + 2)) - log(1 / V) on every mapped wheel.
    word_gap = slow_fast_gap(slow, torch.zeros(1, vocab), words, table, confidence="word")
    torch.testing.assert_close(word_gap[0], torch.full((5,), math.log(3 * vocab / (vocab + 2))))


def test_temperature_and_extreme_logits(table):
    vocab = 512
    c = table.flat_index(2, "sad")
    members = table.token_set(0, c)
    far = next(i for i in range(10, vocab) if i not in table.first_tokens(0)[0].tolist())
    logits = torch.zeros(1, vocab)
    logits[0, far] = 200.0  # not a first token of any category: every category ~ -200
    conf = category_log_confidence(logits, torch.tensor([0]), table)
    assert conf[0, c].item() == pytest.approx(math.log(len(members)) - 200.0, abs=1e-3)
    assert torch.isfinite(conf).all()
    # temperature 2 halves the logits
    conf_t = category_log_confidence(logits, torch.tensor([0]), table, temperature=2.0)
    assert conf_t[0, c].item() == pytest.approx(math.log(len(members)) - 100.0, abs=1e-3)
    assert token_log_prob(logits, torch.tensor([far])).item() == pytest.approx(0.0, abs=1e-6)


def _one_word(table, word: str, spelling: int, token: int):
    from merr1.components.calibration import AnswerWords

    mapped = EmotionWheels.load().map_word(word)
    category = torch.tensor([[table.flat_index(k, c) if c else -1 for k, c in enumerate(mapped)]])
    mask = torch.tensor([list(EmotionWheels.load().map_masks([word]))])
    zero = torch.zeros(1, dtype=torch.int64)
    return AnswerWords([word], zero, zero, zero, torch.tensor([spelling]), torch.tensor([token]), category, mask)


# ---------------------------------------------------------------------------------------------
# Locating words


def test_locate_clean_pieces(tok, table):
    head = enc(tok, "<think>a smile</think><answer>")
    happy, comma, sad = enc(tok, "happy"), enc(tok, ","), enc(tok, " sad")
    tail = enc(tok, "</answer>") + [2]  # <|im_end|> is a special token: no bytes
    response = head + happy + comma + sad + tail
    ids, mask = batch_ids([response, enc(tok, "no answer") + [2]])
    words, fast = locate_answer_words(ids, mask, table, fast_prefix=PREFIX)
    prefix = enc(tok, PREFIX)
    assert words.words == ["happy", "sad"]
    assert words.response_index.tolist() == [0, 0]
    assert words.slow_position.tolist() == [len(head), len(head) + len(happy) + len(comma)]
    assert words.fast_position.tolist() == [len(prefix), len(prefix) + len(happy) + len(comma)]
    assert words.spelling.tolist() == [0, 1]  # answer start; after ", "
    assert words.token_id.tolist() == [happy[0], sad[0]]
    assert words.num_skipped == 0
    assert fast.ids[0, : fast.mask[0].sum()].tolist() == prefix + happy + comma + sad
    assert fast.ids[1, : fast.mask[1].sum()].tolist() == prefix  # no answer: prefix only
    wheels = EmotionWheels.load()
    assert words.category_mask[1].tolist() == list(wheels.map_masks(["sad"]))


def test_locate_boundary_inside_a_token(tok, table):
    # Canonical BPE may glue ">" to the first letters of the answer ("<answer>happy" -> ..., ">happy").
    # Pick a wheel word the current tokenizer glues, so the test follows a retrained tokenizer.
    glued_words = [
        w for w in ("happy", "joyful", "calm", "sad", "angry", "delighted")
        if any(t.startswith(">") and t[1:2].isalpha() for t in tok.convert_ids_to_tokens(enc(tok, f"<answer>{w}")))
    ]
    assert glued_words, "the tiny tokenizer glues '>' to no test word: pick another word list"
    first = glued_words[0]
    response = enc(tok, f"<think>x</think><answer>{first}, delighted</answer>")
    ids, mask = batch_ids([response])
    words, fast = locate_answer_words(ids, mask, table, fast_prefix=PREFIX)
    assert words.words == [first, "delighted"]
    glued = table.spellings[words.spelling[0]]
    assert glued != "" and glued.endswith(">")
    fast_row = fast.ids[0, : fast.mask[0].sum()]
    assert tok.decode(fast_row) == PREFIX + f"{first}, delighted"
    for i in range(2):  # the same token sits at the slow and the fast position
        slow_token = ids[0, words.slow_position[i]].item()
        assert slow_token == fast_row[words.fast_position[i]].item() == words.token_id[i].item()


@pytest.mark.parametrize(
    "text, expected_words, skipped",
    [
        ("<think>r</think><answer></answer>", [], 0),  # empty answer
        ("<think>r</think>happy", [], 0),  # no tags
        ("<think>r</think><answer>happy", [], 0),  # truncated
        ("<answer>xyz, qqq</answer>", ["xyz", "qqq"], 0),  # unknown words: located, unmapped
        ("<answer>happy, happy</answer>", ["happy", "happy"], 0),  # both occurrences
        ("<answer>Ärger, sad</answer>", ["sad"], 1),  # non-ASCII lower-casing: skipped, counted
        ("<answer>sad</answer> <answer>happy</answer>", ["happy"], 0),  # last answer
        ("<answer>[' Happy', 'Sad']</answer>", ["happy", "sad"], 0),  # list-string answers
    ],
)
def test_locate_edge_cases(tok, table, text, expected_words, skipped):
    ids, mask = batch_ids([enc(tok, text) + [2]])
    words, fast = locate_answer_words(ids, mask, table, fast_prefix=PREFIX)
    assert words.words == expected_words
    assert words.num_skipped == skipped
    for i in range(len(words)):
        assert fast.ids[0, words.fast_position[i]].item() == ids[0, words.slow_position[i]].item()
    if not expected_words and not skipped:
        assert (words.category.shape, words.category_mask.shape) == ((0, 5), (0, 5))
    if expected_words[:1] == ["xyz"]:
        assert (words.category == -1).all() and (words.category_mask == 0).all()


@pytest.mark.parametrize("num_reasoning_words, num_answer_words", [(200, 2), (5, 120)])
def test_locate_long_responses(tok, table, num_reasoning_words, num_answer_words):
    # Answer found in the tail window (long reasoning) and when it does not fit it (long answer).
    answer = ", ".join(["happy", "sad"] * (num_answer_words // 2))
    text = "<think>" + " see" * num_reasoning_words + "</think><answer>" + answer + "</answer>"
    ids, mask = batch_ids([enc(tok, text)])
    words, fast = locate_answer_words(ids, mask, table, fast_prefix=PREFIX)
    assert len(words) == num_answer_words
    assert tok.decode(fast.ids[0, : fast.mask[0].sum()]) == PREFIX + answer
    for i in range(len(words)):
        assert ids[0, words.slow_position[i]].item() == fast.ids[0, words.fast_position[i]].item()


def test_locate_rejects_bad_masks(tok, table):
    ids = torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="prefix"):
        locate_answer_words(ids, torch.tensor([[True, False, True]]), table, fast_prefix=PREFIX)
    with pytest.raises(ValueError, match="must be equal"):
        locate_answer_words(ids, torch.ones(1, 2, dtype=torch.bool), table, fast_prefix=PREFIX)


def test_gap_shape_errors(table):
    words = _one_word(table, "happy", 0, 5)
    with pytest.raises(ValueError, match=r"\[W=1, V\]"):
        slow_fast_gap(torch.zeros(2, 512), torch.zeros(2, 512), words, table)
    with pytest.raises(ValueError, match="confidence"):
        slow_fast_gap(torch.zeros(1, 512), torch.zeros(1, 512), words, table, confidence="token")


# ---------------------------------------------------------------------------------------------
# End to end on a tiny model against a per-word reference


def _reference_conf(model, context: list[int], members: set[int]) -> float:
    """log of the summed next-token probability of ``members`` after ``context`` (plain loop)."""
    with torch.no_grad():
        logits = model(torch.tensor([context])).logits[0, -1].double()
    probs = torch.softmax(logits, -1)
    return math.log(sum(probs[t].item() for t in members))


def test_tiny_model_end_to_end(tok):
    from merr1.components.models import tiny_qwen2

    torch.manual_seed(0)
    model = tiny_qwen2(seed=0).eval()
    calibration = SlowFastCalibration(confidence="category", fast_prefix=PREFIX)
    calibration.setup(tok)
    table = calibration.table
    prompt = enc(tok, "<|im_start|>user\nHow does she feel?<|im_end|>\n<|im_start|>assistant\n")
    reasoning = enc(tok, "<think>she smiles</think><answer>")
    pieces_0 = [enc(tok, "happy"), enc(tok, ","), enc(tok, " sad")]
    pieces_1 = [enc(tok, "calm")]
    close = enc(tok, "</answer>") + [2]
    responses = [reasoning + sum(pieces_0, []) + close, reasoning + sum(pieces_1, []) + close]
    response_ids, response_mask = batch_ids(responses)
    words, fast = calibration.locate(response_ids, response_mask)
    assert words.words == ["happy", "sad", "calm"]

    # What the recipe runs: per micro-batch (one response row each here, so words of both rows
    # and of none are gathered), teacher-forced passes with each prompt computed once.
    from merr1.components.generation import teacher_forced_logits

    prompt_ids, prompt_mask = torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long)
    gather = WordLogits(words, fast)
    with torch.no_grad():
        for row in range(2):
            rows = slice(row, row + 1)
            ids, mask = response_ids[rows], response_mask[rows]
            token_logits = teacher_forced_logits(model, prompt_ids, prompt_mask, ids, mask, mask)
            gather.add(rows, token_logits, mask, lambda f_ids, f_mask, targets: teacher_forced_logits(
                model, prompt_ids, prompt_mask, f_ids, f_mask, targets))  # fmt: skip
    slow_logits, fast_logits = gather.result()
    assert slow_logits.shape == fast_logits.shape == (3, model.config.vocab_size)
    gap = slow_fast_gap(slow_logits, fast_logits, words, table)

    # Reference: contexts built from the pieces, one forward per word, a Python sum over F(c).
    prefix = enc(tok, PREFIX)
    contexts = [
        (prompt + reasoning, prompt + prefix, 0),  # happy, answer start
        (prompt + reasoning + pieces_0[0] + pieces_0[1], prompt + prefix + pieces_0[0] + pieces_0[1], 1),  # " sad"
        (prompt + reasoning, prompt + prefix, 0),  # calm
    ]
    for w, (slow_ctx, fast_ctx, spelling) in enumerate(contexts):
        for k in range(5):
            c = words.category[w, k].item()
            if c < 0:
                assert gap[w, k].item() == 0.0
                continue
            members = table.token_set(spelling, c)
            expected = _reference_conf(model, slow_ctx, members) - _reference_conf(model, fast_ctx, members)
            assert gap[w, k].item() == pytest.approx(expected, abs=2e-5), (words.words[w], k)

    # A1 and the reward: the whole chain runs and is finite.
    batch = RewardBatch(
        responses=[[tok.decode(r, skip_special_tokens=True) for r in responses]],
        labels=[["happy"]],
        extras={"calibration": calibration.inputs(slow_logits, fast_logits, words, 2)},
    )
    out = CalibrationRewards()(batch)
    assert out.rewards["cali_pos"].shape == (1, 2) and torch.isfinite(out.rewards["cali_pos"]).all()
    # response 0: happy is correct on every wheel -> R+ = mean over wheels of its gap
    assert out.rewards["cali_pos"][0, 0].item() == pytest.approx(gap[0].mean().item(), abs=1e-5)
    word_level = SlowFastCalibration(confidence="word", fast_prefix=PREFIX)
    word_level.setup(tok)
    inputs = word_level.inputs(slow_logits, fast_logits, words, 2)
    assert isinstance(inputs, CalibrationInputs)
    first = words.token_id[0]
    lp = torch.log_softmax(slow_logits, -1)[0, first] - torch.log_softmax(fast_logits, -1)[0, first]
    assert inputs.gap[0, 0].item() == pytest.approx(lp.item(), abs=1e-5)


def test_component_validation(tok):
    with pytest.raises(ValueError, match="confidence"):
        SlowFastCalibration(confidence="token")
    with pytest.raises(ValueError, match="setup"):
        ids, mask = torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool)
        SlowFastCalibration(fast_prefix=PREFIX).locate(ids, mask)


def test_exact_fast_prefix_ids_are_used(tok, table):
    # The data module encodes the prefix piece by piece; the fast responses must start with those ids.
    piecewise = enc(tok, "<think>") + enc(tok, "</think>") + enc(tok, "<answer>")
    response = enc(tok, "<think>r</think><answer>") + enc(tok, "happy") + enc(tok, "</answer>")
    ids, mask = batch_ids([response])
    words, fast = locate_answer_words(ids, mask, table, fast_prefix=PREFIX, fast_prefix_ids=piecewise)
    assert fast.ids[0, : len(piecewise)].tolist() == piecewise
    assert words.fast_position.tolist() == [len(piecewise)]
    assert fast.ids[0, len(piecewise)].item() == words.token_id[0].item()


def test_default_prefix_comes_from_prompts(tok, table):
    prompts = pytest.importorskip("merr1.components.data.prompts")
    response = enc(tok, "<think>r</think><answer>") + enc(tok, "sad") + enc(tok, "</answer>")
    ids, mask = batch_ids([response])
    _, fast = locate_answer_words(ids, mask, table)
    prefix_ids = prompts.encode_fast_prefix(tok)
    assert fast.ids[0, : len(prefix_ids)].tolist() == list(prefix_ids)
    assert tok.decode(fast.ids[0, : fast.mask[0].sum()]) == prompts.FAST_THINKING_PREFIX + "sad"


def test_empty_rows_and_empty_batch(tok, table):
    response = enc(tok, "<answer>sad</answer>")
    ids, mask = batch_ids([response, []])
    words, fast = locate_answer_words(ids, mask, table, fast_prefix=PREFIX)
    assert words.words == ["sad"] and fast.ids.shape[0] == 2
    assert fast.ids[1, : fast.mask[1].sum()].tolist() == enc(tok, PREFIX)
    empty_ids, empty_mask = torch.zeros(0, 0, dtype=torch.int64), torch.zeros(0, 0, dtype=torch.bool)
    words, fast = locate_answer_words(empty_ids, empty_mask, table, fast_prefix=PREFIX)
    assert len(words) == 0 and fast.ids.shape == (0, 0)


@pytest.mark.gpu
def test_confidence_and_gap_on_cuda_match_cpu(table):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 512, generator=g) * 5
    spelling = torch.randint(0, 2, (64,), generator=g)
    cpu = category_log_confidence(logits, spelling, table)
    cuda = category_log_confidence(logits.cuda().bfloat16(), spelling.cuda(), table)
    assert cuda.device.type == "cuda" and cuda.dtype == torch.float32
    cpu_bf16 = category_log_confidence(logits.bfloat16(), spelling, table)
    torch.testing.assert_close(cuda.cpu(), cpu_bf16, atol=1e-4, rtol=1e-4)
    assert (cuda.cpu() - cpu).abs().max() < 0.2  # bf16 logits: close to the float32 values
    words = _one_word(table, "happy", 0, table.first_tokens(0)[0][0].item())
    gap = slow_fast_gap(logits[:1].cuda(), logits[1:2].cuda(), words, table)
    torch.testing.assert_close(gap.cpu(), slow_fast_gap(logits[:1], logits[1:2], words, table), atol=1e-5, rtol=1e-5)


def test_token_logits_at_picks_rows_of_the_compact_output_in_any_order():
    mask = torch.tensor([[True, True, False], [False, True, True]])  # tokens (0,0) (0,1) (1,1) (1,2)
    token_logits = torch.arange(4.0)[:, None] * torch.ones(1, 5)  # row i holds i
    picked = token_logits_at(token_logits, mask, torch.tensor([1, 0, 1]), torch.tensor([2, 0, 1]))
    assert picked[:, 0].tolist() == [3.0, 0.0, 2.0]
    with pytest.raises(ValueError, match="outside token_mask"):
        token_logits_at(token_logits, mask, torch.tensor([0]), torch.tensor([2]))


def test_word_logits_without_words_is_empty_with_the_vocab_width(tok, table):
    ids, mask = batch_ids([enc(tok, "no tags at all")])
    words, fast = locate_answer_words(ids, mask, table, fast_prefix=PREFIX)
    gather = WordLogits(words, fast)
    gather.add(slice(0, 1), torch.zeros(int(mask.sum()), 7), mask, lambda *a: pytest.fail("no fast pass needed"))
    slow, fast_logits = gather.result()
    assert slow.shape == fast_logits.shape == (0, 7)
