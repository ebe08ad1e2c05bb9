"""MiniMax client over httpx (SPEC 11.3).

Every call: bearer key, a timeout (≤ 10 s), no redirects, a bounded response body, and errors
that carry our own wording only — never the provider's text, headers, or the key.
"""

from __future__ import annotations

import functools
import json
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from upstream.answers import Kind, completion_finished, read_status
from upstream.errors import UpstreamError

MAX_BODY_BYTES = 256 * 1024
# What can travel in an `Authorization: Bearer` header: printable ASCII, no spaces.
_SENDABLE_KEY = re.compile(r"^[\x21-\x7e]{1,4096}$")
# What a MiniMax key looks like: one token of printable ASCII, 8 to 512 characters. The one
# definition for the inventory upload (I1) and BYOK (B1) (issue 14).
_KEY_SHAPE = re.compile(r"^[\x21-\x7e]{8,512}$")


def has_key_shape(value: object) -> bool:
    """Whether `value` (already trimmed) can be a MiniMax API key."""
    return isinstance(value, str) and _KEY_SHAPE.fullmatch(value) is not None


VALIDATION_BODY = {
    "model": "MiniMax-M2",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 1,
}


def base_url() -> str:
    return settings.MINIMAX_API_BASE_URL.rstrip("/")


def timeout_seconds() -> float:
    return min(float(settings.MINIMAX_TIMEOUT_SECONDS), 10.0)


def timeout() -> httpx.Timeout:
    seconds = timeout_seconds()
    return httpx.Timeout(seconds, connect=min(seconds, 5.0))


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """Made once per process: building one (loading the CA bundle) costs ~50 ms of CPU, which a
    client per call would otherwise pay every time (and, in the async gateway, on the loop)."""
    return httpx.create_ssl_context()


def make_client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=base_url(),
        timeout=timeout(),
        follow_redirects=False,
        trust_env=False,
        verify=ssl_context(),
        **kwargs,
    )


def _headers(api_key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        # Raw bytes only: a compressed body could expand far beyond MAX_BODY_BYTES in memory.
        "Accept-Encoding": "identity",
    }


def _read_bounded(response: httpx.Response, deadline: float) -> bytes:
    """At most MAX_BODY_BYTES, and no later than `deadline` (a server that trickles bytes
    slower than the read timeout must not hold the call open indefinitely)."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise UpstreamError("invalid_response", "MiniMax sent an encoded response.")
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise UpstreamError("invalid_response", "MiniMax sent an oversized response.")
        if time.monotonic() > deadline:
            raise UpstreamError("network", "MiniMax did not answer in time.")
    return bytes(body)


def request_json(
    method: str, path: str, api_key: str, *, body: Any = None, client: httpx.Client | None = None
) -> tuple[int, Any]:
    """One bounded call; returns (status, parsed JSON or None).

    Raises UpstreamError: `network` (unreachable, timeout), `invalid_response` (oversized or
    encoded body), `invalid_key` (a key that cannot be sent as a header at all).
    """
    if not isinstance(api_key, str) or not _SENDABLE_KEY.match(api_key):
        raise UpstreamError("invalid_key", "The key cannot be sent to MiniMax.")
    deadline = time.monotonic() + timeout_seconds()
    own = client is None
    try:
        client = client or make_client()
        with client.stream(
            method,
            path,
            headers=_headers(api_key),
            content=json.dumps(body) if body is not None else None,
        ) as response:
            raw = _read_bounded(response, deadline)
            status = response.status_code
    except httpx.TimeoutException:
        raise UpstreamError("network", "MiniMax did not answer in time.") from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError):
        # ValueError: e.g. a malformed base URL or header; the message may quote the request.
        raise UpstreamError("network", "MiniMax could not be reached.") from None
    finally:
        if own and client is not None:
            client.close()
    return status, _parse_json(raw)


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays/objects
        return None


@dataclass(frozen=True)
class KeyCheck:
    ok: bool
    error: str | None = None  # invalid_key | network | http | invalid_response


def check_key(api_key: str, *, client: httpx.Client | None = None) -> KeyCheck:
    """Validation / key test: one minimal chat completion (SPEC 11.3, I3, B1)."""
    try:
        status, data = request_json(
            "POST", "/v1/chat/completions", api_key, body=VALIDATION_BODY, client=client
        )
    except UpstreamError as exc:
        return KeyCheck(False, exc.kind if exc.kind in KEY_CHECK_MESSAGES else "network")
    kind = read_status(status).kind  # read in upstream/answers.py, as everywhere
    if kind is Kind.KEY_REJECTED:
        return KeyCheck(False, "invalid_key")
    if kind is not Kind.OK:
        return KeyCheck(False, "http")
    if completion_finished(data):
        return KeyCheck(True)
    return KeyCheck(False, "invalid_response")


KEY_CHECK_MESSAGES = {
    "invalid_key": "MiniMax rejected this key.",
    "network": "MiniMax could not be reached or did not answer in time.",
    "http": "MiniMax returned an error; try again later.",
    "invalid_response": "MiniMax sent a response we could not understand.",
    "unreadable": "The stored key can no longer be read; replace it with a new key.",
}
