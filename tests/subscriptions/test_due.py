""" "Due" is one rule (SPEC L1, issue 14): subscriptions.selectors.due_subscriptions, used by the
sweep's batching, the admin's "due" filter and the admin home's due count, and its in-memory twin
`is_due` (the sweep's re-check under the lock). At the boundary instant all of them agree."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.utils import timezone

from adminops.health import sweep_health
from subscriptions.admin import DueFilter
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.selectors import due_subscriptions, is_due
from subscriptions.sweep import run_billing_sweep

pytestmark = pytest.mark.django_db

PLUS = "minimax-token-plan-plus"


def _admin_due_filter_has(subscription: Subscription, *, now) -> bool:
    request = RequestFactory().get("/admin/subscriptions/subscription/", {"due": "now"})
    model_admin = admin.site._registry[Subscription]
    due_filter = DueFilter(request, {"due": ["now"]}, Subscription, model_admin)
    # The admin filter asks the wall clock, as the changelist does.
    with mock.patch("subscriptions.admin.timezone.now", return_value=now):
        rows = due_filter.queryset(request, Subscription.objects.all())
    return rows.filter(pk=subscription.pk).exists()


@pytest.mark.parametrize(
    ("offset", "due"),
    [
        (timedelta(0), True),  # the period end itself is due
        (timedelta(microseconds=-1), False),  # one microsecond before it is not
        (timedelta(minutes=1), True),
    ],
)
def test_the_sweep_the_admin_filter_and_the_admin_home_agree_at_the_boundary(
    make_user, stock, offset, due
):
    stock(PLUS, 1)
    user = make_user(credits_usd=100)  # enough to renew
    outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="due", now=timezone.now())
    subscription = Subscription.objects.get(pk=outcome.subscription_id)
    now = subscription.current_period_end + offset

    assert due_subscriptions(now).filter(pk=subscription.pk).exists() is due
    assert is_due(subscription, now=now) is due
    assert _admin_due_filter_has(subscription, now=now) is due
    assert (sweep_health(now=now).due_now == 1) is due
    # The sweep acts on exactly what the others call due.
    run = run_billing_sweep(now=now)
    assert run.counts["renewed"] == (1 if due else 0)


def test_an_ended_subscription_is_due_nowhere(make_user, stock):
    stock(PLUS, 1)
    user = make_user(credits_usd=100)
    outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="ended", now=timezone.now())
    subscription = Subscription.objects.get(pk=outcome.subscription_id)
    Subscription.objects.filter(pk=subscription.pk).update(status=Subscription.Status.CANCELED)
    subscription.refresh_from_db()
    now = subscription.current_period_end + timedelta(minutes=1)

    assert not due_subscriptions(now).filter(pk=subscription.pk).exists()
    assert not is_due(subscription, now=now)
    assert not _admin_due_filter_has(subscription, now=now)
    assert sweep_health(now=now).due_now == 0
    assert sum(run_billing_sweep(now=now).counts.values()) == 0
