"""/api/v1/byok (SPEC 11.1, B1–B3). Only masked hints leave the server."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone
from ninja import Router, Schema, Status
from pydantic import StrictBool, StrictStr

from byok import selectors, services
from byok.models import ByokKey

router = Router(tags=["byok"])


class KeyOut(Schema):
    id: int
    provider_id: str
    enabled: bool
    key_hint: str
    managed_by: str | None
    subscription_id: int | None
    created_at: datetime
    updated_at: datetime


class KeysOut(Schema):
    keys: list[KeyOut]


class KeyIn(Schema):
    provider_id: StrictStr
    api_key: StrictStr


class KeyPatch(Schema):
    api_key: StrictStr | None = None
    enabled: StrictBool | None = None


class TestOut(Schema):
    ok: bool
    error: dict | None = None


def key_out(key: ByokKey) -> dict:
    return {
        "id": key.pk,
        "provider_id": key.provider_id,
        "enabled": key.enabled,
        "key_hint": key.key_hint,
        "managed_by": key.managed_by,
        "subscription_id": getattr(key, "subscription_id", None),
        "created_at": key.created_at,
        "updated_at": key.updated_at,
    }


@router.get("", response=KeysOut)
def list_keys(request):
    return {"keys": [key_out(k) for k in selectors.keys_for(request.auth)]}


@router.post("", response={201: KeyOut})
def add_key(request, payload: KeyIn):
    key = services.add_key(
        user=request.auth,
        provider_id=payload.provider_id,
        api_key=payload.api_key,
        now=timezone.now(),
    )
    return Status(201, key_out(key))


@router.get("/{int:key_id}", response=KeyOut)
def get_key(request, key_id: int):
    return key_out(selectors.key_for(request.auth, key_id))


@router.patch("/{int:key_id}", response=KeyOut)
def patch_key(request, key_id: int, payload: KeyPatch):
    key = services.update_key(
        user=request.auth,
        key_id=key_id,
        api_key=payload.api_key,
        enabled=payload.enabled,
        now=timezone.now(),
    )
    return key_out(key)


@router.delete("/{int:key_id}", response={204: None})
def delete_key(request, key_id: int):
    services.delete_key(user=request.auth, key_id=key_id, now=timezone.now())
    return Status(204, None)


@router.post("/{int:key_id}/test", response=TestOut)
def test_key(request, key_id: int):
    result = services.check_stored_key(user=request.auth, key_id=key_id)
    if result.ok:
        return {"ok": True, "error": None}
    return {
        "ok": False,
        "error": {"code": result.error, "message": result.message},
    }
