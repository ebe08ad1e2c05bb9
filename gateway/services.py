"""Gateway services: resolve the caller's enabled provider key, record usage (SPEC G1, G3)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Sum

from byok.models import ByokKey
from codingplans import crypto
from gateway.errors import NoProviderKey, UnknownProvider
from gateway.models import GatewayRequest


@dataclass(frozen=True)
class Route:
    provider_id: str
    upstream_model: str
    # Decrypted only for this call; never logged or returned (kept out of repr and tracebacks).
    api_key: str = field(repr=False)
    subscription_id: int | None


def resolve_route(*, user, model: object) -> Route:
    """`minimax/<model>` → the caller's enabled MiniMax BYOK entry, whatever its origin (G1)."""
    if not isinstance(model, str) or "/" not in model:
        raise UnknownProvider()
    provider_id, _, upstream_model = model.partition("/")
    if provider_id not in settings.PROVIDERS or not upstream_model:
        raise UnknownProvider()
    entry = ByokKey.objects.filter(user=user, provider_id=provider_id, enabled=True).first()
    if entry is None:
        raise NoProviderKey()
    try:
        api_key = crypto.decrypt(entry.encrypted_key)
    except crypto.SecretUnavailable:  # encrypted under a retired key: unusable until replaced
        raise NoProviderKey(
            "Your stored key for this provider can no longer be read; replace it in BYOK."
        ) from None
    return Route(
        provider_id=provider_id,
        upstream_model=upstream_model,
        api_key=api_key,
        subscription_id=entry.subscription_id,
    )


def record_usage(
    *,
    user_id: int,
    route: Route,
    streamed: bool,
    usage: dict | None,
    latency_ms: int,
    now: datetime,
) -> None:
    usage = usage if isinstance(usage, dict) else {}

    def tokens(name: str) -> int:
        value = usage.get(name)
        return value if isinstance(value, int) and 0 <= value < 2**31 else 0

    GatewayRequest.objects.create(
        user_id=user_id,
        subscription_id=route.subscription_id,
        provider_id=route.provider_id,
        model=route.upstream_model[:100],
        streamed=streamed,
        prompt_tokens=tokens("prompt_tokens"),
        completion_tokens=tokens("completion_tokens"),
        latency_ms=max(0, min(latency_ms, 2**31 - 1)),
        created_at=now,
    )


def usage_in_period(subscription) -> dict[str, int]:
    """Requests and tokens routed through the plan's installed entry in the current period."""
    totals = GatewayRequest.objects.filter(
        subscription=subscription, created_at__gte=subscription.current_period_start
    ).aggregate(
        requests=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens")
    )
    return {
        "requests": totals["requests"] or 0,
        "prompt_tokens": totals["prompt"] or 0,
        "completion_tokens": totals["completion"] or 0,
    }


def usage_from_sse(buffer: bytes) -> dict | None:
    """The last `usage` block in a stream of `data:` lines, if any."""
    found = None
    for line in buffer.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]" or b'"usage"' not in payload:
            continue
        try:
            found = json.loads(payload).get("usage") or found
        except (ValueError, AttributeError):
            continue
    return found
