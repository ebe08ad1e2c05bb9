"""/api/v1/coding-plans/... (SPEC 11.1): thin handlers over services and selectors."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Schema, Status

from subscriptions import selectors, services
from subscriptions.catalog import get_plan
from subscriptions.errors import PlanNotFound

router = Router(tags=["coding-plans"])


class PurchaseIn(Schema):
    plan_id: str | None = None


@router.get("/catalog")
def catalog(request: HttpRequest):
    """Plans with their sold-out state, never counts (C3)."""
    return {"plans": selectors.catalog_json()}


@router.post("/purchases", response={201: dict})
def purchase(request: HttpRequest, payload: PurchaseIn | None = None):
    outcome = services.purchase_plan(
        user=request.auth,
        plan_id=payload.plan_id if payload else None,
        idempotency_key=request.headers.get("Idempotency-Key"),
        now=timezone.now(),
    )
    return Status(outcome.status, {"subscription": outcome.body})


@router.get("/subscriptions")
def list_subscriptions(request: HttpRequest, include_terminal: str | None = None):
    include = (include_terminal or "").lower() in {"1", "true", "yes"}
    return {"subscriptions": selectors.subscriptions_json(request.auth, include_terminal=include)}


@router.get("/subscriptions/{int:subscription_id}")
def get_subscription(request: HttpRequest, subscription_id: int):
    subscription = selectors.subscription_for(request.auth, subscription_id)
    return selectors.subscription_json(
        subscription, byok_key_id=selectors.installed_entry_id(subscription)
    )


@router.get("/subscriptions/{int:subscription_id}/charges")
def list_charges(request: HttpRequest, subscription_id: int, cursor: str | None = None):
    subscription = selectors.subscription_for(request.auth, subscription_id)
    terms, next_cursor = selectors.charges_page(subscription, cursor=cursor or None)
    return {"charges": [selectors.charge_json(t) for t in terms], "next_cursor": next_cursor}


def _intent_plan(plan_id: str) -> str:
    if get_plan(plan_id) is None:
        raise PlanNotFound()
    return plan_id


@router.get("/{plan_id}/availability-intent")
def get_intent(request: HttpRequest, plan_id: str):
    plan_id = _intent_plan(plan_id)
    return {"plan_id": plan_id, "saved": selectors.intent_saved(request.auth, plan_id)}


@router.put("/{plan_id}/availability-intent")
def put_intent(request: HttpRequest, plan_id: str):
    services.save_intent(user=request.auth, plan_id=plan_id, now=timezone.now())
    return {"plan_id": plan_id, "saved": True}


@router.delete("/{plan_id}/availability-intent")
def delete_intent(request: HttpRequest, plan_id: str):
    services.withdraw_intent(user=request.auth, plan_id=plan_id, now=timezone.now())
    return {"plan_id": plan_id, "saved": False}


def register(api) -> None:
    api.add_router("/coding-plans", router)
