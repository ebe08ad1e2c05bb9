"""Quota normalization (SPEC Q1, Q2, 11.3): every case with its exact output or error kind, as a
unit over `normalize()` and over HTTP against the stand-in MiniMax server (`fetch_quota`)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from standins.minimax import quota_body
from upstream.errors import UpstreamError
from upstream.providers.minimax import PROVIDER, normalize

fetch_quota = PROVIDER.fetch_quota

KEY = "sk-quota-normalize-0123456789"
REMAINS = "/v1/token_plan/remains"

# Fixed epoch milliseconds and their ISO forms.
SHORT_START, SHORT_START_ISO = 1767218400000, "2025-12-31T22:00:00Z"
SHORT_END, SHORT_END_ISO = 1767236400000, "2026-01-01T03:00:00Z"
WEEK_START, WEEK_START_ISO = 1766966400000, "2025-12-29T00:00:00Z"
WEEK_END, WEEK_END_ISO = 1767571200000, "2026-01-05T00:00:00Z"

SHORT_PERIOD = {"unit": "hour", "value": 5}
WEEK_PERIOD = {"unit": "week", "value": 1}

PROVIDER_NAMES = (
    "base_resp",
    "status_code",
    "status_msg",
    "model_remains",
    "model_name",
    "current_interval_remaining_percent",
    "current_interval_status",
    "start_time",
    "end_time",
    "interval_boost_permille",
    "current_weekly_remaining_percent",
    "current_weekly_status",
    "weekly_start_time",
    "weekly_end_time",
    "weekly_boost_permille",
)


def row(**changes) -> dict:
    """A healthy `general` row: 5-hour window 73 %, weekly 88 %, no boosts."""
    general = {
        "model_name": "general",
        "current_interval_remaining_percent": 73,
        "current_interval_status": 1,
        "start_time": SHORT_START,
        "end_time": SHORT_END,
        "interval_boost_permille": 0,
        "current_weekly_remaining_percent": 88,
        "current_weekly_status": 1,
        "weekly_start_time": WEEK_START,
        "weekly_end_time": WEEK_END,
        "weekly_boost_permille": 0,
    }
    general.update(changes)
    return general


def body(rows=None, *, status_code=0, status_msg="success") -> dict:
    return {
        "base_resp": {"status_code": status_code, "status_msg": status_msg},
        "model_remains": [row()] if rows is None else rows,
    }


def short(percent, **extra) -> dict:
    return {
        "id": "short_term",
        "remaining_percent": percent,
        "resets_at": SHORT_END_ISO,
        "period": SHORT_PERIOD,
        "starts_at": SHORT_START_ISO,
        **extra,
    }


def weekly(percent, **extra) -> dict:
    return {
        "id": "weekly",
        "remaining_percent": percent,
        "resets_at": WEEK_END_ISO,
        "period": WEEK_PERIOD,
        "starts_at": WEEK_START_ISO,
        **extra,
    }


def error_kind(payload) -> str:
    with pytest.raises(UpstreamError) as caught:
        normalize(payload)
    return caught.value.kind


# --- healthy ---------------------------------------------------------------------------------


def test_healthy_both_windows_exact():
    # SPEC Q1: id, remaining_percent, resets_at (ISO from epoch ms), starts_at, fixed period.
    assert normalize(body()) == [
        {
            "id": "short_term",
            "remaining_percent": 73,
            "resets_at": "2026-01-01T03:00:00Z",
            "period": {"unit": "hour", "value": 5},
            "starts_at": "2025-12-31T22:00:00Z",
        },
        {
            "id": "weekly",
            "remaining_percent": 88,
            "resets_at": "2026-01-05T00:00:00Z",
            "period": {"unit": "week", "value": 1},
            "starts_at": "2025-12-29T00:00:00Z",
        },
    ]


def test_percentages_are_integers_when_whole_and_one_decimal_otherwise():
    windows = normalize(
        body(
            [
                row(
                    current_interval_remaining_percent=73.0,
                    current_weekly_remaining_percent=12.34,
                )
            ]
        )
    )
    assert windows[0]["remaining_percent"] == 73
    assert isinstance(windows[0]["remaining_percent"], int)
    assert windows[1]["remaining_percent"] == 12.3


def test_boundaries_zero_and_hundred():
    windows = normalize(
        body([row(current_interval_remaining_percent=0, current_weekly_remaining_percent=100)])
    )
    assert [w["remaining_percent"] for w in windows] == [0, 100]


def test_starts_at_is_optional():
    windows = normalize(body([row(start_time=None, weekly_start_time=None)]))
    windows_missing = normalize(
        body([{k: v for k, v in row().items() if k not in ("start_time", "weekly_start_time")}])
    )
    expected = [
        {
            "id": "short_term",
            "remaining_percent": 73,
            "resets_at": SHORT_END_ISO,
            "period": SHORT_PERIOD,
        },
        {"id": "weekly", "remaining_percent": 88, "resets_at": WEEK_END_ISO, "period": WEEK_PERIOD},
    ]
    assert windows == expected
    assert windows_missing == expected


def test_other_model_rows_are_ignored():
    other = row(model_name="speech-hd", current_interval_remaining_percent=5)
    assert normalize(body([other, row()])) == [short(73), weekly(88)]


def test_status_missing_counts_as_normal():
    general = row()
    del general["current_interval_status"], general["current_weekly_status"]
    assert normalize(body([general])) == [short(73), weekly(88)]


# --- statuses --------------------------------------------------------------------------------


def test_status_2_is_exhausted_zero_percent_whatever_the_percent_says():
    # SPEC 11.3: status 2 = exhausted (0 %), even with a reported percentage and a boost.
    windows = normalize(
        body(
            [
                row(
                    current_interval_status=2,
                    current_interval_remaining_percent=55,
                    interval_boost_permille=1500,
                )
            ]
        )
    )
    assert windows == [short(0), weekly(88)]


def test_status_2_without_a_percentage_is_still_zero():
    general = row(current_weekly_status=2)
    del general["current_weekly_remaining_percent"]
    assert normalize(body([general])) == [short(73), weekly(0)]


def test_status_3_means_the_window_is_absent():
    assert normalize(body([row(current_interval_status=3)])) == [weekly(88)]
    assert normalize(body([row(current_weekly_status=3)])) == [short(73)]
    # Absent windows need no other field at all.
    general = row(current_weekly_status=3)
    for name in ("current_weekly_remaining_percent", "weekly_start_time", "weekly_end_time"):
        del general[name]
    assert normalize(body([general])) == [short(73)]


def test_both_windows_absent_gives_no_windows():
    assert normalize(body([row(current_interval_status=3, current_weekly_status=3)])) == []


# --- boosts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "boost", "expected"),
    [
        (40, 1500, 60),  # 40 × 1.5
        (50, 2000, 100),  # exactly 100
        (80, 1500, 100),  # 120 → capped at 100
        (73, 0, 73),  # boost 0 ignored
        (73, None, 73),  # no boost field value
        (60, 500, 30),  # a boost below 1000 scales down
        (33, 1100, 36.3),  # 36.300000000000004 → one decimal
        (0, 3000, 0),
    ],
)
def test_boost_scales_the_percentage_capped_at_100(percent, boost, expected):
    # SPEC 11.3: remaining = percent × boost / 1000 when boost > 0, capped at 100.
    windows = normalize(
        body(
            [
                row(
                    current_interval_remaining_percent=percent,
                    interval_boost_permille=boost,
                    current_weekly_remaining_percent=percent,
                    weekly_boost_permille=boost,
                )
            ]
        )
    )
    assert windows == [short(expected), weekly(expected)]


def test_boost_field_missing_is_no_boost():
    general = row()
    del general["interval_boost_permille"], general["weekly_boost_permille"]
    assert normalize(body([general])) == [short(73), weekly(88)]


def test_boosts_apply_per_window():
    windows = normalize(body([row(interval_boost_permille=1200, weekly_boost_permille=0)]))
    assert windows == [short(87.6), weekly(88)]


# --- rows --------------------------------------------------------------------------------------


def test_missing_general_row_is_invalid_response():
    assert error_kind(body([row(model_name="speech-hd")])) == "invalid_response"
    assert error_kind(body([{k: v for k, v in row().items() if k != "model_name"}])) == (
        "invalid_response"
    )


def test_two_general_rows_are_invalid_response():
    assert error_kind(body([row(), row(current_interval_remaining_percent=10)])) == (
        "invalid_response"
    )


@pytest.mark.parametrize("rows", [None, []], ids=["null", "empty"])
def test_null_or_empty_rows_mean_subscription_inactive(rows):
    payload = body()
    payload["model_remains"] = rows
    assert error_kind(payload) == "subscription_inactive"


def test_missing_rows_mean_subscription_inactive():
    assert error_kind({"base_resp": {"status_code": 0, "status_msg": "success"}}) == (
        "subscription_inactive"
    )


# --- status codes ------------------------------------------------------------------------------


def test_status_code_1004_is_subscription_inactive_even_with_rows():
    assert error_kind(body(status_code=1004, status_msg="no active plan")) == (
        "subscription_inactive"
    )
    assert error_kind(body(None, status_code=1004)) == "subscription_inactive"


@pytest.mark.parametrize("code", [1, 1002, 1008, 2013, -1, 1000])
def test_other_non_zero_status_codes_are_application(code):
    assert error_kind(body(status_code=code, status_msg="provider says no")) == "application"


def test_errors_carry_our_wording_never_the_providers():
    # SPEC Q1: provider messages and status codes never pass through.
    secret_msg = "provider-internal-detail-7731"
    for payload in (
        body(status_code=1004, status_msg=secret_msg),
        body(status_code=2013, status_msg=secret_msg),
        body([row(model_name=secret_msg)]),
    ):
        with pytest.raises(UpstreamError) as caught:
            normalize(payload)
        text = f"{caught.value} {caught.value.message!r}"
        assert secret_msg not in text
        assert "2013" not in text and "1004" not in text
        for name in PROVIDER_NAMES:
            assert name not in text


def test_windows_carry_only_our_field_names():
    windows = normalize(body([row(interval_boost_permille=1200)]))
    text = json.dumps(windows)
    for name in PROVIDER_NAMES:
        assert name not in text
    assert {tuple(sorted(w)) for w in windows} == {
        ("id", "period", "remaining_percent", "resets_at", "starts_at")
    }


# --- wrong types and shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"current_interval_remaining_percent": "73"},  # string percent
        {"current_interval_remaining_percent": True},  # bool percent
        {"current_interval_remaining_percent": None},  # missing percent on a normal window
        {"current_interval_remaining_percent": -5},
        {"current_interval_remaining_percent": 100.5},
        {"current_interval_remaining_percent": float("nan")},
        {"current_interval_remaining_percent": float("inf")},
        {"current_weekly_remaining_percent": [88]},
        {"current_interval_status": "1"},
        {"current_interval_status": True},
        {"current_interval_status": 1.0},
        {"current_weekly_status": "3"},  # even "absent" must be a number
        {"interval_boost_permille": "1500"},
        {"interval_boost_permille": False},
        {"interval_boost_permille": -100},
        {"end_time": -1},  # negative time
        {"end_time": "1767236400000"},
        {"end_time": True},
        {"end_time": None},  # a present window needs its reset time
        {"end_time": 10**20},  # beyond year 9999
        {"end_time": float("nan")},
        {"start_time": -1},
        {"start_time": "yesterday"},
        {"weekly_end_time": -86_400_000},
        {"weekly_start_time": False},
    ],
    ids=lambda c: ",".join(f"{k}={v!r}" for k, v in c.items()),
)
def test_wrong_types_and_values_are_invalid_response(changes):
    assert error_kind(body([row(**changes)])) == "invalid_response"


def test_missing_reset_time_is_invalid_response():
    general = row()
    del general["weekly_end_time"]
    assert error_kind(body([general])) == "invalid_response"


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "ok",
        42,
        {},
        {"model_remains": [row()]},  # no base_resp
        {"base_resp": None, "model_remains": [row()]},
        {"base_resp": "ok", "model_remains": [row()]},
        {"base_resp": {}, "model_remains": [row()]},
        {"base_resp": {"status_code": "0"}, "model_remains": [row()]},
        {"base_resp": {"status_code": False}, "model_remains": [row()]},
        {"base_resp": {"status_code": 0.0}, "model_remains": [row()]},
        {"base_resp": {"status_code": 0}, "model_remains": {"general": row()}},
        {"base_resp": {"status_code": 0}, "model_remains": "general"},
        {"base_resp": {"status_code": 0}, "model_remains": [row(), "general"]},
        {"base_resp": {"status_code": 0}, "model_remains": [None]},
    ],
)
def test_malformed_documents_are_invalid_response(payload):
    assert error_kind(payload) == "invalid_response"


# --- over HTTP with the stand-in -----------------------------------------------------------


def test_fetch_quota_sends_the_key_as_bearer_and_normalizes(standin):
    standin.state.configure(
        {
            "quota": {
                KEY: body([row(current_interval_remaining_percent=40, weekly_boost_permille=500)])
            }
        }
    )
    assert fetch_quota(KEY) == [short(40), weekly(44)]
    calls = standin.state.calls(REMAINS)
    assert [(c["method"], c["key"]) for c in calls] == [("GET", KEY)]
    assert calls[0]["headers"]["authorization"] == f"Bearer {KEY}"


def test_fetch_quota_oversize_body_is_invalid_response(standin):
    standin.state.configure({"failure": "oversize"})
    with pytest.raises(UpstreamError) as caught:
        fetch_quota(KEY)
    assert caught.value.kind == "invalid_response"


def test_fetch_quota_timeout_is_network(standin, settings):
    settings.MINIMAX_TIMEOUT_SECONDS = 1
    standin.state.configure({"failure": "timeout", "timeout_sleep_s": 2})
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        fetch_quota(KEY)
    assert caught.value.kind == "network"
    assert time.monotonic() - started < 1.9  # gave up at its own timeout, not the server's


def test_fetch_quota_slow_trickled_body_is_network(standin, settings):
    settings.MINIMAX_TIMEOUT_SECONDS = 1
    standin.state.configure(
        {"failure": "slow_body", "timeout_sleep_s": 3, "trickle_interval_s": 0.2}
    )
    with pytest.raises(UpstreamError) as caught:
        fetch_quota(KEY)
    assert caught.value.kind == "network"


@pytest.mark.parametrize("failure", ["500", "401", "403", "429", "redirect"])
def test_fetch_quota_non_200_is_http(standin, failure):
    standin.state.configure({"failure": failure})
    with pytest.raises(UpstreamError) as caught:
        fetch_quota(KEY)
    assert caught.value.kind == "http"
    assert caught.value.http_status == (302 if failure == "redirect" else int(failure))
    # No redirect is followed (SPEC 11.3).
    assert [c["path"] for c in standin.state.calls()] == [REMAINS]


def test_fetch_quota_malformed_body_is_invalid_response(standin):
    standin.state.configure({"failure": "malformed"})
    with pytest.raises(UpstreamError) as caught:
        fetch_quota(KEY)
    assert caught.value.kind == "invalid_response"


def test_fetch_quota_unreachable_is_network(settings):
    settings.MINIMAX_API_BASE_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(UpstreamError) as caught:
        fetch_quota(KEY)
    assert caught.value.kind == "network"


@pytest.mark.parametrize(
    ("profile", "kind"),
    [
        ({"status_code": 1004}, "subscription_inactive"),
        ({"rows": "null"}, "subscription_inactive"),
        ({"rows": "empty"}, "subscription_inactive"),
        ({"status_code": 1002, "rows": "general"}, "application"),
        ({"rows": "missing_general"}, "invalid_response"),
        ({"rows": "duplicate_general"}, "invalid_response"),
        ({"overrides": {"current_interval_remaining_percent": "73"}}, "invalid_response"),
        ({"overrides": {"end_time": -1}}, "invalid_response"),
    ],
)
def test_fetch_quota_typed_errors_from_stand_in_profiles(standin, profile, kind):
    standin.state.configure({"quota_profiles": {KEY: profile}})
    with pytest.raises(UpstreamError) as caught:
        fetch_quota(KEY)
    assert caught.value.kind == kind


# --- the stand-in's quota profiles (configurable from another process) ----------------------


def test_stand_in_profiles_from_another_process_per_key(standin):
    other = "sk-quota-other-key-000000"
    r = httpx.post(
        standin.url + "/_standin/config",
        json={
            "quota_profiles": {
                KEY: {
                    "short_percent": 40,
                    "weekly_status": 3,
                    "boost": 1500,
                    "overrides": {"start_time": SHORT_START, "end_time": SHORT_END},
                },
                "*": {"short_status": 2, "weekly_percent": 12},
            }
        },
    )
    assert r.status_code == 200, r.text
    assert fetch_quota(KEY) == [short(60)]
    windows = fetch_quota(other)
    assert [(w["id"], w["remaining_percent"]) for w in windows] == [
        ("short_term", 0),
        ("weekly", 12),
    ]
    # `null` removes a profile; the wildcard then applies.
    httpx.post(standin.url + "/_standin/config", json={"quota_profiles": {KEY: None}})
    assert [w["remaining_percent"] for w in fetch_quota(KEY)] == [0, 12]
    # A full body per key wins over any profile.
    standin.state.configure({"quota": {KEY: body()}})
    assert fetch_quota(KEY) == [short(73), weekly(88)]


def test_stand_in_profile_reset_times_stay_in_the_future(standin):
    standin.state.configure({"quota_profiles": {KEY: {"short_percent": 10}}})
    before = int(time.time() * 1000)
    raw = httpx.get(standin.url + REMAINS, headers={"Authorization": f"Bearer {KEY}"}).json()
    general = raw["model_remains"][0]
    assert general["end_time"] > before and general["weekly_end_time"] > before
    assert general["start_time"] < before
    assert raw["base_resp"] == {"status_code": 0, "status_msg": "success"}


@pytest.mark.parametrize(
    "profiles",
    [
        {KEY: {"shortpercent": 40}},  # unknown argument
        {KEY: {"rows": "sideways"}},  # unknown row layout
        {KEY: "forty"},
        ["not", "an", "object"],
    ],
)
def test_stand_in_rejects_bad_profiles_and_changes_nothing(standin, profiles):
    r = httpx.post(
        standin.url + "/_standin/config", json={"quota_profiles": profiles, "latency_ms": 5}
    )
    assert r.status_code == 400
    assert standin.state.quota_profiles == {}
    assert standin.state.latency_ms == 0


def test_quota_body_shapes():
    now = 1_767_225_600_000
    healthy = quota_body(now_ms=now)
    assert healthy["base_resp"] == {"status_code": 0, "status_msg": "success"}
    assert [r["model_name"] for r in healthy["model_remains"]] == ["general"]
    assert quota_body(status_code=1004, now_ms=now) == {
        "base_resp": {"status_code": 1004, "status_msg": "no active token plan"},
        "model_remains": None,
    }
    assert quota_body(rows="empty")["model_remains"] == []
    assert [r["model_name"] for r in quota_body(rows="duplicate_general")["model_remains"]] == [
        "general",
        "general",
    ]
    extra = quota_body(extra_rows=[{"model_name": "speech-hd"}])["model_remains"]
    assert [r["model_name"] for r in extra] == ["general", "speech-hd"]
    assert quota_body(boost=1200)["model_remains"][0]["weekly_boost_permille"] == 1200
    with pytest.raises(ValueError):
        quota_body(rows="sideways")
