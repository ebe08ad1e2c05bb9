from __future__ import annotations

from byok.errors import KeyNotFound
from byok.models import ByokKey


def keys_for(user) -> list[ByokKey]:
    return list(ByokKey.objects.filter(user=user).order_by("provider_id"))


def key_for(user, key_id: int) -> ByokKey:
    key = ByokKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise KeyNotFound()
    return key
