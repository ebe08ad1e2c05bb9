"""The stand-in MiniMax server itself: its product endpoints, control endpoints and CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from standins.minimax import StandinServer
from upstream.providers.base import KeyCheck
from upstream.providers.minimax import PROVIDER

check_key = PROVIDER.check_key

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-live-standin0123456789"


def chat(url: str, key: str = KEY, **kwargs) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions",
        json={
            "model": "MiniMax-M2",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 1,
        },
        headers={"Authorization": f"Bearer {key}"},
        **kwargs,
    )


def test_chat_completion_answers_like_minimax(standin):
    r = chat(standin.url)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] >= 1


def test_keys_starting_with_invalid_are_rejected(standin):
    assert chat(standin.url, "invalid-key-1234").status_code == 401
    assert chat(standin.url, "sk-invalid-1234").status_code == 401
    assert httpx.post(standin.url + "/v1/chat/completions", json={}).status_code == 401  # no key


def test_quota_default_and_per_key(standin):
    r = httpx.get(
        standin.url + "/v1/token_plan/remains", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 200
    assert r.json()["model_remains"][0]["model_name"] == "general"
    standin.state.configure(
        {
            "quota": {
                KEY: {"base_resp": {"status_code": 1004, "status_msg": "x"}, "model_remains": None}
            }
        }
    )
    r = httpx.get(
        standin.url + "/v1/token_plan/remains", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.json()["base_resp"]["status_code"] == 1004


def test_unknown_path_is_404(standin):
    assert httpx.get(standin.url + "/v1/nothing").status_code == 404
    assert httpx.post(standin.url + "/v1/nothing", json={}).status_code == 404


def test_config_endpoint_sets_failures_over_http(standin):
    r = httpx.post(standin.url + "/_standin/config", json={"failure": "500"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert check_key(KEY) == KeyCheck(False, "http")
    r = httpx.post(
        standin.url + "/_standin/config", json={"failure": None, "key_failures": {KEY: 401}}
    )
    assert r.status_code == 200
    assert check_key(KEY) == KeyCheck(False, "invalid_key")
    assert check_key("sk-live-someone-else-1234") == KeyCheck(True)
    httpx.post(standin.url + "/_standin/config", json={"key_failures": {KEY: None}})
    assert check_key(KEY) == KeyCheck(True)


def test_config_endpoint_sets_accepted_keys_and_latency(standin):
    httpx.post(
        standin.url + "/_standin/config",
        json={"accepted_keys": ["only-this-key-1234"], "latency_ms": 150},
    )
    started = time.monotonic()
    assert check_key(KEY) == KeyCheck(False, "invalid_key")
    assert time.monotonic() - started >= 0.15
    assert check_key("only-this-key-1234") == KeyCheck(True)


@pytest.mark.parametrize(
    "config",
    [{"failure": "explode"}, {"no_such_setting": 1}, {"key_failures": {KEY: "nope"}}, ["failure"]],
)
def test_config_endpoint_refuses_unknown_settings_and_changes_nothing(standin, config):
    r = httpx.post(standin.url + "/_standin/config", json=config)
    assert r.status_code == 400
    assert r.json()["ok"] is False
    assert standin.state.failure is None and standin.state.key_failures == {}
    assert check_key(KEY) == KeyCheck(True)


def test_requests_endpoint_lists_recorded_calls(standin):
    check_key(KEY)
    r = httpx.get(standin.url + "/_standin/requests")
    assert r.status_code == 200
    (call,) = r.json()["requests"]
    assert call["method"] == "POST"
    assert call["path"] == "/v1/chat/completions"
    assert call["key"] == KEY
    assert call["body"]["max_tokens"] == 1


def test_reset_endpoint_clears_config_and_requests(standin):
    httpx.post(standin.url + "/_standin/config", json={"failure": "500", "accepted_keys": []})
    check_key(KEY)
    r = httpx.post(standin.url + "/_standin/reset")
    assert r.status_code == 200
    assert httpx.get(standin.url + "/_standin/requests").json() == {"requests": []}
    assert check_key(KEY) == KeyCheck(True)


def test_server_can_be_stopped_without_being_started():
    server = StandinServer()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1


def test_cli_starts_and_serves():
    proc = subprocess.Popen(
        [sys.executable, "-m", "standins.minimax", "--port", "0", "--latency-ms", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("stand-in MiniMax listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        assert chat(url, timeout=5).json()["choices"][0]["finish_reason"] == "length"
        assert chat(url, "invalid-1234", timeout=5).status_code == 401
        assert (
            httpx.post(url + "/_standin/config", json={"failure": "500"}, timeout=5).status_code
            == 200
        )
        assert chat(url, timeout=5).status_code == 500
        assert len(httpx.get(url + "/_standin/requests", timeout=5).json()["requests"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        # communicate, not wait: the pipes are drained while it stops (a child blocked writing
        # to a full pipe would never exit), and what it said is kept for the message below.
        try:
            _out, err = proc.communicate(timeout=20)  # generous: the full suite loads both cores
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    # Interrupted cleanly, and it printed nothing about the requests (keys) it served.
    assert proc.returncode == 0, err[-3000:]
    assert KEY not in err
