"""Outages of the shared services that requests carry on without (issue 13 item 5).

Redis holds the rate-limit counters, the quota cache and the Celery broker; none of them is worth
a failed page, log-in, purchase or gateway call. Where a request carries on without Redis, the
caller reports it here: a counter per process (on the admin home, and in the log line) and a
warning at most once a minute per kind, naming only the error's class (no URL, no message: an
error text can quote a connection string).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime

logger = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 60.0

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_last_seen: dict[str, datetime] = {}
_last_logged: dict[str, float] = {}


def record(kind: str, error: BaseException) -> None:
    """Count one request that went on without `kind` (e.g. "rate limits"), and log it if the
    last warning about that kind is more than a minute old."""
    now = time.monotonic()
    with _lock:
        _counts[kind] += 1
        count = _counts[kind]
        _last_seen[kind] = datetime.now(UTC)
        due = now - _last_logged.get(kind, float("-inf")) >= LOG_EVERY_SECONDS
        if due:
            _last_logged[kind] = now
    if due:
        logger.warning(
            "Redis unavailable (%s): %s not used, requests carry on (%d in this process so far)",
            type(error).__name__,
            kind,
            count,
        )


def snapshot() -> list[tuple[str, int, datetime]]:
    """(kind, count, last seen) for every kind seen in this process, most recent first."""
    with _lock:
        rows = [(kind, count, _last_seen[kind]) for kind, count in _counts.items()]
    return sorted(rows, key=lambda row: row[2], reverse=True)


def reset() -> None:
    with _lock:
        _counts.clear()
        _last_seen.clear()
        _last_logged.clear()
