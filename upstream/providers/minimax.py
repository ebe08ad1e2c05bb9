"""MiniMax (SPEC 11.3, Q1, Q2, G1–G3): the first provider module.

What MiniMax means by a `base_resp.status_code` (its chat answers can carry an error with HTTP
200), how its keys are validated, and its Token Plan quota (fetched and normalized into our
`short_term` / `weekly` windows). Only our normalized windows and our own messages leave this
module — never MiniMax's field names, status codes or text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from upstream.errors import UpstreamError
from upstream.providers.base import (
    INVALID,
    KEY_REJECTED,
    OK,
    RATE_LIMITED_IN_BODY,
    Kind,
    Provider,
    Reading,
)

# `base_resp.status_code`: 0 is success. MiniMax can answer a chat completion with HTTP 200 and
# an error here (and no choices): its codes for a rejected key and for rate limits; any other
# non-zero code is a provider error.
KEY_REJECTED_CODES = frozenset({1004, 2049})
RATE_LIMIT_CODES = frozenset({1002, 1039})
# The quota endpoint answers 1004 (MiniMax's "authentication failed") for a key without an
# active Token Plan: `subscription_inactive` (SPEC 11.3, Q2); any other non-zero code there is
# `application`.
NO_ACTIVE_PLAN_CODE = 1004

QUOTA_PATH = "/v1/token_plan/remains"


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
        return KEY_REJECTED
    if code in RATE_LIMIT_CODES:
        return RATE_LIMITED_IN_BODY
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
    an integer `status_code`; 0 is OK (the windows are then `normalize`'s to read)."""
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


# -- quota windows (SPEC Q1) --------------------------------------------------------------

PERIODS = {"short_term": {"unit": "hour", "value": 5}, "weekly": {"unit": "week", "value": 1}}
_FIELDS = {
    "short_term": (
        "current_interval_remaining_percent",
        "current_interval_status",
        "start_time",
        "end_time",
        "interval_boost_permille",
    ),
    "weekly": (
        "current_weekly_remaining_percent",
        "current_weekly_status",
        "weekly_start_time",
        "weekly_end_time",
        "weekly_boost_permille",
    ),
}
STATUS_EXHAUSTED = 2
STATUS_ABSENT = 3
MAX_EPOCH_MS = 253402300799000  # 9999-12-31


def _invalid() -> UpstreamError:
    return UpstreamError("invalid_response", "MiniMax sent a quota response we could not read.")


def _number(value: Any) -> float:
    """A finite JSON number (not a bool; json.loads also yields NaN and Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid()
    number = float(value)
    if not math.isfinite(number):
        raise _invalid()
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid()
    return value


def _percent(remaining: float) -> int | float:
    """0–100, one decimal at most; whole numbers as integers (73, not 73.0)."""
    remaining = round(max(0.0, min(100.0, remaining)), 1)
    return int(remaining) if remaining.is_integer() else remaining


def _time(value: Any) -> str:
    ms = _number(value)
    if not 0 <= ms <= MAX_EPOCH_MS:
        raise _invalid()
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _window(window_id: str, row: dict[str, Any]) -> dict[str, Any] | None:
    percent_f, status_f, start_f, end_f, boost_f = _FIELDS[window_id]
    status = row.get(status_f)
    if status is not None:
        status = _integer(status)
    if status == STATUS_ABSENT:
        return None
    if status == STATUS_EXHAUSTED:
        remaining = 0.0
    else:
        remaining = _number(row.get(percent_f))
        if not 0 <= remaining <= 100:
            raise _invalid()
        boost = row.get(boost_f)
        if boost is not None:
            boost = _number(boost)
            if boost < 0:
                raise _invalid()
            if boost > 0:
                remaining = remaining * boost / 1000  # capped at 100 by _percent
    window: dict[str, Any] = {
        "id": window_id,
        "remaining_percent": _percent(remaining),
        "resets_at": _time(row.get(end_f)),
        "period": dict(PERIODS[window_id]),
    }
    if row.get(start_f) is not None:
        window["starts_at"] = _time(row.get(start_f))
    return window


def normalize(payload: Any) -> list[dict[str, Any]]:
    """Provider body → our windows, or a typed UpstreamError."""
    kind = read_quota_body(payload).kind
    if kind is Kind.INVALID:
        raise _invalid()
    if kind is Kind.NO_ACTIVE_PLAN:
        raise UpstreamError("subscription_inactive", "MiniMax reports no active plan for this key.")
    if kind is not Kind.OK:
        raise UpstreamError("application", "MiniMax could not report the quota right now.")
    rows = payload.get("model_remains")
    if rows is None or rows == []:
        raise UpstreamError("subscription_inactive", "MiniMax reports no active plan for this key.")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise _invalid()
    general = [r for r in rows if r.get("model_name") == "general"]
    if len(general) != 1:
        raise _invalid()
    windows = [_window(window_id, general[0]) for window_id in ("short_term", "weekly")]
    return [w for w in windows if w is not None]


class MiniMax(Provider):
    provider_id = "minimax"
    base_url_setting = "MINIMAX_API_BASE_URL"
    timeout_setting = "MINIMAX_TIMEOUT_SECONDS"
    chat_path = "/v1/chat/completions"
    example_model = "MiniMax-M2"
    reports_quota = True

    def validation_passed(self, payload: Any) -> bool:
        return completion_finished(payload)

    def read_chat_body(self, payload: Mapping[str, Any]) -> Reading:
        return read_chat_body(payload)

    def fetch_quota(self, api_key: str) -> list[dict[str, Any]]:
        """`GET /v1/token_plan/remains` with the plan's key → our windows (SPEC 11.3, Q1)."""
        status, payload = self.request_json("GET", QUOTA_PATH, api_key)
        if self.read_status(status).kind is not Kind.OK:
            raise UpstreamError(
                "http", "MiniMax answered the quota request with an error.", http_status=status
            )
        return normalize(payload)


PROVIDER = MiniMax()
