"""Stand-in MiniMax server (SPEC 11.3) for `make dev` and the tests.

A small threaded HTTP server on loopback that answers the endpoints the product uses, with the
keys it accepts, latency and failures configurable — in-process through `StandinServer.state`,
or from another process through `POST /_standin/config`.

Keys: by default any key is accepted except those starting with `invalid` or `sk-invalid`;
`accepted_keys` (a list) restricts it to exactly those keys. A key starting with `sk-echo` or
`echo` is echoed back in streamed answers, hidden in JSON `\\uXXXX` escapes (a careless provider;
the gateway must scrub it from the decoded events): the first content chunk says "your key is
<key>", and an extra event before the usage chunk carries it again in a `data:` field split over
two lines.
Failures (`failure`, or per key in `key_failures`): `timeout` (sleeps `timeout_sleep_s` past
the client's timeout), `500`, `401`, `403`, `429`, `malformed` (not JSON), `oversize` (a huge
body), `redirect` (302 to `/_standin/redirected<path>`, which would answer normally if a client
followed it), `slow_body` (200 headers, then one byte every `trickle_interval_s` until
`timeout_sleep_s` has passed). `response` makes every product endpoint answer a canned
`{"status", "body" | "raw", "headers"}` instead (for odd-but-well-formed upstream answers).

Quota (`GET /v1/token_plan/remains`), per key, first match wins: `quota` (a full response body
per key), then `quota_profiles` (per key, or `"*"` for any key: the keyword arguments of
`quota_body()`, rendered afresh on every call so reset times stay in the future; `null`
removes a profile), then `default_quota()` (73 % / 88 %). A profile such as
`{"short_percent": 40, "weekly_status": 3, "weekly_boost": 1500}` gives a realistic body with
those percentages, statuses (1 normal, 2 exhausted, 3 window absent) and boosts (per mille);
`rows` picks the row layout (`general`, `null`, `empty`, `missing_general`,
`duplicate_general`), `status_code` / `status_msg` the `base_resp` (1004: no active plan),
`overrides` replaces fields of the `general` row (wrong types, fixed times), `extra_rows`
appends rows for other models. From another process:
`POST /_standin/config {"quota_profiles": {"<key>": {"short_percent": 40}}}`; an unknown
argument or row layout → 400.

Chat completions with `"stream": true` answer server-sent events: `stream_chunks` content
chunks, each after `stream_chunk_delay_ms`, then a chunk with `usage` and `data: [DONE]`;
`stream_disconnect_after` closes the connection after that many chunks, without `[DONE]`. How
each stream ended ("completed", "dropped", or "aborted" when the client went away) is appended
to `state.stream_outcomes`.

Revoked keys (SPEC H1, H3): a key can be switched to "revoked" at run time — from then on every
endpoint answers it 401, as MiniMax does for a plan that was revoked, expired or banned — with
`state.revoke(key)` / `state.restore(key)` in-process, or `POST /_standin/revoke {"keys": [...],
"revoked": true | false}` (also the `revoked_keys` setting of `/_standin/config`).

Control endpoints: `POST /_standin/config` (a JSON object of the settings above; unknown names
or failure modes → 400), `POST /_standin/reset`, `POST /_standin/revoke`,
`GET /_standin/requests`.

Run: python -m standins.minimax --port 8090 [--latency-ms 0]   (`--port 0`: any free port; the
first line printed names the URL)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REJECTED_PREFIXES = ("invalid", "sk-invalid")
ECHO_PREFIXES = ("sk-echo", "echo")
FAILURE_MODES = frozenset(
    {"timeout", "500", "401", "403", "429", "malformed", "oversize", "redirect", "slow_body"}
)
REDIRECT_PREFIX = "/_standin/redirected"
_CONFIG_NAMES = frozenset(
    {
        "accepted_keys",
        "revoked_keys",
        "latency_ms",
        "failure",
        "key_failures",
        "quota",
        "quota_profiles",
        "response",
        "timeout_sleep_s",
        "trickle_interval_s",
        "stream_chunks",
        "stream_chunk_delay_ms",
        "stream_disconnect_after",
    }
)


def _failure_mode(value: Any) -> str | None:
    if value is None:
        return None
    mode = str(value)
    if mode not in FAILURE_MODES:
        raise ValueError(f"unknown failure mode {mode!r}")
    return mode


def default_quota(now_ms: int | None = None) -> dict[str, Any]:
    """A healthy Token Plan: 5-hour window at 73 %, weekly window at 88 %."""
    now_ms = now_ms or int(time.time() * 1000)
    hour = 3_600_000
    return {
        "base_resp": {"status_code": 0, "status_msg": "success"},
        "model_remains": [
            {
                "model_name": "general",
                "current_interval_remaining_percent": 73,
                "current_interval_status": 1,
                "start_time": now_ms - 2 * hour,
                "end_time": now_ms + 3 * hour,
                "interval_boost_permille": 0,
                "current_weekly_remaining_percent": 88,
                "current_weekly_status": 1,
                "weekly_start_time": now_ms - 48 * hour,
                "weekly_end_time": now_ms + 120 * hour,
                "weekly_boost_permille": 0,
            }
        ],
    }


QUOTA_ROW_LAYOUTS = frozenset({"general", "null", "empty", "missing_general", "duplicate_general"})
_HOUR_MS = 3_600_000


def quota_body(
    *,
    short_percent: float = 73,
    short_status: int = 1,
    short_boost: int = 0,
    weekly_percent: float = 88,
    weekly_status: int = 1,
    weekly_boost: int = 0,
    boost: int | None = None,
    rows: str | None = None,
    status_code: int = 0,
    status_msg: str | None = None,
    overrides: dict[str, Any] | None = None,
    extra_rows: list[dict[str, Any]] | None = None,
    now_ms: int | None = None,
) -> dict[str, Any]:
    """A realistic `/v1/token_plan/remains` body (SPEC 11.3).

    Percentages and statuses per window (`short_*`: the 5-hour window, `weekly_*`); `boost`
    (per mille) sets both boosts at once. Times: the 5-hour window started 2 h ago and resets
    in 3 h, the weekly one started 48 h ago and resets in 120 h (epoch ms from `now_ms`).
    `rows`: `general` (one row; the default when `status_code` is 0), `null` (the default
    otherwise), `empty`, `missing_general` (only another model's row), `duplicate_general`.
    """
    if rows is None:
        rows = "general" if status_code == 0 else "null"
    if rows not in QUOTA_ROW_LAYOUTS:
        raise ValueError(f"unknown quota row layout {rows!r}")
    if boost is not None:
        short_boost = weekly_boost = boost
    now_ms = now_ms or int(time.time() * 1000)
    general: dict[str, Any] = {
        "model_name": "general",
        "current_interval_remaining_percent": short_percent,
        "current_interval_status": short_status,
        "start_time": now_ms - 2 * _HOUR_MS,
        "end_time": now_ms + 3 * _HOUR_MS,
        "interval_boost_permille": short_boost,
        "current_weekly_remaining_percent": weekly_percent,
        "current_weekly_status": weekly_status,
        "weekly_start_time": now_ms - 48 * _HOUR_MS,
        "weekly_end_time": now_ms + 120 * _HOUR_MS,
        "weekly_boost_permille": weekly_boost,
    }
    general.update(copy.deepcopy(overrides or {}))
    other = {**general, "model_name": "speech-hd"}
    model_remains: list[dict[str, Any]] | None = {
        "general": [general],
        "null": None,
        "empty": [],
        "missing_general": [other],
        "duplicate_general": [general, copy.deepcopy(general)],
    }[rows]
    if model_remains is not None and extra_rows:
        model_remains += copy.deepcopy(extra_rows)
    if status_msg is None:
        status_msg = {0: "success", 1004: "no active token plan"}.get(status_code, "error")
    return {
        "base_resp": {"status_code": status_code, "status_msg": status_msg},
        "model_remains": model_remains,
    }


def _quota_profiles(value: Any) -> dict[str, dict[str, Any] | None]:
    """Validate `quota_profiles` (ValueError on anything `quota_body` would not take)."""
    if not isinstance(value, dict):
        raise ValueError("quota_profiles must be an object of key → profile")
    profiles: dict[str, dict[str, Any] | None] = {}
    for key, profile in value.items():
        if profile is not None:
            if not isinstance(profile, dict):
                raise ValueError("a quota profile must be an object")
            try:
                quota_body(**profile)
            except TypeError as exc:
                raise ValueError(f"bad quota profile: {exc}") from None
            profile = copy.deepcopy(profile)
        profiles[str(key)] = profile
    return profiles


@dataclass
class StandinState:
    accepted_keys: set[str] | None = None
    # Keys switched to "revoked" at run time: answered 401 on every endpoint.
    revoked_keys: set[str] = field(default_factory=set)
    latency_ms: int = 0
    failure: str | None = None
    key_failures: dict[str, str] = field(default_factory=dict)
    quota: dict[str, Any] = field(default_factory=dict)  # per key: a full response body
    # per key (or "*"): keyword arguments of quota_body(), rendered on every call
    quota_profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    # When set, every product endpoint answers exactly this (after failures and the key check):
    # {"status": 200, "body": <JSON value> | "raw": "<text>", "headers": {...}}.
    response: dict[str, Any] | None = None
    timeout_sleep_s: float = 15.0
    trickle_interval_s: float = 0.1
    # Streaming chat completions (`"stream": true`): how many content chunks, the pause before
    # each, and an optional chunk count after which the connection is dropped mid-stream.
    stream_chunks: int = 5
    stream_chunk_delay_ms: int = 0
    stream_disconnect_after: int | None = None
    # How each streamed answer ended, in order: "completed" (through `data: [DONE]`),
    # "dropped" (`stream_disconnect_after`), "aborted" (the client went away mid-stream).
    stream_outcomes: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Product calls being answered right now, and the most seen at once since the last reset
    # (tests of bounded client concurrency). A call still running from before a reset (e.g. a
    # `timeout` sleeper) belongs to an older generation and is not counted.
    in_flight: int = 0
    max_in_flight: int = 0
    generation: int = 0

    def reset(self) -> None:
        with self.lock:
            self.accepted_keys = None
            self.revoked_keys = set()
            self.latency_ms = 0
            self.failure = None
            self.key_failures = {}
            self.quota = {}
            self.quota_profiles = {}
            self.response = None
            self.timeout_sleep_s = 15.0
            self.trickle_interval_s = 0.1
            self.stream_chunks = 5
            self.stream_chunk_delay_ms = 0
            self.stream_disconnect_after = None
            self.stream_outcomes = []
            self.requests = []
            self.in_flight = 0
            self.max_in_flight = 0
            self.generation += 1

    def configure(self, config: dict[str, Any]) -> None:
        """Apply settings; raises ValueError (and changes nothing) on an unknown name or mode."""
        if not isinstance(config, dict):
            raise ValueError("config must be a JSON object")
        unknown = set(config) - _CONFIG_NAMES
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        failure = _failure_mode(config.get("failure"))
        key_failures = {
            str(k): _failure_mode(v) for k, v in (config.get("key_failures") or {}).items()
        }
        profiles = _quota_profiles(config["quota_profiles"]) if "quota_profiles" in config else {}
        with self.lock:
            if "accepted_keys" in config:
                keys = config["accepted_keys"]
                self.accepted_keys = None if keys is None else set(keys)
            if "revoked_keys" in config:
                self.revoked_keys = {str(key) for key in config["revoked_keys"] or ()}
            for name in (
                "latency_ms",
                "timeout_sleep_s",
                "trickle_interval_s",
                "stream_chunks",
                "stream_chunk_delay_ms",
                "stream_disconnect_after",
            ):
                if name in config:
                    setattr(self, name, config[name])
            if "failure" in config:
                self.failure = failure
            for key, mode in key_failures.items():
                if mode is None:
                    self.key_failures.pop(key, None)
                else:
                    self.key_failures[key] = mode
            if "quota" in config:
                self.quota.update(config["quota"])
            for key, profile in profiles.items():
                if profile is None:
                    self.quota_profiles.pop(key, None)
                else:
                    self.quota_profiles[key] = profile
            if "response" in config:
                self.response = config["response"]

    def revoke(self, *keys: str, revoked: bool = True) -> None:
        """Switch keys to "revoked" (401 from now on), or back."""
        with self.lock:
            if revoked:
                self.revoked_keys.update(keys)
            else:
                self.revoked_keys.difference_update(keys)

    def restore(self, *keys: str) -> None:
        self.revoke(*keys, revoked=False)

    def key_accepted(self, key: str) -> bool:
        if key in self.revoked_keys:
            return False
        if self.accepted_keys is not None:
            return key in self.accepted_keys
        return bool(key) and not key.startswith(REJECTED_PREFIXES)

    def quota_payload(self, key: str) -> dict[str, Any]:
        """The quota body for a key: `quota`, else its profile (or `"*"`), else the default."""
        with self.lock:
            body = copy.deepcopy(self.quota.get(key))
            profile = copy.deepcopy(self.quota_profiles.get(key, self.quota_profiles.get("*")))
        if body:
            return body
        if profile is not None:
            return quota_body(**profile)
        return default_quota()

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(r) for r in self.requests if path is None or r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # What a provider's stand-in varies (standins/byteplus.py subclasses this handler).
    NAME = "MiniMax"
    DEFAULT_MODEL = "MiniMax-M2"
    CHAT_PATHS: tuple[str, ...] = ("/v1/chat/completions",)
    QUOTA_PATHS: tuple[str, ...] = ("/v1/token_plan/remains",)
    # TCP_NODELAY: headers and body go out as two writes; with Nagle on, the body of every
    # keep-alive response waited for the client's delayed ACK (~40 ms a call, `make bench`).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # keys must never reach logs
        return

    def handle_one_request(self) -> None:
        """One request; a product call counts as in flight from `_prelude` until answered."""
        self._flight: int | None = None
        try:
            super().handle_one_request()
        finally:
            self._land()

    def _take_off(self, state: StandinState) -> None:
        """Count this call in flight (caller holds `state.lock`)."""
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        self._flight = state.generation

    def _land(self) -> None:
        generation, self._flight = getattr(self, "_flight", None), None
        if generation is None:
            return
        state = self.server.state
        with state.lock:
            if state.generation == generation:
                state.in_flight = max(0, state.in_flight - 1)

    # -- helpers -------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _key(self) -> str:
        header = self.headers.get("Authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else ""

    def _error_body(self, message: str, code: str) -> dict[str, Any]:
        """An error answer's body (MiniMax: a message only)."""
        return {"error": {"message": message}}

    def _prefix_failure(self, key: str) -> str | None:
        """A failure chosen by the key's prefix (none for MiniMax: `key_failures` instead)."""
        return None

    def _reject(self) -> None:
        """The answer to a key that is not accepted."""
        self._json(401, {"base_resp": {"status_code": 1004, "status_msg": "invalid api key"}})

    def _final_usage_events(self, base: dict[str, Any], usage: dict[str, Any], body: Any) -> list:
        """The stream's last chunk(s): MiniMax puts `usage` on the chunk that finishes."""
        return [
            {
                **base,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "usage": usage,
            }
        ]

    def _fail(self, failure: str | None, path: str) -> bool:
        """Apply a configured failure; True when the response has been sent."""
        state = self.server.state
        if failure is None:
            return False
        if failure == "timeout":
            time.sleep(state.timeout_sleep_s)
            self._json(504, {"error": "timeout"})
        elif failure == "500":
            self._json(500, self._error_body("internal error (stand-in)", "InternalServiceError"))
        elif failure in ("401", "403"):
            self._json(
                int(failure), self._error_body("invalid api key (stand-in)", "AuthenticationError")
            )
        elif failure == "redirect":
            body = b'{"moved": true}'
            self.send_response(302)
            self.send_header("Location", REDIRECT_PREFIX + path)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif failure == "slow_body":
            self._trickle(state.timeout_sleep_s, state.trickle_interval_s)
        elif failure == "429":
            self.send_response(429)
            self.send_header("Retry-After", "7")
            body = json.dumps(
                self._error_body("rate limited (stand-in)", "RateLimitExceeded")
            ).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif failure == "malformed":
            self._send(200, b"<html>not json", "text/html")
        elif failure == "oversize":
            self._send(200, b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}')
        else:
            self._json(500, {"error": {"message": f"unknown failure mode {failure}"}})
        return True

    def _trickle(self, duration_s: float, interval_s: float) -> None:
        """A 200 whose body arrives one byte at a time, each within any sane read timeout."""
        total = max(1, int(duration_s / max(interval_s, 0.001)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(total))
        self.end_headers()
        self.wfile.flush()
        for _ in range(total):
            self.wfile.write(b" ")
            self.wfile.flush()
            time.sleep(interval_s)

    def _prelude(self, path: str, body: Any, *, failures: bool = True) -> str | None:
        """Record the call, apply latency and failures, check the key. Returns the key or None."""
        state = self.server.state
        key = self._key()
        with state.lock:
            state.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "key": key,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                    "at": time.time(),
                }
            )
            self._take_off(state)
            latency = state.latency_ms
            failure = (
                (state.key_failures.get(key) or self._prefix_failure(key) or state.failure)
                if failures
                else None
            )
            accepted = state.key_accepted(key)
        if latency:
            time.sleep(latency / 1000)
        if self._fail(failure, path):
            return None
        if not accepted:
            self._reject()
            return None
        with state.lock:
            canned = copy.deepcopy(state.response)
        if canned is not None:
            self._canned(canned)
            return None
        return key

    def _canned(self, canned: dict[str, Any]) -> None:
        if "raw" in canned:
            raw = canned["raw"]
            body = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
        else:
            body = json.dumps(canned.get("body")).encode()
        self.send_response(int(canned.get("status", 200)))
        headers = {"Content-Type": "application/json", **(canned.get("headers") or {})}
        for name, value in headers.items():
            self.send_header(name, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # -- routes --------------------------------------------------------------------------
    @staticmethod
    def _route(path: str) -> tuple[str, bool]:
        """(endpoint path, whether configured failures apply). A redirect's target answers
        normally, so a client that wrongly follows redirects is caught succeeding."""
        if path.startswith(REDIRECT_PREFIX + "/"):
            return path[len(REDIRECT_PREFIX) :], False
        return path, True

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._body()
        if path == "/_standin/config":
            try:
                self.server.state.configure(body if body is not None else {})
            except ValueError as exc:
                self._json(400, {"ok": False, "error": str(exc)})
                return
            self._json(200, {"ok": True})
            return
        if path == "/_standin/reset":
            self.server.state.reset()
            self._json(200, {"ok": True})
            return
        if path == "/_standin/revoke":
            keys = body.get("keys") if isinstance(body, dict) else None
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                self._json(400, {"ok": False, "error": "keys must be a list of strings"})
                return
            self.server.state.revoke(*keys, revoked=body.get("revoked", True) is not False)
            self._json(200, {"ok": True})
            return
        endpoint, failures = self._route(path)
        if endpoint not in self.CHAT_PATHS:
            self._json(404, {"error": "not found"})
            return
        key = self._prelude(path, body, failures=failures)
        if key is None:
            return
        self._chat_completion(body if isinstance(body, dict) else {}, key)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_standin/requests":
            calls = self.server.state.calls()
            self._json(200, {"requests": calls})
            return
        endpoint, failures = self._route(path)
        if endpoint not in self.QUOTA_PATHS:
            self._json(404, {"error": "not found"})
            return
        key = self._prelude(path, None, failures=failures)
        if key is None:
            return
        self._json(200, self.server.state.quota_payload(key))

    def _stream_completion(self, body: dict[str, Any], prompt_tokens: int, key: str) -> None:
        _stream_completion_impl(self, body, prompt_tokens, key)

    def _chat_completion(self, body: dict[str, Any], key: str = "") -> None:
        max_tokens = body.get("max_tokens")
        text = "Hi" if max_tokens == 1 else f"Hello from the stand-in {self.NAME} server."
        finish = "length" if max_tokens == 1 else "stop"
        messages = body.get("messages")
        if not isinstance(messages, list):
            messages = []
        messages = [m for m in messages if isinstance(m, dict)]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(text.split())
        if body.get("stream") is True:
            self._stream_completion(body, prompt_tokens, key)
            return
        self._json(
            200,
            {
                "id": f"standin-{int(time.time() * 1000)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.DEFAULT_MODEL),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _escaped(text: str) -> str:
    """Every character as a JSON `\\uXXXX` escape: the same string once decoded."""
    return "".join(f"\\u{ord(char):04x}" for char in text)


def _with_escaped_key(payload: Any, key: str) -> bytes:
    """`_sse(payload)` where each "<KEY>" in a string becomes the key, in `\\uXXXX` escapes."""
    return _sse(payload).replace(b"<KEY>", _escaped(key).encode())


def _stream_completion_impl(
    handler: _Handler, body: dict[str, Any], prompt_tokens: int, key: str = ""
) -> None:
    """OpenAI-style SSE: `data:` chunks, a final chunk with `usage`, then `data: [DONE]`.
    How it ended is appended to `state.stream_outcomes`."""
    state = handler.server.state
    try:
        outcome = _stream_chunks(handler, state, body, prompt_tokens, key)
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
        outcome = "aborted"  # the client closed the connection mid-stream
        handler.close_connection = True
    if outcome is not None:  # None: already recorded
        with state.lock:
            state.stream_outcomes.append(outcome)


def _stream_chunks(
    handler: _Handler, state: StandinState, body: dict[str, Any], prompt_tokens: int, key: str
) -> str | None:
    echo = key.startswith(ECHO_PREFIXES)
    with state.lock:
        chunks, delay_ms, drop_after = (
            max(1, int(state.stream_chunks)),
            int(state.stream_chunk_delay_ms),
            state.stream_disconnect_after,
        )
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    # Chunked framing keeps the connection alive as a real provider's does. A stream set to
    # drop has no framing and ends by closing the connection, so the client sees a body that
    # ends "cleanly" without `data: [DONE]`.
    chunked = drop_after is None
    if chunked:
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Connection", "close")
        handler.close_connection = True
    handler.end_headers()

    def write(data: bytes) -> None:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

    created = int(time.time())
    model = body.get("model", handler.DEFAULT_MODEL)
    for index in range(chunks):
        if drop_after is not None and index >= int(drop_after):
            return "dropped"  # connection closes without [DONE]: a mid-stream disconnect
        if delay_ms:
            time.sleep(delay_ms / 1000)
        delta = (
            {"role": "assistant", "content": f"chunk{index} "}
            if index == 0
            else {"content": f"chunk{index} "}
        )
        if echo and index == 0:
            delta = {"role": "assistant", "content": "your key is <KEY> "}
        write(
            _with_escaped_key(
                {
                    "id": f"standin-{created}",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                },
                key,
            )
        )
        handler.wfile.flush()
    if echo:  # one event whose data spans two `data:` lines (joined with a newline)
        first, second = _sse({"id": f"standin-{created}", "note": "<KEY>"})[:-2].split(b", ", 1)
        event = first + b",\ndata: " + second + b"\n\n"
        write(event.replace(b"<KEY>", _escaped(key).encode()))
        handler.wfile.flush()
    base = {
        "id": f"standin-{created}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": chunks,
        "total_tokens": prompt_tokens + chunks,
    }
    for event in handler._final_usage_events(base, usage, body):
        write(_sse(event))
    write(b"data: [DONE]\n\n")
    handler.wfile.flush()
    if not chunked:
        return "completed"  # recorded before the connection closes, which ends the body
    # On a kept-alive connection the terminating chunk ends the body: record the outcome first,
    # so a client that has read the whole answer also finds it recorded.
    with state.lock:
        state.stream_outcomes.append("completed")
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Dozens of clients connecting at once (concurrency tests) must queue, not be refused.
    request_queue_size = 128
    state: StandinState

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeouts, oversize bodies) is expected; stay quiet. Anything
        else: one line without the request, which may carry a key."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        print(f"stand-in: handler error {type(exc).__name__}", file=sys.stderr)


class StandinServer:
    """Start on a free loopback port in a background thread: `with StandinServer() as s: s.url`."""

    HANDLER: type[_Handler] = _Handler
    # The API's base URL under the server's root (`api_url`): what the product's settings take.
    API_PATH = ""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._server = _Server((host, port), self.HANDLER)
        self._server.state = StandinState()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._started = False

    @property
    def state(self) -> StandinState:
        return self._server.state

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """The base URL the product's settings point at (`url` plus the API's path)."""
        return self.url + self.API_PATH

    def start(self) -> StandinServer:
        self._thread.start()
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:  # shutdown() waits for serve_forever, which never ran otherwise
            self._server.shutdown()
            self._started = False
        self._server.server_close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None, server_class: type[StandinServer] = StandinServer) -> None:
    parser = argparse.ArgumentParser(description=f"Stand-in {server_class.HANDLER.NAME} server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency-ms", type=int, default=0)
    args = parser.parse_args(argv)
    server = server_class(args.host, args.port)
    server.state.latency_ms = args.latency_ms
    print(f"stand-in {server.HANDLER.NAME} listening on {server.api_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._server.serve_forever()
    server._server.server_close()


if __name__ == "__main__":
    main()
