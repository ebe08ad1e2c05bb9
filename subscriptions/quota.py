"""Current quota for a live subscription (SPEC Q1, Q2), fetched server-side with the
subscription's *assigned credential* — not the BYOK entry, which the customer may have replaced
or deleted — and cached briefly per subscription. A provider that does not report quota
answers `supported: false` without any upstream call (SPEC V3)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.cache import cache

from codingplans import outages
from codingplans.crypto import SecretUnavailable
from inventory.models import Credential
from inventory.services import decrypted_key
from subscriptions.errors import SubscriptionNotLive
from subscriptions.models import Subscription
from subscriptions.replacement import KEY_REJECTED_HTTP_STATUSES, flag_credential_problem
from subscriptions.selectors import iso
from upstream.errors import UpstreamError
from upstream.providers import registry

CACHE_SECONDS = 30  # ≤ 60 s (Q2)
ERROR_CACHE_SECONDS = 10

ERROR_STATUS = {"subscription_inactive": 409}
# The only codes a caller ever sees (Q2); anything else (e.g. `invalid_key`, a stored key that
# cannot be sent as a header) is reported as `application`.
ERROR_KINDS = frozenset({"network", "http", "invalid_response", "application"}) | set(ERROR_STATUS)
UNAVAILABLE_MESSAGE = "The quota for this plan cannot be read right now."
KEY_INACTIVE_MESSAGE = "This plan's key is no longer active."


class QuotaUnavailable(UpstreamError):
    """An upstream failure surfaced to the API: the code is the kind (Q2)."""

    def __init__(self, kind: str, message: str):
        if kind not in ERROR_KINDS:
            kind, message = "application", UNAVAILABLE_MESSAGE
        super().__init__(kind, message)
        self.code = kind
        self.status = ERROR_STATUS.get(kind, 502)


@dataclass(frozen=True)
class Quota:
    fetched_at: str | None
    windows: list[dict[str, Any]]
    supported: bool = True  # False: the provider does not report quota (SPEC V3)

    def as_json(self) -> dict[str, Any]:
        return {"fetched_at": self.fetched_at, "windows": self.windows, "supported": self.supported}


NOT_REPORTED = Quota(fetched_at=None, windows=[], supported=False)


def _cache_key(subscription: Subscription) -> str:
    return f"quota:v1:{subscription.pk}:{subscription.credential_id}"


def _cache_get(key: str) -> Any:
    """A cache outage costs an upstream call, never the page (Q2)."""
    try:
        return cache.get(key)
    except Exception as exc:  # any backend error: fetch instead
        outages.record("quota cache", exc)
        return None


def _cache_set(key: str, value: Any, seconds: int) -> None:
    try:
        cache.set(key, value, seconds)
    except Exception as exc:  # any backend error: serve uncached
        outages.record("quota cache", exc)


def _fail(key: str, kind: str, message: str) -> QuotaUnavailable:
    error = QuotaUnavailable(kind, message)
    _cache_set(key, {"error": {"code": error.code, "message": error.message}}, ERROR_CACHE_SECONDS)
    return error


def quota_for(subscription: Subscription, *, now: datetime) -> Quota:
    """Windows for a live subscription, or QuotaUnavailable. A terminal subscription raises
    SubscriptionNotLive without any upstream call."""
    if not subscription.is_live:
        raise SubscriptionNotLive()
    provider = registry.provider(subscription.provider_id)
    if not provider.reports_quota:
        return NOT_REPORTED
    key = _cache_key(subscription)
    cached = _cache_get(key)
    if isinstance(cached, dict):
        if "error" in cached:
            raise QuotaUnavailable(cached["error"]["code"], cached["error"]["message"])
        return Quota(**cached)
    credential = Credential.objects.get(pk=subscription.credential_id)
    if credential.state != Credential.State.ASSIGNED or not credential.encrypted_key:
        # A live subscription whose key is already being revoked: a quota error, not a broken
        # page or a 409 `subscription_not_live` for a subscription that is live.
        raise _fail(key, "subscription_inactive", KEY_INACTIVE_MESSAGE)
    try:
        windows = provider.fetch_quota(decrypted_key(credential))
    except UpstreamError as exc:
        if exc.http_status in KEY_REJECTED_HTTP_STATUSES:
            # The provider rejects the plan's own key: it died (SPEC H3).
            flag_credential_problem(
                subscription_id=subscription.pk,
                key_fingerprint=credential.fingerprint,
                source="quota",
                now=now,
            )
        raise _fail(key, exc.kind, exc.message) from None
    except SecretUnavailable:
        raise _fail(key, "application", UNAVAILABLE_MESSAGE) from None
    quota = Quota(fetched_at=iso(now), windows=windows)
    _cache_set(key, quota.as_json(), CACHE_SECONDS)
    return quota
