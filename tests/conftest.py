"""Shared fixtures: real PostgreSQL (pytest-django), the stand-in provider servers on loopback
(MiniMax, BytePlus)."""

from __future__ import annotations

import itertools
import os

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from accounts.services import create_user
from accounts.tokens import create_api_token
from billing.services import grant_credits
from codingplans.celery import app as celery_app
from inventory.upload import upload_credentials
from standins import byteplus as byteplus_standins
from standins.minimax import StandinServer

# The pytest process hosts in-process uvicorn servers (tests/gateway/conftest.py), whose lifespan
# would set this whole process's garbage collector for serving (codingplans.collector: a freeze
# and other thresholds) at whichever test first starts one. The test process keeps Python's
# collector; servers started as subprocesses (tests/servers.py) run with the deployed default,
# and tests/operations/test_collector.py checks the setting itself.
os.environ["SERVER_GC_THRESHOLDS"] = "off"

_emails = itertools.count(1)
_keys = itertools.count(1)

# Tasks run in-process in tests (no worker); the beat schedule itself is tested separately.
celery_app.conf.task_always_eager = True
celery_app.conf.task_eager_propagates = True


@pytest.fixture(autouse=True)
def _celery_join_flag():
    """Eager tasks run under Celery's process-wide "a task is running" flag (`Task.apply` saves
    it, sets it, restores it). Two threads running eager tasks at once (the concurrency tests'
    on-commit tasks) can restore it in the wrong order and leave it set, and every later
    `.delay().get()` in this process would then refuse with "Never call result.get() within a
    task". A worker process never shares the flag between requests like this; reset it so one
    test's threads cannot fail another test."""
    yield
    from celery._state import _set_task_join_will_block

    _set_task_join_will_block(False)


@pytest.fixture(scope="session")
def standin_server():
    with StandinServer() as server:
        yield server


@pytest.fixture(scope="session")
def byteplus_standin_server():
    with byteplus_standins.StandinServer() as server:
        yield server


@pytest.fixture(autouse=True)
def standin(standin_server, byteplus_standin_server, settings):
    """Every test talks to freshly reset stand-in provider servers, never the real ones. The
    fixture's value is the MiniMax stand-in; `byteplus_standin` is the BytePlus one."""
    standin_server.state.reset()
    byteplus_standin_server.state.reset()
    cache.clear()  # quota results and rate-limit counters are keyed by ids that tests reuse
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
    settings.MINIMAX_API_BASE_URL = standin_server.url
    settings.MINIMAX_TIMEOUT_SECONDS = 2
    settings.BYTEPLUS_API_BASE_URL = byteplus_standin_server.api_url
    settings.BYTEPLUS_TIMEOUT_SECONDS = 2
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    yield standin_server
    standin_server.state.reset()
    byteplus_standin_server.state.reset()


@pytest.fixture
def byteplus_standin(standin, byteplus_standin_server):
    """The BytePlus stand-in (reset for every test by `standin`)."""
    return byteplus_standin_server


@pytest.fixture
def standins(standin, byteplus_standin):
    """Each provider's stand-in by provider id (the parametrized provider suites)."""
    return {"minimax": standin, "byteplus": byteplus_standin}


@pytest.fixture
def make_user(db):
    def make(
        email: str | None = None, *, credits_usd: int = 0, password: str = "pw-Secret-123!", **extra
    ):
        user = create_user(
            email=email or f"user{next(_emails)}@example.com",
            password=password,
            now=timezone.now(),
            **extra,
        )
        if credits_usd:
            grant_credits(
                user=user,
                amount_micros=credits_usd * 1_000_000,
                actor="system:test",
                now=timezone.now(),
            )
        return user

    return make


@pytest.fixture
def customer(make_user):
    return make_user("customer@example.com", credits_usd=100)


@pytest.fixture
def api(customer):
    """A client that authenticates with the customer's personal API token."""
    token = create_api_token(user=customer, now=timezone.now()).plaintext
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def api_client_for(user) -> Client:
    token = create_api_token(user=user, now=timezone.now()).plaintext
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.fixture
def logged_in(customer):
    client = Client()
    client.force_login(customer)
    return client


@pytest.fixture
def stock(db):
    """Put n fresh credentials for a plan into inventory through the real upload service."""

    def add(plan_id: str = "minimax-token-plan-plus", n: int = 1) -> list[str]:
        keys = [f"sk-stock-{next(_keys):06d}-{plan_id[-4:]}" for _ in range(n)]
        text = "\n".join(f"{key}::up-{key}" for key in keys)
        report = upload_credentials(
            plan_id=plan_id, text=text, actor="system:test", now=timezone.now()
        )
        assert report.ok, report.errors
        return keys

    return add
