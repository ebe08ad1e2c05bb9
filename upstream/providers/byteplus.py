"""BytePlus Coding Plan (SPEC 11.4, V2–V4): the second provider module.

An OpenAI-compatible API: key validation and the gateway use `POST /chat/completions` under
`BYTEPLUS_API_BASE_URL`; errors are OpenAI-style `{"error": {"code", "message", "type"}}` with
the usual HTTP statuses (401/403 a rejected key, 429 a rate limit with `Retry-After`); usage
quota is not reported (V3). Only our readings and our own messages leave this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings

from upstream.providers.base import (
    KEY_REJECTED,
    OK,
    PROVIDER_ERROR,
    RATE_LIMITED_IN_BODY,
    Provider,
    Reading,
)

# Error codes (the `error.code` string of an OpenAI-style error body) that mean a rejected key
# or a rate limit, by prefix; any other error is a provider error.
KEY_REJECTED_CODE_PREFIXES = ("AuthenticationError", "InvalidApiKey", "AccessDenied")
RATE_LIMIT_CODE_PREFIXES = ("RateLimitExceeded", "QuotaExceeded", "ServerOverloaded")


def read_error_body(payload: Mapping[str, Any]) -> Reading:
    """A 200 answer carrying an OpenAI-style `error` object and no choices: what its code means.
    A real answer (with choices) is OK whatever else it carries."""
    error = payload.get("error")
    if not isinstance(error, dict):
        return OK
    choices = payload.get("choices")
    if isinstance(choices, list) and choices:
        return OK
    code = error.get("code")
    if isinstance(code, str):
        if code.startswith(KEY_REJECTED_CODE_PREFIXES):
            return KEY_REJECTED
        if code.startswith(RATE_LIMIT_CODE_PREFIXES):
            return RATE_LIMITED_IN_BODY
    return PROVIDER_ERROR


class BytePlus(Provider):
    provider_id = "byteplus"
    base_url_setting = "BYTEPLUS_API_BASE_URL"
    timeout_setting = "BYTEPLUS_TIMEOUT_SECONDS"
    chat_path = "/chat/completions"
    example_model = "ark-code-latest"
    # BytePlus API keys: one token of letters, digits, dots, dashes and underscores.
    key_pattern = re.compile(r"^[A-Za-z0-9._-]{16,256}$")
    key_shape_text = "a single token of 16–256 letters, digits, dots, dashes or underscores"
    reports_quota = False  # SPEC V3

    def validation_body(self) -> dict[str, Any]:
        return {**super().validation_body(), "model": settings.BYTEPLUS_VALIDATION_MODEL}

    def upstream_body(self, body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
        """As the caller sent it, with the bare model; a stream asks for its usage chunk (as
        OpenAI's API does, usage is streamed only on request), so it is metered (SPEC G3)."""
        shaped = {**body, "model": upstream_model}
        if body.get("stream") is True and "stream_options" not in body:
            shaped["stream_options"] = {"include_usage": True}
        return shaped

    def read_chat_body(self, payload: Mapping[str, Any]) -> Reading:
        return read_error_body(payload)


PROVIDER = BytePlus()
