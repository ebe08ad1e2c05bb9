"""codingplans/sql.py: the hot paths' statements run prepared (issue 8).

Django opens connections with `prepare_threshold=None`, under which psycopg silently ignores
`prepare=True`; these tests fail if that ever comes back."""

from __future__ import annotations

import pytest
from django.db import connection

from accounts.models import User
from codingplans import sql

pytestmark = pytest.mark.django_db

# Deployments behind PgBouncer in transaction mode turn preparing off on purpose; CI keeps it on.
PREPARE_OFF = "CODING_PLANS_PREPARED_STATEMENTS=0: prepared statements turned off on purpose"


def _server_prepared() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return {" ".join(row[0].split()) for row in cursor.fetchall()}


@pytest.mark.skipif(not sql.PREPARE, reason=PREPARE_OFF)
def test_lean_statement_is_prepared_on_the_server_when_run_again():
    statement = f"SELECT count(*) FROM {sql.table(User)} WHERE id = %s"
    expected = 'SELECT count(*) FROM "accounts_user" WHERE id = $1'
    sql.execute(statement, [0])
    # Once: not prepared, so a connection living for one request pays no PREPARE round trip.
    assert not any(text.startswith(expected) for text in _server_prepared())
    sql.execute(statement, [1])
    assert any(text.startswith(expected) for text in _server_prepared())


@pytest.mark.skipif(not sql.PREPARE, reason=PREPARE_OFF)
def test_orm_queries_stay_unprepared():
    sql.execute("SELECT 1")
    for _ in range(10):
        list(User.objects.filter(email="nobody@example.com"))
    assert not any("accounts_user" in text and "email" in text for text in _server_prepared())


@pytest.mark.django_db(transaction=True)
def test_rows_written_on_the_event_loop_are_the_rows_insert_writes(make_user):
    # Issue 20: codingplans.asyncsql runs codingplans.sql's statements on the event loop; a
    # batch of usage rows is one INSERT with every row converted as `insert` converts it.
    import asyncio
    from datetime import UTC, datetime

    from codingplans import asyncsql
    from gateway.models import GatewayRequest

    user = make_user()
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [
        {
            "user_id": user.pk,
            "subscription_id": None,
            "provider_id": "p",
            "model": f"m{i}",
            "streamed": bool(i % 2),
            "prompt_tokens": i,
            "completion_tokens": 2 * i,
            "latency_ms": 7,
            "created_at": now,
        }
        for i in range(3)
    ]
    statement, params = sql.insert_rows_statement(GatewayRequest, rows)
    assert statement.count("(%s") == 3 and len(params) == 3 * len(rows[0])

    async def main():
        try:
            await asyncsql.insert_many(GatewayRequest, rows)
            row = await asyncsql.execute(
                "SELECT count(*) AS n FROM gateway_gatewayrequest WHERE user_id = %(u)s",
                {"u": user.pk},
            )
            assert row.n == 3
        finally:
            await asyncsql.close()

    asyncio.run(main())
    written = list(GatewayRequest.objects.filter(user=user).order_by("model"))
    assert [(r.model, r.streamed, r.prompt_tokens, r.created_at) for r in written] == [
        (f"m{i}", bool(i % 2), i, now) for i in range(3)
    ]


@pytest.mark.django_db(transaction=True)
def test_the_kept_statement_cursor_follows_a_new_connection():
    # Issue 20: `execute` keeps one cursor per connection; a closed and reopened connection
    # (a restart, CONN_MAX_AGE) gets a cursor of its own, and errors leave it usable.
    from django.db import DatabaseError, transaction

    assert sql.execute("SELECT 1 AS one").one == 1
    first = connection.connection
    with pytest.raises(DatabaseError), transaction.atomic():
        sql.execute("SELECT 1 / 0 AS boom")
    assert sql.execute("SELECT 2 AS two").two == 2
    connection.close()
    assert sql.execute("SELECT 3 AS three").three == 3
    assert connection.connection is not first
    assert sql.execute("UPDATE accounts_user SET full_name = full_name WHERE false") is None
