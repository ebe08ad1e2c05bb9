"""Bounded HTTP calls to a provider (SPEC 11.3, 11.4, S1), shared by every provider module.

Every call: bearer key, a timeout (≤ 10 s), no redirects, a bounded response body, and errors
that carry our own wording only — never the provider's text, headers, or the key.
"""

from __future__ import annotations

import functools
import json
import re
import ssl
import time
from typing import Any

import httpx

from upstream.errors import UpstreamError

MAX_BODY_BYTES = 256 * 1024
MAX_TIMEOUT_SECONDS = 10.0
# What can travel in an `Authorization: Bearer` header: printable ASCII, no spaces.
_SENDABLE_KEY = re.compile(r"^[\x21-\x7e]{1,4096}$")


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """Made once per process: building one (loading the CA bundle) costs ~50 ms of CPU, which a
    client per call would otherwise pay every time (and, in the async gateway, on the loop)."""
    return httpx.create_ssl_context()


def client_timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, 5.0))


def make_client(base_url: str, seconds: float, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        timeout=client_timeout(seconds),
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


def _read_bounded(response: httpx.Response, deadline: float, name: str) -> bytes:
    """At most MAX_BODY_BYTES, and no later than `deadline` (a server that trickles bytes
    slower than the read timeout must not hold the call open indefinitely)."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        raise UpstreamError("invalid_response", f"{name} sent an encoded response.")
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise UpstreamError("invalid_response", f"{name} sent an oversized response.")
        if time.monotonic() > deadline:
            raise UpstreamError("network", f"{name} did not answer in time.")
    return bytes(body)


def request_json(
    method: str,
    url: str,
    api_key: str,
    *,
    name: str,
    seconds: float,
    body: Any = None,
    client: httpx.Client | None = None,
    base_url: str = "",
) -> tuple[int, Any]:
    """One bounded call to `url` (a path when `client` or `base_url` gives the base); returns
    (status, parsed JSON or None). `name` is the provider's name, for our own messages.

    Raises UpstreamError: `network` (unreachable, timeout), `invalid_response` (oversized or
    encoded body), `invalid_key` (a key that cannot be sent as a header at all).
    """
    if not isinstance(api_key, str) or not _SENDABLE_KEY.match(api_key):
        raise UpstreamError("invalid_key", f"The key cannot be sent to {name}.")
    deadline = time.monotonic() + seconds
    own = client is None
    try:
        client = client or make_client(base_url, seconds)
        with client.stream(
            method,
            url,
            headers=_headers(api_key),
            content=json.dumps(body) if body is not None else None,
        ) as response:
            raw = _read_bounded(response, deadline, name)
            status = response.status_code
    except httpx.TimeoutException:
        raise UpstreamError("network", f"{name} did not answer in time.") from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError):
        # ValueError: e.g. a malformed base URL or header; the message may quote the request.
        raise UpstreamError("network", f"{name} could not be reached.") from None
    finally:
        if own and client is not None:
            client.close()
    return status, parse_json(raw)


def parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays/objects
        return None
