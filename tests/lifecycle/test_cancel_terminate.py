"""Customer cancellation and resume (SPEC L5), operator termination (SPEC L6), and the customer
API for both (SPEC 11.1)."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import ManagementUtility, call_command
from django.utils import timezone

from adminops.models import AuditEvent
from billing.models import LedgerEntry, TopUpAttempt
from billing.services import set_auto_top_up
from byok.models import ByokKey
from byok.services import update_key
from inventory.models import Credential
from subscriptions.actions import cancel_at_period_end, resume_subscription, terminate_subscription
from subscriptions.errors import (
    AlreadyCanceled,
    ResumeTooLate,
    SubscriptionNotFound,
    SubscriptionNotLive,
)
from subscriptions.models import ChargedTerm, Subscription
from subscriptions.sweep import run_billing_sweep
from tests.conftest import api_client_for
from tests.lifecycle.helpers import MICROS, PLUS, balance, buy

pytestmark = pytest.mark.django_db


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def bought(make_user, stock, t0):
    def make(credits_usd: int = 40):
        stock(PLUS)
        user = make_user(credits_usd=credits_usd)
        return user, buy(user, t0)

    return make


def _events(sub, event_type):
    return AuditEvent.objects.filter(
        subject_type="subscriptions.subscription", subject_id=str(sub.pk), event_type=event_type
    ).count()


# -- L5 ---------------------------------------------------------------------------------------


def test_cancel_is_idempotent_and_access_stays_until_period_end(bought, t0):
    # SPEC L5
    user, sub = bought()
    entry_id = ByokKey.objects.get(subscription=sub).pk
    first = cancel_at_period_end(user=user, subscription_id=sub.pk, now=t0)
    second = cancel_at_period_end(user=user, subscription_id=sub.pk, now=t0 + timedelta(hours=1))
    assert first.cancel_at_period_end and second.cancel_at_period_end
    assert _events(sub, "subscription.cancel_requested") == 1  # the repeat changed nothing
    sub.refresh_from_db()
    assert sub.status == "active" and sub.cancel_at_period_end
    entry = ByokKey.objects.get(pk=entry_id)
    assert entry.enabled and entry.subscription_id == sub.pk
    assert Credential.objects.get(pk=sub.credential_id).state == "assigned"
    run = run_billing_sweep(now=sub.current_period_end - timedelta(seconds=1))
    assert run.counts == dict.fromkeys(run.counts, 0)


def test_first_sweep_at_period_end_cancels_without_renewal(
    bought, t0, django_capture_on_commit_callbacks
):
    # SPEC L5: no renewal although credits suffice; canceled user_requested; cleanup as in L3.
    user, sub = bought(credits_usd=100)
    cancel_at_period_end(user=user, subscription_id=sub.pk, now=t0)
    end = sub.current_period_end
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=end)
    assert run.counts["canceled"] == 1 and run.counts["renewed"] == 0
    assert run.counts["terminated"] == 0
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "user_requested"
    assert sub.canceled_at == end
    assert not ByokKey.objects.filter(user=user).exists()
    credential = Credential.objects.get(pk=sub.credential_id)
    assert credential.state == "revocation_pending" and credential.encrypted_key == ""
    assert balance(user) == 80 * MICROS
    assert not LedgerEntry.objects.filter(kind="renewal").exists()
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [user.email]


def test_canceled_subscription_gets_no_auto_top_up(
    bought, settings, t0, django_capture_on_commit_callbacks
):
    # SPEC L5: no auto top-up for a subscription set to cancel, even when short.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    user, sub = bought(credits_usd=20)
    set_auto_top_up(user=user, enabled=True, amount_micros=20 * MICROS, actor="t", now=t0)
    cancel_at_period_end(user=user, subscription_id=sub.pk, now=t0)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=sub.current_period_end)
    assert run.counts["canceled"] == 1 and run.counts["auto_top_up_triggered"] == 0
    assert run.counts["past_due"] == 0
    assert not TopUpAttempt.objects.exists()
    assert not LedgerEntry.objects.filter(kind__in=["top_up", "top_up_declined"]).exists()


def test_resume_before_end_undoes_the_cancellation(bought, t0):
    # SPEC L5 (should): undo before the period ends; the next sweep renews as usual.
    user, sub = bought()
    cancel_at_period_end(user=user, subscription_id=sub.pk, now=t0)
    resumed = resume_subscription(
        user=user, subscription_id=sub.pk, now=sub.current_period_end - timedelta(seconds=1)
    )
    assert not resumed.cancel_at_period_end
    assert _events(sub, "subscription.resumed") == 1
    resume_subscription(user=user, subscription_id=sub.pk, now=t0)  # idempotent
    assert _events(sub, "subscription.resumed") == 1
    run = run_billing_sweep(now=sub.current_period_end)
    assert run.counts["renewed"] == 1 and run.counts["canceled"] == 0


def test_resume_after_end_is_refused(bought, t0):
    # SPEC L5: once the paid period has ended the cancellation stands, even before the sweep.
    user, sub = bought()
    cancel_at_period_end(user=user, subscription_id=sub.pk, now=t0)
    with pytest.raises(ResumeTooLate):
        resume_subscription(user=user, subscription_id=sub.pk, now=sub.current_period_end)
    sub.refresh_from_db()
    assert sub.cancel_at_period_end
    run_billing_sweep(now=sub.current_period_end)
    with pytest.raises(SubscriptionNotLive):
        resume_subscription(
            user=user, subscription_id=sub.pk, now=sub.current_period_end + timedelta(days=1)
        )
    with pytest.raises(SubscriptionNotLive):
        cancel_at_period_end(user=user, subscription_id=sub.pk, now=sub.current_period_end)


def test_cancel_and_resume_refuse_another_users_subscription(bought, make_user, t0):
    # SPEC U5/S2: customers reach only their own objects.
    _user, sub = bought()
    stranger = make_user()
    with pytest.raises(SubscriptionNotFound):
        cancel_at_period_end(user=stranger, subscription_id=sub.pk, now=t0)
    with pytest.raises(SubscriptionNotFound):
        resume_subscription(user=stranger, subscription_id=sub.pk, now=t0)
    sub.refresh_from_db()
    assert not sub.cancel_at_period_end


# -- L6 ---------------------------------------------------------------------------------------


def test_operator_termination_ends_now(bought, t0, django_capture_on_commit_callbacks):
    # SPEC L6: canceled now, administrative_termination, cleanup as in L3.
    user, sub = bought()
    now = t0 + timedelta(days=3)
    with django_capture_on_commit_callbacks(execute=True):
        ended = terminate_subscription(subscription_id=sub.pk, actor="staff:9", now=now)
    assert ended.status == "canceled" and ended.cancellation_reason == "administrative_termination"
    assert ended.canceled_at == now
    assert not ByokKey.objects.filter(user=user).exists()
    credential = Credential.objects.get(pk=sub.credential_id)
    assert credential.state == "revocation_pending" and credential.encrypted_key == ""
    assert AuditEvent.objects.filter(actor="staff:9", event_type="subscription.ended").exists()
    assert len(mail.outbox) == 1
    # The sweep later finds nothing to do with it.
    assert run_billing_sweep(now=sub.current_period_end).counts["canceled"] == 0


def test_operator_termination_keeps_the_customers_own_key(bought, t0):
    # SPEC L6 → L3 → B4: only a still-linked installed entry is deleted.
    user, sub = bought()
    entry = ByokKey.objects.get(subscription=sub)
    update_key(user=user, key_id=entry.pk, api_key="sk-customer-owned-0001", now=t0)
    terminate_subscription(subscription_id=sub.pk, actor="staff:9", now=t0)
    assert ByokKey.objects.filter(pk=entry.pk, subscription__isnull=True).exists()


def _row(sub):
    return (
        Subscription.objects.filter(pk=sub.pk).values().get(),
        Credential.objects.filter(pk=sub.credential_id).values().get(),
        AuditEvent.objects.count(),
        ChargedTerm.objects.count(),
        LedgerEntry.objects.count(),
    )


@pytest.mark.django_db(transaction=True)  # the command closes its DB connection on exit
def test_terminating_a_terminal_subscription_is_refused_and_changes_nothing(bought, t0, capsys):
    # SPEC L6: never overwrite a terminal subscription; the command exits non-zero with
    # "already canceled".
    _user, sub = bought(credits_usd=20)
    run_billing_sweep(now=sub.current_period_end)  # ends it: insufficient_credits
    before = _row(sub)
    with pytest.raises(AlreadyCanceled):
        terminate_subscription(subscription_id=sub.pk, actor="staff:9", now=t0 + timedelta(days=40))
    assert _row(sub) == before

    with pytest.raises(SystemExit) as exit_info:
        ManagementUtility(["manage.py", "terminate_subscription", str(sub.pk)]).execute()
    assert exit_info.value.code != 0
    assert "already canceled" in capsys.readouterr().err.lower()
    assert _row(sub) == before
    assert Subscription.objects.get(pk=sub.pk).cancellation_reason == "insufficient_credits"


def test_terminate_command_ends_a_live_subscription(bought):
    # SPEC 11.2 terminate_subscription
    _user, sub = bought()
    out = io.StringIO()
    call_command("terminate_subscription", str(sub.pk), stdout=out)
    assert str(sub.pk) in out.getvalue()
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "administrative_termination"


@pytest.mark.django_db(transaction=True)
def test_terminate_command_unknown_id_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ManagementUtility(["manage.py", "terminate_subscription", "987654321"]).execute()
    assert exit_info.value.code != 0
    assert capsys.readouterr().err.strip()


# -- customer API (SPEC 11.1) -----------------------------------------------------------------


def test_api_cancel_and_resume(bought, make_user):
    user, sub = bought()
    client = api_client_for(user)
    r = client.post(f"/api/v1/coding-plans/subscriptions/{sub.pk}/cancel")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["id"] == sub.pk and body["cancel_at_period_end"] is True
    assert body["status"] == "active" and body["canceled_at"] is None
    r = client.post(f"/api/v1/coding-plans/subscriptions/{sub.pk}/cancel")  # idempotent
    assert r.status_code == 200 and r.json()["cancel_at_period_end"] is True
    r = client.post(f"/api/v1/coding-plans/subscriptions/{sub.pk}/resume")
    assert r.status_code == 200 and r.json()["cancel_at_period_end"] is False


def test_api_cancel_of_another_users_subscription_is_404(bought, make_user):
    _user, sub = bought()
    stranger = api_client_for(make_user())
    for action in ("cancel", "resume"):
        r = stranger.post(f"/api/v1/coding-plans/subscriptions/{sub.pk}/{action}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
    sub.refresh_from_db()
    assert not sub.cancel_at_period_end


def test_api_cancel_of_a_canceled_subscription_is_409_subscription_not_live(bought, t0):
    user, sub = bought()
    terminate_subscription(subscription_id=sub.pk, actor="staff:1", now=t0)
    r = api_client_for(user).post(f"/api/v1/coding-plans/subscriptions/{sub.pk}/cancel")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "subscription_not_live"


def test_api_resume_after_period_end_is_409(make_user, stock):
    stock(PLUS)
    user = make_user(credits_usd=40)
    start = timezone.now() - timedelta(days=31)
    sub = buy(user, start)
    cancel_at_period_end(user=user, subscription_id=sub.pk, now=start + timedelta(days=1))
    r = api_client_for(user).post(f"/api/v1/coding-plans/subscriptions/{sub.pk}/resume")
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "subscription_not_resumable"
