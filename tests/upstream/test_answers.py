"""Reading MiniMax's answers (SPEC 11.3, G3, Q2; issues 14, 18): the generic readings of
`upstream/providers/base.py` and MiniMax's in `upstream/providers/minimax.py` as units —
every HTTP status class, every `base_resp` code it knows (and the ones it does not), Retry-After,
and the shapes the key check and the quota need. The callers' behaviour over HTTP is tested in
tests/upstream/test_client.py, test_quota_normalize.py and tests/gateway."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from upstream.providers.base import (
    DEFAULT_RETRY_AFTER_SECONDS,
    MAX_RETRY_AFTER_SECONDS,
    Kind,
    Reading,
    read_status,
    retry_after_seconds,
)
from upstream.providers.minimax import (
    KEY_REJECTED_CODES,
    NO_ACTIVE_PLAN_CODE,
    RATE_LIMIT_CODES,
    base_resp_code,
    completion_finished,
    read_chat_body,
    read_quota_body,
)


def test_the_codes_minimax_uses():
    # The tables the gateway and the quota read by (SPEC 11.3): 1004 is MiniMax's
    # "authentication failed" — a rejected key on a chat completion, no active plan on the quota.
    assert {1004, 2049} == KEY_REJECTED_CODES
    assert {1002, 1039} == RATE_LIMIT_CODES
    assert NO_ACTIVE_PLAN_CODE == 1004
    assert {kind.value for kind in Kind} == {
        "ok",
        "key_rejected",
        "rate_limited",
        "no_active_plan",
        "provider_error",
        "invalid_response",
    }


# HTTP status → reading, every class.


def test_200_is_the_only_success():
    assert read_status(200) == Reading(Kind.OK)
    for status in (201, 202, 204, 206, 299):
        assert read_status(status) == Reading(Kind.PROVIDER_ERROR, http_status=status)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_reject_the_key(status):
    assert read_status(status) == Reading(Kind.KEY_REJECTED)
    assert read_status(status, {"Retry-After": "5"}).retry_after is None


@pytest.mark.parametrize(
    "status", [100, 301, 302, 304, 307, 308, 400, 402, 404, 405, 409, 413, 422, 500, 502, 503, 504]
)
def test_any_other_status_is_a_provider_error_with_its_status(status):
    assert read_status(status) == Reading(Kind.PROVIDER_ERROR, http_status=status)


def test_429_is_a_rate_limit_with_retry_after():
    assert read_status(429, httpx.Headers({"Retry-After": "7"})) == Reading(
        Kind.RATE_LIMITED, retry_after=7
    )
    assert read_status(429, {"Retry-After": "  42 "}).retry_after == 42
    # No headers, or none usable: the default.
    assert read_status(429) == Reading(Kind.RATE_LIMITED, retry_after=DEFAULT_RETRY_AFTER_SECONDS)
    assert read_status(429, {}).retry_after == DEFAULT_RETRY_AFTER_SECONDS


# Retry-After.


@pytest.mark.parametrize("value", [None, "", "   ", "-1", "1e9", "soon", "7.5", "²", "٣", "0x10"])
def test_an_unusable_retry_after_gets_the_default(value):
    assert retry_after_seconds(value) == DEFAULT_RETRY_AFTER_SECONDS == 10


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("7", 7), (" 42 ", 42), ("0", 1), ("3600", 3600), ("3601", 3600), ("99999999999999999", 3600)],
)
def test_retry_after_seconds_are_kept_within_bounds(value, seconds):
    assert retry_after_seconds(value) == seconds
    assert 1 <= seconds <= MAX_RETRY_AFTER_SECONDS


def test_retry_after_as_an_http_date():
    soon = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)
    assert 85 <= retry_after_seconds(soon) <= 91
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 1  # past
    far = email.utils.format_datetime(datetime.now(UTC) + timedelta(days=3), usegmt=True)
    assert retry_after_seconds(far) == MAX_RETRY_AFTER_SECONDS
    naive = (datetime.now(UTC) + timedelta(seconds=60)).strftime("%a, %d %b %Y %H:%M:%S")
    assert 55 <= retry_after_seconds(naive) <= 61  # no zone: read as UTC


# `base_resp` in a chat completion answered with HTTP 200.


def chat(code, *, choices=None, msg="upstream words") -> dict:
    return {"id": "x", "choices": choices, "base_resp": {"status_code": code, "status_msg": msg}}


@pytest.mark.parametrize("code", sorted(KEY_REJECTED_CODES))
def test_key_error_codes_in_a_200(code):
    assert read_chat_body(chat(code)) == Reading(Kind.KEY_REJECTED)


@pytest.mark.parametrize("code", sorted(RATE_LIMIT_CODES))
def test_rate_limit_codes_in_a_200_get_the_default_retry_after(code):
    assert read_chat_body(chat(code)) == Reading(
        Kind.RATE_LIMITED, retry_after=DEFAULT_RETRY_AFTER_SECONDS
    )


@pytest.mark.parametrize("code", [1, 1000, 1001, 1008, 1013, 1026, 1027, 2013, -1, 99999])
def test_any_other_code_in_a_200_is_a_provider_error_with_its_code(code):
    assert read_chat_body(chat(code)) == Reading(Kind.PROVIDER_ERROR, code=code)


@pytest.mark.parametrize(
    "payload",
    [
        {"id": "x", "choices": [{"finish_reason": "stop"}]},  # no base_resp: the usual answer
        chat(0, msg="success"),
        chat(0, choices=[{"finish_reason": "stop"}], msg="success"),
        # Any code with choices is a real answer.
        chat(1004, choices=[{"finish_reason": "stop"}]),
        chat(1002, choices=[{"finish_reason": "length"}]),
        chat(1013, choices=[{}]),
        # No code to read.
        {"base_resp": None},
        {"base_resp": "1004"},
        {"base_resp": []},
        {"base_resp": {}},
        chat(None),
        chat("1004"),
        chat(1004.0),
        chat(True),
        chat(False),
    ],
)
def test_a_200_without_a_readable_error_is_ok(payload):
    assert read_chat_body(payload) == Reading(Kind.OK)


def test_empty_choices_do_not_hide_an_error():
    assert read_chat_body(chat(2049, choices=[])).kind is Kind.KEY_REJECTED
    assert read_chat_body(chat(1039, choices={"0": {}})).kind is Kind.RATE_LIMITED


def test_base_resp_code():
    assert base_resp_code(chat(1004)) == 1004
    assert base_resp_code(chat(0)) == 0
    for payload in ({}, {"base_resp": 0}, chat(True), chat("0"), chat(None), chat(1.0)):
        assert base_resp_code(payload) is None, payload


# The key check's shape (SPEC 11.3: valid when 200 and finish_reason is stop or length).


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_a_finished_completion(finish):
    assert completion_finished({"choices": [{"finish_reason": finish}]})


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "text",
        ["a", "list"],
        {},
        {"choices": None},
        {"choices": []},
        {"choices": {}},
        {"choices": "stop"},
        {"choices": [None]},
        {"choices": [{}]},
        {"choices": [{"finish_reason": None}]},
        {"choices": [{"finish_reason": "tool_calls"}]},
        {"choices": [{"finish_reason": ["stop"]}]},
        {"choices": [{"finish_reason": {"stop": 1}}]},
        chat(1004),
    ],
)
def test_anything_else_is_not_a_finished_completion(payload):
    assert not completion_finished(payload)


# `base_resp` on the quota endpoint (SPEC 11.3, Q2).


def test_quota_code_0_is_ok():
    assert read_quota_body({"base_resp": {"status_code": 0}, "model_remains": None}) == Reading(
        Kind.OK
    )


def test_quota_1004_is_no_active_plan():
    assert read_quota_body({"base_resp": {"status_code": 1004}}) == Reading(
        Kind.NO_ACTIVE_PLAN, code=1004
    )


@pytest.mark.parametrize("code", [1, 1002, 1039, 2049, 1013, -1])
def test_quota_any_other_code_is_a_provider_error(code):
    # Rate-limit and key codes included: the quota has no kinds of its own for them (Q2).
    assert read_quota_body({"base_resp": {"status_code": code}}) == Reading(
        Kind.PROVIDER_ERROR, code=code
    )


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "text",
        {},
        {"model_remains": []},
        {"base_resp": None},
        {"base_resp": []},
        {"base_resp": {}},
        {"base_resp": {"status_code": None}},
        {"base_resp": {"status_code": "0"}},
        {"base_resp": {"status_code": 0.0}},
        {"base_resp": {"status_code": False}},
        {"base_resp": {"status_code": True}},
    ],
)
def test_quota_without_a_readable_code_is_invalid(payload):
    assert read_quota_body(payload) == Reading(Kind.INVALID)
