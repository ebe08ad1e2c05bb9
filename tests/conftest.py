"""Shared fixtures: real PostgreSQL (pytest-django), the stand-in MiniMax server on loopback."""

from __future__ import annotations

import itertools

import pytest
from django.test import Client
from django.utils import timezone

from accounts.services import create_api_token, create_user
from billing.services import grant_credits
from upstream.standin import StandinServer

_emails = itertools.count(1)


@pytest.fixture(scope="session")
def standin_server():
    with StandinServer() as server:
        yield server


@pytest.fixture(autouse=True)
def standin(standin_server, settings):
    """Every test talks to a freshly reset stand-in MiniMax server, never the real one."""
    standin_server.state.reset()
    settings.MINIMAX_API_BASE_URL = standin_server.url
    settings.MINIMAX_TIMEOUT_SECONDS = 2
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    yield standin_server
    standin_server.state.reset()


@pytest.fixture
def make_user(db):
    def make(email: str | None = None, *, credits_usd: int = 0, password: str = "pw-Secret-123!", **extra):
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
