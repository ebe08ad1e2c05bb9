"""`codingplans.sql`'s lean statements on the event loop, for the gateway's bearer calls under
ASGI (issue 20).

Django has no async database access: an async view's queries run on a thread (`sync_to_async`),
and waking that thread and being woken by it again cost the gateway about as much as all of its
own work. Here the same statement texts run on psycopg's `AsyncConnection`, from a small
`psycopg_pool.AsyncConnectionPool` of this event loop's own (one per loop, as a pool cannot
outlive its loop; uvicorn runs one per process), opened on first use with Django's connection
parameters (the same database, credentials and type adapters) and closed by `close()` when the
server shuts down (`gateway.asgi` handles the ASGI lifespan).

Only autocommit statements that stand alone belong here (a read, a one-row write): anything in
a transaction with other work stays on Django's connection (`codingplans.sql`). The rules the
statements carry are owned by their modules, which hand the same text to either side
(`accounts.tokens.bearer_lookup` and its async twin).

A database restart kills every idle connection in the pool. Each connection is looked at before
a statement is sent on it — what the server sent it while idle is read, no round trip: a
terminated backend's last words leave it BAD — and a dead one is given back (the pool discards
it and opens a replacement), the pool checks its other idle connections at once, and the next
one is taken. A read (or an idempotent update) whose connection breaks while it runs runs again
on another; an insert runs again only when the server refused it as it shut down (it was
not committed), else it is sent once. A restart fails no request, as with Django's pool
(`codingplans.postgres`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import Any

import psycopg
from django.db import connections, models
from psycopg.rows import namedtuple_row
from psycopg_pool import AsyncConnectionPool

from codingplans import sql

logger = logging.getLogger(__name__)

# Each statement holds a connection for one round trip, so a few serve many requests at once.
MAX_SIZE = int(os.environ.get("DATABASE_LOOP_POOL_MAX_SIZE", "8") or 8)
CHECKOUT_ATTEMPTS = 3
MAX_ROWS_PER_INSERT = 500  # well under PostgreSQL's 65,535 parameters per statement

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = (
    weakref.WeakKeyDictionary()
)


def _connect_kwargs() -> dict[str, Any]:
    """Django's parameters for its default database, for an async connection in autocommit."""
    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)  # Django's cursor is a sync one
    params["autocommit"] = True
    params["prepare_threshold"] = sql.PREPARE_THRESHOLD if sql.PREPARE else None
    return params


async def _pool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = AsyncConnectionPool(
            kwargs=_connect_kwargs(),
            min_size=1,
            max_size=MAX_SIZE,
            open=False,
            timeout=10,
            name="event-loop",
        )
        _pools[loop] = pool
    if pool.closed:
        await pool.open()  # a no-op if another request opened it meanwhile
    return pool


def _looks_alive(connection: psycopg.AsyncConnection) -> bool:
    """Whether an idle connection is still usable, without a round trip: what the server sent
    it meanwhile is read (after a restart: its "terminating connection" error and the end of
    the stream, which leave the connection BAD)."""
    pgconn = connection.pgconn
    try:
        pgconn.consume_input()
    except psycopg.OperationalError:
        return False
    return pgconn.status == psycopg.pq.ConnStatus.OK


def _not_done(exc: Exception, connection: psycopg.AsyncConnection, idempotent: bool) -> bool:
    """Whether a failed statement may run again on another connection: one that is safe to run
    twice, whose connection broke; or any statement that a terminating server answered with
    "terminating connection due to administrator command" (a restart that the idle
    connection had not heard of yet): the server aborted it, and a statement of its own in
    autocommit was not committed."""
    if isinstance(exc, psycopg.errors.AdminShutdown):
        return True
    return idempotent and connection.broken


async def _run(statement: str, params, *, row_factory=None, idempotent: bool) -> Any:
    """The statement's first row (or None) on a connection of this loop's pool. A connection
    found dead before the statement is sent is given back and the next one taken; an
    idempotent statement whose connection broke while it ran runs again on another."""
    pool = await _pool()
    for attempt in range(1, CHECKOUT_ATTEMPTS + 1):
        connection = await pool.getconn()
        try:
            if _looks_alive(connection):
                cursor = (
                    connection.cursor()
                    if row_factory is None
                    else connection.cursor(row_factory=row_factory)
                )
                async with cursor:
                    await cursor.execute(statement, params, prepare=None if sql.PREPARE else False)
                    return await cursor.fetchone() if cursor.description else None
            elif attempt == CHECKOUT_ATTEMPTS:
                raise psycopg.OperationalError("no usable database connection")
        except psycopg.OperationalError as exc:
            if not _not_done(exc, connection, idempotent) or attempt == CHECKOUT_ATTEMPTS:
                raise
        finally:
            await pool.putconn(connection)  # a broken one is discarded and replaced
        if attempt == 1:
            logger.warning("database connection lost; checking the pool's others")
            await pool.check()
    raise AssertionError("unreachable")


async def execute(statement: str, params: dict[str, Any] | list[Any]) -> Any:
    """`codingplans.sql.execute` on the event loop, for a statement that is safe to run twice (a
    read, an idempotent update): the first row as a named tuple, or None."""
    return await _run(statement, params, row_factory=namedtuple_row, idempotent=True)


async def insert(model: type[models.Model], /, **values: Any) -> int:
    """`codingplans.sql.insert` on the event loop: the same statement and conversions, sent
    once."""
    statement, params = sql.insert_statement(model, values)
    return (await _run(statement, params, idempotent=False))[0]


async def insert_many(model: type[models.Model], rows: list[dict[str, Any]]) -> None:
    """`insert` for rows of the same fields: one statement (`sql.insert_rows_statement`),
    so all of them are written or none."""
    for start in range(0, len(rows), MAX_ROWS_PER_INSERT):
        statement, params = sql.insert_rows_statement(
            model, rows[start : start + MAX_ROWS_PER_INSERT]
        )
        await _run(statement, params, idempotent=False)


async def close() -> None:
    """Close this event loop's pool, if it has one (the server is shutting down)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()
