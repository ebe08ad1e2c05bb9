"""Lifecycle pages: cancel confirmation (U3), resume, past-due banner (U4), deletion (D1)."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from billing.services import set_auto_top_up
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep

pytestmark = pytest.mark.django_db


@pytest.fixture
def sub(customer, stock):
    stock()
    out = purchase_plan(
        user=customer, plan_id="minimax-token-plan-plus", idempotency_key="p", now=timezone.now()
    )
    return Subscription.objects.get(pk=out.subscription_id)


def test_cancel_confirmation_then_cancel_and_resume(logged_in, sub):
    page = logged_in.get(f"/subscriptions/coding-plans/{sub.pk}/cancel/").content.decode()
    # SPEC U3: paid-through date, only the unchanged installed entry is removed, revocation.
    assert sub.current_period_end.strftime("%Y-%m-%d") in page
    assert "only if it is unchanged" in page and "revoked when access ends" in page
    r = logged_in.post(f"/subscriptions/coding-plans/{sub.pk}/cancel/")
    assert r.status_code == 302
    sub.refresh_from_db()
    assert sub.cancel_at_period_end and sub.status == "active"
    detail = logged_in.get(f"/subscriptions/coding-plans/{sub.pk}/").content.decode()
    assert "Cancellation scheduled" in detail and "Undo cancellation" in detail
    logged_in.post(f"/subscriptions/coding-plans/{sub.pk}/resume/")
    sub.refresh_from_db()
    assert not sub.cancel_at_period_end


def test_past_due_banner_shows_grace_deadline(make_user, stock, settings):
    # SPEC U4
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    stock()
    user = make_user(credits_usd=20)
    set_auto_top_up(user=user, enabled=True, amount_micros=5_000_000, actor="t", now=timezone.now())
    out = purchase_plan(
        user=user, plan_id="minimax-token-plan-plus", idempotency_key="p", now=timezone.now()
    )
    sub = Subscription.objects.get(pk=out.subscription_id)
    run_billing_sweep(now=sub.current_period_end + timedelta(minutes=5))
    sub.refresh_from_db()
    assert sub.status == "past_due"
    client = Client()
    client.force_login(user)
    page = client.get(f"/subscriptions/coding-plans/{sub.pk}/").content.decode()
    assert 'id="past-due-banner"' in page
    assert sub.grace_deadline.strftime("%Y-%m-%d %H:%M") in page
    assert "own MiniMax key" in page and "not deleted" in page


def test_self_service_account_deletion_needs_password(customer, sub):
    client = Client()
    client.force_login(customer)
    bad = client.post("/account/delete/", {"password": "wrong", "confirm": "on"})
    assert bad.status_code == 400
    assert User.objects.get(pk=customer.pk).is_active
    ok = client.post("/account/delete/", {"password": "pw-Secret-123!", "confirm": "on"})
    assert ok.status_code == 302
    user = User.objects.get(pk=customer.pk)
    assert not user.is_active and user.email != "customer@example.com"
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "account_deleted"
    assert client.get("/api/v1/credits").status_code == 401
