"""Stand-in MiniMax server (SPEC 11.3) for `make dev` and the tests.

A small threaded HTTP server on loopback that answers the endpoints the product uses, with the
keys it accepts, latency and failures configurable — in-process through `StandinServer.state`,
or from another process through `POST /_standin/config`.

Keys: by default any key is accepted except those starting with `invalid` or `sk-invalid`;
`accepted_keys` (a list) restricts it to exactly those keys.
Failures (`failure`, or per key in `key_failures`): `timeout` (sleeps past the client's
timeout), `500`, `401`, `429`, `malformed` (not JSON), `oversize` (a huge body).

Run: python -m upstream.standin --port 8090 [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REJECTED_PREFIXES = ("invalid", "sk-invalid")


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


@dataclass
class StandinState:
    accepted_keys: set[str] | None = None
    latency_ms: int = 0
    failure: str | None = None
    key_failures: dict[str, str] = field(default_factory=dict)
    quota: dict[str, Any] = field(default_factory=dict)  # per key: a full response body
    timeout_sleep_s: float = 15.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reset(self) -> None:
        with self.lock:
            self.accepted_keys = None
            self.latency_ms = 0
            self.failure = None
            self.key_failures = {}
            self.quota = {}
            self.timeout_sleep_s = 15.0
            self.requests = []

    def configure(self, config: dict[str, Any]) -> None:
        with self.lock:
            if "accepted_keys" in config:
                keys = config["accepted_keys"]
                self.accepted_keys = None if keys is None else set(keys)
            for name in ("latency_ms", "failure", "timeout_sleep_s"):
                if name in config:
                    setattr(self, name, config[name])
            if "key_failures" in config:
                self.key_failures.update(config["key_failures"])
            if "quota" in config:
                self.quota.update(config["quota"])

    def key_accepted(self, key: str) -> bool:
        if self.accepted_keys is not None:
            return key in self.accepted_keys
        return bool(key) and not key.startswith(REJECTED_PREFIXES)

    def calls(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(r) for r in self.requests if path is None or r["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keys must never reach logs
        return

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
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def _key(self) -> str:
        header = self.headers.get("Authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else ""

    def _fail(self, failure: str | None) -> bool:
        """Apply a configured failure; True when the response has been sent."""
        state = self.server.state
        if failure is None:
            return False
        if failure == "timeout":
            time.sleep(state.timeout_sleep_s)
            self._json(504, {"error": "timeout"})
        elif failure == "500":
            self._json(500, {"error": {"message": "internal error (stand-in)"}})
        elif failure == "401":
            self._json(401, {"error": {"message": "invalid api key (stand-in)"}})
        elif failure == "429":
            self.send_response(429)
            self.send_header("Retry-After", "7")
            body = b'{"error": {"message": "rate limited (stand-in)"}}'
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

    def _prelude(self, path: str, body: Any) -> str | None:
        """Record the call, apply latency and failures, check the key. Returns the key or None."""
        state = self.server.state
        key = self._key()
        with state.lock:
            state.requests.append(
                {"method": self.command, "path": path, "key": key, "body": body, "at": time.time()}
            )
            latency = state.latency_ms
            failure = state.key_failures.get(key) or state.failure
            accepted = state.key_accepted(key)
        if latency:
            time.sleep(latency / 1000)
        if self._fail(failure):
            return None
        if not accepted:
            self._json(401, {"base_resp": {"status_code": 1004, "status_msg": "invalid api key"}})
            return None
        return key

    # -- routes --------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self._body()
        if path == "/_standin/config":
            self.server.state.configure(body or {})
            self._json(200, {"ok": True})
            return
        if path == "/_standin/reset":
            self.server.state.reset()
            self._json(200, {"ok": True})
            return
        if path != "/v1/chat/completions":
            self._json(404, {"error": "not found"})
            return
        if self._prelude(path, body) is None:
            return
        self._chat_completion(body if isinstance(body, dict) else {})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_standin/requests":
            calls = self.server.state.calls()
            self._json(200, {"requests": calls})
            return
        if path != "/v1/token_plan/remains":
            self._json(404, {"error": "not found"})
            return
        key = self._prelude(path, None)
        if key is None:
            return
        with self.server.state.lock:
            payload = copy.deepcopy(self.server.state.quota.get(key)) or default_quota()
        self._json(200, payload)

    def _chat_completion(self, body: dict[str, Any]) -> None:
        max_tokens = body.get("max_tokens")
        text = "Hi" if max_tokens == 1 else "Hello from the stand-in MiniMax server."
        finish = "length" if max_tokens == 1 else "stop"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = len(text.split())
        self._json(
            200,
            {
                "id": f"standin-{int(time.time() * 1000)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "MiniMax-M2"),
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: StandinState


class StandinServer:
    """Start on a free loopback port in a background thread: `with StandinServer() as s: s.url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._server = _Server((host, port), _Handler)
        self._server.state = StandinState()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def state(self) -> StandinState:
        return self._server.state

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandinServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> StandinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency-ms", type=int, default=0)
    args = parser.parse_args(argv)
    server = StandinServer(args.host, args.port)
    server.state.latency_ms = args.latency_ms
    print(f"stand-in MiniMax listening on {server.url}", flush=True)
    try:
        server._server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
