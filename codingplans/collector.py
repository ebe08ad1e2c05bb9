"""The garbage collector of a serving process (issue 20: a thousand streams on one event loop).

CPython's cyclic collector stops the whole process while it runs, and the event loop with it: a
chunk due while it runs waits. Measured in the uvicorn process holding 1,000 streams (gc
callbacks timing each collection, `python -m bench --only streams`), with Python's defaults
(700, 10, 10):

- while the streams open, the heap grows from ~105,000 tracked objects (Django and the app,
  imported) to ~250,000 (each stream's coroutines, futures, timers and buffers), and every time it
  has grown by a quarter a full collection walks all of it: 12, 29, 60 and 95 ms pauses, the last
  one the run's worst per-chunk latency;
- the middle generation is collected every 10 young collections and holds what those promoted
  (the chunks in flight at that moment): 3–11 ms pauses, a hundred of them per run.

So a serving process, once started, freezes what its imports built (`gc.freeze()`: nothing of it
is ever garbage, so no collection walks it again), collects the middle generation after every 3
young collections instead of 10 (three times as often, a third as long: 2–5 ms), and makes a
full collection wait for 300 of those instead of 10 (one per ~600,000 net allocations, not one
per ramp step). Reference counting still frees everything as before; only garbage in reference
cycles waits longer for a full collection. Measured, the run's worst per-chunk latency fell
from 92–96 ms to 13–61 ms, and no full collection ran while streams opened (bench/fixes.py).

`SERVER_GC_THRESHOLDS` overrides the three thresholds ("700,3,300" by default); "off" leaves
Python's collector as it is (no freeze either).
"""

from __future__ import annotations

import gc
import os
import threading

DEFAULT_THRESHOLDS = "700,3,300"

_lock = threading.Lock()
_tuned = False


def thresholds_from_env(value: str | None = None) -> tuple[int, int, int] | None:
    """The thresholds `SERVER_GC_THRESHOLDS` asks for, or None for "leave the collector alone".
    A malformed value fails loudly at start-up rather than serving with a guess."""
    raw = os.environ.get("SERVER_GC_THRESHOLDS", DEFAULT_THRESHOLDS) if value is None else value
    raw = raw.strip().lower()
    if raw in {"off", "default", "none", ""}:
        return None
    parts = raw.split(",")
    try:
        numbers = tuple(int(part) for part in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or numbers[0] < 1 or min(numbers) < 0:
        raise ValueError(
            "SERVER_GC_THRESHOLDS must be three whole numbers such as 700,3,300 (the young one "
            "at least 1), or off."
        )
    return numbers  # type: ignore[return-value]


def tune_for_serving() -> bool:
    """Apply the serving process's collector settings once per process (a server started again
    in the same process, as the tests do, changes nothing more). Called at the ASGI lifespan's
    start, after every import. Returns whether this call applied them."""
    global _tuned
    thresholds = thresholds_from_env()
    with _lock:
        if _tuned or thresholds is None:
            return False
        gc.collect()  # what start-up left as garbage goes now, not frozen for good
        gc.freeze()
        gc.set_threshold(*thresholds)
        _tuned = True
        return True
