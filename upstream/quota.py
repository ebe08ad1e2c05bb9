"""MiniMax Token Plan quota: fetch and normalize (SPEC Q1, Q2, 11.3).

Only our normalized windows leave this module — never provider field names, status codes or
messages. Failures raise UpstreamError with kind network | http | invalid_response |
application | subscription_inactive.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from upstream.answers import Kind, read_quota_body, read_status
from upstream.client import request_json
from upstream.errors import UpstreamError

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
    kind = read_quota_body(payload).kind  # `base_resp`, read in upstream/answers.py
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


def fetch_quota(api_key: str) -> list[dict[str, Any]]:
    status, payload = request_json("GET", "/v1/token_plan/remains", api_key)
    if read_status(status).kind is not Kind.OK:
        raise UpstreamError(
            "http", "MiniMax answered the quota request with an error.", http_status=status
        )
    return normalize(payload)
