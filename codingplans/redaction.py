"""Second line of defence for SPEC S1: redact anything key-shaped before it is logged.

Services never log secrets on purpose; this catches the accidents (an exception message that
quotes a header, a debug line with a request body).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[REDACTED]"

_PATTERNS = [
    # Authorization headers and bearer tokens.
    (re.compile(r"(?i)\b(bearer|token|basic)\s+[A-Za-z0-9._~+/=\-]{6,}"), r"\1 " + REDACTED),
    # Provider-style keys: sk-..., eyJ... (JWT), our own API tokens cp_...
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}(?:\.[A-Za-z0-9_\-]+)*"), REDACTED),
    (re.compile(r"\bcp_[A-Za-z0-9_\-]{10,}"), REDACTED),
    # Fernet tokens and any other long opaque token.
    # (A digit and a letter are required, so long identifiers and file paths stay readable.)
    (
        re.compile(r"\b(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}={0,2}"),
        REDACTED,
    ),
    # key=value / "api_key": "value" shapes.
    (
        re.compile(r"(?i)((?:api[_-]?key|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
        r"\1" + REDACTED,
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecretsFilter(logging.Filter):
    """Logging filter: formats the message once, redacts it, and drops the args."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _redact_record(record: logging.LogRecord) -> None:
    if getattr(record, "_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format string must not break logging
        message = str(record.msg)
    record.msg = redact(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    record._redacted = True


_installed = False


def install_record_factory() -> None:
    """Redact at record creation, so every handler (and pytest's caplog) sees clean text."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
