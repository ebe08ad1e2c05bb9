"""The logging redaction filter, SPEC S1's second line of defence: key-shaped strings never
reach a log line — in messages, arguments, tracebacks, stacks or `extra=` fields — while
ordinary text stays readable."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import secrets

import pytest
from cryptography.fernet import Fernet

from codingplans.redaction import REDACTED, RedactSecretsFilter, redact

logger = logging.getLogger("tests.security.redaction")

FERNET_KEY = Fernet.generate_key().decode()
FERNET_TOKEN = Fernet(FERNET_KEY.encode()).encrypt(b"sk-live-secret").decode()
SK = "sk-live-" + secrets.token_hex(16)
CP = "cp_" + secrets.token_urlsafe(32)
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
B64 = base64.b64encode(os.urandom(48)).decode()  # standard alphabet, with + and /
HEX = secrets.token_hex(32)

# (text containing a secret, the secret)
SECRET_SHAPES = [
    (f"calling MiniMax with {SK}", SK),
    (f"Authorization: Bearer {SK}", SK),
    ("authorization: bearer abcdefghijkl", "abcdefghijkl"),
    (f"headers={{'Authorization': 'Bearer {CP}'}}", CP),
    (f"token {CP}", CP),
    (f"Token {HEX[:20]}", HEX[:20]),
    ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
    (f"jwt={JWT}", JWT.split(".")[2]),
    (f"stored {FERNET_TOKEN}", FERNET_TOKEN[6:]),
    (f"CODING_PLANS_ENCRYPTION_KEYS={FERNET_KEY}", FERNET_KEY[:-1]),
    ("no digits " + "AbCdEfGhIjKlMnOpQrStUvWxYz" * 2 + "=", "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEf"),
    (f"fingerprint key {HEX}", HEX),
    (f"blob {B64} end", B64[4:-4]),
    ("api_key=hunter2-but-longer", "hunter2-but-longer"),
    ("API-KEY: plainwordsecret", "plainwordsecret"),
    ('{"api_key": "zz9-plural-z-alpha"}', "zz9-plural-z-alpha"),
    ("password=correct-horse-battery", "correct-horse-battery"),
    ("secret: s3cr3t-value", "s3cr3t-value"),
    ("X-Api-Key: abcdefgh12345678", "abcdefgh12345678"),
    (f"key={SK}&other=1", SK),
    (f"<ByokKey {SK}>", SK),
    (f"{SK}\n{CP}", CP),
]

ORDINARY = [
    "Not Found: /api/v1/coding-plans/subscriptions/123/charges",
    "GET /byok/ HTTP/1.1 200",
    "token expired for user 7",
    "Basic authentication is not supported",
    "the bearer of this message",
    "subscriptions.services.renew_due_subscription failed for subscription 42",
    'File "/work/main/.venv/lib/python3.11/site-packages/django/core/handlers/exception.py", '
    "line 55, in inner",
    "sweep run 5 finished: renewed=3 past_due=1 terminated=0 canceled=2 errors=0",
    "minimax-token-plan-ultra sold out; 3 intents notified",
    "task 123e4567-e89b-12d3-a456-426614174000 succeeded",
    "Key test failed: MiniMax rejected this key.",
    "The API key must be 8 to 512 printable characters without spaces.",
    "upload 17: line 3: duplicate credential",
    "",
]


@pytest.mark.parametrize("text, secret", SECRET_SHAPES)
def test_key_shaped_strings_are_redacted(text, secret):
    out = redact(text)
    assert secret not in out
    assert REDACTED in out


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_text_is_untouched(text):
    assert redact(text) == text


@pytest.mark.parametrize("text, _secret", SECRET_SHAPES)
def test_redaction_is_idempotent(text, _secret):
    once = redact(text)
    assert redact(once) == once


def test_record_factory_is_installed():
    # Installed by settings, so records are clean at creation for every handler.
    assert logging.getLogRecordFactory() is not logging.LogRecord


def test_message_arguments_are_redacted_in_place(caplog):
    # The arguments keep their shape (formatters such as uvicorn's read them; issue 13 item 2).
    caplog.set_level(logging.DEBUG, logger=logger.name)
    logger.info("checking key %s for user %d", SK, 7)
    (record,) = caplog.records
    assert record.getMessage() == f"checking key {REDACTED} for user 7"
    assert record.args == (REDACTED, 7)
    assert SK not in caplog.text


def test_non_string_messages_are_redacted(caplog):
    caplog.set_level(logging.DEBUG, logger=logger.name)
    logger.warning({"api_key": SK, "n": 1})
    logger.warning(ValueError(f"bad key {SK}"))
    assert SK not in caplog.text
    assert len(caplog.records) == 2


def test_broken_format_string_does_not_break_logging(caplog):
    caplog.set_level(logging.DEBUG, logger=logger.name)
    logger.error("two placeholders %s %s but one argument " + SK, "x")
    assert SK not in caplog.text
    assert "two placeholders" in caplog.text


def test_exception_tracebacks_are_redacted(caplog):
    caplog.set_level(logging.DEBUG, logger=logger.name)
    try:
        try:
            raise KeyError(f"Authorization: Bearer {SK}")
        except KeyError as exc:
            raise RuntimeError(f"upstream call failed with api_key={CP}") from exc
    except RuntimeError:
        logger.exception("while testing key %s", FERNET_TOKEN)
    (record,) = caplog.records
    assert record.exc_info is None  # the live exception (frames, locals) is not handed on
    assert "Traceback (most recent call last)" in record.exc_text
    assert "RuntimeError" in record.exc_text and "KeyError" in record.exc_text
    for secret in (SK, CP, FERNET_TOKEN):
        assert secret not in caplog.text
        assert secret not in record.exc_text


def test_stack_info_is_redacted():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    record.stack_info = f'Stack (most recent call last):\n  File "x.py", line 1\n    use("{SK}")'
    record._redacted = False
    RedactSecretsFilter().filter(record)
    assert SK not in record.stack_info


def test_extra_fields_are_redacted_by_the_handler_filter():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecretsFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s header=%(header)s"))
    log = logging.getLogger("tests.security.redaction.extra")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("request sent", extra={"header": f"Bearer {SK}"})
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert SK not in out
    assert "request sent" in out and "header=Bearer [REDACTED]" in out


def test_production_console_handler_redacts():
    # The handler that settings.LOGGING installs on the root logger carries the filter.
    root = logging.getLogger()
    consoles = [
        h for h in root.handlers if any(isinstance(f, RedactSecretsFilter) for f in h.filters)
    ]
    assert consoles, "the root console handler must carry RedactSecretsFilter"
    # A twin of that handler on our own stream: the real one may hold a stream that an earlier
    # test (pytest's capture) has already closed, which setStream() would try to flush.
    stream = io.StringIO()
    twin = logging.StreamHandler(stream)
    twin.filters = list(consoles[0].filters)
    twin.setFormatter(consoles[0].formatter)
    root.addHandler(twin)
    try:
        logging.getLogger("codingplans.test").warning(
            "failed: %s", json.dumps({"Authorization": f"Bearer {SK}", "api_key": CP})
        )
    finally:
        root.removeHandler(twin)
    out = stream.getvalue()
    assert "failed:" in out
    assert SK not in out and CP not in out
