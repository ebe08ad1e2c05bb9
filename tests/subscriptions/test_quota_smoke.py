import pytest
from django.utils import timezone

from subscriptions.purchase import purchase_plan

pytestmark = pytest.mark.django_db


def test_quota_endpoint_and_page(api, logged_in, customer, stock, standin):
    # SPEC Q1
    stock()
    out = purchase_plan(
        user=customer, plan_id="minimax-token-plan-plus", idempotency_key="q", now=timezone.now()
    )
    r = api.get(f"/api/v1/coding-plans/subscriptions/{out.subscription_id}/quota")
    assert r.status_code == 200, r.content
    windows = r.json()["windows"]
    assert [w["id"] for w in windows] == ["short_term", "weekly"]
    assert windows[0]["remaining_percent"] == 73 and windows[0]["period"] == {
        "unit": "hour",
        "value": 5,
    }
    page = logged_in.get(f"/subscriptions/coding-plans/{out.subscription_id}/").content.decode()
    assert 'data-window="short_term"' in page and "73% left" in page
    current = api.get("/api/v1/coding-plans/current").json()["subscriptions"]
    assert current[0]["routing"]["installed_entry_linked"] is True
    assert current[0]["quota"]["windows"][1]["id"] == "weekly"
