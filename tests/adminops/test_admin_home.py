"""The admin home's billing sweep panel (SPEC O2, L1): the last run, its counts and errors, the
subscriptions due now, and the warnings (no sweep finished in 2 hours; the last had errors)."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from adminops.health import sweep_health
from subscriptions import sweep
from subscriptions.models import Subscription, SweepRun
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep
from tests.adminops.conftest import PLUS

pytestmark = pytest.mark.django_db

STALE = "No billing sweep has finished in the last 2 hours"


@pytest.fixture
def subscriptions(make_user, stock):
    """Live Plus subscriptions, renewable (each customer keeps credits for a renewal); those
    bought 31 days ago are due now."""

    def make(n: int = 3, *, due: int = 0) -> list[Subscription]:
        stock(PLUS, n)
        made = []
        for i in range(n):
            user = make_user(credits_usd=100)
            bought = timezone.now() - timedelta(days=31 if i < due else 0)
            outcome = purchase_plan(
                user=user, plan_id=PLUS, idempotency_key=f"home-{i}", now=bought
            )
            made.append(Subscription.objects.get(pk=outcome.subscription_id))
        return made

    return make


def test_home_shows_last_run_counts_and_due_now(operator, subscriptions):
    subs = subscriptions(3, due=2)
    home = operator.get("/admin/").content.decode()
    assert "No sweep has finished yet." in home and STALE in home
    assert '<td id="sweep-due"><strong>2</strong>' in home
    assert "/admin/subscriptions/subscription/?due=now" in home
    due_list = operator.get("/admin/subscriptions/subscription/", {"due": "now"})
    assert {s.pk for s in due_list.context["cl"].result_list} == {subs[0].pk, subs[1].pk}

    run = run_billing_sweep(now=timezone.now(), trigger="command")
    home = operator.get("/admin/").content.decode()
    assert f'href="/admin/subscriptions/sweeprun/{run.pk}/change/">#{run.pk}</a>' in home
    assert "(Management command)" in home
    assert "renewed <strong>2</strong>" in home and "errors <strong>0</strong>" in home
    assert '<td id="sweep-due"><strong>0</strong>' in home
    assert 'id="sweep-health"' not in home  # no warning


def test_a_sweep_that_errors_on_one_subscription_shows_the_warning(operator, subscriptions):
    subs = subscriptions(3, due=3)
    bad = subs[1]
    real = sweep.process_due_subscription

    def failing(subscription_id, **kwargs):
        if subscription_id == bad.pk:
            raise RuntimeError("database hiccup")
        return real(subscription_id, **kwargs)

    with mock.patch.object(sweep, "process_due_subscription", failing):
        run = run_billing_sweep(now=timezone.now(), trigger="beat")
    assert run.counts["renewed"] == 2 and run.counts["errors"] == 1

    home = operator.get("/admin/").content.decode()
    assert f"The last billing sweep (#{run.pk}) had 1 error(s)." in home
    assert 'id="sweep-health"' in home and STALE not in home
    assert "renewed <strong>2</strong>" in home and "errors <strong>1</strong>" in home
    assert (
        f'<a href="/admin/subscriptions/subscription/{bad.pk}/change/">'
        f"subscription #{bad.pk}</a>: RuntimeError" in home
    )
    assert "database hiccup" not in home  # exception class only, never the message
    # The failing one is still due; the next clean run clears the warning.
    assert '<td id="sweep-due"><strong>1</strong>' in home
    run_billing_sweep(now=timezone.now(), trigger="beat")
    assert 'id="sweep-health"' not in operator.get("/admin/").content.decode()


def test_no_sweep_in_two_hours_from_an_injected_clock():
    run = run_billing_sweep(now=timezone.now(), trigger="beat")
    finished = run.finished_at
    assert sweep_health(now=finished + timedelta(hours=1, minutes=59)).warnings == []
    later = sweep_health(now=finished + timedelta(hours=2, seconds=1))
    assert later.last == run
    assert len(later.warnings) == 1 and later.warnings[0].startswith(STALE)
    assert f"(last: {finished:%Y-%m-%d %H:%M} UTC)" in later.warnings[0]


def test_no_sweep_in_two_hours_on_the_page(operator):
    # The page reads the clock through django.utils.timezone.now (adminops.templatetags).
    run_billing_sweep(now=timezone.now(), trigger="beat")
    assert STALE not in operator.get("/admin/").content.decode()
    three_hours_on = timezone.now() + timedelta(hours=3)
    with mock.patch("django.utils.timezone.now", return_value=three_hours_on):
        home = operator.get("/admin/").content.decode()
    assert STALE in home and 'id="sweep-health"' in home


def test_due_now_counts_past_due_in_grace_separately(make_user, stock):
    stock(PLUS, 1)
    user = make_user(credits_usd=20)  # enough for the purchase, not for a renewal
    from billing.services import set_auto_top_up

    set_auto_top_up(
        user=user, enabled=True, amount_micros=5_000_000, actor="system:test", now=timezone.now()
    )
    outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="g", now=timezone.now())
    subscription = Subscription.objects.get(pk=outcome.subscription_id)
    at = subscription.current_period_end + timedelta(minutes=1)
    run_billing_sweep(now=at, trigger="beat")
    subscription.refresh_from_db()
    assert subscription.status == "past_due"
    health = sweep_health(now=at)
    assert (health.due_now, health.in_grace) == (1, 1)


def test_an_unfinished_run_is_shown(operator):
    run_billing_sweep(now=timezone.now(), trigger="beat")
    started = timezone.now() - timedelta(hours=1)
    stuck = SweepRun.objects.create(
        trigger="beat", started_at=started, as_of=started, counts={}, errors=[]
    )
    SweepRun.objects.exclude(pk=stuck.pk).update(
        started_at=started - timedelta(minutes=5), finished_at=started - timedelta(minutes=4)
    )
    home = operator.get("/admin/").content.decode()
    assert f"#{stuck.pk}</a> (Celery beat)" in home and "never finished" in home
