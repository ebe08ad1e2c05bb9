"""Django's PostgreSQL backend; with the psycopg pool on, a connection is checked as it is handed
out, and a database restart fails no request (issue 13).

After PostgreSQL restarts (a failover, a maintenance restart) every idle connection in a web
process's pool is dead, and each would fail one request with AdminShutdown / OperationalError.
Django 5.2 can give the pool psycopg_pool's own check (`CONN_HEALTH_CHECKS`), but that finds the
dead connections one at a time as they are handed out and backs off between failures (0 s, 1 s,
2 s, 4 s …): with eight dead connections the first request after a restart waited past the
pool's 10 s timeout and answered 500 all the same. Here a dead connection is given back (the pool
discards it and opens a replacement in the background), the pool's other idle connections are
checked at once (`ConnectionPool.check()`, the dead ones replaced), and the request takes the
next connection without waiting.
"""

from __future__ import annotations

import logging

from django.db.backends.postgresql import base

logger = logging.getLogger(__name__)

# A connection found dead, a sweep of the pool, then at most this many more tries (another
# connection can die meanwhile while the server is restarting).
CHECKOUT_ATTEMPTS = 3


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        pool = self.pool
        if pool is None:  # no pool: CONN_HEALTH_CHECKS covers a kept connection
            return super().get_new_connection(conn_params)
        from psycopg_pool import ConnectionPool

        for attempt in range(1, CHECKOUT_ATTEMPTS + 1):
            connection = super().get_new_connection(conn_params)
            try:
                ConnectionPool.check_connection(connection)
            except Exception:
                pool.putconn(connection)  # broken: discarded, and replaced in the background
                if attempt == CHECKOUT_ATTEMPTS:
                    raise
                if attempt == 1:
                    logger.warning("database connection lost; checking the pool's others")
                    pool.check()
            else:
                return connection
        raise AssertionError("unreachable")
