"""A real chat-completions HTTP server on 127.0.0.1 for the judge and recipe tests.

Behaviour is scripted: ``script`` is a list of actions consumed one per request (then
``default`` answers), or ``responder(body) -> reply text`` computes the reply from the request.
Actions: ``("reply", text)``, ``("status", code)``, ``("slow", seconds, text)``, ``("raw", bytes)``
(a 200 with that body), ``("partial",)`` (a body cut short), ``("drop",)`` (close the connection
without a response), ``("hang",)`` (never answer until ``release()``), ``("null",)`` (content null). Every request is recorded
(``requests``: parsed body and headers); ``answered`` lists the bodies that got a 200 reply.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def completion(text: str | None, prompt_tokens: int = 11, completion_tokens: int = 5) -> bytes:
    return json.dumps({
        "id": "x", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }).encode()  # fmt: skip


class ChatServer:
    """Start with ``with ChatServer(...) as server:``; ``server.base_url`` ends in ``/v1``."""

    def __init__(self, script: list[tuple] | None = None, default: tuple = ("reply", "ok"),
                 responder: Callable[[dict], str] | None = None):  # fmt: skip
        self.script = list(script or [])
        self.default = default
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.answered: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with server._lock:
                    server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    action = server.script.pop(0) if server.script else server.default
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server._act(self, action, body)
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _send(self, handler, code: int, payload: bytes, body: dict | None = None) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
        handler.wfile.flush()
        if code == 200 and body is not None:
            with self._lock:
                self.answered.append(body)

    def _act(self, handler, action: tuple, body: dict) -> None:
        kind = action[0]
        if kind == "reply":
            text = self.responder(body) if self.responder is not None else action[1]
            self._send(handler, 200, completion(text), body)
        elif kind == "null":
            self._send(handler, 200, completion(None), body)
        elif kind == "status":
            self._send(handler, action[1], json.dumps({"error": {"message": f"status {action[1]}"}}).encode())
        elif kind == "slow":
            time.sleep(action[1])
            try:
                self._send(handler, 200, completion(action[2]), body)
            except OSError:  # the client gave up
                pass
        elif kind == "raw":
            self._send(handler, 200, action[1])
        elif kind == "partial":  # announce a longer body than sent, then close
            handler.send_response(200)
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.write(b'{"choices": ')
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.close()
        elif kind == "drop":
            handler.close_connection = True
            handler.connection.close()
        elif kind == "hang":
            self._release.wait()
            handler.close_connection = True
        else:
            raise ValueError(f"unknown action {action!r}")

    def release(self) -> None:
        """Let hanging requests end (without an answer)."""
        self._release.set()

    def __enter__(self) -> "ChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
