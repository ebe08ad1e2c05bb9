"""/api/v1/coding-plans/... (SPEC 11.1): thin handlers over services and selectors."""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Status

from catalog import get_plan
from codingplans.ratelimit import enforce
from gateway.services import usage_in_period
from subscriptions import actions, intents, selectors
from subscriptions.errors import IdempotencyKeyMissing, PlanNotFound, SubscriptionNotFound
from subscriptions.purchase import MAX_IDEMPOTENCY_KEY_LENGTH, purchase_plan
from subscriptions.quota import QuotaUnavailable, quota_for

router = Router(tags=["coding-plans"])

# The body is read by `_purchase_plan_id`, not by a schema, so it is documented here.
_PURCHASE_OPENAPI = {
    "parameters": [
        {
            "in": "header",
            "name": "Idempotency-Key",
            "required": True,
            "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"plan_id": {"type": "string"}},
                    "required": ["plan_id"],
                }
            }
        },
    },
}


def _purchase_plan_id(request: HttpRequest) -> object:
    """The `plan_id` the body names, or None. Read leniently (an empty, garbled or non-object
    body names no plan) so that P5's order holds for any request: `idempotency_key_missing`
    first, then `plan_not_found` — never a generic parse error that hides the missing key."""
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return request.POST.get("plan_id")
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data.get("plan_id") if isinstance(data, dict) else None


def idempotency_key(raw: object) -> object:
    """PostgreSQL text cannot hold NUL: such a key is refused like a missing one (P5), not a 500."""
    if isinstance(raw, str) and "\x00" in raw:
        raise IdempotencyKeyMissing("The Idempotency-Key must not contain NUL characters.")
    return raw


def _subscription_id(raw: str) -> int:
    """Path ids that are not a plain number are a 404 in the API's error envelope, not an HTML
    page from the URL resolver."""
    if not (raw.isascii() and raw.isdigit()):
        raise SubscriptionNotFound()
    return int(raw)


@router.get("/catalog")
def catalog(request: HttpRequest):
    """Plans with their sold-out state, never counts (C3)."""
    return {"plans": selectors.catalog_json()}


@router.post("/purchases", response={201: dict}, openapi_extra=_PURCHASE_OPENAPI)
def purchase(request: HttpRequest):
    enforce("purchase", str(request.auth.pk), limit=settings.PURCHASE_RATE_LIMIT_PER_MINUTE)
    outcome = purchase_plan(
        user=request.auth,
        plan_id=_purchase_plan_id(request),
        idempotency_key=idempotency_key(request.headers.get("Idempotency-Key")),
        now=timezone.now(),
    )
    return Status(outcome.status, {"subscription": outcome.body})


@router.get("/subscriptions")
def list_subscriptions(request: HttpRequest, include_terminal: str | None = None):
    include = (include_terminal or "").lower() in {"1", "true", "yes"}
    return {"subscriptions": selectors.subscriptions_json(request.auth, include_terminal=include)}


@router.get("/subscriptions/{subscription_id}")
def get_subscription(request: HttpRequest, subscription_id: str):
    subscription = selectors.subscription_for(request.auth, _subscription_id(subscription_id))
    return selectors.subscription_json(
        subscription, byok_key_id=selectors.installed_entry_id(subscription)
    )


@router.get("/subscriptions/{subscription_id}/charges")
def list_charges(request: HttpRequest, subscription_id: str, cursor: str | None = None):
    subscription = selectors.subscription_for(request.auth, _subscription_id(subscription_id))
    terms, next_cursor = selectors.charges_page(subscription, cursor=cursor or None)
    return {"charges": [selectors.charge_json(t) for t in terms], "next_cursor": next_cursor}


@router.post("/subscriptions/{int:subscription_id}/cancel")
def cancel(request: HttpRequest, subscription_id: int):
    subscription = actions.cancel_at_period_end(
        user=request.auth, subscription_id=subscription_id, now=timezone.now()
    )
    return selectors.subscription_json(subscription)


@router.post("/subscriptions/{int:subscription_id}/resume")
def resume(request: HttpRequest, subscription_id: int):
    subscription = actions.resume_subscription(
        user=request.auth, subscription_id=subscription_id, now=timezone.now()
    )
    return selectors.subscription_json(subscription)


@router.get("/subscriptions/{int:subscription_id}/quota")
def quota(request: HttpRequest, subscription_id: int):
    subscription = selectors.subscription_for(request.auth, subscription_id)
    return quota_for(subscription, now=timezone.now()).as_json()


@router.get("/current")
def current(request: HttpRequest):
    """For clients (IDE extensions, CLIs): live plans with routing state and quota, no history."""
    now = timezone.now()
    plans = []
    for subscription in selectors.subscriptions_for(request.auth):
        entry = selectors.installed_entry(subscription)
        item = {
            "subscription_id": subscription.pk,
            "plan_id": subscription.plan_id,
            "name": subscription.plan_name,
            "provider_id": subscription.provider_id,
            "provider_name": selectors.provider_name(subscription.provider_id),
            "status": subscription.status,
            "cancel_at_period_end": subscription.cancel_at_period_end,
            "current_period_end": selectors.iso(subscription.current_period_end),
            "grace_deadline": selectors.iso(subscription.grace_deadline),
            "routing": {
                "installed_entry_linked": entry is not None,
                "installed_entry_enabled": bool(entry and entry.enabled),
                "byok_key_id": entry.pk if entry else None,
            },
            "usage": usage_in_period(subscription),
            "quota": None,
            "quota_error": None,
        }
        try:
            item["quota"] = quota_for(subscription, now=now).as_json()
        except QuotaUnavailable as exc:
            item["quota_error"] = {"code": exc.code, "message": exc.message}
        plans.append(item)
    return {"subscriptions": plans}


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
    intents.save_intent(user=request.auth, plan_id=plan_id, now=timezone.now())
    return {"plan_id": plan_id, "saved": True}


@router.delete("/{plan_id}/availability-intent")
def delete_intent(request: HttpRequest, plan_id: str):
    intents.withdraw_intent(user=request.auth, plan_id=plan_id, now=timezone.now())
    return {"plan_id": plan_id, "saved": False}


def register(api) -> None:
    api.add_router("/coding-plans", router)
