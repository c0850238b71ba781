"""VideoAuto-R1 early-exit inference (issue 13): scripted confident / unconfident decodes on the
tiny model, equality with one uninterrupted greedy decode, and the summary."""

import math

import pytest
import torch
from torch import nn

from merr1.components.data.collate import select_media
from merr1.components.early_exit import (
    EarlyExitRecord,
    answer_confidence,
    early_exit_generate,
    summarize_early_exit,
)
from merr1.components.generation import SamplingConfig, generate
from merr1.components.models import tiny_qwen2, tiny_thinker
from merr1.components.tokenizer import tiny_tokenizer
from test_generation import left_pad, thinker_batch

EOS = 2  # <|im_end|>
VOCAB = 512
SURE = 30.0  # logit of a scripted token among 511 zeros: p = 1 - 511 e^-30 ~ 1 - 5e-11


def logit_for(p: float) -> float:
    """The logit that gives a token probability p against VOCAB - 1 zero logits."""
    return math.log(p * (VOCAB - 1) / (1 - p))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


class _Recorder(nn.Module):
    """The tiny model's backbone, remembering each row's tokens (prompt + generated so far)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.inner = backbone
        self.sequences: list[list[int]] = []

    def forward(self, input_ids, attention_mask, past_key_values=None, **kwargs):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values, **kwargs)
        if past_key_values is None:  # prefill of left-padded prompts
            self.sequences = [row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)]
        else:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                self.sequences[row].append(token)
        return out


class _ScriptedHead(nn.Module):
    """An lm_head that, whatever the hidden state, puts logit ``strength`` on the next token of
    the script of the row's prompt (EOS after the script) and 0 on every other token."""

    def __init__(self, recorder: _Recorder, scripts: dict[tuple[int, ...], list[tuple[int, float]]]):
        super().__init__()
        self.recorder, self.scripts = recorder, scripts

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(hidden.shape[0], VOCAB)
        for row, seq in enumerate(self.recorder.sequences):
            prompt = next(p for p in self.scripts if tuple(seq[: len(p)]) == p)
            step = len(seq) - len(prompt)
            script = self.scripts[prompt]
            token, strength = script[step] if step < len(script) else (EOS, SURE)
            logits[row, token] = strength
        return logits


class _ScriptedLM(nn.Module):
    def __init__(self, scripts):
        super().__init__()
        self.model = _Recorder(tiny_qwen2(seed=0).model)
        self.lm_head = _ScriptedHead(self.model, scripts)


def script(tok, text: str, strengths: dict[int, float] | None = None) -> list[tuple[int, float]]:
    """(token, logit) of every token of ``text``; ``strengths`` overrides some positions."""
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    return [(t, (strengths or {}).get(i, SURE)) for i, t in enumerate(ids)]


PROMPTS = [[1, 30, 31, 32], [1, 40, 41], [1, 50, 51, 52, 53]]
THINK = r"<think>she smiles</think>\boxed{happy}"


def greedy(max_new_tokens: int = 60) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, eos_token_ids=[EOS])


def test_answer_confidence_table(tok):
    # '\\boxed' '{happy' ',' ' sad' '}': the content "happy, sad" overlaps tokens 1-3
    ids = tok.encode(r"\boxed{happy, sad}", add_special_tokens=False)
    pieces = [tok.decode([i]).encode() for i in ids]
    assert pieces == [b"\\boxed", b"{happy", b",", b" sad", b"}"]
    logprobs = [0.0, math.log(0.9), math.log(0.8), 0.0, math.log(0.1)]
    assert answer_confidence(pieces, logprobs) == pytest.approx((0.9 * 0.8 * 1.0) ** (1 / 3))
    cases = [
        ([b"\\boxed{", b"Let's analyze", b"}"], -1.0),  # declines
        ([b"\\boxed{", b" Let's analyze it", b"}"], -1.0),
        ([b"\\boxed{", b"}"], -1.0),  # empty content
        ([b"\\boxed{happy"], -1.0),  # not closed
        ([b"<think>", b"\\boxed{happy}"], -1.0),  # no box before <think>
        ([b"\\boxed{a}", b"\\boxed{b}"], -1.0),  # two boxes
        ([b"\\boxed{a{b", b"}"], -1.0),  # a nested brace closed first: no box yet
        ([b"\\boxed{", b"happy", b"}"], 0.5),  # only the content token counts
    ]
    for tokens, expected in cases:
        logprobs = [math.log(0.1)] * len(tokens)
        if expected > 0:
            logprobs[1] = math.log(expected)
        assert answer_confidence(tokens, logprobs) == pytest.approx(expected), tokens


def test_confident_unconfident_and_declined_in_one_batch(tok):
    # prompt 0: a1 content p ~ 1 -> exits after '\\boxed' '{happy' '}<' (3 tokens);
    # prompt 1: content tokens p = 0.9, 0.8, 1 -> confidence (0.72)^(1/3) = 0.896 < 0.97: thinks;
    # prompt 2: "Let's analyze" with p ~ 1 -> never exits.
    scripts = {
        tuple(PROMPTS[0]): script(tok, r"\boxed{happy}" + THINK),
        tuple(PROMPTS[1]): script(tok, r"\boxed{happy, sad}" + THINK, {1: logit_for(0.9), 2: logit_for(0.8)}),
        tuple(PROMPTS[2]): script(tok, r"\boxed{Let's analyze}" + THINK),
    }
    ids, mask = left_pad(PROMPTS)
    records = early_exit_generate(_ScriptedLM(scripts).eval(), tok, ids, mask, greedy())
    r0, r1, r2 = records
    assert (r0.exited, r0.a1, r0.a2, r0.answer) == (True, "happy", None, "happy")
    assert r0.response == r"\boxed{happy}<"  # the stop token '}<' carries one more character
    assert r0.confidence == pytest.approx(1.0, abs=1e-9)
    assert (r0.num_answer_tokens, r0.num_think_tokens, r0.num_tokens, r0.num_tokens_saved) == (3, 0, 3, None)
    assert r0.finished

    full1 = len(scripts[tuple(PROMPTS[1])]) + 1  # + EOS
    assert (r1.exited, r1.a1, r1.a2, r1.answer) == (False, "happy, sad", "happy", "happy")
    assert r1.response == r"\boxed{happy, sad}" + THINK
    assert r1.confidence == pytest.approx((0.9 * 0.8) ** (1 / 3), rel=1e-6)
    assert (r1.num_answer_tokens, r1.num_tokens, r1.num_tokens_saved) == (5, full1, 0)
    assert r1.num_answer_tokens + r1.num_think_tokens == full1 and r1.finished

    assert (r2.exited, r2.confidence, r2.a1, r2.answer) == (False, -1.0, "Let's analyze", "happy")

    # a lower threshold lets prompt 1 exit too; above 1 nobody exits
    lower = early_exit_generate(_ScriptedLM(scripts).eval(), tok, ids, mask, greedy(), threshold=0.89)
    assert [r.exited for r in lower] == [True, True, False] and lower[1].answer == "happy, sad"
    never = early_exit_generate(_ScriptedLM(scripts).eval(), tok, ids, mask, greedy(), threshold=1.01)
    assert [r.exited for r in never] == [False, False, False]
    assert [r.response for r in never] == [r"\boxed{happy}" + THINK, r1.response, r"\boxed{Let's analyze}" + THINK]


def test_decode_all_measures_tokens_saved_and_scores_a2(tok):
    scripts = {tuple(PROMPTS[0]): script(tok, r"\boxed{happy}" + THINK)}
    ids, mask = left_pad(PROMPTS[:1])
    (record,) = early_exit_generate(_ScriptedLM(scripts).eval(), tok, ids, mask, greedy(), decode_all=True)
    total = len(scripts[tuple(PROMPTS[0])]) + 1
    assert record.exited and record.answer == "happy" and record.a2 == "happy"
    assert (record.num_tokens, record.num_think_tokens, record.num_tokens_saved) == (3, total - 3, total - 3)
    assert record.response == r"\boxed{happy}" + THINK


def test_budget_eos_and_missing_box(tok):
    scripts = {
        tuple(PROMPTS[0]): script(tok, r"\boxed{happy, sad}" + THINK, {1: logit_for(0.5)}),  # thinks
        tuple(PROMPTS[1]): script(tok, "happy"),  # EOS in the a1 stage, no box
        tuple(PROMPTS[2]): script(tok, THINK),  # no early box: '}' only after </think>
    }
    ids, mask = left_pad(PROMPTS)
    cut, eos, late = early_exit_generate(_ScriptedLM(scripts).eval(), tok, ids, mask, greedy(max_new_tokens=8))
    assert not cut.exited and cut.num_tokens == 8 and not cut.finished  # cut at the whole-response cap
    assert (eos.exited, eos.a1, eos.a2, eos.answer, eos.finished) == (False, "", "", "", True)
    assert eos.num_answer_tokens == 2 and eos.num_think_tokens == 0  # 'happy' + EOS
    assert not late.exited and late.confidence == -1.0


def _record(a1, a2, exited, tokens, saved, confidence=0.5):
    return EarlyExitRecord(
        response="", a1=a1, a2=a2, answer=a1 if exited else a2, exited=exited, confidence=confidence,
        num_answer_tokens=3, num_think_tokens=0, num_tokens=tokens, num_tokens_saved=saved, finished=True,
    )  # fmt: skip


def test_summary_hand_computed():
    labels = [["happy"], ["sad"], ["happy"], ["angry"]]
    records = [
        _record("happy", None, True, 3, None, 0.99),  # exited, right
        _record("happy", "sad", False, 40, 0),  # thought and corrected itself
        _record("sad", "happy", False, 30, 0, -1.0),
        _record("angry", None, True, 4, None, 0.98),
    ]
    out = summarize_early_exit(records, labels)
    assert (out["num_samples"], out["num_exited"], out["early_exit_rate"]) == (4, 2, 0.5)
    assert out["mean_tokens"] == (3 + 40 + 30 + 4) / 4
    assert out["mean_confidence"] == pytest.approx((0.99 + 0.5 + 0.98) / 3)
    assert out["tokens_saved"] is None and out["tokens_saved_fraction"] is None  # not measured
    # happy/sad/angry are single words on their own categories: F1 is 1 for a match, 0 otherwise
    assert out["a1/f1"] == pytest.approx(2 / 4)  # rows 0 and 3
    assert out["num_a2"] == 2 and out["a2/f1"] == pytest.approx(1.0)  # rows 1 and 2
    assert out["answer/f1"] == pytest.approx(1.0)
    measured = [_record("happy", "happy", True, 3, 37), _record("sad", "sad", False, 40, 0)]
    out = summarize_early_exit(measured, [["happy"], ["sad"]])
    assert out["tokens_saved"] == 37 and out["tokens_saved_fraction"] == pytest.approx(37 / (43 + 37))
    with pytest.raises(ValueError, match="label lists"):
        summarize_early_exit(records, labels[:2])


def test_bad_arguments(tok):
    ids, mask = left_pad(PROMPTS[:1])
    model = _ScriptedLM({tuple(PROMPTS[0]): []})
    with pytest.raises(ValueError, match="threshold"):
        early_exit_generate(model, tok, ids, mask, greedy(), threshold=0.0)
    with pytest.raises(ValueError, match="answer_max_new_tokens"):
        early_exit_generate(model, tok, ids, mask, greedy(), answer_max_new_tokens=0)


# ---------------------------------------------------------------------------------------------
# Real tiny models: the two-stage decode equals one uninterrupted greedy decode


@pytest.mark.parametrize("name", ["qwen2", "thinker"])
def test_two_stages_equal_one_greedy_decode(tok, name):
    if name == "qwen2":
        model = tiny_qwen2(seed=0).eval()
        ids, mask = left_pad([[1, 30, 31, 32, 33, 34, 35], [1, 40, 41], [1, 50, 51, 52, 53]])
        media = None
    else:
        model = tiny_thinker(seed=0).eval()
        ids, mask, media = thinker_batch(model)
    config = SamplingConfig(max_new_tokens=24, temperature=0.0, eos_token_ids=[EOS], suppress_token_ids=list(range(3, 10)))
    single = generate(model, ids, mask, config, media=media)
    records = early_exit_generate(model, tok, ids, mask, config, threshold=2.0, answer_max_new_tokens=5, media=media)
    for b, record in enumerate(records):
        tokens = single.response_ids[b][single.response_mask[b]].tolist()
        assert record.num_answer_tokens + record.num_think_tokens == len(tokens)
        assert record.response == tok.decode(tokens, skip_special_tokens=True)
        assert record.finished == bool(single.finished[b])


def test_select_media_picks_and_orders_prompts(tok):
    model = tiny_thinker(seed=0).eval()
    ids, mask, media = thinker_batch(model)
    config = SamplingConfig(max_new_tokens=6, temperature=0.0, suppress_token_ids=list(range(3, 10)))
    both = generate(model, ids, mask, config, media=media)
    swapped = generate(model, ids.flip(0), mask.flip(0), config, media=select_media(media, 2, [1, 0]))
    torch.testing.assert_close(swapped.response_ids, both.response_ids.flip(0))
    alone = generate(model, ids[1:], mask[1:], config, media=select_media(media, 2, [1]))
    torch.testing.assert_close(alone.response_ids[0], both.response_ids[1])
