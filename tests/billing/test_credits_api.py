"""/api/v1/credits and /api/v1/credits/auto-top-up (SPEC 11.1, U7, S2)."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from adminops.models import AuditEvent
from billing.models import CreditAccount
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db


def put_json(client: Client, path: str, body, **extra):
    return client.put(path, json.dumps(body), content_type="application/json", **extra)


def assert_error(response, status: int, code: str | None = None) -> dict:
    # SPEC 11.1: errors are {"error": {"code", "message"}} with a fitting status.
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body


def settings_of(user) -> tuple[int, bool, int]:
    account = CreditAccount.objects.get(user=user)
    return account.balance_micros, account.auto_top_up_enabled, account.auto_top_up_amount_micros


def test_credits_shows_balance_and_auto_top_up_in_usd_strings(api):
    # SPEC 11.1, U7: money is a two-decimal USD string; never microdollars.
    r = api.get("/api/v1/credits")
    assert r.status_code == 200
    assert r.json() == {
        "balance_usd": "100.00",
        "auto_top_up": {"enabled": False, "amount_usd": "20.00"},
    }


def test_credits_of_a_new_user_are_zero(make_user):
    r = api_client_for(make_user()).get("/api/v1/credits")
    assert r.json()["balance_usd"] == "0.00"


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("35.50", "35.50"), ("35.5", "35.50"), (40, "40.00"), ("0.01", "0.01"), ("10000", "10000.00")],
)
def test_auto_top_up_can_be_enabled_with_an_amount(api, customer, amount, shown):
    # SPEC U7, 11.1: PUT {"enabled", "amount_usd"} answers with the new credits object.
    r = put_json(api, "/api/v1/credits/auto-top-up", {"enabled": True, "amount_usd": amount})
    assert r.status_code == 200, r.content
    assert r.json() == {
        "balance_usd": "100.00",
        "auto_top_up": {"enabled": True, "amount_usd": shown},
    }
    assert api.get("/api/v1/credits").json()["auto_top_up"] == {
        "enabled": True,
        "amount_usd": shown,
    }
    assert settings_of(customer)[0] == 100_000_000  # the balance is untouched by a setting


def test_auto_top_up_can_be_switched_off_again(api, customer):
    put_json(api, "/api/v1/credits/auto-top-up", {"enabled": True, "amount_usd": "25.00"})
    r = put_json(api, "/api/v1/credits/auto-top-up", {"enabled": False, "amount_usd": "25.00"})
    assert r.json()["auto_top_up"] == {"enabled": False, "amount_usd": "25.00"}
    assert settings_of(customer) == (100_000_000, False, 25_000_000)


def test_auto_top_up_change_is_audited_and_a_repeat_is_a_no_op(api, customer):
    # SPEC O1: one audit event per state change; saving the same values again changes nothing.
    for _ in range(2):
        r = put_json(api, "/api/v1/credits/auto-top-up", {"enabled": True, "amount_usd": "30"})
        assert r.status_code == 200
    events = AuditEvent.objects.filter(event_type="credits.auto_top_up_changed")
    assert events.count() == 1
    event = events.get()
    assert event.actor == f"user:{customer.pk}"
    assert event.old_values == {"enabled": False, "amount_micros": 20_000_000}
    assert event.new_values == {"enabled": True, "amount_micros": 30_000_000}


@pytest.mark.parametrize(
    "amount",
    ["-5", "-0.01", "0", "0.00", "abc", "", "20.005", "1.001", "10000.01", "NaN", "Infinity", -5],
    ids=lambda a: repr(a),
)
def test_invalid_auto_top_up_amount_is_refused_and_changes_nothing(api, customer, amount):
    # SPEC 11.1, U7: negative, non-numeric, sub-cent or out-of-range → 400, nothing changed.
    before = settings_of(customer)
    r = put_json(api, "/api/v1/credits/auto-top-up", {"enabled": True, "amount_usd": amount})
    assert_error(r, 400, "invalid_amount")
    assert settings_of(customer) == before
    assert not AuditEvent.objects.filter(event_type="credits.auto_top_up_changed").exists()


@pytest.mark.parametrize(
    "body",
    [
        {"enabled": True, "amount_usd": True},  # must not become $1
        {"enabled": True, "amount_usd": 20.5},  # money is never a float
        {"enabled": True, "amount_usd": None},
        {"enabled": True},
        {"amount_usd": "20.00"},
        {"enabled": "maybe", "amount_usd": "20.00"},
        [],
        "not an object",
    ],
    ids=lambda b: json.dumps(b),
)
def test_malformed_auto_top_up_body_is_refused_and_changes_nothing(api, customer, body):
    before = settings_of(customer)
    assert_error(put_json(api, "/api/v1/credits/auto-top-up", body), 400)
    assert settings_of(customer) == before


def test_auto_top_up_with_broken_json_is_refused(api, customer):
    before = settings_of(customer)
    r = api.put("/api/v1/credits/auto-top-up", "{nope", content_type="application/json")
    assert_error(r, 400)
    assert settings_of(customer) == before


@pytest.mark.parametrize("method", ["get", "put"])
def test_anonymous_caller_gets_401_with_error_envelope(customer, method):
    # SPEC 11.1, S2: no token and no session → 401 in the error envelope.
    client = Client()
    if method == "get":
        r = client.get("/api/v1/credits")
    else:
        r = put_json(client, "/api/v1/credits/auto-top-up", {"enabled": True, "amount_usd": "30"})
    assert_error(r, 401, "unauthenticated")
    assert r["WWW-Authenticate"] == "Bearer"
    assert settings_of(customer)[1:] == (False, 20_000_000)


def test_session_auth_reads_credits_without_csrf(customer):
    # SPEC 11.1: the session cookie authenticates; CSRF applies to unsafe methods only.
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    assert client.get("/api/v1/credits").json()["balance_usd"] == "100.00"


def test_session_put_without_csrf_token_is_refused(customer):
    # SPEC 11.1, S2: session + unsafe method needs the CSRF token.
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    client.get("/credits/")  # sets the CSRF cookie, as a browser would have it
    r = put_json(client, "/api/v1/credits/auto-top-up", {"enabled": True, "amount_usd": "30"})
    assert_error(r, 403, "csrf_failed")
    assert settings_of(customer)[1:] == (False, 20_000_000)


def test_session_put_with_wrong_csrf_token_is_refused(customer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    client.get("/credits/")
    r = put_json(
        client,
        "/api/v1/credits/auto-top-up",
        {"enabled": True, "amount_usd": "30"},
        HTTP_X_CSRFTOKEN="x" * 32,
    )
    assert_error(r, 403, "csrf_failed")
    assert settings_of(customer)[1:] == (False, 20_000_000)


def test_session_put_with_csrf_token_succeeds(customer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    client.get("/credits/")
    token = client.cookies["csrftoken"].value
    r = put_json(
        client,
        "/api/v1/credits/auto-top-up",
        {"enabled": True, "amount_usd": "30"},
        HTTP_X_CSRFTOKEN=token,
    )
    assert r.status_code == 200, r.content
    assert settings_of(customer)[1:] == (True, 30_000_000)


def test_bearer_token_needs_no_csrf(customer):
    # SPEC 11.1: a Bearer token is not a cookie, so CSRF does not apply.
    client = api_client_for(customer)
    client.handler.enforce_csrf_checks = True
    r = put_json(client, "/api/v1/credits/auto-top-up", {"enabled": True, "amount_usd": "30"})
    assert r.status_code == 200, r.content
