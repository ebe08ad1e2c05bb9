"""A customer holding MiniMax Token Plan Plus and BytePlus Coding Plan Pro at once (SPEC P2, V2):
both renew in one sweep, each routes with its own key, cancelling one leaves the other."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from byok.models import ByokKey
from gateway.models import GatewayRequest
from inventory.models import Credential
from subscriptions.actions import cancel_at_period_end
from subscriptions.models import Subscription
from subscriptions.sweep import run_billing_sweep
from tests.conftest import api_client_for
from tests.lifecycle.helpers import balance
from tests.providers.helpers import CHAT_PATH, PLAN, chat, purchase, read


@pytest.fixture
def customer_with_both(make_user, stock, standins):
    keys = {provider_id: stock(plan_id)[0] for provider_id, plan_id in PLAN.items()}
    user = make_user(credits_usd=240)  # $120 now, $120 at renewal
    api = api_client_for(user)
    for plan_id in PLAN.values():
        assert purchase(api, plan_id).status_code == 201
    for server in standins.values():
        with server.state.lock:
            server.state.requests.clear()
    subscriptions = {s.provider_id: s for s in Subscription.objects.filter(user=user)}
    return user, api, keys, subscriptions


def test_a_second_plan_of_the_same_provider_is_refused(customer_with_both, stock):
    # SPEC P2: one live subscription per provider, not per customer.
    _, api, _, _ = customer_with_both
    stock("byteplus-coding-plan-lite")
    r = purchase(api, "byteplus-coding-plan-lite")
    assert r.status_code == 409 and r.json()["error"]["code"] == "subscription_exists"


def test_both_renew_in_one_sweep(customer_with_both):
    # SPEC L1, L2: one sweep, two providers' plans.
    user, _, _, subscriptions = customer_with_both
    latest = max(s.current_period_end for s in subscriptions.values())
    run = run_billing_sweep(now=latest + timedelta(minutes=1))
    assert run.counts["renewed"] == 2 and run.counts["errors"] == 0
    for subscription in subscriptions.values():
        before = subscription.current_period_end
        subscription.refresh_from_db()
        assert subscription.status == "active"
        assert subscription.current_period_end == before + timedelta(days=30)
    assert balance(user) == 0  # $20 + $100, twice


@pytest.mark.parametrize("stream", [False, True])
def test_each_routes_with_its_own_key(customer_with_both, standins, stream):
    # SPEC G1, V4: each provider's traffic carries that provider's installed key.
    _, api, keys, subscriptions = customer_with_both
    for provider_id in PLAN:
        r = chat(api, provider_id, stream=stream)
        assert r.status_code == 200
        read(r)
        (call,) = standins[provider_id].state.calls(CHAT_PATH[provider_id])
        assert call["key"] == keys[provider_id]
    recorded = {r.provider_id: r.subscription_id for r in GatewayRequest.objects.all()}
    assert recorded == {pid: s.pk for pid, s in subscriptions.items()}


def test_cancelling_one_leaves_the_other(customer_with_both, standins):
    # SPEC L5: the canceled plan ends at its period end; the other renews and keeps routing.
    user, api, keys, subscriptions = customer_with_both
    minimax, byteplus = subscriptions["minimax"], subscriptions["byteplus"]
    cancel_at_period_end(user=user, subscription_id=minimax.pk, now=timezone.now())
    latest = max(minimax.current_period_end, byteplus.current_period_end)
    run = run_billing_sweep(now=latest + timedelta(minutes=1))
    assert (run.counts["canceled"], run.counts["renewed"]) == (1, 1)
    minimax.refresh_from_db()
    byteplus.refresh_from_db()
    assert minimax.status == "canceled" and byteplus.status == "active"
    assert list(ByokKey.objects.filter(user=user).values_list("provider_id", flat=True)) == [
        "byteplus"
    ]
    assert Credential.objects.get(pk=minimax.credential_id).state == "revocation_pending"
    assert Credential.objects.get(pk=byteplus.credential_id).state == "assigned"

    r = chat(api, "minimax")
    assert r.status_code == 403 and r.json()["error"]["code"] == "no_provider_key"
    r = chat(api, "byteplus")
    assert r.status_code == 200
    assert json.loads(read(r))["model"].startswith("byteplus/")
    (call,) = standins["byteplus"].state.calls(CHAT_PATH["byteplus"])
    assert call["key"] == keys["byteplus"]
