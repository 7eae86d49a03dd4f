"""A real HTTP server on 127.0.0.1 that speaks ``POST /v1/chat/completions``, with fault injection.

Each request takes the next scripted fault from ``faults``, else ``fault_for(body)`` when that gives one (a
fault chosen by the request, e.g. a persistent 500 for some images; settable while serving), else
``default``: ``ok``; ``500`` (any
status code); ``429:<s>`` (429 with ``Retry-After: <s>``); ``timeout:<s>`` (sleep, then answer: the
client should have given up); ``invalid_json`` (200 with a body that is not JSON); ``bad_reply`` (200, a
valid completion whose message is not a valid description); ``prose`` (the description wrapped in a
code fence and chatter). Requests (path, headers, JSON body, start/end times, the fault served) are recorded
for assertions, with the most requests ever in flight at once (``peak_in_flight``).

Usage::

    with ChatServer(faults=["500", "429:1"]) as server:
        client = OpenAICaptioner({"base_url": server.base_url, ...})
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_DESCRIPTION = {
    "light_source": "window light",
    "direction": "left",
    "color_temperature": "warm",
    "hardness": "soft",
    "setting": "indoor",
    "phrase": "warm window light from the left, indoor",
}


def completion(content: str, model: str = "test-model") -> dict[str, Any]:
    """A chat-completions response body carrying ``content``."""
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip


class ChatServer:
    """Threaded loopback chat-completions server; ``reply(body) -> content`` makes the normal answers."""

    def __init__(
        self,
        faults: Iterable[str] = (),
        default: str = "ok",
        reply: Callable[[dict[str, Any]], str] | None = None,
        fault_for: Callable[[dict[str, Any]], str | None] | None = None,
    ):
        self.faults = deque(faults)
        self.default = default
        self.reply = reply or (lambda body: json.dumps(DEFAULT_DESCRIPTION))
        self.fault_for = fault_for
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def n_requests(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_fault(self, record: dict[str, Any]) -> str:
        with self._lock:
            self.requests.append(record)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            chosen = self.fault_for(record["body"]) if self.fault_for else None
            record["fault"] = self.faults.popleft() if self.faults else (chosen or self.default)
            return record["fault"]

    def _done(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.in_flight -= 1
            record["end"] = time.monotonic()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}')
                    return
                body = json.loads(raw or b"{}")
                record = {"path": self.path, "headers": dict(self.headers), "body": body, "start": time.monotonic()}
                try:
                    self._respond(server._next_fault(record), body)
                finally:
                    server._done(record)

            def _respond(self, fault: str, body: dict[str, Any]) -> None:
                kind, _, arg = fault.partition(":")
                if kind == "timeout":
                    time.sleep(float(arg or 5))
                    kind = "ok"
                if kind == "ok":
                    self._send(
                        200, json.dumps(completion(server.reply(body), body.get("model", ""))).encode()
                    )
                elif kind == "429":
                    self._send(429, b'{"error": "rate limited"}', {"Retry-After": arg or "1"})
                elif kind == "invalid_json":
                    self._send(200, b"<html>upstream proxy error</html>")
                elif kind == "bad_reply":
                    self._send(200, json.dumps(completion("Sorry, I cannot help with that.")).encode())
                elif kind == "prose":
                    text = f"Sure! Here it is:\n```json\n{server.reply(body)}\n```\nHope this helps."
                    self._send(200, json.dumps(completion(text)).encode())
                elif kind.isdigit():
                    self._send(int(kind), json.dumps({"error": f"injected {kind}"}).encode())
                else:
                    raise ValueError(f"unknown fault {fault!r}")

        return Handler


def image_url(body: dict[str, Any]) -> str:
    """The image data URL of a chat-completions request body (which image it asks about)."""
    return body["messages"][1]["content"][0]["image_url"]["url"]
