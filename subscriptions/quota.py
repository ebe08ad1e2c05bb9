"""Current quota for a live subscription (SPEC Q1, Q2), fetched server-side with the
subscription's *assigned credential* — not the BYOK entry, which the customer may have replaced
or deleted — and cached briefly per subscription."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.cache import cache

from inventory.models import Credential
from inventory.services import decrypted_key
from subscriptions.lifecycle import SubscriptionNotLive
from subscriptions.models import Subscription
from subscriptions.selectors import iso
from upstream.errors import UpstreamError
from upstream.quota import fetch_quota

CACHE_SECONDS = 30  # ≤ 60 s (Q2)
ERROR_CACHE_SECONDS = 10

ERROR_STATUS = {"subscription_inactive": 409}


class QuotaUnavailable(UpstreamError):
    """An upstream failure surfaced to the API: the code is the kind (Q2)."""

    def __init__(self, kind: str, message: str):
        super().__init__(kind, message)
        self.code = kind
        self.status = ERROR_STATUS.get(kind, 502)


@dataclass(frozen=True)
class Quota:
    fetched_at: str
    windows: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"fetched_at": self.fetched_at, "windows": self.windows}


def _cache_key(subscription: Subscription) -> str:
    return f"quota:v1:{subscription.pk}:{subscription.credential_id}"


def quota_for(subscription: Subscription, *, now: datetime) -> Quota:
    """Windows for a live subscription, or QuotaUnavailable. A terminal subscription raises
    SubscriptionNotLive without any upstream call."""
    if not subscription.is_live:
        raise SubscriptionNotLive()
    key = _cache_key(subscription)
    cached = cache.get(key)
    if cached is not None:
        if "error" in cached:
            raise QuotaUnavailable(cached["error"]["code"], cached["error"]["message"])
        return Quota(**cached)
    credential = Credential.objects.get(pk=subscription.credential_id)
    if credential.state != Credential.State.ASSIGNED or not credential.encrypted_key:
        raise SubscriptionNotLive()
    try:
        windows = fetch_quota(decrypted_key(credential))
    except UpstreamError as exc:
        cache.set(key, {"error": {"code": exc.kind, "message": exc.message}}, ERROR_CACHE_SECONDS)
        raise QuotaUnavailable(exc.kind, exc.message) from None
    quota = Quota(fetched_at=iso(now), windows=windows)
    cache.set(key, quota.as_json(), CACHE_SECONDS)
    return quota
