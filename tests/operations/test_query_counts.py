"""Query counts of the busiest pages do not grow with rows (issue 8, `make bench` figure 5).

Each page is rendered twice: with a few rows, then with more rows than fit on one page. Both
renders must stay within 12 queries, and the second may not need more than the first.
(`make bench` renders the same pages with the issue's sizes: 500 charged terms, 10,000
credentials, 1,000 revocation items, and reports the render times.)
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry
from inventory.models import Credential
from subscriptions.models import ChargedTerm, Subscription

pytestmark = pytest.mark.django_db

MAX_QUERIES = 12
PLUS = "minimax-token-plan-plus"
PRICE = 20_000_000
CENTER_URL = "/subscriptions/?show=all"
CHANGELIST_URL = "/admin/inventory/credential/"
QUEUE_URL = "/admin/inventory/credential/revocation-queue/"

_fingerprints = itertools.count(1)


def _credentials(n: int, *, state: str = Credential.State.AVAILABLE, user=None) -> list:
    now = timezone.now()
    revocable = state in (Credential.State.REVOCATION_PENDING, Credential.State.REVOCATION_FAILED)
    return Credential.objects.bulk_create(
        [
            Credential(
                plan_id=PLUS,
                state=state,
                encrypted_key="" if revocable else "not-a-real-ciphertext",
                fingerprint=f"query-count-{next(_fingerprints):08d}",
                upstream_plan_id=f"up-{i}",
                assigned_to=user,
                created_at=now,
                assigned_at=now if user else None,
                revocation_requested_at=now - timedelta(minutes=i) if revocable else None,
            )
            for i in range(n)
        ]
    )


def _subscription(user, *, status: str = Subscription.Status.ACTIVE) -> Subscription:
    (credential,) = _credentials(1, state=Credential.State.ASSIGNED, user=user)
    now = timezone.now()
    live = status == Subscription.Status.ACTIVE
    start = now - timedelta(days=1) if live else now - timedelta(days=400)
    return Subscription.objects.create(
        user=user,
        plan_id=PLUS,
        provider_id="minimax",
        status=status,
        price_micros=PRICE,
        billing_period_days=30,
        credential=credential,
        current_period_start=start,
        current_period_end=start + timedelta(days=30),
        canceled_at=None if live else start + timedelta(days=30),
        cancellation_reason=None if live else Subscription.Reason.USER_REQUESTED,
        created_at=start,
        updated_at=now,
    )


def _terms(subscription: Subscription, n: int, *, offset: int = 0) -> None:
    account = CreditAccount.objects.get(user=subscription.user)
    starts = [
        subscription.current_period_start - timedelta(days=30 * (offset + i)) for i in range(n)
    ]
    entries = LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                account=account,
                kind=LedgerEntry.Kind.RENEWAL,
                amount_micros=-PRICE,
                balance_after_micros=0,
                reason="Token Plan Plus renewal",
                actor="system:sweep",
                reference=f"subscription:{subscription.pk}",
                created_at=start,
            )
            for start in starts
        ]
    )
    ChargedTerm.objects.bulk_create(
        [
            ChargedTerm(
                subscription=subscription,
                amount_micros=PRICE,
                period_start=start,
                period_end=start + timedelta(days=30),
                charged_at=start,
                description="Token Plan Plus — renewal",
                ledger_entry=entry,
            )
            for start, entry in zip(starts, entries, strict=True)
        ]
    )


def _queries(client: Client, url: str) -> int:
    client.get(url)  # warm: the quota cache, as for a customer browsing
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(ctx.captured_queries)


def _assert_flat(client: Client, url: str, grow, django_assert_max_num_queries) -> None:
    few = _queries(client, url)
    grow()
    with django_assert_max_num_queries(MAX_QUERIES):
        response = client.get(url)
    assert response.status_code == 200
    many = _queries(client, url)
    assert many <= few, f"{url}: {few} queries with a few rows, {many} with many"


@pytest.fixture
def staff_client(make_user):
    client = Client()
    client.force_login(make_user("ops-queries@example.com", is_staff=True, is_superuser=True))
    return client


def test_subscription_center_queries_do_not_grow_with_ended_plans(
    customer, logged_in, django_assert_max_num_queries
):
    _subscription(customer)

    def grow():
        for _ in range(30):
            _subscription(customer, status=Subscription.Status.CANCELED)

    _assert_flat(logged_in, CENTER_URL, grow, django_assert_max_num_queries)


def test_detail_page_queries_do_not_grow_with_charged_terms(
    customer, logged_in, django_assert_max_num_queries
):
    subscription = _subscription(customer)
    _terms(subscription, 3)
    url = f"/subscriptions/coding-plans/{subscription.pk}/"
    _assert_flat(
        logged_in,
        url,
        lambda: _terms(subscription, 60, offset=3),
        django_assert_max_num_queries,
    )


def test_admin_inventory_list_queries_do_not_grow_with_credentials(
    staff_client, django_assert_max_num_queries
):
    _credentials(5)
    _assert_flat(
        staff_client,
        CHANGELIST_URL,
        lambda: (_credentials(250), _credentials(30, state=Credential.State.REVOKED)),
        django_assert_max_num_queries,
    )


def test_revocation_queue_queries_do_not_grow_with_items(
    staff_client, django_assert_max_num_queries
):
    _credentials(3, state=Credential.State.REVOCATION_PENDING)
    _assert_flat(
        staff_client,
        QUEUE_URL,
        lambda: (
            _credentials(150, state=Credential.State.REVOCATION_PENDING),
            _credentials(20, state=Credential.State.REVOCATION_FAILED),
        ),
        django_assert_max_num_queries,
    )
