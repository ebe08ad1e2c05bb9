"""Stand-in BytePlus Coding Plan server (SPEC 11.4) for `make dev` and the tests.

The MiniMax stand-in's machinery (`standins/minimax.py`: configuration, failures, latency,
streaming, the control endpoints `/_standin/config`, `/_standin/reset`, `/_standin/requests`)
serving BytePlus's OpenAI-compatible API instead: `POST /api/coding/v3/chat/completions` (also
at `/chat/completions`; `api_url` is the base URL `BYTEPLUS_API_BASE_URL` takes), with
OpenAI-style error bodies `{"error": {"code", "message", "type"}}`, no quota endpoint, and a
stream's usage in a chunk of its own only when the request asks for it
(`"stream_options": {"include_usage": true}`), as OpenAI's API does.

Keys, by prefix (any other key is valid, unless `accepted_keys` restricts them):
`bp-invalid` or `invalid` → 401 `AuthenticationError`; `bp-slow` → no answer until the client's
timeout (`timeout_sleep_s`); `bp-500` → 500; `bp-429` → 429 `RateLimitExceeded` with
`Retry-After: 7`. `key_failures` and `failure` work as in the MiniMax stand-in.

Run: python -m standins.byteplus --port 8091   (`--port 0`: any free port; the first line
printed names the base URL)
"""

from __future__ import annotations

from typing import Any

from standins import minimax

API_PATH = "/api/coding/v3"
PREFIX_FAILURES = (
    ("bp-invalid", "401"),
    ("bp-slow", "timeout"),
    ("bp-500", "500"),
    ("bp-429", "429"),
)
_ERROR_TYPES = {
    "AuthenticationError": "Unauthorized",
    "RateLimitExceeded": "TooManyRequests",
    "InternalServiceError": "InternalServerError",
}


class _Handler(minimax._Handler):
    NAME = "BytePlus"
    DEFAULT_MODEL = "ark-code-latest"
    CHAT_PATHS = ("/chat/completions", API_PATH + "/chat/completions")
    QUOTA_PATHS = ()  # BytePlus does not report usage quota (SPEC V3)

    def _error_body(self, message: str, code: str) -> dict[str, Any]:
        return {
            "error": {
                "code": code,
                "message": message,
                "type": _ERROR_TYPES.get(code, "BadRequest"),
            }
        }

    def _prefix_failure(self, key: str) -> str | None:
        for prefix, failure in PREFIX_FAILURES:
            if key.startswith(prefix):
                return failure
        return None

    def _reject(self) -> None:
        self._json(401, self._error_body("invalid api key (stand-in)", "AuthenticationError"))

    def _final_usage_events(self, base: dict[str, Any], usage: dict[str, Any], body: Any) -> list:
        """OpenAI's shape: the finishing chunk, then (only on request) a usage chunk."""
        events = [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
        options = body.get("stream_options") if isinstance(body, dict) else None
        if isinstance(options, dict) and options.get("include_usage") is True:
            events.append({**base, "choices": [], "usage": usage})
        return events


class StandinServer(minimax.StandinServer):
    """Start on a free loopback port in a background thread: `with StandinServer() as s:
    s.api_url` (the base URL for `BYTEPLUS_API_BASE_URL`)."""

    HANDLER = _Handler
    API_PATH = API_PATH


def main(argv: list[str] | None = None) -> None:
    minimax.main(argv, server_class=StandinServer)


if __name__ == "__main__":
    main()
