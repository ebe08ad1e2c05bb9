"""Behind a load balancer (docs/operations.md, "Processes"): the per-address limits (sign-up,
log-in per address, password-reset requests) key on the client's address, which uvicorn takes
from X-Forwarded-For when the connection comes from an address in FORWARDED_ALLOW_IPS (uvicorn's
default: 127.0.0.1). Without that, every customer would share the balancer's one budget."""

from __future__ import annotations

import random
import re

import httpx
import pytest

from tests.servers import served, uvicorn_argv

SIGNUP_LIMIT = 2


def _attempt(client: httpx.Client, forwarded_for: str) -> int:
    """One sign-up attempt (an empty form: refused by the form, but counted) from a client the
    proxy says is `forwarded_for`; returns the status."""
    page = client.get("/accounts/signup/", headers={"X-Forwarded-For": forwarded_for})
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    return client.post(
        "/accounts/signup/",
        data={"csrfmiddlewaretoken": token},
        headers={"X-Forwarded-For": forwarded_for},
    ).status_code


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("allowed", "second_client"),
    [
        # The balancer's address is trusted: each client has its own budget.
        ("127.0.0.1", 200),
        # It is not (FORWARDED_ALLOW_IPS names another): the header is ignored, and every
        # client behind the balancer shares its one budget, so the second is refused too.
        ("192.0.2.7", 429),
    ],
)
def test_the_sign_up_budget_is_per_client_address_only_behind_a_trusted_proxy(
    tmp_path, allowed, second_client
):
    # Addresses of the benchmarking range, fresh per run: the budget's counters live in Redis.
    first, second = (f"198.18.{random.randrange(256)}.{n}" for n in (1, 2))
    env = {"SIGNUP_RATE_LIMIT_PER_HOUR": str(SIGNUP_LIMIT), "FORWARDED_ALLOW_IPS": allowed}
    with (
        served(uvicorn_argv(), tmp_path, env=env) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        statuses = [_attempt(client, first) for _ in range(SIGNUP_LIMIT + 1)]
        # The form refuses an empty sign-up (200, with its errors) until the address's budget
        # is spent; then the limit answers first.
        assert statuses == [200] * SIGNUP_LIMIT + [429]
        assert _attempt(client, second) == second_client
