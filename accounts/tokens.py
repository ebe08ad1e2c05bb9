"""Personal API tokens (SPEC 11.1, S2): issuing, revoking, and the one bearer-token check that
the API and the gateway both use (issue 14). Low in the layers: everything that authenticates a
caller imports this, and it imports nothing above the accounts' own models."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.db import transaction

from accounts.errors import TokenNotFound
from accounts.models import ApiToken, User
from adminops.audit import actor_for, record_event
from codingplans import asyncsql, sql

TOKEN_PREFIX = "cp_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    plaintext: str  # shown once to its owner, never stored


def create_api_token(
    *, user: User, now: datetime, name: str = "API token", actor: str | None = None
) -> IssuedToken:
    """A new personal token for `user`; `actor` is who asked (the user, or an operator)."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic(durable=True):
        token = ApiToken.objects.create(
            user=user,
            name=(name or "API token")[:100],
            prefix=plaintext[:10],
            token_hash=hash_token(plaintext),
            created_at=now,
        )
        record_event(
            actor=actor or actor_for(user),
            subject=token,
            event_type="api_token.created",
            now=now,
            new={"name": token.name, "prefix": token.prefix},
        )
    return IssuedToken(token=token, plaintext=plaintext)


def revoke_api_token(*, user: User, token_id: int, now: datetime) -> ApiToken:
    with transaction.atomic(durable=True):
        token = ApiToken.objects.select_for_update().filter(user=user, pk=token_id).first()
        if token is None:
            raise TokenNotFound()
        if token.revoked_at is None:
            token.revoked_at = now
            token.save(update_fields=["revoked_at"])
            record_event(
                actor=actor_for(user),
                subject=token,
                event_type="api_token.revoked",
                now=now,
                new={"revoked_at": now.isoformat()},
            )
    return token


# The rules a bearer token must meet, in SQL, for every caller (the API and the gateway): the
# hash of a token we issued, not revoked, its owner active. `extra_columns` / `extra_joins` let a
# caller read more in the same round trip (the gateway reads the caller's BYOK entry); they are
# SQL of ours with named parameters. Prepared on the connection after its first run.
_BEARER_SQL = """
    SELECT t.id AS token_id, t.last_used_at, t.user_id{extra_columns}
    FROM {token} t
    JOIN {user} u ON u.id = t.user_id AND u.is_active
    {extra_joins}
    WHERE t.token_hash = %(token_hash)s AND t.revoked_at IS NULL
"""
# A token's last use, noted at most once a minute (`_touch_due`).
_TOUCH_SQL = "UPDATE {token} SET last_used_at = %(now)s WHERE id = %(token_id)s"


@cache
def _bearer_sql(extra_columns: str, extra_joins: str) -> str:
    return _BEARER_SQL.format(
        token=sql.table(ApiToken),
        user=sql.table(User),
        extra_columns=extra_columns,
        extra_joins=extra_joins,
    )


@cache
def _touch_sql() -> str:
    return _TOUCH_SQL.format(token=sql.table(ApiToken))


def _bearer_query(
    plaintext: object, extra_columns: str, extra_joins: str, params: dict[str, Any] | None
) -> tuple[str, dict[str, Any]] | None:
    """The bearer check's statement and parameters, or None for a token we cannot have issued."""
    if not isinstance(plaintext, str) or not plaintext.startswith(TOKEN_PREFIX):
        return None
    return (
        _bearer_sql(extra_columns, extra_joins),
        {**(params or {}), "token_hash": hash_token(plaintext)},
    )


def _touch_due(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether to note a token's use: the account page shows it, and writing it on every call
    would turn each API read into a write."""
    return last_used_at is None or (now - last_used_at).total_seconds() > 60


def bearer_lookup(
    plaintext: str,
    *,
    now: datetime,
    extra_columns: str = "",
    extra_joins: str = "",
    params: dict[str, Any] | None = None,
) -> Any:
    """The one bearer-token check (SPEC 11.1, S2): the token's row (`token_id`, `user_id`,
    `last_used_at` and the caller's extra columns) or None. One lean statement, so the
    gateway's hot path pays no ORM query building (issue 8); the last use is noted at most
    once a minute. `bearer_lookup_async` runs the same statements on the event loop."""
    query = _bearer_query(plaintext, extra_columns, extra_joins, params)
    if query is None:
        return None
    row = sql.execute(*query)
    if row is not None:
        touch_token(token_id=row.token_id, last_used_at=row.last_used_at, now=now)
    return row


async def bearer_lookup_async(
    plaintext: str,
    *,
    now: datetime,
    extra_columns: str = "",
    extra_joins: str = "",
    params: dict[str, Any] | None = None,
) -> Any:
    """`bearer_lookup` on the event loop (codingplans.asyncsql), for the gateway's bearer calls
    under ASGI (issue 20): the same statements from the same rules, no thread hop."""
    query = _bearer_query(plaintext, extra_columns, extra_joins, params)
    if query is None:
        return None
    row = await asyncsql.execute(*query)
    if row is not None and _touch_due(row.last_used_at, now):
        await asyncsql.execute(_touch_sql(), {"now": now, "token_id": row.token_id})
    return row


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), or
    None for any other shape."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def authenticate_token(plaintext: str, *, now: datetime) -> User | None:
    """The user a bearer token acts for, or None (revoked, unknown, or the user is gone)."""
    row = bearer_lookup(plaintext, now=now)
    return None if row is None else sql.select_one(User, "id = %s", [row.user_id])


def touch_token(*, token_id: int, last_used_at: datetime | None, now: datetime) -> None:
    """Note a token's last use, at most once a minute (`_touch_due`)."""
    if _touch_due(last_used_at, now):
        sql.execute(_touch_sql(), {"now": now, "token_id": token_id})


def revoke_all_tokens(*, user_id: int, now: datetime) -> int:
    """Every token of an account being deleted stops working at once (D1: 401). Inside
    delete_account's transaction, audited there."""
    return ApiToken.objects.filter(user_id=user_id, revoked_at__isnull=True).update(revoked_at=now)
