"""What the provider suites share: a plan, a model and keys per provider (SPEC V1–V4)."""

from __future__ import annotations

import itertools
import json
import uuid

from django.test import Client

PROVIDERS = ("minimax", "byteplus")
PLAN = {"minimax": "minimax-token-plan-plus", "byteplus": "byteplus-coding-plan-pro"}
PRICE_MICROS = {"minimax": 20_000_000, "byteplus": 100_000_000}
MODEL = {"minimax": "MiniMax-M2", "byteplus": "ark-code-latest"}
NAME = {"minimax": "MiniMax", "byteplus": "BytePlus"}
# Upstream paths of the chat completions endpoint, as each stand-in records them.
CHAT_PATH = {"minimax": "/v1/chat/completions", "byteplus": "/api/coding/v3/chat/completions"}
GATEWAY = "/api/v1/gateway/chat/completions"
PURCHASES = "/api/v1/coding-plans/purchases"

_keys = itertools.count(1)


def own_key(provider_id: str) -> str:
    """A key of the provider's shape that its stand-in accepts."""
    return f"own-{provider_id}-key-{next(_keys):08d}"


def rejected_key(provider_id: str) -> str:
    """A key of the provider's shape that its stand-in rejects (401)."""
    return {"minimax": "sk-invalid-", "byteplus": "bp-invalid-"}[provider_id] + f"{next(_keys):08d}"


def purchase(api: Client, plan_id: str):
    return api.post(
        PURCHASES,
        json.dumps({"plan_id": plan_id}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex,
    )


def chat(api: Client, provider_id: str, *, stream: bool = False, **extra):
    body = {
        "model": f"{provider_id}/{MODEL[provider_id]}",
        "messages": [{"role": "user", "content": "one two three"}],
        **extra,
    }
    if stream:
        body["stream"] = True
    return api.post(GATEWAY, json.dumps(body), content_type="application/json")


def read(response) -> bytes:
    """The whole answer; the test client closes a streamed one once it is consumed (which
    records its usage), and a plain one before returning it."""
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)
    return response.content
