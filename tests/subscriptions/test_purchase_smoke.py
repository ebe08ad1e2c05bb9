import pytest

pytestmark = pytest.mark.django_db


def test_purchase_activates_and_installs_entry(api, stock, customer):
    stock("minimax-token-plan-plus", 2)
    r = api.post(
        "/api/v1/coding-plans/purchases",
        {"plan_id": "minimax-token-plan-plus"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert r.status_code == 201, r.content
    sub = r.json()["subscription"]
    assert sub["status"] == "active" and sub["price_usd"] == "20.00" and sub["byok_key_id"]
    again = api.post(
        "/api/v1/coding-plans/purchases",
        {"plan_id": "minimax-token-plan-plus"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )
    assert again.status_code == 201 and again.json() == r.json()
    assert api.get("/api/v1/credits").json()["balance_usd"] == "80.00"
    keys = api.get("/api/v1/byok").json()["keys"]
    assert keys[0]["managed_by"] == "coding_plan" and keys[0]["subscription_id"] == sub["id"]
    charges = api.get(f"/api/v1/coding-plans/subscriptions/{sub['id']}/charges").json()
    assert len(charges["charges"]) == 1 and charges["next_cursor"] is None
