"""Any OpenAI-compatible chat-completions endpoint (``vllm serve``, OpenAI, Mistral's API) over httpx.

Requests run with bounded concurrency (a thread pool of ``concurrency`` workers) and a per-request
timeout. Transient failures — timeouts, connection errors, HTTP 408/409/425/429/5xx, a body that is not
JSON, a reply that fails validation — are retried with exponential backoff and full jitter (tenacity);
a 429/503 ``Retry-After`` header sets the wait instead. Other 4xx are not retried.

The API key is read from the environment variable named in the config (``api_key_env``; by default
``OPENAI_API_KEY`` for api.openai.com only) and, like credentials in the base URL, is sent only over https
or to a loopback address and never logged (:mod:`relightflow.captions.endpoints`). The ``mistral``
provider is this client with Mistral's defaults; its seed field is ``random_seed``.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from relightflow.captions.endpoints import check_endpoint, key_env, redact
from relightflow.captions.providers.base import (
    IMAGE_ENCODING,
    CaptionResult,
    Counters,
    chat_messages,
    response_format,
)
from relightflow.captions.schema import InvalidResponse, parse_description

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
SEED_FIELD = {"mistral": "random_seed"}  # the request field of the seed, where it is not "seed"


class RetryableError(Exception):
    """A transient failure worth retrying; ``retry_after`` (s) comes from the server when it says so."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestRejected(Exception):
    """A request the server refused for good (4xx other than the transient ones)."""


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def reply_text(body: Any) -> str:
    """The assistant message text of a chat-completions response body."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
        raise InvalidResponse("no choices[0].message.content in the response") from e
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise InvalidResponse("message content is not text")
    return content


class OpenAICaptioner:
    """Chat-completions client with retries, Retry-After handling, timeouts and bounded concurrency."""

    def __init__(self, cfg: dict[str, Any], name: str = "openai", max_concurrency: int | None = None):
        endpoint = check_endpoint(cfg)
        self.name = name
        self.model = cfg["model"]
        self.endpoint = endpoint.url  # no credentials: part of the cache key and of log lines
        self.concurrency = min(int(cfg["concurrency"]), int(max_concurrency or cfg["concurrency"]))
        self.max_retries = int(cfg["max_retries"])
        self.backoff_s = float(cfg["backoff_s"])
        self.max_backoff_s = float(cfg["max_backoff_s"])
        self.max_retry_after_s = float(cfg["max_retry_after_s"])
        self.max_tokens = int(cfg["max_tokens"])
        self.temperature = float(cfg["temperature"])
        self.seed = cfg["seed"]
        self.structured = cfg["structured"]
        self.counters = Counters()
        headers = self._auth_headers(key_env(cfg["api_key_env"], endpoint))
        basic = None if headers or not endpoint.has_credentials else httpx.BasicAuth(endpoint.username, endpoint.password)
        self._client = httpx.Client(
            base_url=endpoint.url, headers=headers, auth=basic, timeout=httpx.Timeout(float(cfg["timeout_s"])),
            limits=httpx.Limits(max_connections=self.concurrency),
        )  # fmt: skip
        log.info("%s client: %s, model %s, %d requests in flight", name, redact(cfg["base_url"]), self.model,
                 self.concurrency)  # fmt: skip

    @staticmethod
    def _auth_headers(env_name: str | None) -> dict[str, str]:
        if not env_name:
            return {}
        key = os.environ.get(env_name, "")
        if not key:
            log.warning("environment variable %s is not set: sending requests without an API key", env_name)
            return {}
        return {"Authorization": f"Bearer {key}"}

    def params(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "structured": self.structured,
                "seed": self.seed, "image": IMAGE_ENCODING}  # fmt: skip

    def payload(self, image: np.ndarray) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model, "messages": chat_messages(image),
            "max_tokens": self.max_tokens, "temperature": self.temperature,
        }  # fmt: skip
        fmt = response_format(self.structured)
        if fmt:
            body["response_format"] = fmt
        if self.seed is not None:
            body[SEED_FIELD.get(self.name, "seed")] = int(self.seed)
        return body

    def _post(self, body: dict[str, Any]) -> str:
        """One HTTP request → reply text; raises RetryableError / RequestRejected / InvalidResponse."""
        self.counters.add("requests")
        try:
            response = self._client.post("chat/completions", json=body)
        except httpx.TimeoutException as e:
            raise RetryableError(f"timeout: {type(e).__name__}") from e
        except httpx.TransportError as e:
            raise RetryableError(f"connection error: {type(e).__name__}") from e
        if response.status_code in RETRY_STATUS:
            raise RetryableError(
                f"HTTP {response.status_code}", parse_retry_after(response.headers.get("retry-after"))
            )
        if response.status_code >= 400:
            raise RequestRejected(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            body_json = response.json()
        except ValueError as e:
            raise RetryableError("response body is not JSON") from e
        return reply_text(body_json)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after_s)  # the server's word beats our backoff
        return wait_random_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)(state)

    def _on_retry(self, state: RetryCallState) -> None:
        self.counters.add("retries")
        exc = state.outcome.exception() if state.outcome else None
        log.info("retrying (attempt %d): %s", state.attempt_number, exc)

    def describe_one(self, image: np.ndarray) -> CaptionResult:
        """Ask for one image's description, retrying transient and validation failures."""
        body, result = self.payload(image), CaptionResult()
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries + 1), wait=self._wait, before_sleep=self._on_retry,
            retry=retry_if_exception_type((RetryableError, InvalidResponse)), reraise=True,
        )  # fmt: skip
        try:
            for attempt in retrying:
                with attempt:
                    result.attempts = attempt.retry_state.attempt_number
                    result.raw = self._post(body)
                    result.description = parse_description(result.raw)
        except (RetryableError, InvalidResponse, RequestRejected) as e:
            result.description, result.error = None, _reason(e)
            result.request_failed = not isinstance(e, InvalidResponse)
            self.counters.add("failures")
        return result

    def describe(self, images: Sequence[np.ndarray]) -> list[CaptionResult]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.describe_one, images))

    def close(self) -> None:
        self._client.close()


def _reason(exc: Exception) -> str:
    kind = {RetryableError: "request failed", InvalidResponse: "invalid response",
            RequestRejected: "request rejected"}.get(type(exc), "error")  # fmt: skip
    return f"{kind}: {exc}"
