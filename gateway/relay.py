"""Relaying an upstream event stream (SPEC G2), and scrubbing the customer's key from whatever
an upstream answer might echo (SPEC S1): the streamed events here, the parsed JSON of a
non-streaming answer with `scrub_json` (`gateway/proxy.py`).
"""

from __future__ import annotations

import json
import logging
import re
import time

import httpx
from django.views.decorators.debug import sensitive_variables

from gateway import services
from gateway.nesting import nested_too_deep

logger = logging.getLogger(__name__)

USAGE_SCAN_BYTES = 64 * 1024
# What a relay keeps of what it sent, for the terminator check and the error event's separator:
# the end of the stream only. The event that carried `usage` is kept on its own (issue 20: a
# 64 KB tail copied on every chunk was most of an open stream's memory, and its CPU).
END_BYTES = 4 * 1024
MAX_PENDING_LINE_BYTES = 1024 * 1024
SCRUBBED = "[REDACTED]"
DONE_LINE = b"data: [DONE]"
STREAM_BROKEN_EVENT = (
    b'data: {"error": {"code": "provider_error", "message": "The provider stream ended early."}}'
    b"\n\n"
)


def secret_forms(api_key: str) -> list[str]:
    """The key as it could appear in upstream text: raw, and JSON-escaped."""
    forms = {api_key, json.dumps(api_key)[1:-1]}
    return sorted((f for f in forms if f), key=len, reverse=True)


@sensitive_variables("forms", "form")
def _scrub_text(text: str, forms: list[str]) -> str:
    for form in forms:
        text = text.replace(form, SCRUBBED)
    return text


@sensitive_variables("forms")
def scrub_json(value, forms: list[str]):
    """Replace the key anywhere in a parsed JSON value (keys and strings)."""
    if isinstance(value, str):
        return _scrub_text(value, forms)
    if isinstance(value, list):
        return [scrub_json(item, forms) for item in value]
    if isinstance(value, dict):
        return {_scrub_text(k, forms): scrub_json(v, forms) for k, v in value.items()}
    return value


def _stream_done(tail: bytes) -> bool:
    """Whether the stream ended with its terminator (`data: [DONE]`). An upstream that simply
    closes the connection mid-answer ends its body "cleanly" at the HTTP level when it sent no
    length or chunked framing; without the terminator the answer is incomplete."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return bool(lines) and lines[-1] == DONE_LINE


def _event_separator(tail: bytes) -> bytes:
    """What to send so that our own event starts after whatever was relayed so far."""
    if not tail or tail.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
        return b""
    return b"\n" if tail.endswith((b"\n", b"\r")) else b"\n\n"


# JSON escapes that could spell a character of a key in a string: `\uXXXX` always; the short
# escapes only when the key has that character.
_SHORT_ESCAPES = {
    '"': b'\\"',
    "\\": b"\\\\",
    "/": b"\\/",
    "\b": b"\\b",
    "\f": b"\\f",
    "\n": b"\\n",
    "\r": b"\\r",
    "\t": b"\\t",
}
_EVENT_END = re.compile(rb"(\r?\n\r?\n)")


def _escapes_for(api_key: str) -> tuple[bytes, ...]:
    return (b"\\u", *{_SHORT_ESCAPES[c] for c in api_key if c in _SHORT_ESCAPES})


@sensitive_variables("api_key")
def may_spell_key(raw: bytes, api_key: str) -> bool:
    """Whether JSON text could decode to something holding the key: it holds the key as it is
    or JSON-escaped, or a JSON escape that could spell one of its characters. When not, every
    string in it decodes to its own bytes, none of them the key: the parsed value needs no
    scrubbing walk (issue 20: a non-streamed answer's CPU)."""
    return any(form.encode() in raw for form in secret_forms(api_key)) or any(
        escape in raw for escape in _escapes_for(api_key)
    )


def _event_cut(data: bytes) -> int:
    """The index just past the last blank line (the end of the last complete event), or 0."""
    return max(data.rfind(b"\n\n") + 2, data.rfind(b"\n\r\n") + 3, 0) if b"\n" in data else 0


class Relay:
    """The state of one relayed stream, shared by the ASGI and WSGI relays.

    Upstream bytes are passed on a whole event at a time (an SSE client acts on nothing before
    an event's blank line, so this delays nothing), so the key can be scrubbed should upstream
    ever echo it: as it is or JSON-escaped, by a plain replace; and when an event carries JSON
    escapes that could spell it (`\\u0073k-…`), in the event's data as a client decodes it —
    the data lines joined, parsed, the key replaced in its strings and, if anything changed,
    the event re-encoded (issue 13). A stream counts as completed (and its usage is recorded)
    only when it ended with `data: [DONE]`; one that broke off ends with a sanitized SSE error
    event instead."""

    __slots__ = (
        "_escapes",
        "_forms",
        "_pending",
        "_route",
        "_text_forms",
        "_usage",
        "completed",
        "end_bytes",
        "ended",
    )

    def __init__(self, route: services.Route) -> None:
        self._route = route
        self._text_forms = secret_forms(route.api_key)
        self._forms = [form.encode() for form in self._text_forms]
        self._escapes = _escapes_for(route.api_key)
        self._pending = b""
        self._usage = b""  # the last output that carried a usage block
        self.end_bytes = b""  # the last END_BYTES sent
        self.completed = False
        self.ended = 0.0

    def __repr__(self) -> str:  # never the key forms
        return f"<Relay {self._route.provider_id}>"

    def _scrub(self, data: bytes) -> bytes:
        for form in self._forms:
            data = data.replace(form, SCRUBBED.encode())
        if any(escape in data for escape in self._escapes):
            parts = _EVENT_END.split(data)  # event, separator, event, …, the rest
            parts[::2] = [self._scrub_event(event) for event in parts[::2]]
            data = b"".join(parts)
        return data

    def _scrub_event(self, event: bytes) -> bytes:
        """One event (without its blank line) whose data a client would decode to the key: the
        same event with the key replaced in the decoded data, re-encoded on one `data:` line."""
        if not any(escape in event for escape in self._escapes):
            return event
        lines = event.split(b"\n")
        values = [
            line.rstrip(b"\r")[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")
        ]
        if not values:
            return event
        data = b"\n".join(values)
        if nested_too_deep(data):  # nothing a chat stream sends, and unsafe to walk: withheld
            logger.warning("gateway: %s upstream event nested too deep", self._route.provider_id)
            return b": withheld"
        try:
            decoded = json.loads(data)
        except (ValueError, RecursionError):
            return event  # not JSON: a client has no escapes to decode either
        scrubbed = scrub_json(decoded, self._text_forms)
        if scrubbed == decoded:
            return event
        kept = [line for line in lines if line and not line.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + json.dumps(scrubbed).encode()])

    @property
    def tail(self) -> bytes:
        """What to scan for the stream's usage: the last output that carried a `usage` block
        (up to USAGE_SCAN_BYTES of it), then the end of the stream."""
        return self._usage + b"\n" + self.end_bytes if self._usage else self.end_bytes

    def _out(self, data: bytes) -> bytes:
        end = self.end_bytes + data if len(data) < END_BYTES else data
        self.end_bytes = end[-END_BYTES:] if len(end) > END_BYTES else end
        if b'"usage"' in data:
            self._usage = data[-USAGE_SCAN_BYTES:]
        return data

    def feed(self, chunk: bytes) -> bytes:
        """What to send on now that `chunk` arrived (b"" while an event is incomplete)."""
        pending = self._pending + chunk
        cut = _event_cut(pending)
        if not cut:
            if len(pending) < MAX_PENDING_LINE_BYTES:
                self._pending = pending
                return b""
            cut = pending.rfind(b"\n") + 1 or len(pending)  # an over-long event: whole lines
        self._pending = pending[cut:]
        return self._out(self._scrub(pending[:cut]))

    def end(self) -> bytes:
        """Upstream's body ended: the terminator, or our error event if it broke off."""
        rest, self._pending = self._pending, b""
        lines = [line.strip() for line in rest.splitlines() if line.strip()]
        out = b""
        if lines and lines[-1] == DONE_LINE:  # the last event without its blank line
            out = self._out(self._scrub(rest.rstrip(b"\r\n") + b"\n\n"))
        elif b"\n" in rest:  # the complete lines of an unfinished event (a partial one is dropped)
            out = self._out(self._scrub(rest[: rest.rfind(b"\n") + 1]))
        self.completed = _stream_done(self.end_bytes)
        if not self.completed:
            logger.warning("gateway: %s upstream stream ended early", self._route.provider_id)
            out += _event_separator(self.end_bytes) + STREAM_BROKEN_EVENT
        return out

    def broke(self, exc: Exception) -> bytes:
        """Upstream broke mid-stream: end our stream with an SSE error event, sanitized."""
        logger.warning(
            "gateway: %s upstream stream broke (%s)", self._route.provider_id, type(exc).__name__
        )
        return _event_separator(self.end_bytes) + STREAM_BROKEN_EVENT

    def finished(self) -> None:
        self.ended = time.monotonic()


async def relay_events(upstream: httpx.Response, relay: Relay):
    """Pass server-sent events through as they arrive (G2). If the client goes away, the
    generator is closed and the upstream request with it."""
    try:
        async for chunk in upstream.aiter_raw():
            out = relay.feed(chunk)
            if out:
                yield out
        out = relay.end()
        if out:
            yield out
    except httpx.HTTPError as exc:
        yield relay.broke(exc)
    finally:
        await upstream.aclose()
    relay.finished()  # recorded by the response once the stream is closed (proxy.MeteredResponse)


def relay_events_sync(upstream: httpx.Response, relay: Relay):
    """`relay_events` under WSGI."""
    try:
        for chunk in upstream.iter_raw():
            out = relay.feed(chunk)
            if out:
                yield out
        out = relay.end()
        if out:
            yield out
    except httpx.HTTPError as exc:
        yield relay.broke(exc)
    finally:
        upstream.close()
    relay.finished()
