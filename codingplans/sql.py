"""Lean single-row statements for the hot paths: the billing sweep's renewal, the purchase, the
audit trail and the gateway's metering (issue 8).

Building a query through the ORM costs ≈0.4 ms of CPU per statement on the benchmark machine,
against ≈0.1 ms for executing it: a renewal of ten statements spent most of its time compiling
SQL. These helpers build each statement's text once per (model, columns) from the model's own
metadata — table and column names, and each field's `get_db_prep_save` for the values, so JSON,
datetimes and foreign keys are converted exactly as the ORM converts them — and run it on the
caller's connection, inside the caller's transaction and row locks.

They skip model `save()` machinery: no signals (the project registers none for these models),
no `full_clean` (services validate first, and the database constraints still hold).

The statements run as prepared statements with server-side parameters on Django's own
connection (so in the caller's transaction, with database errors raised as Django's): the
server parses and plans each once per connection instead of once per call, which matters on a
machine whose cores PostgreSQL shares with the application. Django leaves prepared statements
off because PgBouncer in transaction mode cannot keep them; behind such a pooler set
CODING_PLANS_PREPARED_STATEMENTS=0.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, TypeVar

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from psycopg import pq
from psycopg.rows import namedtuple_row

PREPARE = os.environ.get("CODING_PLANS_PREPARED_STATEMENTS", "1") != "0"
# Django opens its connections with `prepare_threshold=None`, which makes psycopg ignore even
# an explicit `prepare=True`. With a threshold, psycopg prepares a statement the second time a
# connection runs it: a connection that lives for one request (WSGI with CONN_MAX_AGE=0) never
# pays the extra PREPARE round trip, a pooled or long-lived one (the sweep, ASGI) runs its
# repeated statements prepared. The ORM's queries use client-side binding, which psycopg never
# prepares, so they are unaffected.
PREPARE_THRESHOLD = 1

M = TypeVar("M", bound=models.Model)


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _checked_connection():
    """Django's connection for this thread, checked as Django's own cursor() checks it, with
    psycopg set to prepare repeated statements."""
    # The connection object once: each attribute read through `django.db.connection` looks the
    # thread's connection up again, six times a statement here (issue 20: the sweep's client
    # CPU).
    db = connections[DEFAULT_DB_ALIAS]
    # As Django's own cursor() does: with CONN_HEALTH_CHECKS a kept connection is checked once
    # per request before its first statement, so a database restart fails no request even when
    # a lean statement is that first one (issue 13 item 13).
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_no_broken_transaction()
    raw = db.connection
    if PREPARE and raw.prepare_threshold is None:
        raw.prepare_threshold = PREPARE_THRESHOLD
    return db, raw


@contextmanager
def _cursor(row_factory=None) -> Iterator[psycopg.Cursor]:
    """A server-side-binding cursor on Django's connection, in its current transaction."""
    db, raw = _checked_connection()
    cursor = (
        psycopg.Cursor(raw) if row_factory is None else psycopg.Cursor(raw, row_factory=row_factory)
    )
    with db.wrap_database_errors, cursor:
        yield cursor


def _execute(cursor: psycopg.Cursor, statement: str, params) -> None:
    cursor.execute(statement, params, prepare=None if PREPARE else False)


@cache
def _insert_sql(
    model: type[models.Model], names: tuple[str, ...], skip_conflict: bool
) -> tuple[str, tuple]:
    fields = tuple(model._meta.get_field(name) for name in names)
    columns = ", ".join(_quote(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    conflict = " ON CONFLICT DO NOTHING" if skip_conflict else ""
    sql = (
        f"INSERT INTO {_quote(model._meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608 - names from model metadata
        f"{conflict} RETURNING {_quote(model._meta.pk.column)}"
    )
    return sql, fields


def _prepared(fields: Sequence, values: dict[str, Any]) -> list[Any]:
    return [
        f.get_db_prep_save(values[name], connection) for f, name in zip(fields, values, strict=True)
    ]


def insert_statement(model: type[models.Model], values: dict[str, Any]) -> tuple[str, list[Any]]:
    """`insert`'s statement and parameters, for `codingplans.asyncsql` to run the same."""
    sql, fields = _insert_sql(model, tuple(values), False)
    return sql, _prepared(fields, values)


@cache
def _insert_rows_sql(model: type[models.Model], names: tuple[str, ...], count: int) -> str:
    single, fields = _insert_sql(model, names, False)
    head = single[: single.index(" VALUES ")]
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    return f"{head} VALUES {', '.join([row] * count)}"


def insert_rows_statement(
    model: type[models.Model], rows: list[dict[str, Any]]
) -> tuple[str, list[Any]]:
    """One INSERT of several rows of the same fields (each converted as `insert` converts
    it), atomic: all of them or none. For `codingplans.asyncsql.insert_many`."""
    names = tuple(rows[0])
    fields = _insert_sql(model, names, False)[1]
    params = [value for row in rows for value in _prepared(fields, row)]
    return _insert_rows_sql(model, names, len(rows)), params


def insert(model: type[models.Model], /, **values: Any) -> int:
    """INSERT one row (fields by name or attname, e.g. `subscription_id`); returns its pk."""
    sql, params = insert_statement(model, values)
    with _cursor() as cursor:
        _execute(cursor, sql, params)
        return cursor.fetchone()[0]


def insert_unless_conflict(model: type[models.Model], /, **values: Any) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING: the new pk, or None when a unique constraint already
    holds such a row — without aborting the transaction, so no savepoint is needed."""
    sql, fields = _insert_sql(model, tuple(values), True)
    with _cursor() as cursor:
        _execute(cursor, sql, _prepared(fields, values))
        row = cursor.fetchone()
    return None if row is None else row[0]


def execute(statement: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
    """Run one statement of ours (positional or named parameters); its first row, if it
    returns rows, as a named tuple: callers read columns by the names the statement gives them
    (`row.balance`), never by position (issue 14)."""
    db, raw = _checked_connection()
    # One cursor per connection for these statements, kept between them: a cursor made and
    # closed per statement was a fifth of this function's CPU (issue 20). Nothing runs between
    # a statement and the read of its row, so one cursor serves them all.
    cursor = getattr(db, "_lean_cursor", None)
    if cursor is None or cursor.connection is not raw:
        cursor = db._lean_cursor = psycopg.Cursor(raw, row_factory=namedtuple_row)
    with db.wrap_database_errors:
        _execute(cursor, statement, params if isinstance(params, dict) else list(params))
        # What `cursor.description` answers, without building a Column per column (≈5% of a
        # purchase's client CPU when asked on every statement; issue 20).
        result = cursor.pgresult
        if result is None or not (result.nfields or result.status == pq.ExecStatus.TUPLES_OK):
            return None
        return cursor.fetchone()


@cache
def table(model: type[models.Model]) -> str:
    """The model's quoted table name, for statements written by hand."""
    return _quote(model._meta.db_table)


@cache
def _sequence(db_table: str, column: str) -> str:
    with _cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [db_table, column])
        return cursor.fetchone()[0]


def next_id(model: type[models.Model]) -> str:
    """An SQL expression drawing the model's next primary key, for a statement that needs a
    row's id before the row is written (the purchase writes its rows in one statement)."""
    name = _sequence(model._meta.db_table, model._meta.pk.column)
    return f"nextval('{name}'::regclass)"


@cache
def _field(model: type[models.Model], name: str) -> tuple[models.Field, bool]:
    field = model._meta.get_field(name)
    # A text column's conversion hands a str back unchanged.
    return field, isinstance(field, models.CharField | models.TextField)


def prepared_value(model: type[models.Model], name: str, value: Any) -> Any:
    """`value` converted for the model's field `name`, as the ORM converts it (JSON, dates).
    A str for a text column is passed as it is: the field's conversion would return it
    unchanged, after a field lookup and two method calls (the purchase converts fifteen
    values; issue 20)."""
    field, text = _field(model, name)
    if text and type(value) is str:
        return value
    return field.get_db_prep_save(value, connection)


@cache
def _update_sql(model: type[models.Model], names: tuple[str, ...]) -> tuple[str, tuple]:
    fields = tuple(model._meta.get_field(name) for name in names)
    assignments = ", ".join(f"{_quote(f.column)} = %s" for f in fields)
    sql = (
        f"UPDATE {_quote(model._meta.db_table)} SET {assignments} "  # noqa: S608 - names from model metadata
        f"WHERE {_quote(model._meta.pk.column)} = %s"
    )
    return sql, fields


def update(model: type[models.Model], pk: int, /, **values: Any) -> int:
    """UPDATE one row by primary key; returns the number of rows changed (0 or 1)."""
    sql, fields = _update_sql(model, tuple(values))
    with _cursor() as cursor:
        _execute(cursor, sql, [*_prepared(fields, values), pk])
        return cursor.rowcount


@cache
def _select_sql(
    model: type[models.Model], where: str, lock: str, with_: str
) -> tuple[str, list[str], list[tuple[int, list]]]:
    fields = model._meta.concrete_fields
    columns = ", ".join(_quote(f.column) for f in fields)
    sql = f"SELECT {columns} FROM {_quote(model._meta.db_table)} WHERE {where} {lock}"  # noqa: S608 - names from model metadata, `where` from our code
    if with_:
        sql = f"WITH {with_} {sql}"
    # The fields' own converters (e.g. JSONField decodes its text), as the ORM applies them.
    converters = [
        (i, f.get_db_converters(connection))
        for i, f in enumerate(fields)
        if f.get_db_converters(connection)
    ]
    return sql, [f.attname for f in fields], converters


def select_one(
    model: type[M],
    where: str,
    params: Sequence[Any] | dict[str, Any],
    *,
    lock: str = "",
    with_: str = "",
) -> M | None:
    """One model instance (through `Model.from_db`, as the ORM builds it) or None. `where` is
    SQL of ours with %s (or, with a dict of parameters, %(name)s) placeholders; `lock` e.g.
    "FOR UPDATE SKIP LOCKED"; `with_` common table expressions the statement starts with."""
    sql, attnames, converters = _select_sql(model, where, lock, with_)
    with _cursor() as cursor:
        _execute(cursor, sql, params if isinstance(params, dict) else list(params))
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    for i, funcs in converters:
        for convert in funcs:
            values[i] = convert(values[i], None, connection)
    return model.from_db(connection.alias, attnames, values)
