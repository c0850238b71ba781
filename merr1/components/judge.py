"""Chat backends for MME-Emotion's step extractor and judge, and a request cache so no request is paid twice.

A backend answers chat-completions requests (OpenAI message format: a system message, then a user
message whose content is a string or a list of ``text`` / ``image_url`` parts). Two backends,
chosen in the config (a YAML ``_component_``):

- ``OpenAIChatBackend``: any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint
  (OpenAI, Azure-style proxies, vLLM/SGLang servers, Google's OpenAI-compatible Gemini endpoint)
  over ``urllib`` (no new dependency). The API key is read from the environment variable named
  in the config at construction, sent only in the ``Authorization`` header, and never logged,
  written or part of ``describe()``. Requests run in a thread pool of ``max_concurrency``.
- ``LocalChatBackend``: a local HF checkpoint decoded greedily by merr1's own
  ``merr1.components.generation.generate``: a text-only Qwen2/Qwen2.5 LM (frames dropped), or the
  Qwen2.5-Omni Thinker with ``use_frames: true`` (each ``image_url`` frame becomes an image input
  of the Thinker). Prompts use ChatML, the Qwen family's chat format. Runs offline.

Failure semantics (the official scripts'): a request is tried up to ``max_attempts`` times,
``retry_delay_s`` apart (both per stage and task in ``merr1.components.mme_emotion``, e.g. 20
tries 2 s apart for most judge tasks, 10 for extraction), on ANY failure: connection error,
timeout, HTTP error status, a body that is not JSON or carries ``"error"``, a reply without
``choices[0].message.content``. When every try failed the reply has ``text=None`` and ``error``
set: the judge stage then records ``score = null`` (the sample is dropped by the metrics) and
the extraction stage the step ``"Error: <reason>"`` (kept and judged). A JSON ``null`` content is
a successful reply with ``text=None`` (the official scripts do not retry it).
Deviations, all documented in ``docs/mme_emotion.md``: ``backoff_factor`` can grow the delay
geometrically (1 = the official fixed delay) and a ``Retry-After`` header is honoured (capped by
``max_retry_delay_s``); HTTP 401, 403 and 404 stop the run at once (a wrong key, URL or model
name is a configuration error: the official loop retries them and then drops every sample);
every request has a finite ``timeout_s`` (the official ER-Lab/ER-Wild judge and three extraction
scripts set none); a reply without ``usage`` counts 0 tokens (the official judge retries it).

The cache (``RequestCache``): one JSON line per successful reply, keyed by the SHA-256 of the
full request (the backend's identity - endpoint and model, or the local model's config and
generation settings - plus the request body: messages with every image byte, and parameters).
Lines are appended, flushed and fsynced as each reply arrives, so a killed run loses at most the
requests in flight and a rerun sends only the requests without a line (``run_cached``). Failed
requests are not cached (a rerun tries them again); identical requests in one batch are sent once.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from merr1.components.metric_logging import atomic_write_text, fsync_dir
from merr1.components.mme_emotion import RetryPolicy

log = logging.getLogger(__name__)

_MAX_LOGGED_PROBLEMS = 5
# HTTP statuses that no retry can fix: the run stops (module docstring).
FATAL_HTTP_STATUSES = (401, 403, 404)
IMAGE_TOKEN = "<|IMAGE|>"  # the Thinker's image placeholder (one per merged 28x28 patch)


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions request.

    Attributes:
        messages: OpenAI-format messages (user content: a string or text/image_url parts).
        params: request parameters besides model and messages (e.g. ``{"temperature": 0.0}``).
        retry: the official retry rule of its stage and task.
        tag: what it is for (e.g. ``"judge/ER-Lab/<video_id>"``): logs and cache lines only.
    """

    messages: list[dict[str, Any]]
    params: dict[str, Any]
    retry: RetryPolicy
    tag: str = ""


@dataclass(frozen=True)
class ChatReply:
    """A backend's answer: ``text`` (None for a null content or a failure), token counts, and
    ``error`` (the last try's error when every try failed; None on success)."""

    text: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None


class JudgeConfigError(RuntimeError):
    """A failure no retry can fix (bad API key, URL or model name): the run stops."""


def request_key(identity: Mapping[str, Any], body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``{"backend": identity, "body": body}``."""
    text = json.dumps({"backend": identity, "body": body}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Cache


class RequestCache:
    """Successful replies on disk, one JSON line each: ``{"key", "tag", "text", "input_tokens",
    "output_tokens"}`` (module docstring). Malformed or torn lines are dropped with a warning and
    the file is rewritten with the kept lines.

    Args:
        path: the JSONL file (created with its folder on the first reply).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._entries: dict[str, ChatReply] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        kept, problems = [], []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                reply = ChatReply(entry["text"], int(entry["input_tokens"]), int(entry["output_tokens"]))
                key = entry["key"]
                if not isinstance(key, str) or not (reply.text is None or isinstance(reply.text, str)):
                    raise TypeError("bad field types")
            except (ValueError, KeyError, TypeError) as e:
                problems.append(f"line {lineno}: {type(e).__name__}")
                continue
            if key not in self._entries:
                self._entries[key] = reply
                kept.append(line)
        if problems:
            more = f" (+{len(problems) - _MAX_LOGGED_PROBLEMS} more)" if len(problems) > _MAX_LOGGED_PROBLEMS else ""
            log.warning("%s: dropped %d malformed line(s): %s%s", self.path, len(problems),
                        "; ".join(problems[:_MAX_LOGGED_PROBLEMS]), more)  # fmt: skip
        if problems or not text.endswith("\n"):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> ChatReply | None:
        return self._entries.get(key)

    def put(self, key: str, reply: ChatReply, tag: str = "") -> None:
        """Record a successful reply durably (append, flush, fsync)."""
        if reply.error is not None:
            raise ValueError("failed replies are not cached")
        line = {"key": key, "tag": tag, "text": reply.text, "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if new_file:
            fsync_dir(self.path.parent)
        self._entries[key] = reply


def run_cached(
    backend,
    requests: Sequence[Callable[[], ChatRequest]],
    cache: RequestCache,
    desc: str = "requests",
    progress: bool = True,
) -> list[ChatReply]:
    """Replies for ``requests`` in order: cached ones read back, the others sent through
    ``backend.complete`` (each cached as it arrives). Requests are factories (zero-argument
    callables) so that image-heavy bodies are built only when hashed or sent.

    Args:
        backend: an ``OpenAIChatBackend`` or ``LocalChatBackend``.
        requests: request factories.
        cache: where replies are looked up and stored.
        desc: progress-bar label.
        progress: show a tqdm bar (remaining requests, rate, ETA).
    """
    from merr1.components.metric_logging import progress_bar

    identity = backend.identity()
    keys, tags = [], []
    for make in requests:
        request = make()
        keys.append(request_key(identity, backend.body(request)))
        tags.append(request.tag)
    replies: list[ChatReply | None] = [cache.get(k) for k in keys]
    first_index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if replies[i] is None:
            first_index.setdefault(key, i)
    todo = list(first_index.values())
    num_cached = sum(r is not None for r in replies)
    if num_cached or len(todo) + num_cached < len(keys):
        log.info("%s: %d of %d replies cached, %d duplicate requests, sending %d", desc, num_cached, len(keys),
                 len(keys) - num_cached - len(todo), len(todo))  # fmt: skip
    bar = progress_bar(len(todo), desc, disable=not progress or not todo)  # throttled outside a terminal
    by_key: dict[str, ChatReply] = {}
    replies_in = backend.complete([requests[i] for i in todo]) if todo else ()  # all cached: no model to load
    try:
        for j, reply in replies_in:
            key = keys[todo[j]]
            by_key[key] = reply
            if reply.error is None:
                cache.put(key, reply, tag=tags[todo[j]])
            bar.update(1)
    finally:
        bar.close()
    out = [r if r is not None else by_key[k] for r, k in zip(replies, keys)]
    num_failed = sum(r.error is not None for r in by_key.values())
    if num_failed:
        log.warning("%s: %d of %d requests failed every attempt", desc, num_failed, len(todo))
    return out


# ---------------------------------------------------------------------------------------------
# HTTP (OpenAI-compatible chat completions)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after_seconds(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_detail(error: urllib.error.HTTPError) -> str:
    # The start of an error response's body (the server's message), if it can be read.
    try:
        return error.read()[:200].decode("utf-8", "replace") if error.fp is not None else ""
    except (OSError, http.client.HTTPException):
        return ""


def parse_chat_response(raw: bytes) -> ChatReply:
    """A chat-completions response body -> reply; ``_Retryable`` for anything the official loop
    retries (not JSON, an ``"error"`` object, no ``choices[0].message.content`` key)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _Retryable(f"response is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise _Retryable(f"response is not a JSON object: {str(data)[:80]}")
    if "error" in data:
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise _Retryable(f"API error: {message}")
    try:
        text = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Retryable(f"response has no choices[0].message.content: {str(data)[:120]}") from None
    if text is not None and not isinstance(text, str):
        raise _Retryable(f"message content is not a string: {type(text).__name__}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatReply(text, _token_count(usage.get("prompt_tokens")), _token_count(usage.get("completion_tokens")))


def _token_count(value: Any) -> int:
    # A missing or malformed usage count is 0 (the reply itself is fine).
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class OpenAIChatBackend:
    """Any OpenAI-compatible chat-completions endpoint over ``urllib`` (module docstring).

    Args:
        base_url: API root, e.g. ``https://api.openai.com/v1`` (``/chat/completions`` is appended).
        model: model name sent in every request (official: ``gpt-4o-2024-11-20`` judge,
            ``gpt-4.1-2025-04-14`` extractor).
        api_key_env: name of the environment variable holding the API key; None sends no
            ``Authorization`` header (local servers).
        max_concurrency: requests in flight at once.
        timeout_s: socket timeout of one try (connect and each read), seconds.
        max_attempts: tries per request; None = the official number of the stage and task.
        retry_delay_s: seconds before a retry; None = the official delay of the stage and task.
        backoff_factor: each further retry waits this factor longer (1 = fixed, official).
        max_retry_delay_s: cap of any single wait (also of a server's ``Retry-After``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_attempts: int | None = None,
        retry_delay_s: float | None = None,
        backoff_factor: float = 1.0,
        max_retry_delay_s: float = 60.0,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty model name, got {model!r}")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        if not timeout_s or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
            raise ValueError(f"max_attempts must be a positive integer or null (official), got {max_attempts!r}")
        if (retry_delay_s is not None and retry_delay_s < 0) or backoff_factor < 1 or max_retry_delay_s < 0:
            raise ValueError("need retry_delay_s >= 0 (or null), backoff_factor >= 1 and max_retry_delay_s >= 0")
        self._api_key = None
        if api_key_env is not None:
            self._api_key = os.environ.get(api_key_env)
            if not self._api_key:
                raise ValueError(f"the environment variable {api_key_env} (api_key_env) is not set or empty: export "
                                 f"it, or set api_key_env: null for a server without authentication")  # fmt: skip
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = float(timeout_s)
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self.backoff_factor = float(backoff_factor)
        self.max_retry_delay_s = float(max_retry_delay_s)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def identity(self) -> dict[str, Any]:
        """What besides the body decides a reply (part of the cache key; no secret)."""
        return {"backend": "openai", "url": self.url}

    def describe(self) -> dict[str, Any]:
        """Settings for the report (no secret)."""
        return {"backend": "openai", "base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env,
                "max_concurrency": self.max_concurrency, "timeout_s": self.timeout_s,
                "max_attempts": self.max_attempts or "official", "retry_delay_s": self.retry_delay_s,
                "backoff_factor": self.backoff_factor}  # fmt: skip

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent: ``{"model", "messages", **params}``."""
        return {"model": self.model, "messages": request.messages, **request.params}

    def _post(self, data: bytes) -> ChatReply:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            if e.code in FATAL_HTTP_STATUSES:
                raise JudgeConfigError(f"{self.url} answered HTTP {e.code} ({e.reason}): check base_url, model "
                                       f"and the key in ${self.api_key_env}. {_error_detail(e)}") from None  # fmt: skip
            raise _Retryable(f"HTTP {e.code} {e.reason}: {_error_detail(e)}", _retry_after_seconds(e.headers)) from None
        # Refused or reset connections, timeouts, bodies cut short (IncompleteRead), bad status lines.
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        return parse_chat_response(raw)

    def send(self, request: ChatRequest, sleep: Callable[[float], None] = time.sleep) -> ChatReply:
        """One request with the retry rule; a reply with ``error`` set when every try failed."""
        attempts = self.max_attempts or request.retry.max_attempts
        delay = request.retry.delay_s if self.retry_delay_s is None else self.retry_delay_s
        data = json.dumps(self.body(request), ensure_ascii=False).encode("utf-8")
        errors = []
        for attempt in range(attempts):
            try:
                return self._post(data)
            except _Retryable as e:
                errors.append(str(e))
                log.debug("%s: attempt %d failed: %s", request.tag, attempt + 1, e)
                if attempt < attempts - 1:
                    wait_s = delay * self.backoff_factor**attempt
                    if e.retry_after is not None:
                        wait_s = max(wait_s, e.retry_after)
                    sleep(min(wait_s, self.max_retry_delay_s))
        log.warning("%s: all %d attempts failed. Errors: %s", request.tag, attempts, ", ".join(errors))
        return ChatReply(None, error=errors[-1])

    def complete(self, requests: Sequence[Callable[[], ChatRequest]]) -> Iterator[tuple[int, ChatReply]]:
        """(index, reply) for every request factory, as replies arrive (``max_concurrency`` at once)."""
        if not requests:
            return
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="chat")
        pending: dict[Future, int] = {}
        queue = iter(range(len(requests)))
        try:
            for i in queue:  # fill the pool, then one new request per finished one
                pending[pool.submit(lambda make=requests[i]: self.send(make()))] = i
                if len(pending) == self.max_concurrency:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    reply = future.result()  # JudgeConfigError propagates and stops the run
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(lambda make=requests[nxt]: self.send(make()))] = nxt
                    yield index, reply
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Nothing to release (same interface as ``LocalChatBackend``)."""


# ---------------------------------------------------------------------------------------------
# Local checkpoint (merr1's own generation)


def build_component(spec: Mapping[str, Any], **extra: Any) -> Any:
    """Call ``spec["_component_"]`` (a dotted path) with the spec's other keys and ``extra``:
    how a YAML ``_component_`` block is built, for blocks nested in another component's config."""
    if not isinstance(spec, Mapping) or "_component_" not in spec:
        raise ValueError(f"expected a mapping with a _component_ (dotted path), got {spec!r}")
    module_name, _, attr = str(spec["_component_"]).rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"cannot import _component_ {spec['_component_']!r}: {e}") from None
    kwargs = {k: v for k, v in spec.items() if k != "_component_"}
    return target(**kwargs, **extra)


def _plain(value: Any) -> Any:
    # OmegaConf containers (from the YAML) -> plain dicts/lists for hashing and building.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class LocalChatBackend:
    """A local checkpoint as extractor or judge, greedy, through ``generation.generate``.

    The model is built on the first request (so the recipe can free the model under test first)
    and kept until ``close()``. Every request must ask for temperature 0 (the protocol's).

    Args:
        model: model ``_component_`` block (e.g. ``merr1.components.models.qwen2_5_omni_thinker``
            with ``checkpoint_dir``, or ``qwen2_causal_lm``, or a tiny model); built with
            ``dtype`` and ``device``.
        tokenizer: tokenizer ``_component_`` block (e.g. ``merr1.components.models.checkpoint_tokenizer``).
        dtype: model dtype (``bf16``, ``fp32``).
        device: ``auto`` (CUDA if available), ``cuda`` or ``cpu``.
        max_new_tokens: reply length cap (official: none; a step list or score line is short).
        batch_size: requests per ``generate`` call (left-padded).
        use_frames: give the ``image_url`` frames to the model as images (needs a Thinker);
            False drops them (text-only judge; the prompt still mentions the frames).
        frame_min_pixels: smallest frame area after resizing (Qwen2.5-VL image ``min_pixels``).
        frame_max_pixels: largest frame area after resizing (bounds image tokens per frame:
            ``max_pixels / 28**2``).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        tokenizer: Mapping[str, Any],
        *,
        dtype: str = "bf16",
        device: str = "auto",
        max_new_tokens: int = 1024,
        batch_size: int = 4,
        use_frames: bool = False,
        frame_min_pixels: int = 4 * 28 * 28,
        frame_max_pixels: int = 768 * 28 * 28,
    ):
        if device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be 'auto', 'cuda' or 'cpu', got {device!r}")
        for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < frame_min_pixels <= frame_max_pixels:
            raise ValueError(f"need 0 < frame_min_pixels <= frame_max_pixels, got {frame_min_pixels}, "
                             f"{frame_max_pixels}")  # fmt: skip
        self.model_spec, self.tokenizer_spec = _plain(model), _plain(tokenizer)
        for what, spec in (("model", self.model_spec), ("tokenizer", self.tokenizer_spec)):
            if not isinstance(spec, dict) or "_component_" not in spec:
                raise ValueError(f"LocalChatBackend {what} must be a _component_ block, got {spec!r}")
        self.dtype, self.device = dtype, device
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.use_frames = bool(use_frames)
        self.frame_min_pixels, self.frame_max_pixels = int(frame_min_pixels), int(frame_max_pixels)
        self._model = self._tokenizer = self._sampling = None

    def identity(self) -> dict[str, Any]:
        """What besides the messages decides a reply (the device is left out: same weights, same
        greedy decoding up to float round-off)."""
        pixels = [self.frame_min_pixels, self.frame_max_pixels] if self.use_frames else None
        return {"backend": "local", "model": self.model_spec, "tokenizer": self.tokenizer_spec, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "use_frames": self.use_frames,
                "frame_pixels": pixels}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {**self.identity(), "device": self.device, "batch_size": self.batch_size}

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The request as hashed: messages and parameters (temperature must be 0)."""
        if request.params.get("temperature", 0.0) != 0 or request.params.get("n", 1) != 1:
            raise ValueError(f"LocalChatBackend decodes greedily with n=1; request asks {request.params}")
        return {"messages": request.messages, **request.params}

    def _load(self):
        if self._model is None:
            import torch

            from merr1.components.generation import SamplingConfig, media_token_ids
            from merr1.components.models import is_thinker
            from merr1.components.tokenizer import stop_token_ids

            device = self.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            log.info("local chat backend: building %s on %s", self.model_spec["_component_"], device)
            self._tokenizer = build_component(self.tokenizer_spec)
            model = build_component(self.model_spec, dtype=self.dtype, device=device)
            if self.use_frames and not is_thinker(model):
                raise ValueError(
                    "use_frames needs a Qwen2.5-Omni Thinker; this model is text-only (set use_frames: false)"
                )
            self._model = model.eval().requires_grad_(False)
            tok = self._tokenizer
            self._sampling = SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=0.0,
                                            eos_token_ids=stop_token_ids(tok), pad_token_id=tok.pad_token_id,
                                            suppress_token_ids=media_token_ids(model.config))  # fmt: skip
        return self._model, self._tokenizer

    def _encode(self, request: ChatRequest):
        """(prompt ids [P], image kwargs or {}) of one request in ChatML."""
        import torch

        from merr1.components.data.prompts import IM_END, IM_START, VISION_BOS, VISION_EOS, encode_text

        model, tokenizer = self._model, self._tokenizer
        text, pixels, grids = "", [], []
        for message in request.messages:
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            body = ""
            for part in parts:
                if part["type"] == "text":
                    body += part["text"]
                elif part["type"] == "image_url" and self.use_frames:
                    patches, grid = self._image(part["image_url"]["url"])
                    pixels.append(patches)
                    grids.append(grid)
                    merge = model.config.vision_config.spatial_merge_size
                    body += VISION_BOS + IMAGE_TOKEN * (grid[0] * grid[1] * grid[2] // merge**2) + VISION_EOS
            text += f"{IM_START}{message['role']}\n{body}{IM_END}\n"
        text += f"{IM_START}assistant\n"
        ids = torch.tensor(encode_text(tokenizer, text), dtype=torch.long)
        media = {}
        if pixels:
            media = {"pixel_values": torch.cat(pixels), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}
        return ids, media

    def _image(self, url: str):
        """A frame's Thinker image input: (patches [h*w, C*2*14*14], grid (1, h, w))."""
        from merr1.components.data.frames import decode_data_url, decode_png
        from merr1.components.data.media import MediaConfig, patchify_video, preprocess_frames

        vision = self._model.config.vision_config
        config = MediaConfig(min_pixels=self.frame_min_pixels, max_pixels=self.frame_max_pixels,
                             max_video_tokens=None, patch_size=vision.patch_size,
                             temporal_patch_size=vision.temporal_patch_size,
                             merge_size=vision.spatial_merge_size)  # fmt: skip
        frame = decode_png(decode_data_url(url))  # [H, W, 3] uint8
        pixels = preprocess_frames(frame[None], config)  # [1, 3, H', W']
        patches, grid = patchify_video(pixels, config.patch_size, config.temporal_patch_size, config.merge_size)
        return patches.to(self._model.dtype), list(grid)

    def complete(self, requests: Sequence[Callable[[], ChatRequest]]) -> Iterator[tuple[int, ChatReply]]:
        """(index, reply) per request factory, ``batch_size`` requests per greedy ``generate`` call."""
        import torch

        from merr1.components.data.collate import pad_sequences
        from merr1.components.generation import generate

        model, tokenizer = self._load()
        device = next(model.parameters()).device
        for start in range(0, len(requests), self.batch_size):
            encoded = [self._encode(make()) for make in requests[start : start + self.batch_size]]
            ids = pad_sequences([e[0] for e in encoded], tokenizer.pad_token_id, "left").to(device)  # [B, P]
            mask = pad_sequences([torch.ones_like(e[0]) for e in encoded], 0, "left").to(device)  # [B, P]
            with_images = [e[1] for e in encoded if e[1]]
            media = {key: torch.cat([m[key] for m in with_images]).to(device)
                     for key in ("pixel_values", "image_grid_thw")} if with_images else {}  # fmt: skip
            with torch.inference_mode():
                rollouts = generate(model, ids, mask, self._sampling, media=media or None)
            response_ids, response_mask = rollouts.response_ids.cpu(), rollouts.response_mask.cpu()
            for b, (prompt, _) in enumerate(encoded):
                text = tokenizer.decode(response_ids[b][response_mask[b]], skip_special_tokens=True)
                yield start + b, ChatReply(text, len(prompt), int(response_mask[b].sum()))

    def close(self) -> None:
        """Free the model (and the CUDA cache)."""
        import torch

        self._model = self._tokenizer = self._sampling = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
