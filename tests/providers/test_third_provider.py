"""Adding a provider is its module, its stand-in and a catalog entry — nothing else (issue 18
acceptance, SPEC V1). A made-up provider, Acme (tests/providers/fake_provider.py), registered at
test time through the settings, works end to end: catalog, inventory upload, purchase, BYOK key
test, the gateway (streaming and not), the quota answer and the Subscription Center."""

from __future__ import annotations

import json

import pytest

from gateway.models import GatewayRequest
from subscriptions.models import Subscription
from tests.conftest import api_client_for
from tests.providers.fake_provider import AcmeStandin
from tests.providers.helpers import purchase, read

PLAN_ID = "acme-coder-plan"


@pytest.fixture(scope="module")
def acme_standin():
    with AcmeStandin() as server:
        yield server


@pytest.fixture
def acme(settings, acme_standin):
    acme_standin.state.reset()
    settings.PROVIDERS = {**settings.PROVIDERS, "acme": "Acme"}
    settings.CODING_PLANS_PROVIDER_MODULES = {
        **settings.CODING_PLANS_PROVIDER_MODULES,
        "acme": "tests.providers.fake_provider",
    }
    settings.CODING_PLANS_CATALOG = [
        *settings.CODING_PLANS_CATALOG,
        {
            "plan_id": PLAN_ID,
            "provider_id": "acme",
            "name": "Coder Plan",
            "price_micros": 30_000_000,
            "billing_period_days": 30,
            "features": ["acme-coder"],
        },
    ]
    settings.ACME_API_BASE_URL = acme_standin.url
    settings.ACME_TIMEOUT_SECONDS = 2
    settings.CODING_PLANS_PURCHASE_ENABLED = True
    return acme_standin


def test_a_third_provider_works_end_to_end(acme, make_user, stock, standins):
    plans = {
        p["plan_id"]: p
        for p in api_client_for(make_user()).get("/api/v1/coding-plans/catalog").json()["plans"]
    }
    assert plans[PLAN_ID]["provider_name"] == "Acme" and plans[PLAN_ID]["sold_out"] is True

    # Inventory: validated live against Acme's stand-in (and no other).
    (key,) = stock(PLAN_ID)
    assert [c["path"] for c in acme.state.calls()] == ["/v2/chat"]
    assert all(server.state.calls() == [] for server in standins.values())

    # Purchase: the installed entry is Acme's.
    user = make_user(credits_usd=100)
    api = api_client_for(user)
    r = purchase(api, PLAN_ID)
    assert r.status_code == 201, r.content
    subscription = Subscription.objects.get(user=user)
    assert subscription.provider_id == "acme"

    # BYOK: another customer's own Acme key, tested through Acme's module.
    other = api_client_for(make_user())
    r = other.post(
        "/api/v1/byok",
        {"provider_id": "acme", "api_key": "own-acme-key-0001"},
        content_type="application/json",
    )
    assert r.status_code == 201, r.content
    assert other.post(f"/api/v1/byok/{r.json()['id']}/test").json() == {"ok": True, "error": None}
    r = other.patch(
        f"/api/v1/byok/{r.json()['id']}",
        {"api_key": "invalid-acme-key-0002"},
        content_type="application/json",
    )
    test = other.post(f"/api/v1/byok/{r.json()['id']}/test").json()
    assert test["error"] == {"code": "invalid_key", "message": "Acme rejected this key."}

    # Gateway: `acme/<model>` goes to Acme with the plan's key, streaming and not; metered.
    with acme.state.lock:
        acme.state.requests.clear()
    for stream in (False, True):
        r = api.post(
            "/api/v1/gateway/chat/completions",
            json.dumps(
                {
                    "model": "acme/acme-coder",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": stream,
                }
            ),
            content_type="application/json",
        )
        assert r.status_code == 200
        body = read(r)
        if not stream:
            assert json.loads(body)["model"] == "acme/acme-coder"
    calls = acme.state.calls("/v2/chat")
    assert [c["key"] for c in calls] == [key, key]
    assert [c["body"]["model"] for c in calls] == ["acme-coder", "acme-coder"]
    assert GatewayRequest.objects.filter(provider_id="acme", subscription=subscription).count() == 2

    # Quota: Acme reports none (the interface's default).
    r = api.get(f"/api/v1/coding-plans/subscriptions/{subscription.pk}/quota")
    assert r.json() == {"fetched_at": None, "windows": [], "supported": False}

    # Pages: the Subscription Center groups Acme's plan under its name; the detail page says
    # how to call it and that Acme does not report usage.
    page = api_client_for(user)
    page.force_login(user)
    html = page.get("/subscriptions/").content.decode()
    assert 'data-provider="acme"' in html and ">Acme</h4>" in html
    html = page.get(f"/subscriptions/coding-plans/{subscription.pk}/").content.decode()
    assert "acme/acme-coder" in html
    assert "Acme does not report usage" in html


def test_an_unknown_provider_prefix_names_the_registered_ones(acme, make_user):
    api = api_client_for(make_user())
    r = api.post(
        "/api/v1/gateway/chat/completions",
        json.dumps({"model": "nope/x", "messages": [{"role": "user", "content": "hi"}]}),
        content_type="application/json",
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_provider"
    message = r.json()["error"]["message"]
    assert "minimax/MiniMax-M2" in message and "acme/acme-coder" in message
