"""Encryption at rest (MultiFernet; the first key encrypts, all decrypt) and keyed fingerprints.

Only services call `decrypt`, at the moment a secret is used; nothing else handles plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUnavailable(Exception):
    """The stored value cannot be decrypted with the configured keys (message carries no data)."""


def _fernet() -> MultiFernet:
    return _fernet_for(tuple(settings.CODING_PLANS_ENCRYPTION_KEYS))


@lru_cache(maxsize=8)
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    """Built once per key set (the gateway decrypts a key on every call), rebuilt when the
    configured keys change."""
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnavailable("stored secret cannot be decrypted with the configured keys") from (
            exc
        )


def rotate(token: str) -> str:
    """Re-encrypt under the first (newest) key; used when retiring an old key."""
    return _fernet().rotate(token.encode()).decode()


def fingerprint(value: str, *, purpose: str = "credential") -> str:
    """Keyed HMAC-SHA256, so a leaked table of fingerprints cannot be brute-forced offline."""
    key = f"{purpose}:{settings.CODING_PLANS_FINGERPRINT_KEY}".encode()
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def key_hint(value: str) -> str:
    """What customers may see of a key: its last four characters."""
    tail = value[-4:] if len(value) >= 8 else ""
    return f"…{tail}" if tail else "…"
