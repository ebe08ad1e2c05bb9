"""MiniMax client over httpx (SPEC 11.3).

Every call: bearer key, a timeout (≤ 10 s), no redirects, a bounded response body, and errors
that carry our own wording only — never the provider's text, headers, or the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from upstream.errors import UpstreamError

MAX_BODY_BYTES = 256 * 1024
VALIDATION_BODY = {
    "model": "MiniMax-M2",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 1,
}


def base_url() -> str:
    return settings.MINIMAX_API_BASE_URL.rstrip("/")


def timeout() -> httpx.Timeout:
    seconds = min(float(settings.MINIMAX_TIMEOUT_SECONDS), 10.0)
    return httpx.Timeout(seconds, connect=min(seconds, 5.0))


def make_client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=base_url(), timeout=timeout(), follow_redirects=False, trust_env=False, **kwargs
    )


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


def _read_bounded(response: httpx.Response) -> bytes:
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise UpstreamError("invalid_response", "MiniMax sent an oversized response.")
    return body


def request_json(
    method: str, path: str, api_key: str, *, body: Any = None, client: httpx.Client | None = None
) -> tuple[int, Any]:
    """One bounded call; returns (status, parsed JSON or None). Raises UpstreamError(network)."""
    own = client is None
    client = client or make_client()
    try:
        with client.stream(
            method,
            path,
            headers=_headers(api_key),
            content=json.dumps(body) if body is not None else None,
        ) as response:
            raw = _read_bounded(response)
            status = response.status_code
    except httpx.TimeoutException:
        raise UpstreamError("network", "MiniMax did not answer in time.") from None
    except httpx.HTTPError:
        raise UpstreamError("network", "MiniMax could not be reached.") from None
    finally:
        if own:
            client.close()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, parsed


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
        return KeyCheck(False, exc.kind)
    if status in (401, 403):
        return KeyCheck(False, "invalid_key")
    if status != 200:
        return KeyCheck(False, "http")
    try:
        finish = data["choices"][0]["finish_reason"]
    except (TypeError, KeyError, IndexError):
        return KeyCheck(False, "invalid_response")
    if finish in ("stop", "length"):
        return KeyCheck(True)
    return KeyCheck(False, "invalid_response")


KEY_CHECK_MESSAGES = {
    "invalid_key": "MiniMax rejected this key.",
    "network": "MiniMax could not be reached or did not answer in time.",
    "http": "MiniMax returned an error; try again later.",
    "invalid_response": "MiniMax sent a response we could not understand.",
}
