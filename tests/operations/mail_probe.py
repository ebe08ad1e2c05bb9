"""A real e-mail backend for tests (set through settings.EMAIL_BACKEND): it delivers to Django's
locmem outbox like the test default, and records, at the moment of sending, whether the sending
connection was inside a transaction and whether another connection could take given row locks
at once (NOWAIT) -- i.e. that nothing is held while a slow mail server is talked to."""

from __future__ import annotations

import threading

from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import DatabaseError, connection

observations: list[dict[str, object]] = []
# SQL statements that must be lockable from another connection while a message is sent.
lock_probes: list[str] = []


def _try_locks() -> dict[str, bool]:
    """Each probe on a connection of its own (a new thread's), NOWAIT: False if held."""
    result: dict[str, bool] = {}

    def run() -> None:
        try:
            for statement in lock_probes:
                with connection.cursor() as cursor:
                    cursor.execute("BEGIN")
                    try:
                        cursor.execute(statement + " FOR UPDATE NOWAIT")
                        result[statement] = True
                    except DatabaseError:
                        result[statement] = False
                    finally:
                        cursor.execute("ROLLBACK")
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(15)
    return result


class ProbeBackend(LocmemBackend):
    def send_messages(self, messages):
        observations.append(
            {
                "subjects": [m.subject for m in messages],
                "in_transaction": connection.in_atomic_block,
                "lockable": _try_locks(),
            }
        )
        return super().send_messages(messages)
