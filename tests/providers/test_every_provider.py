"""The provider-agnostic product, run against every provider (SPEC V1–V4, issue 18): purchase,
BYOK, the sweep, revocation, the gateway (streaming and not) and the quota answer, each
parametrized over the provider id, each provider served by its own stand-in."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from byok.models import ByokKey
from gateway.models import GatewayRequest
from inventory.models import Credential
from inventory.services import record_revocation_outcome
from inventory.upload import upload_credentials
from subscriptions.actions import terminate_subscription
from subscriptions.models import Subscription
from subscriptions.sweep import run_billing_sweep
from tests.conftest import api_client_for
from tests.providers.helpers import (
    CHAT_PATH,
    MODEL,
    NAME,
    PLAN,
    PRICE_MICROS,
    PROVIDERS,
    chat,
    own_key,
    purchase,
    read,
    rejected_key,
)

pytestmark = pytest.mark.parametrize("provider_id", PROVIDERS)


def clear(standins) -> None:
    """Forget the stand-ins' requests so far (stocking validates keys upstream)."""
    for server in standins.values():
        with server.state.lock:
            server.state.requests.clear()


def test_purchase_installs_the_plans_key_for_its_provider(provider_id, make_user, stock, standins):
    # SPEC P4, P6, V1, V2: the same purchase for every provider.
    (key,) = stock(PLAN[provider_id])
    user = make_user(credits_usd=200)
    r = purchase(api_client_for(user), PLAN[provider_id])
    assert r.status_code == 201, r.content
    subscription = r.json()["subscription"]
    assert subscription["provider_id"] == provider_id
    assert subscription["plan_id"] == PLAN[provider_id] and subscription["status"] == "active"
    entry = ByokKey.objects.get(user=user)
    assert (entry.provider_id, entry.managed_by) == (provider_id, "coding_plan")
    assert subscription["byok_key_id"] == entry.pk
    assert entry.subscription_id == subscription["id"]
    assert Credential.objects.get(subscription__pk=subscription["id"]).state == "assigned"
    assert key[-4:] == entry.key_hint[-4:]


def test_purchase_refuses_when_own_key_for_that_provider_is_in_byok(
    provider_id, make_user, stock, standins
):
    # SPEC P4 step 1, P5: the slot is per provider, and the message names the provider.
    stock(PLAN[provider_id])
    user = make_user(credits_usd=200)
    api = api_client_for(user)
    r = api.post(
        "/api/v1/byok",
        {"provider_id": provider_id, "api_key": own_key(provider_id)},
        content_type="application/json",
    )
    assert r.status_code == 201, r.content
    r = purchase(api, PLAN[provider_id])
    assert r.status_code == 409 and r.json()["error"]["code"] == "provider_slot_occupied"
    assert f"your own {NAME[provider_id]} key" in r.json()["error"]["message"]


def test_byok_add_and_test_use_the_providers_module(provider_id, make_user, standins):
    # SPEC B1, V1: the key test is one minimal call to that provider, at its own endpoint.
    api = api_client_for(make_user())
    r = api.post(
        "/api/v1/byok",
        {"provider_id": provider_id, "api_key": own_key(provider_id)},
        content_type="application/json",
    )
    assert r.status_code == 201, r.content
    key_id = r.json()["id"]
    assert r.json()["provider_id"] == provider_id
    r = api.post(f"/api/v1/byok/{key_id}/test")
    assert r.json() == {"ok": True, "error": None}
    (call,) = standins[provider_id].state.calls()
    assert call["path"] == CHAT_PATH[provider_id]
    assert call["body"]["max_tokens"] == 1
    for other, server in standins.items():
        if other != provider_id:
            assert server.state.calls() == []

    r = api.patch(
        f"/api/v1/byok/{key_id}",
        {"api_key": rejected_key(provider_id)},
        content_type="application/json",
    )
    assert r.status_code == 200, r.content
    r = api.post(f"/api/v1/byok/{key_id}/test")
    assert r.json()["ok"] is False
    assert r.json()["error"] == {
        "code": "invalid_key",
        "message": f"{NAME[provider_id]} rejected this key.",
    }


def test_inventory_upload_validates_against_the_plans_provider(provider_id, standins, db):
    # SPEC I2, I3, V1: live validation at the plan's provider; a rejected key rejects the upload.
    now = timezone.now()
    text = f"{own_key(provider_id)}::up-1\n{rejected_key(provider_id)}::up-2\n"
    report = upload_credentials(plan_id=PLAN[provider_id], text=text, actor="system:test", now=now)
    assert not report.ok and report.stored == 0
    assert report.errors == [
        {
            "line": 2,
            "reason": "failed live validation: "
            f"{NAME[provider_id]} rejected the key (invalid or already deactivated)",
        }
    ]
    assert len(standins[provider_id].state.calls(CHAT_PATH[provider_id])) == 2
    assert all(s.state.calls() == [] for p, s in standins.items() if p != provider_id)
    assert not Credential.objects.exists()


def test_sweep_renews_then_ends_for_lack_of_credits(provider_id, make_user, stock, standins):
    # SPEC L1–L3 for every provider.
    stock(PLAN[provider_id])
    price = PRICE_MICROS[provider_id]
    user = make_user(credits_usd=2 * price // 1_000_000)
    assert purchase(api_client_for(user), PLAN[provider_id]).status_code == 201
    subscription = Subscription.objects.get(user=user)
    end = subscription.current_period_end
    run = run_billing_sweep(now=end + timedelta(minutes=1))
    assert run.counts["renewed"] == 1 and run.counts["errors"] == 0
    subscription.refresh_from_db()
    assert subscription.current_period_end == end + timedelta(days=30)
    # The balance is now zero: the next renewal ends the plan (auto top-up off).
    run = run_billing_sweep(now=subscription.current_period_end + timedelta(minutes=1))
    assert run.counts["terminated"] == 1
    subscription.refresh_from_db()
    assert subscription.status == "canceled"
    assert not ByokKey.objects.filter(user=user).exists()
    assert Credential.objects.get(pk=subscription.credential_id).state == "revocation_pending"


def test_termination_and_revocation(provider_id, make_user, stock, standins):
    # SPEC L6, R1–R3 for every provider.
    stock(PLAN[provider_id])
    user = make_user(credits_usd=200)
    assert purchase(api_client_for(user), PLAN[provider_id]).status_code == 201
    subscription = Subscription.objects.get(user=user)
    now = timezone.now()
    terminate_subscription(subscription_id=subscription.pk, actor="staff:test", now=now)
    credential = Credential.objects.get(pk=subscription.credential_id)
    assert credential.state == "revocation_pending" and credential.encrypted_key == ""
    record_revocation_outcome(
        credential_id=credential.pk, outcome="revoked", note="", actor="staff:test", now=now
    )
    credential.refresh_from_db()
    assert credential.state == "revoked"
    assert not ByokKey.objects.filter(user=user).exists()


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_routes_to_the_callers_entry_and_meters(
    provider_id, stream, make_user, stock, standins
):
    # SPEC G1–G3, V4: `<provider>/<model>` goes to that provider with the caller's key.
    (key,) = stock(PLAN[provider_id])
    user = make_user(credits_usd=200)
    api = api_client_for(user)
    assert purchase(api, PLAN[provider_id]).status_code == 201
    subscription = Subscription.objects.get(user=user)
    clear(standins)
    r = chat(api, provider_id, stream=stream)
    assert r.status_code == 200
    body = read(r)
    if stream:
        assert r["Content-Type"].startswith("text/event-stream")
        assert body.rstrip().endswith(b"data: [DONE]")
    else:
        assert json.loads(body)["model"] == f"{provider_id}/{MODEL[provider_id]}"
    (call,) = standins[provider_id].state.calls(CHAT_PATH[provider_id])
    assert call["key"] == key
    assert call["body"]["model"] == MODEL[provider_id]
    assert all(s.state.calls() == [] for p, s in standins.items() if p != provider_id)
    request = GatewayRequest.objects.get()
    assert (request.provider_id, request.subscription_id) == (provider_id, subscription.pk)
    assert request.streamed is stream
    assert request.prompt_tokens == 3 and request.completion_tokens > 0


@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [
        ("401", 502, "provider_key_rejected"),
        ("403", 502, "provider_key_rejected"),
        ("429", 429, "provider_rate_limited"),
        ("500", 502, "provider_error"),
        ("timeout", 504, "provider_timeout"),
    ],
)
def test_gateway_maps_the_providers_failures(
    provider_id, failure, status, code, make_user, standins, settings
):
    # SPEC G3, V4: the same codes whatever the provider; Retry-After passed on.
    settings.GATEWAY_TIMEOUT_SECONDS = 0.5
    standins[provider_id].state.configure({"failure": failure, "timeout_sleep_s": 1.0})
    user = make_user()
    api = api_client_for(user)
    key = own_key(provider_id)
    assert (
        api.post(
            "/api/v1/byok",
            {"provider_id": provider_id, "api_key": key},
            content_type="application/json",
        ).status_code
        == 201
    )
    r = chat(api, provider_id)
    assert r.status_code == status, r.content
    assert r.json()["error"]["code"] == code
    if code == "provider_rate_limited":
        assert r["Retry-After"] == "7"
    text = r.content.decode().lower()
    assert key not in text and "stand-in" not in text
    assert not GatewayRequest.objects.exists()


def test_quota_answer(provider_id, make_user, stock, standins):
    # SPEC Q1, V3: MiniMax reports windows; BytePlus answers `supported: false`, with no call.
    stock(PLAN[provider_id])
    user = make_user(credits_usd=200)
    api = api_client_for(user)
    assert purchase(api, PLAN[provider_id]).status_code == 201
    subscription = Subscription.objects.get(user=user)
    clear(standins)
    r = api.get(f"/api/v1/coding-plans/subscriptions/{subscription.pk}/quota")
    assert r.status_code == 200, r.content
    if provider_id == "byteplus":
        assert r.json() == {"fetched_at": None, "windows": [], "supported": False}
        assert all(server.state.calls() == [] for server in standins.values())
    else:
        data = r.json()
        assert data["supported"] is True and data["fetched_at"]
        assert [w["id"] for w in data["windows"]] == ["short_term", "weekly"]
