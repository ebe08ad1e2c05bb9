"""The web servers' own logging with our redaction in place (issue 13 item 2, SPEC S1).

uvicorn's AccessFormatter unpacks a record's five arguments and gunicorn's access log formats a
mapping of atoms, so redaction must keep a record's shape: `args` stays a tuple of the same
length (or a mapping of the same class and keys) with each string redacted. Unit tests format
records through both servers' default formatters; the integration test starts a real
`uvicorn codingplans.asgi:application` with its default options (access log on).
"""

from __future__ import annotations

import io
import logging
import secrets
import sys
import time
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
import uvicorn.config
import uvicorn.logging
from gunicorn import glogging
from gunicorn.config import Config

from codingplans.redaction import REDACTED, RedactSecretsFilter
from tests.servers import served, uvicorn_argv

SK = "sk-live-" + secrets.token_hex(16)
BEARER = "cp_" + secrets.token_urlsafe(32)


class _Capture(logging.StreamHandler):
    """A handler that fails the test where logging would print `--- Logging error ---`."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(io.StringIO())
        self.setFormatter(formatter)
        self.errors: list[BaseException] = []

    def handleError(self, record: logging.LogRecord) -> None:
        self.errors.append(sys.exc_info()[1])

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def _uvicorn_access_formatter() -> logging.Formatter:
    """uvicorn's default access formatter, as its default LOGGING_CONFIG builds it."""
    spec = dict(uvicorn.config.LOGGING_CONFIG["formatters"]["access"])
    spec.pop("()")
    return uvicorn.logging.AccessFormatter(**spec, use_colors=False)


def _access_args(path: str) -> tuple:
    # What uvicorn's protocols pass: client_addr, method, full_path, http_version, status_code.
    return ("127.0.0.1:50000", "GET", path, "1.1", 200)


ACCESS_MSG = '%s - "%s %s HTTP/%s" %d'  # uvicorn's access-log message


@pytest.fixture
def access_logger():
    logger = logging.getLogger("tests.operations.server_logging.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    logger.handlers.clear()


def test_uvicorn_access_formatter_formats_records_made_through_our_record_factory(access_logger):
    handler = _Capture(_uvicorn_access_formatter())
    access_logger.addHandler(handler)
    access_logger.info(ACCESS_MSG, *_access_args("/subscriptions/?page=2"))
    access_logger.info(ACCESS_MSG, *_access_args(f"/api/v1/x?api_key={SK}&n=1"))
    assert handler.errors == []
    lines = handler.text.splitlines()
    assert lines[0] == 'INFO:     127.0.0.1:50000 - "GET /subscriptions/?page=2 HTTP/1.1" 200 OK'
    assert f'"GET /api/v1/x?api_key={REDACTED} HTTP/1.1" 200 OK' in lines[1]
    assert SK not in handler.text


def test_uvicorn_access_formatter_formats_records_redacted_by_our_filter():
    # A record made without the factory (another library's factory, say) and cleaned by the
    # filter on a handler.
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, ACCESS_MSG, _access_args(f"/x?t={SK}"), None
    )
    assert RedactSecretsFilter().filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    assert record.args[4] == 200
    line = _uvicorn_access_formatter().format(record)
    assert f'"GET /x?t={REDACTED} HTTP/1.1" 200' in line and SK not in line


@pytest.mark.parametrize(
    "msg, args, shown",
    [
        ("key %s for user %d", (SK, 7), f"key {REDACTED} for user 7"),
        ("password=%s (%r)", ("hunter2-hunter2", 3), f"password={REDACTED} (3)"),
        ("%(who)s used %(key)s", {"who": "ann", "key": SK}, f"ann used {REDACTED}"),
        ("object %r", (ValueError(f"bad {SK}"),), f"object ValueError('bad {REDACTED}')"),
        ("100%% of %s", ("x",), "100% of x"),
    ],
)
def test_redaction_keeps_the_arguments_shape(msg, args, shown):
    record = logging.LogRecord("x", logging.INFO, __file__, 1, msg, args, None)
    RedactSecretsFilter().filter(record)
    assert record.getMessage() == shown
    if isinstance(args, dict):
        assert isinstance(record.args, dict) and record.args.keys() == args.keys()
    else:
        assert isinstance(record.args, tuple) and len(record.args) == len(args)


@pytest.fixture
def gunicorn_logger():
    cfg = Config()  # gunicorn's defaults, access log to stdout as `--access-logfile -` sets it
    cfg.set("accesslog", "-")
    logger = glogging.Logger(cfg)
    yield logger
    for log in (logger.error_log, logger.access_log):
        for handler in list(log.handlers):
            if getattr(handler, "_gunicorn", False):
                log.removeHandler(handler)


def test_gunicorn_access_log_formats_with_our_redaction(gunicorn_logger):
    handler = next(h for h in gunicorn_logger.access_log.handlers if h._gunicorn)
    stream = io.StringIO()
    handler.setStream(stream)
    handler.addFilter(RedactSecretsFilter())
    errors: list[BaseException] = []
    handler.handleError = lambda record: errors.append(sys.exc_info()[1])
    resp = SimpleNamespace(status="200 OK", headers=[("Content-Type", "text/html")], sent=123)
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/x?token={SK}",
        "PATH_INFO": "/x",
        "QUERY_STRING": f"token={SK}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": "curl/8",
        "HTTP_AUTHORIZATION": f"Bearer {BEARER}",
    }
    req = SimpleNamespace(headers=[("AUTHORIZATION", f"Bearer {BEARER}"), ("USER-AGENT", "curl/8")])
    gunicorn_logger.access(resp, req, environ, timedelta(milliseconds=5))
    # A format that names an atom the request lacks: gunicorn's SafeAtoms answers "-".
    gunicorn_logger.cfg.set("access_log_format", '%(h)s "%(r)s" %(s)s %({x-missing}i)s %(a)s')
    gunicorn_logger.access(resp, req, environ, timedelta(milliseconds=5))
    assert errors == []
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert f'"GET /x?token={REDACTED} HTTP/1.1" 200 123' in lines[0] and '"curl/8"' in lines[0]
    assert lines[1] == f'127.0.0.1 "GET /x?token={REDACTED} HTTP/1.1" 200 - curl/8'
    assert SK not in stream.getvalue() and BEARER not in stream.getvalue()


@pytest.mark.django_db(transaction=True)
def test_uvicorn_with_default_options_logs_each_request_without_logging_errors(tmp_path):
    with served(uvicorn_argv(), tmp_path) as server:  # uvicorn's defaults: access log on
        headers = {"Authorization": f"Bearer {BEARER}"}
        r = httpx.get(f"{server.url}/api/v1/credits?api_key={SK}", headers=headers, timeout=5)
        assert r.status_code == 401
        time.sleep(0.3)  # let the access lines reach the file
    out, err = server.output()
    assert "Logging error" not in err and "Traceback" not in err, err
    assert '"GET /accounts/login/ HTTP/1.1" 200' in out, out
    assert f'"GET /api/v1/credits?api_key={REDACTED} HTTP/1.1" 401' in out, out
    for secret in (SK, BEARER):
        assert secret not in out + err
