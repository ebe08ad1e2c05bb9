"""Reading MiniMax's answers (SPEC 11.3, G3, Q2): the one place that knows what MiniMax means by
an HTTP status, a `base_resp.status_code` or a `Retry-After` header (issue 14).

Each reader returns a `Reading`: a `Kind` and the numbers that go with it (the HTTP status or
the `base_resp` code of a provider error, the seconds to wait out a rate limit). Its callers turn
it into their own typed error: `upstream.client.check_key` (key validation),
`upstream.quota` (the quota windows) and the gateway (`gateway/proxy.py`). Nothing of the
provider's text leaves this module, only those numbers.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    OK = "ok"
    KEY_REJECTED = "key_rejected"  # HTTP 401/403, or a key error code in a 200's `base_resp`
    RATE_LIMITED = "rate_limited"  # HTTP 429, or a rate-limit code in a 200's `base_resp`
    NO_ACTIVE_PLAN = "no_active_plan"  # the quota endpoint: the key has no live Token Plan
    PROVIDER_ERROR = "provider_error"  # any other status or non-zero code
    INVALID = "invalid_response"  # not the answer's shape


@dataclass(frozen=True, slots=True)
class Reading:
    kind: Kind
    http_status: int | None = None  # a PROVIDER_ERROR's HTTP status, when that was the error
    code: int | None = None  # a PROVIDER_ERROR's `base_resp.status_code`, when that was it
    retry_after: int | None = None  # a RATE_LIMITED's whole seconds to wait (1–3600)


OK = Reading(Kind.OK)
INVALID = Reading(Kind.INVALID)

# HTTP statuses (every endpoint): 200 is the only success.
KEY_REJECTED_STATUSES = frozenset({401, 403})
RATE_LIMITED_STATUS = 429

# `base_resp.status_code`: 0 is success. MiniMax can answer a chat completion with HTTP 200 and
# an error here (and no choices): its codes for a rejected key and for rate limits; any other
# non-zero code is a provider error.
KEY_REJECTED_CODES = frozenset({1004, 2049})
RATE_LIMIT_CODES = frozenset({1002, 1039})
# The quota endpoint answers 1004 (MiniMax's "authentication failed") for a key without an
# active Token Plan: `subscription_inactive` (SPEC 11.3, Q2); any other non-zero code there is
# `application`.
NO_ACTIVE_PLAN_CODE = 1004

# Retry-After on a rate limit (SPEC G3): MiniMax's own when it gave a usable one (seconds, or an
# HTTP date), as whole seconds within these bounds; otherwise the default.
DEFAULT_RETRY_AFTER_SECONDS = 10
MAX_RETRY_AFTER_SECONDS = 3600

_RATE_LIMITED_IN_BODY = Reading(Kind.RATE_LIMITED, retry_after=DEFAULT_RETRY_AFTER_SECONDS)
_KEY_REJECTED = Reading(Kind.KEY_REJECTED)


def read_status(status: int, headers: Mapping[str, str] | None = None) -> Reading:
    """An HTTP status (with the answer's headers, for a rate limit's Retry-After)."""
    if status == 200:
        return OK
    if status in KEY_REJECTED_STATUSES:
        return _KEY_REJECTED
    if status == RATE_LIMITED_STATUS:
        value = headers.get("Retry-After") if headers is not None else None
        return Reading(Kind.RATE_LIMITED, retry_after=retry_after_seconds(value))
    return Reading(Kind.PROVIDER_ERROR, http_status=status)


def retry_after_seconds(value: str | None) -> int:
    """A `Retry-After` header's value as whole seconds from now, within 1–3600; the default when
    there is none or it cannot be used."""
    value = value.strip() if value else ""
    seconds = None
    if value.isascii() and value.isdigit():
        seconds = int(value[:12])
    elif value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            seconds = math.ceil((when - dt.datetime.now(dt.UTC)).total_seconds())
    if seconds is None:
        return DEFAULT_RETRY_AFTER_SECONDS
    return min(max(seconds, 1), MAX_RETRY_AFTER_SECONDS)


def base_resp_code(payload: Mapping[str, Any]) -> int | None:
    """`base_resp.status_code` when it is an integer (not a bool), else None."""
    base = payload.get("base_resp")
    code = base.get("status_code") if isinstance(base, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    return code


def read_chat_body(payload: Mapping[str, Any]) -> Reading:
    """A chat completion's JSON object, answered with HTTP 200: an error only when `base_resp`
    reports one and there are no choices (a real answer may carry any `base_resp`)."""
    if "base_resp" not in payload:  # the usual answer: nothing more to read
        return OK
    code = base_resp_code(payload)
    if not code:
        return OK
    choices = payload.get("choices")
    if isinstance(choices, list) and choices:
        return OK
    if code in KEY_REJECTED_CODES:
        return _KEY_REJECTED
    if code in RATE_LIMIT_CODES:
        return _RATE_LIMITED_IN_BODY
    return Reading(Kind.PROVIDER_ERROR, code=code)


def completion_finished(payload: Any) -> bool:
    """Whether a chat completion answered with HTTP 200 finished (the key check, SPEC 11.3):
    `choices[0].finish_reason` is `stop` or `length`."""
    try:
        finish = payload["choices"][0]["finish_reason"]
    except (TypeError, KeyError, IndexError):
        return False
    return finish in ("stop", "length")


def read_quota_body(payload: Any) -> Reading:
    """The quota endpoint's JSON, answered with HTTP 200 (SPEC 11.3): its `base_resp` must carry
    an integer `status_code`; 0 is OK (the windows are then `upstream.quota`'s to read)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("base_resp"), dict):
        return INVALID
    code = base_resp_code(payload)
    if code is None:
        return INVALID
    if code == 0:
        return OK
    if code == NO_ACTIVE_PLAN_CODE:
        return Reading(Kind.NO_ACTIVE_PLAN, code=code)
    return Reading(Kind.PROVIDER_ERROR, code=code)
