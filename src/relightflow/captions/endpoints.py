"""HTTP endpoints and their secrets: where a key may be sent, which variable holds it, what may be logged.

* A secret — the API key read from the environment, or ``user:password@`` in the base URL (sent as HTTP
  basic auth when there is no key) — goes only over ``https`` or to a loopback address (127.0.0.0/8,
  ::1, localhost). Anything else raises :class:`InsecureEndpoint` unless ``allow_insecure_key`` is set.
* The key variable: ``api_key_env`` when configured; else ``OPENAI_API_KEY`` for ``api.openai.com`` and
  none for any other host (a key meant for one service is never sent to another by default).
* Logs never show credentials: :func:`redact` rewrites ``scheme://user:password@`` as ``scheme://***@``,
  and :func:`redact_logs` applies it to every record the job's log handlers write (messages, arguments
  and tracebacks). The client itself never sees the user info in its URL, so its own request log is clean.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

KNOWN_KEY_ENV = {"api.openai.com": "OPENAI_API_KEY"}  # hosts whose key variable may be assumed
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@:]*:[^/\s@]*@")
_USER_ONLY = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@:]+@")


class InsecureEndpoint(ValueError):
    """A secret would travel in clear text to a host that is not this machine."""


@dataclass(frozen=True)
class Endpoint:
    """A base URL split into the URL the client uses (no user info, ends with "/") and its credentials."""

    url: str
    host: str
    scheme: str
    username: str = ""
    password: str = ""

    @property
    def has_credentials(self) -> bool:
        return bool(self.username or self.password)

    @property
    def secure(self) -> bool:
        """Whether a secret may be sent: https, or a loopback host."""
        return self.scheme == "https" or is_loopback(self.host)


def parse_endpoint(base_url: str) -> Endpoint:
    """Split ``base_url``; the URL kept has no user info and a trailing slash."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {redact(base_url)!r}")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/", parts.query, ""))
    return Endpoint(url, parts.hostname.lower(), parts.scheme, unquote(parts.username or ""),
                    unquote(parts.password or ""))  # fmt: skip


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: a loopback IP (127.0.0.0/8, ::1) or a localhost name."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_env(api_key_env: str | None, endpoint: Endpoint) -> str | None:
    """The environment variable holding the key: the configured one, else the host's known one, else None."""
    return api_key_env or KNOWN_KEY_ENV.get(endpoint.host)


def check_endpoint(cfg: dict[str, Any]) -> Endpoint:
    """Parse ``cfg["base_url"]`` and refuse to send a secret in clear text (see the module docstring).

    A secret counts as configured when a key variable applies (:func:`key_env`) or the URL has user info,
    whether or not the variable is set on this machine, so a config is judged the same everywhere.
    """
    endpoint = parse_endpoint(cfg["base_url"])
    secret = key_env(cfg["api_key_env"], endpoint) is not None or endpoint.has_credentials
    if secret and not endpoint.secure and not cfg["allow_insecure_key"]:
        raise InsecureEndpoint(
            f"refusing to send an API key or URL credentials over plain http to {endpoint.host}: use https, a "
            "loopback address, api_key_env: null (no key), or allow_insecure_key: true"
        )
    return endpoint


def redact(text: Any) -> str:
    """``text`` with the user info of every URL in it replaced by ``***``."""
    text = _CREDENTIALS.sub(r"\g<scheme>***@", str(text))
    return _USER_ONLY.sub(r"\g<scheme>***@", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, arguments and traceback text with :func:`redact` (returns True)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


REDACTOR = RedactingFilter()


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Redact credentials in everything the current handlers of ``logger`` (default: root) write.

    The filter stays on those handlers (adding it twice is a no-op), so the job's last lines — the
    traceback of a failure, logged after the stage closed — are redacted too.
    """
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(REDACTOR)
