"""A serving process's garbage collector (issue 20, codingplans.collector): the ASGI lifespan's
start freezes what start-up built and sets the serving thresholds, once per process; `off`
leaves Python's collector alone; a malformed value stops the server instead of serving.

Each case runs the real ASGI application's lifespan in a process of its own: the settings are
process-wide, and this test process keeps Python's (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings

from codingplans.collector import thresholds_from_env

SCRIPT = r"""
import asyncio, gc, json
from codingplans import collector
from codingplans.asgi import application

async def lifespan(*types):
    incoming = [{"type": t} for t in types]
    sent = []
    async def receive():
        return incoming.pop(0)
    async def send(message):
        sent.append(message)
    await application({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent

sent = asyncio.run(lifespan("lifespan.startup", "lifespan.shutdown"))
try:
    again = collector.tune_for_serving()
except ValueError:
    again = "refused"
print(json.dumps({
    "sent": sent,
    "threshold": gc.get_threshold(),
    "frozen": gc.get_freeze_count(),
    "again": again,
}))
"""


def _serve_lifespan(value: str | None) -> dict:
    env = {**os.environ, "DEBUG": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SERVER_GC_THRESHOLDS", None)
    if value is not None:
        env["SERVER_GC_THRESHOLDS"] = value
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_served_process_freezes_its_start_up_heap_and_collects_for_serving():
    outcome = _serve_lifespan(None)  # unset: the deployed default
    assert [m["type"] for m in outcome["sent"]] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert tuple(outcome["threshold"]) == (700, 3, 300)
    # Django and the app, imported: tens of thousands of objects no collection walks again.
    assert outcome["frozen"] > 10_000
    assert outcome["again"] is False  # once per process: a second server start changes nothing


def test_explicit_thresholds_are_used():
    outcome = _serve_lifespan("2000,5,100")
    assert tuple(outcome["threshold"]) == (2000, 5, 100)
    assert outcome["frozen"] > 10_000


def test_off_leaves_pythons_collector_as_it_is():
    outcome = _serve_lifespan("off")
    assert outcome["sent"][0]["type"] == "lifespan.startup.complete"
    assert tuple(outcome["threshold"]) == (700, 10, 10)
    assert outcome["frozen"] == 0


def test_a_malformed_value_stops_the_server_at_start_up_with_a_clear_message():
    outcome = _serve_lifespan("700,3")
    (failed,) = outcome["sent"]  # no startup.complete: uvicorn exits instead of serving
    assert failed["type"] == "lifespan.startup.failed"
    assert "SERVER_GC_THRESHOLDS" in failed["message"]
    assert tuple(outcome["threshold"]) == (700, 10, 10)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("700,3,300", (700, 3, 300)),
        (" 1000, 2, 50 ", (1000, 2, 50)),
        ("off", None),
        ("OFF", None),
        ("", None),
    ],
)
def test_thresholds_are_read_from_the_environment_value(value, expected):
    assert thresholds_from_env(value) == expected


@pytest.mark.parametrize("value", ["700,3", "a,b,c", "0,3,300", "700,-1,300", "1,2,3,4"])
def test_a_malformed_value_is_refused(value):
    with pytest.raises(ValueError, match="SERVER_GC_THRESHOLDS"):
        thresholds_from_env(value)
