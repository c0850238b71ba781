"""merr1.components.judge: the HTTP backend against a real local chat-completions server, the
request cache (a kill mid-run, then a resume that repeats no answered request), the local
checkpoint backend with the tiny models."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from chat_server import ChatServer, body_key

from merr1.components import mme_emotion
from merr1.components.data.frames import encode_png, png_data_url
from merr1.components.data.prompts import encode_text
from merr1.components.generation import SamplingConfig, generate
from merr1.components.judge import (
    ChatReply,
    ChatRequest,
    JudgeConfigError,
    LocalChatBackend,
    OpenAIChatBackend,
    RequestCache,
    parse_chat_response,
    request_key,
    run_cached,
)
from merr1.components.mme_emotion import RetryPolicy
from merr1.components.models import tiny_qwen2
from merr1.components.tokenizer import stop_token_ids, tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[3]
FAST_RETRY = RetryPolicy(max_attempts=3, delay_s=0.0, timeout_s=None)
KEY_ENV = "MERR1_TEST_JUDGE_KEY"
SECRET = "sk-test-secret-123"


def request(text="rate this", retry=FAST_RETRY, tag="t"):
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]
    return ChatRequest(messages, {"n": 1, "temperature": 0.0}, retry, tag)


def backend(server, **kwargs):
    kwargs.setdefault("api_key_env", None)
    return OpenAIChatBackend(server.base_url, "judge-model", **kwargs)


# ---------------------------------------------------------------------------------------------
# HTTP backend


def test_scripted_reply_body_headers_and_secret(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with ChatServer([("reply", "<score>Step 1: 1/1</score>")]) as server:
        b = backend(server, api_key_env=KEY_ENV)
        reply = b.send(request())
    assert reply == ChatReply("<score>Step 1: 1/1</score>", 11, 5, None)
    (sent,) = server.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {"model": "judge-model", "messages": request().messages, "n": 1, "temperature": 0.0}
    assert sent["headers"]["Authorization"] == f"Bearer {SECRET}"
    for text in (repr(b), json.dumps(b.describe()), json.dumps(b.identity())):
        assert SECRET not in text


def test_missing_api_key_names_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=KEY_ENV):
        OpenAIChatBackend("http://127.0.0.1:1/v1", "m", api_key_env=KEY_ENV)


@pytest.mark.parametrize(
    "failure",
    [
        ("status", 500),
        ("status", 429),
        ("raw", b"{not json"),
        ("raw", json.dumps({"error": {"message": "overloaded"}}).encode()),
        ("raw", json.dumps({"choices": []}).encode()),
        ("drop",),
        ("partial",),
    ],
    ids=["http500", "http429", "malformed-json", "error-object", "no-choices", "dropped-connection", "cut-body"],
)
def test_failures_are_retried_then_succeed(failure):
    with ChatServer([failure, ("reply", "fine")]) as server:
        reply = backend(server).send(request())
    assert reply.text == "fine" and reply.error is None
    assert len(server.requests) == 2


def test_slow_reply_times_out_and_is_retried():
    with ChatServer([("slow", 1.0, "late"), ("reply", "on time")]) as server:
        start = time.perf_counter()
        reply = backend(server, timeout_s=0.2).send(request())
    assert reply.text == "on time"
    assert len(server.requests) == 2 and time.perf_counter() - start < 1.0


def test_every_attempt_failing_gives_an_error_reply():
    # Official semantics: after the last try the reply is empty (judge: score null, dropped).
    with ChatServer(default=("status", 503)) as server:
        reply = backend(server).send(request(retry=RetryPolicy(4, 0.0, None)))
    assert reply.text is None and "HTTP 503" in reply.error
    assert len(server.requests) == 4


def test_config_max_attempts_and_delays_override_the_official_policy():
    sleeps = []
    with ChatServer(default=("status", 500)) as server:
        b = backend(server, max_attempts=3, retry_delay_s=0.5, backoff_factor=2.0, max_retry_delay_s=1.5)
        b.send(request(retry=RetryPolicy(20, 2.0, None)), sleep=sleeps.append)
    assert len(server.requests) == 3
    assert sleeps == [0.5, 1.0]  # 0.5 * 2**k, capped at 1.5; no sleep after the last try


def test_official_default_delays_are_fixed():
    sleeps = []
    with ChatServer(default=("status", 500)) as server:
        backend(server).send(request(retry=mme_emotion.JUDGE_RETRY["FG-ER"]), sleep=sleeps.append)
    assert len(server.requests) == 5 and sleeps == [2.0] * 4


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_and_not_found_stop_at_once(status):
    with ChatServer(default=("status", status)) as server:
        with pytest.raises(JudgeConfigError, match=f"HTTP {status}"):
            list(backend(server, max_concurrency=1).complete([request] * 3))
    assert len(server.requests) == 1  # no retry, no further request


def test_null_content_is_a_successful_empty_reply():
    with ChatServer([("null",)]) as server:
        reply = backend(server).send(request())
    assert reply == ChatReply(None, 11, 5, None) and len(server.requests) == 1


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"choices": [{"message": {"content": "x"}}]}, ChatReply("x", 0, 0)),  # no usage: 0 tokens
        ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
         ChatReply("x", 3, 4)),
        ({"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "3", "completion_tokens": None}},
         ChatReply("x", 0, 0)),  # malformed counts: 0, the reply stands
    ],
)  # fmt: skip
def test_parse_chat_response(body, expected):
    assert parse_chat_response(json.dumps(body).encode()) == expected


def test_concurrency_is_bounded_and_every_reply_arrives():
    with ChatServer(default=("slow", 0.15, "x")) as server:
        b = backend(server, max_concurrency=2)
        replies = dict(b.complete([lambda i=i: request(f"q{i}") for i in range(6)]))
    assert sorted(replies) == list(range(6)) and all(r.text == "x" for r in replies.values())
    assert server.max_in_flight == 2


# ---------------------------------------------------------------------------------------------
# Cache


def test_cache_round_trip_and_torn_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = RequestCache(path)
    cache.put("k1", ChatReply("a", 1, 2), tag="t1")
    cache.put("k2", ChatReply(None, 3, 4))
    with pytest.raises(ValueError):
        cache.put("k3", ChatReply(None, error="boom"))
    with path.open("a") as f:
        f.write('{"key": "k3", "text": "torn')  # a write cut by a kill
    again = RequestCache(path)
    assert len(again) == 2 and again.get("k1") == ChatReply("a", 1, 2) and again.get("k2") == ChatReply(None, 3, 4)
    assert path.read_text().count("\n") == 2  # rewritten without the torn line


def test_request_key_covers_backend_and_body():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    base = request_key({"backend": "openai", "url": "u"}, body)
    assert base == request_key({"url": "u", "backend": "openai"}, dict(reversed(list(body.items()))))
    assert base != request_key({"backend": "openai", "url": "v"}, body)
    assert base != request_key({"backend": "openai", "url": "u"}, {**body, "model": "m2"})


def test_run_cached_sends_each_distinct_request_once_and_retries_failures_on_rerun(tmp_path):
    cache = RequestCache(tmp_path / "c.jsonl")
    makes = [lambda t=t: request(t) for t in ("a", "b", "a", "c")]
    with ChatServer([("reply", "1"), ("reply", "2"), ("status", 500), ("status", 500), ("status", 500)]) as server:
        b = backend(server, max_concurrency=1)
        replies = run_cached(b, makes, cache, progress=False)
        assert [r.text for r in replies] == ["1", "2", "1", None]  # "c" failed its 3 tries
        assert len(server.requests) == 5
        server.default = ("reply", "3")
        again = run_cached(b, makes, RequestCache(tmp_path / "c.jsonl"), progress=False)
    assert [r.text for r in again] == ["1", "2", "1", "3"]
    assert len(server.requests) == 6  # only the failed request was sent again


_KILL_SCRIPT = """
import sys
from merr1.components.judge import ChatRequest, OpenAIChatBackend, RequestCache, run_cached
from merr1.components.mme_emotion import RetryPolicy
backend = OpenAIChatBackend(sys.argv[1], "judge-model", api_key_env=None, max_concurrency=2)
makes = [lambda i=i: ChatRequest([{"role": "user", "content": f"sample {i}"}], {"n": 1, "temperature": 0.0},
                                 RetryPolicy(3, 0.0, None), tag=f"s{i}") for i in range(int(sys.argv[3]))]
run_cached(backend, makes, RequestCache(sys.argv[2]), progress=False)
"""


def test_kill_mid_judging_then_resume_repeats_no_answered_request(tmp_path):
    num, num_before_kill = 8, 3
    cache_path = tmp_path / "cache.jsonl"
    script = tmp_path / "judge_run.py"
    script.write_text(_KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    with ChatServer([("reply", "done")] * num_before_kill, default=("hang",)) as server:
        proc = subprocess.Popen([sys.executable, str(script), server.base_url, str(cache_path), str(num)], env=env)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                lines = cache_path.read_text().count("\n") if cache_path.exists() else 0
                if lines == num_before_kill and server.in_flight == 2:
                    break
                time.sleep(0.05)
            assert lines == num_before_kill, "the run did not reach the kill point"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        server.script, server.default = [], ("reply", "done")
        received_before = len(server.requests)
        replies = run_cached(OpenAIChatBackend(server.base_url, "judge-model", api_key_env=None, max_concurrency=2),
                             [lambda i=i: ChatRequest([{"role": "user", "content": f"sample {i}"}],
                                                      {"n": 1, "temperature": 0.0}, FAST_RETRY, f"s{i}")
                              for i in range(num)], RequestCache(cache_path), progress=False)  # fmt: skip
    assert [r.text for r in replies] == ["done"] * num
    answered = [body_key(b) for b in server.answered]
    assert len(answered) == num == len(set(answered))  # every request answered (paid) exactly once
    assert received_before == num_before_kill + 2  # the 2 hanging at the kill were never answered
    assert len(server.requests) - received_before == num - num_before_kill


# ---------------------------------------------------------------------------------------------
# Local checkpoint backend


TINY_QWEN2 = {"_component_": "merr1.components.models.tiny_qwen2", "seed": 3}
TINY_THINKER = {"_component_": "merr1.components.models.tiny_thinker", "seed": 4}
TINY_TOKENIZER = {"_component_": "merr1.components.models.checkpoint_tokenizer", "checkpoint_dir": None}


def local(model=TINY_QWEN2, **kwargs):
    kwargs = {"dtype": "fp32", "device": "cpu", "max_new_tokens": 6, **kwargs}
    return LocalChatBackend(model, TINY_TOKENIZER, **kwargs)


def test_local_text_judge_equals_greedy_generate_on_the_chatml_prompt(tmp_path):
    requests = [request("happy steps"), request("a much longer model prediction to rate")]
    replies = dict(enumerate(run_cached(local(batch_size=2), [lambda r=r: r for r in requests],
                                        RequestCache(tmp_path / "c.jsonl"), progress=False)))  # fmt: skip
    again = local()
    assert run_cached(again, [lambda r=r: r for r in requests], RequestCache(tmp_path / "c.jsonl"), progress=False) == [
        replies[0], replies[1]]
    assert again._model is None  # every reply cached: the model is never built
    tok = tiny_tokenizer()
    model = tiny_qwen2(seed=3).eval()
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.0, eos_token_ids=stop_token_ids(tok),
                              pad_token_id=tok.pad_token_id)  # fmt: skip
    for i, r in enumerate(requests):
        user = r.messages[1]["content"]
        prompt = f"<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
        ids = torch.tensor([encode_text(tok, prompt)])
        out = generate(model, ids, torch.ones_like(ids), sampling)
        expected = tok.decode(out.response_ids[0][out.response_mask[0]], skip_special_tokens=True)
        assert replies[i] == ChatReply(expected, ids.shape[1], int(out.response_mask[0].sum()))


def test_local_thinker_judge_takes_the_frames_as_images():
    frames = [torch.full((28, 56, 3), 40 * i, dtype=torch.uint8) for i in range(3)]
    messages = mme_emotion.judge_messages("ER-Lab", "calm voice", "Neutral", "<step>Step 1: neutral</step>",
                                          [png_data_url(encode_png(f)) for f in frames])  # fmt: skip
    judge_request = ChatRequest(messages, mme_emotion.JUDGE_PARAMS, FAST_RETRY)
    with_frames = local(TINY_THINKER, use_frames=True, frame_min_pixels=28 * 56, frame_max_pixels=28 * 56)
    without = local(TINY_THINKER)
    with_frames._load()
    without._load()
    ids, media = with_frames._encode(judge_request)
    ids_text, media_text = without._encode(judge_request)
    assert media["image_grid_thw"].tolist() == [[1, 2, 4]] * 3  # 28x56 -> 2x4 patches, 2 tokens each
    assert media["pixel_values"].shape == (3 * 8, 3 * 2 * 14 * 14)
    assert int((ids == 6).sum()) == 3 * 2 and media_text == {}  # <|IMAGE|> is id 6 in the tiny tokenizer
    assert len(ids) == len(ids_text) + 3 * (2 + 2)  # + bos, 2 image tokens, eos per frame
    (index, reply), = with_frames.complete([lambda: judge_request])
    assert index == 0 and isinstance(reply.text, str) and reply.input_tokens == len(ids)


def test_local_backend_refuses_bad_settings():
    with pytest.raises(ValueError, match="use_frames needs"):
        local(use_frames=True)._load()
    with pytest.raises(ValueError, match="greedily"):
        local().body(ChatRequest([], {"temperature": 0.7}, FAST_RETRY))
    with pytest.raises(ValueError, match="_component_"):
        LocalChatBackend({"checkpoint_dir": "x"}, TINY_TOKENIZER)
