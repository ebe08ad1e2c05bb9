"""Second line of defence for SPEC S1: redact anything key-shaped before it is logged.

Services never log secrets on purpose; this catches the accidents (an exception message that
quotes a header, a debug line with a request body). It redacts the message, the formatted
traceback, the stack and any string `extra=` attribute; ordinary prose, URL paths and file
paths stay readable.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping

REDACTED = "[REDACTED]"

_CRED = r"[A-Za-z0-9._~+/=\-]"


def _scheme_credential(match: re.Match[str]) -> str:
    """`Token <x>` / `Basic <x>`: redact only what looks like a credential (a digit, a symbol
    or mixed case), so prose such as "token expired" or "Basic authentication" is left alone."""
    scheme, value = match.group(1), match.group(2)
    looks_secret = len(value) >= 8 and (
        any(c.isdigit() or c in "._~+/=-" for c in value) or any(c.isupper() for c in value[1:])
    )
    return f"{scheme} {REDACTED}" if looks_secret else match.group(0)


_PATTERNS: list[tuple[re.Pattern[str], object]] = [
    # Authorization headers: any Bearer credential.
    (re.compile(rf"(?i)\b(bearer)\s+{_CRED}{{6,}}"), r"\1 " + REDACTED),
    (re.compile(rf"(?i)\b(token|basic)\s+({_CRED}+)"), _scheme_credential),
    # Provider-style keys: sk-..., eyJ... (JWT), our own API tokens cp_...
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{10,}(?:\.[A-Za-z0-9_\-]+)*"), REDACTED),
    (re.compile(r"\bcp_[A-Za-z0-9_\-]{10,}"), REDACTED),
    # Fernet tokens (even short ones) and any other long opaque token.
    (re.compile(r"\bgAAAAA[A-Za-z0-9_\-]{20,}={0,2}"), REDACTED),
    # (A digit and a letter are required, so long identifiers and file paths stay readable.)
    (
        re.compile(
            r"\b(?![0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b)"  # UUIDs stay
            r"(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}={0,2}"
        ),
        REDACTED,
    ),
    # 40+ characters of mixed case without any digit (a Fernet key can have none).
    (
        re.compile(r"\b(?=[A-Za-z_\-]*[A-Z])(?=[A-Za-z_\-]*[a-z])[A-Za-z_\-]{40,}={0,2}"),
        REDACTED,
    ),
    # Standard base64 (with + and /): upper, lower and a digit, 40+ characters.
    (
        re.compile(
            r"(?<![A-Za-z0-9+/])(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])"
            r"(?=[A-Za-z0-9+/]*\d)[A-Za-z0-9+/]{40,}={0,2}"
        ),
        REDACTED,
    ),
    # key=value / "api_key": "value" / header shapes.
    (
        re.compile(
            r"(?i)((?:api[_-]?key|access[_-]?key|secret|password|passwd|authorization|token)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
        ),
        r"\1" + REDACTED,
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)  # type: ignore[arg-type]
    return text


# Attributes every LogRecord has; anything else came from `extra=` (or a handler) and is redacted
# when it is a string.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "_redacted",
}


class RedactSecretsFilter(logging.Filter):
    """Logging filter: redacts the message, each argument, the traceback and `extra=` strings,
    keeping the record's shape (see `_redact_record`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        _redact_extras(record)
        return True


class _RedactedArg:
    """Stands in for an argument whose str() or repr() showed something key-shaped: `%s` and
    `%r` print the redacted text."""

    __slots__ = ("_repr", "_str")

    def __init__(self, value: object) -> None:
        self._str = redact(str(value))
        self._repr = redact(repr(value))

    def __str__(self) -> str:
        return self._str

    def __repr__(self) -> str:
        return self._repr


_PLAIN = (int, float, complex, type(None))  # bool is an int; nothing key-shaped fits in these


def _redact_arg(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, _PLAIN):
        return value  # kept as is: `%d` and uvicorn's `HTTPStatus(status_code)` need numbers
    try:
        text, shown = str(value), repr(value)
    except Exception:
        return _RedactedArg("<unprintable>")
    if redact(text) != text or redact(shown) != shown:
        return _RedactedArg(value)
    return value


def _redact_args(args: object) -> object:
    """The same shape back: a tuple of the same length, a mapping with the same keys."""
    if isinstance(args, tuple):
        return tuple(_redact_arg(value) for value in args)
    if isinstance(args, dict):
        # Of the same class (gunicorn's SafeAtoms answers "-" for a missing atom), filled
        # through dict's own methods so a subclass's lookup rules do not interfere.
        try:
            redacted = copy.copy(args)
        except Exception:
            redacted = dict(args)
        for key, value in dict.items(args):
            dict.__setitem__(redacted, key, _redact_arg(value))
        return redacted
    if isinstance(args, Mapping):
        return {key: _redact_arg(args[key]) for key in args}
    return args


def _redact_record(record: logging.LogRecord) -> None:
    """Redact in place and keep the record's shape: `args` stays a tuple of the same length (or
    a mapping with the same keys), with each string redacted, because formatters read the
    arguments themselves (uvicorn's AccessFormatter unpacks five of them; gunicorn's access log
    takes a mapping). The message is redacted as a format string; when the pieces, put back
    together, would still show a secret (a secret split between message and argument, or
    `password=%s`, whose placeholder the redaction swallowed) or would not format at all, the
    message becomes the redacted full text, escaped, with `%.0s` placeholders that consume the
    (redacted) arguments without printing them."""
    if getattr(record, "_redacted", False):
        return
    try:
        message: str | None = record.getMessage()
    except Exception:  # a broken format string must not break logging
        message = None
    template = record.msg if isinstance(record.msg, str) else str(record.msg)
    record.msg = redact(template)
    record.args = _redact_args(record.args)
    try:
        rebuilt: str | None = record.getMessage()
    except Exception:
        rebuilt = None
    if rebuilt is None or redact(rebuilt) != rebuilt:
        full = redact(message if message is not None else template)
        if not record.args:
            record.msg = full  # no arguments: the message is not %-formatted
        elif isinstance(record.args, tuple):
            record.msg = full.replace("%", "%%") + "%.0s" * len(record.args)
        else:  # a mapping: unused keys are fine
            record.msg = full.replace("%", "%%")
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    # The formatted (and redacted) text is all a handler may see; the live exception object
    # (frames, locals, the raw message) is dropped.
    record.exc_info = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._redacted = True


def _redact_extras(record: logging.LogRecord) -> None:
    for name, value in list(vars(record).items()):
        if name not in _STANDARD_ATTRS and isinstance(value, str):
            setattr(record, name, redact(value))


_installed = False


def install_record_factory() -> None:
    """Redact at record creation, so every handler (and pytest's caplog) sees clean text.

    `extra=` attributes are set after the factory runs; RedactSecretsFilter (on our handlers)
    redacts those."""
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
