import pytest
from django.utils import timezone

from byok.services import update_key
from gateway.models import GatewayRequest
from inventory.models import Credential
from subscriptions.actions import terminate_subscription
from subscriptions.purchase import purchase_plan

pytestmark = pytest.mark.django_db

BODY = {"model": "minimax/MiniMax-M2", "messages": [{"role": "user", "content": "hello there"}]}


def test_gateway_routes_with_installed_then_own_key(api, customer, stock, standin):
    # SPEC G1, G3
    keys = stock()
    r = api.post("/api/v1/gateway/chat/completions", BODY, content_type="application/json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "no_provider_key"
    out = purchase_plan(
        user=customer, plan_id="minimax-token-plan-plus", idempotency_key="g", now=timezone.now()
    )
    r = api.post("/api/v1/gateway/chat/completions", BODY, content_type="application/json")
    assert r.status_code == 200, r.content
    assert r.json()["choices"][0]["message"]["content"]
    call = standin.state.calls("/v1/chat/completions")[-1]
    assert call["key"] == keys[0] and call["body"]["model"] == "MiniMax-M2"
    assert GatewayRequest.objects.get().subscription_id == out.subscription_id
    cred = Credential.objects.get(subscription__id=out.subscription_id)
    assert cred.state == "assigned"
    entry_id = api.get("/api/v1/byok").json()["keys"][0]["id"]
    update_key(user=customer, key_id=entry_id, api_key="sk-own-key-12345678", now=timezone.now())
    api.post("/api/v1/gateway/chat/completions", BODY, content_type="application/json")
    assert standin.state.calls("/v1/chat/completions")[-1]["key"] == "sk-own-key-12345678"


def test_terminated_plan_gives_no_provider_key(api, customer, stock):
    stock()
    out = purchase_plan(
        user=customer, plan_id="minimax-token-plan-plus", idempotency_key="g", now=timezone.now()
    )
    terminate_subscription(subscription_id=out.subscription_id, actor="staff:1", now=timezone.now())
    r = api.post("/api/v1/gateway/chat/completions", BODY, content_type="application/json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "no_provider_key"
    r = api.post(
        "/api/v1/gateway/chat/completions",
        {**BODY, "model": "openai/gpt"},
        content_type="application/json",
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_provider"
