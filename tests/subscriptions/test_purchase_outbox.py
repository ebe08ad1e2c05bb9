"""The purchase's receipt row and its sending (issue 20; SPEC E1, P4) and the low-stock check it
runs only near the threshold (SPEC I7, O3).

The receipt's CustomerEmail row is written by the purchase's own statement, so it commits with
the purchase or not at all; its sending is queued after the commit, through the process's
publisher thread, a batch of ids to one Celery task."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis
from django.conf import settings
from django.core import mail
from django.db import connection
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from byok.services import add_key
from codingplans import crypto
from codingplans.celery import app as celery_app
from inventory.alerts import stock_check_needed
from inventory.models import Credential, LowStockAlert
from subscriptions import emails
from subscriptions.errors import ProviderSlotOccupied, SoldOut
from subscriptions.models import CustomerEmail
from subscriptions.purchase import purchase_plan

PLUS = "minimax-token-plan-plus"  # low-stock threshold 5


def _buy(user, key="k"):
    return purchase_plan(user=user, plan_id=PLUS, idempotency_key=key, now=timezone.now())


@pytest.mark.django_db
def test_receipt_row_is_written_with_the_purchase_before_any_hook_runs(
    make_user, stock, django_capture_on_commit_callbacks
):
    user = make_user(credits_usd=100)
    stock(PLUS)
    with django_capture_on_commit_callbacks(execute=False) as hooks:
        outcome = _buy(user)
        # Inside the purchase's transaction, before its commit hooks: the row is there.
        (email,) = CustomerEmail.objects.all()
    assert (email.kind, email.event_key, email.subscription_id, email.status) == (
        "purchase_receipt",
        str(outcome.subscription_id),
        outcome.subscription_id,
        "pending",
    )
    assert mail.outbox == [] and hooks  # sending is queued by a hook, after the commit
    for hook in hooks:
        hook()
    email.refresh_from_db()
    assert email.status == "sent" and len(mail.outbox) == 1


@pytest.mark.django_db
def test_a_refused_purchase_writes_no_receipt_row(make_user, stock):
    user = make_user(credits_usd=100)
    with pytest.raises(SoldOut):
        _buy(user, "sold-out")
    other = make_user(credits_usd=100)
    stock(PLUS)
    add_key(user=other, provider_id="minimax", api_key="sk-own-key-0001", now=timezone.now())
    with pytest.raises(ProviderSlotOccupied):
        _buy(other, "slot")
    assert not CustomerEmail.objects.exists()


@pytest.mark.django_db
def test_a_replayed_purchase_writes_no_second_receipt(make_user, stock):
    user = make_user(credits_usd=100)
    stock(PLUS)
    first = _buy(user, "same")
    again = _buy(user, "same")
    assert again.replayed and again.subscription_id == first.subscription_id
    assert CustomerEmail.objects.filter(kind="purchase_receipt").count() == 1


# --- the publisher: a batch of ids per task ---


@pytest.fixture
def broker():
    """The real Redis broker with tasks queued, not run (as in production): the test reads the
    messages the publisher left on the queue."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = celery_app.conf.task_default_queue
    client.delete(queue)
    celery_app.conf.task_always_eager = False
    try:
        yield client, queue
    finally:
        celery_app.conf.task_always_eager = True
        client.delete(queue)
        client.close()


def _queued_batches(client, queue, want: int, timeout: float = 5.0) -> list[list[int]]:
    """The id lists of the send_customer_emails tasks on the queue, once `want` ids are there."""
    deadline = time.monotonic() + timeout
    while True:
        batches = []
        for raw in client.lrange(queue, 0, -1):
            message = json.loads(raw)
            assert message["headers"]["task"] == "subscriptions.tasks.send_customer_emails"
            batches.append(json.loads(base64.b64decode(message["body"]))[0][0])
        if sum(len(b) for b in batches) >= want or time.monotonic() > deadline:
            return batches
        time.sleep(0.02)


def test_ids_dispatched_together_leave_as_one_task(broker):
    client, queue = broker
    ids = list(range(10_001, 10_031))
    for email_id in ids:
        emails.dispatch(email_id)
    batches = _queued_batches(client, queue, want=len(ids))
    assert sorted(i for b in batches for i in b) == ids
    assert len(batches) <= 3  # 30 ids within LINGER: one task, or a few if the thread was slow


def test_more_than_a_batch_is_split_at_the_batch_size(broker):
    client, queue = broker
    ids = list(range(20_001, 20_001 + emails.DELIVERY_BATCH_SIZE + 7))
    for email_id in ids:
        emails.dispatch(email_id)
    batches = _queued_batches(client, queue, want=len(ids))
    assert sorted(i for b in batches for i in b) == ids
    assert max(len(b) for b in batches) <= emails.DELIVERY_BATCH_SIZE


# --- the low-stock check: only when the claim may have reached the threshold ---


@given(
    threshold=st.integers(0, 50),
    concurrency=st.integers(1, 500),
    seen=st.integers(1, 2_000),
    others=st.integers(0, 499),
)
def test_a_claim_that_skips_the_check_can_never_leave_the_plan_low(
    threshold, concurrency, seen, others
):
    """SPEC O3, issue 20: the claim whose snapshot was taken last saw `seen` available (its own
    included); at most concurrency - 1 other claims were open then. If it skips the check, the
    stock once all of them commit is still above the threshold."""
    others = min(others, concurrency - 1)
    if not stock_check_needed(seen=seen, threshold=threshold, concurrency=concurrency):
        assert seen - 1 - others > threshold


def _plenty(plan_id: str, n: int) -> None:
    """n available credentials written directly (the upload's validation is not under test)."""
    now = timezone.now()
    Credential.objects.bulk_create(
        Credential(
            plan_id=plan_id,
            encrypted_key=crypto.encrypt(f"sk-plenty-{i:06d}"),
            fingerprint=f"plenty-{plan_id}-{i}",
            upstream_plan_id="up",
            created_at=now,
        )
        for i in range(n)
    )


def _hooks_of_a_purchase(capture, user) -> int:
    with capture(execute=False) as hooks:
        _buy(user)
    return len(hooks)


@pytest.mark.django_db
def test_far_from_the_threshold_a_purchase_queues_no_stock_check(
    make_user, django_capture_on_commit_callbacks
):
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_connections")
        limit = int(cursor.fetchone()[0])
    # After this claim, more than threshold + connection limit remain: only the receipt's hook.
    _plenty(PLUS, 5 + limit + 2)
    assert _hooks_of_a_purchase(django_capture_on_commit_callbacks, make_user(credits_usd=20)) == 1
    # One fewer, and the claim can no longer rule a crossing out: the check follows the commit.
    Credential.objects.filter(plan_id=PLUS, state="available").order_by("-id").first().delete()
    assert _hooks_of_a_purchase(django_capture_on_commit_callbacks, make_user(credits_usd=20)) == 2


@pytest.mark.django_db
def test_an_armed_alert_is_always_checked_so_a_restock_rearms_it(
    make_user, django_capture_on_commit_callbacks
):
    _plenty(PLUS, 400)
    LowStockAlert.objects.create(plan_id=PLUS, alerted_at=timezone.now())
    assert _hooks_of_a_purchase(django_capture_on_commit_callbacks, make_user(credits_usd=20)) == 2


@pytest.mark.django_db(transaction=True)
def test_near_the_threshold_the_crossing_still_alerts_once(make_user, stock):
    make_user("ops@example.com", is_staff=True)
    stock(PLUS, 8)
    mail.outbox.clear()
    for i in range(4):  # 8 → 4: crosses the threshold of 5 once
        _buy(make_user(credits_usd=20), f"n{i}")
    low = [m for m in mail.outbox if m.subject.startswith("Low stock")]
    assert len(low) == 1 and "5 credential(s) left" in low[0].subject


@pytest.mark.django_db(transaction=True)
def test_a_replacement_that_takes_the_plan_to_its_threshold_alerts_too(make_user, stock):
    """SPEC H3, O3: a replaced key is an assignment; the one that reaches the threshold is told."""
    from subscriptions.replacement import replace_credential

    make_user("ops@example.com", is_staff=True)
    stock(PLUS, 7)
    outcome = _buy(make_user(credits_usd=20), "r")  # 6 left: not low
    mail.outbox.clear()
    replace_credential(
        subscription_id=outcome.subscription_id, actor="staff:test", now=timezone.now()
    )  # 5 left: at the threshold
    low = [m for m in mail.outbox if m.subject.startswith("Low stock")]
    assert len(low) == 1 and "5 credential(s) left" in low[0].subject
