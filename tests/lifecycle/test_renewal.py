"""Renewal and termination for non-payment (SPEC L2, L3, L7, L8) driven by the billing sweep.

The clock is passed in: `now` is a datetime, never a sleep.
"""

from __future__ import annotations

import copy
import itertools
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from adminops.models import AuditEvent
from billing.models import LedgerEntry, TopUpAttempt
from billing.services import grant_credits, set_auto_top_up
from byok.models import ByokKey
from byok.services import add_key, decrypted_key, delete_key, update_key
from inventory.models import Credential
from inventory.services import record_revocation_outcome
from subscriptions.actions import cancel_at_period_end
from subscriptions.models import ChargedTerm, Subscription
from subscriptions.sweep import run_billing_sweep
from tests.lifecycle.helpers import MICROS, PLUS, balance, buy, ledger_sum

pytestmark = pytest.mark.django_db


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def subscriber(make_user, stock):
    """A user with $20 left after buying Plus ($20) — enough for exactly one renewal."""

    def make(credits_usd: int = 40, plan_id: str = PLUS, *, now):
        stock(plan_id)
        user = make_user(credits_usd=credits_usd)
        return user, buy(user, now, plan_id)

    return make


# -- L2: renewal ------------------------------------------------------------------------------


def test_renewal_charges_recorded_price_after_catalog_price_change(subscriber, settings, t0):
    # SPEC L2: the renewal debits the price recorded at purchase; a later catalog change applies
    # to new purchases only, and the new term snapshots what was charged.
    user, sub = subscriber(credits_usd=100, now=t0)
    entry_id = ByokKey.objects.get(subscription=sub).pk
    catalog = copy.deepcopy(settings.CODING_PLANS_CATALOG)
    catalog[0].update(price_micros=35 * MICROS, billing_period_days=15)
    settings.CODING_PLANS_CATALOG = catalog
    old_end = sub.current_period_end

    run = run_billing_sweep(now=old_end)

    assert run.counts["renewed"] == 1
    sub.refresh_from_db()
    assert sub.price_micros == 20 * MICROS and sub.billing_period_days == 30
    # SPEC L2: the period extends by the recorded 30 days from the previous end.
    assert sub.current_period_start == old_end
    assert sub.current_period_end == old_end + timedelta(days=30)
    renewal = LedgerEntry.objects.get(account__user=user, kind=LedgerEntry.Kind.RENEWAL)
    assert renewal.amount_micros == -20 * MICROS
    assert renewal.reference == f"subscription:{sub.pk}"
    term = ChargedTerm.objects.get(subscription=sub, period_start=old_end)
    assert term.amount_micros == 20 * MICROS
    assert term.period_end == old_end + timedelta(days=30)
    assert term.ledger_entry_id == renewal.pk and term.charged_at == old_end
    assert "renewal" in term.description
    assert balance(user) == 60 * MICROS == ledger_sum(user)
    # Same credential, same installed entry, still linked and enabled.
    assert Credential.objects.get(pk=sub.credential_id).state == Credential.State.ASSIGNED
    entry = ByokKey.objects.get(pk=entry_id)
    assert entry.subscription_id == sub.pk and entry.enabled
    assert entry.managed_by == ByokKey.ManagedBy.CODING_PLAN

    # A new purchase pays the new catalog price (L2: "applies to new purchases only").
    _, newcomer = subscriber(credits_usd=100, now=t0)
    assert newcomer.price_micros == 35 * MICROS and newcomer.billing_period_days == 15


def test_late_sweeps_do_not_drift_the_period(subscriber, t0):
    # SPEC L2: each new period starts at the previous end, whenever the sweep runs.
    _user, sub = subscriber(credits_usd=100, now=t0)
    first_end = sub.current_period_end
    run_billing_sweep(now=first_end + timedelta(hours=7, minutes=13))
    sub.refresh_from_db()
    assert sub.current_period_start == first_end
    assert sub.current_period_end == first_end + timedelta(days=30)
    run_billing_sweep(now=sub.current_period_end + timedelta(days=2, seconds=5))
    sub.refresh_from_db()
    assert sub.current_period_end == first_end + timedelta(days=60)
    terms = list(ChargedTerm.objects.filter(subscription=sub).order_by("period_start"))
    assert [t.period_start for t in terms] == [t0, first_end, first_end + timedelta(days=30)]
    for earlier, later in itertools.pairwise(terms):
        assert earlier.period_end == later.period_start  # contiguous, no gap, no overlap


def test_sweep_before_period_end_does_nothing(subscriber, t0):
    # SPEC L1/L2: only due subscriptions are touched.
    _user, sub = subscriber(now=t0)
    run = run_billing_sweep(now=sub.current_period_end - timedelta(microseconds=1))
    assert run.counts == dict.fromkeys(run.counts, 0)
    assert ChargedTerm.objects.filter(subscription=sub).count() == 1


def test_renewal_debit_and_term_roll_back_together(subscriber, t0):
    # SPEC L2: "The debit and the new term are one transaction." A term for the next period
    # already exists (corrupt data): the term insert fails, so the debit must not stay either.
    user, sub = subscriber(credits_usd=100, now=t0)
    end = sub.current_period_end
    stray = LedgerEntry.objects.create(
        account=user.credit_account,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        amount_micros=0,
        balance_after_micros=balance(user),
        actor="system:test",
        created_at=t0,
    )
    ChargedTerm.objects.create(
        subscription=sub,
        amount_micros=0,
        period_start=end,
        period_end=end + timedelta(days=30),
        charged_at=t0,
        description="conflicting term",
        ledger_entry=stray,
    )
    before = balance(user)
    run = run_billing_sweep(now=end)
    assert run.counts["errors"] == 1 and run.counts["renewed"] == 0
    assert balance(user) == before == ledger_sum(user)
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.RENEWAL).exists()
    sub.refresh_from_db()
    assert sub.current_period_end == end and sub.status == "active"


# -- L3: short of credits, auto top-up off ---------------------------------------------------------


def test_short_without_auto_top_up_terminates_and_cleans_up(
    subscriber, t0, django_capture_on_commit_callbacks
):
    # SPEC L3
    user, sub = subscriber(credits_usd=30, now=t0)  # $10 left: short for a $20 renewal
    entry_id = ByokKey.objects.get(subscription=sub).pk
    end = sub.current_period_end
    now = end + timedelta(minutes=5)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=now)
        assert mail.outbox == []  # SPEC L3 e-mail goes out only after the commit
    assert run.counts["terminated"] == 1 and run.counts["renewed"] == 0
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.CANCELED
    assert sub.cancellation_reason == Subscription.Reason.INSUFFICIENT_CREDITS
    assert sub.canceled_at == now and sub.grace_deadline is None
    assert not ByokKey.objects.filter(pk=entry_id).exists()
    credential = Credential.objects.get(pk=sub.credential_id)
    assert credential.state == Credential.State.REVOCATION_PENDING
    assert credential.encrypted_key == ""  # SPEC I5
    assert credential.revocation_requested_at == now
    assert credential.upstream_plan_id and credential.fingerprint
    # No debit, no term, no top-up, and no renewal recorded (the renewal statement writes its
    # term, period and audit event only with the debit).
    assert balance(user) == 10 * MICROS == ledger_sum(user)
    assert ChargedTerm.objects.filter(subscription=sub).count() == 1
    assert not TopUpAttempt.objects.exists()
    assert not AuditEvent.objects.filter(
        subject_id=str(sub.pk), event_type="subscription.renewed"
    ).exists()
    assert len(mail.outbox) == 1 and mail.outbox[0].to == [user.email]
    assert "ended" in mail.outbox[0].subject
    assert AuditEvent.objects.filter(
        subject_type="subscriptions.subscription",
        subject_id=str(sub.pk),
        event_type="subscription.ended",
        actor="system:sweep",
    ).exists()


def test_replaced_installed_entry_survives_termination(subscriber, t0):
    # SPEC L3, B3, B4: replacing the key value unlinks the entry; it is the customer's own key.
    user, sub = subscriber(credits_usd=20, now=t0)  # $0 left
    entry = ByokKey.objects.get(subscription=sub)
    update_key(user=user, key_id=entry.pk, api_key="sk-my-own-key-123456", now=t0)
    run_billing_sweep(now=sub.current_period_end)
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "insufficient_credits"
    survivor = ByokKey.objects.get(pk=entry.pk)
    assert survivor.subscription_id is None and survivor.managed_by is None
    assert decrypted_key(survivor) == "sk-my-own-key-123456"
    credential = Credential.objects.get(pk=sub.credential_id)
    assert credential.state == "revocation_pending" and credential.encrypted_key == ""


def test_disabled_installed_entry_is_still_linked_and_removed(subscriber, t0):
    # SPEC B3: enabling/disabling keeps the link, so cleanup removes it (B4).
    user, sub = subscriber(credits_usd=20, now=t0)
    entry = ByokKey.objects.get(subscription=sub)
    update_key(user=user, key_id=entry.pk, enabled=False, now=t0)
    run_billing_sweep(now=sub.current_period_end)
    assert not ByokKey.objects.filter(pk=entry.pk).exists()


def test_own_key_added_after_deleting_installed_entry_survives(subscriber, t0):
    # SPEC B3, B4: deleting the installed entry unlinks it; a key added later is the user's own.
    user, sub = subscriber(credits_usd=20, now=t0)
    delete_key(user=user, key_id=ByokKey.objects.get(subscription=sub).pk, now=t0)
    own = add_key(user=user, provider_id="minimax", api_key="sk-own-replacement-999", now=t0)
    run_billing_sweep(now=sub.current_period_end)
    sub.refresh_from_db()
    assert sub.status == "canceled"
    assert ByokKey.objects.get(pk=own.pk).subscription_id is None


# -- L7, L8 -----------------------------------------------------------------------------------


def _snapshot():
    return {
        "subscriptions": sorted(Subscription.objects.values_list()),
        "terms": sorted(ChargedTerm.objects.values_list()),
        "ledger": sorted(LedgerEntry.objects.values_list()),
        "credentials": sorted(Credential.objects.values_list()),
        "byok": sorted(ByokKey.objects.values_list()),
        "top_ups": sorted(TopUpAttempt.objects.values_list()),
        "audit": AuditEvent.objects.count(),
    }


def test_rerunning_the_sweep_at_the_same_instant_changes_nothing(
    make_user, stock, settings, t0, django_capture_on_commit_callbacks
):
    # SPEC L8: renewal and termination are idempotent; so are grace and cancellation.
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    stock(PLUS, 4)
    renewing, short, in_grace, leaving = (make_user(credits_usd=c) for c in (40, 20, 20, 40))
    set_auto_top_up(user=in_grace, enabled=True, amount_micros=5 * MICROS, actor="t", now=t0)
    subs = [buy(u, t0) for u in (renewing, short, in_grace, leaving)]
    cancel_at_period_end(user=leaving, subscription_id=subs[3].pk, now=t0)
    now = subs[0].current_period_end + timedelta(hours=1)

    with django_capture_on_commit_callbacks(execute=True):
        first = run_billing_sweep(now=now)
    assert first.counts == {
        "renewed": 1,
        "past_due": 1,
        "terminated": 1,
        "canceled": 1,
        "auto_top_up_triggered": 1,
        "errors": 0,
        "reminders_sent": 0,
    }
    before = _snapshot()
    outbox = len(mail.outbox)
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            again = run_billing_sweep(now=now)
        assert again.counts == dict.fromkeys(first.counts, 0)
    after = _snapshot()
    assert after == before
    assert len(mail.outbox) == outbox


def test_installed_entry_routes_until_the_sweep_then_is_gone(subscriber, t0):
    # SPEC L7: between the deadline and the sweep the entry may still route; once the sweep
    # processes the subscription the local entry is gone, whatever the revocation status.
    user, sub = subscriber(credits_usd=20, now=t0)
    end = sub.current_period_end
    assert ByokKey.objects.filter(subscription=sub, enabled=True).exists()  # past `end`, unswept
    run_billing_sweep(now=end + timedelta(hours=3))
    assert not ByokKey.objects.filter(user=user).exists()
    credential = Credential.objects.get(pk=sub.credential_id)
    assert credential.state == "revocation_pending"  # not yet revoked upstream, entry gone anyway
    # A failed revocation later changes neither the subscription nor BYOK (SPEC R3).
    record_revocation_outcome(
        credential_id=credential.pk,
        outcome="revocation_failed",
        note="upstream timeout",
        actor="staff:1",
        now=end + timedelta(hours=4),
    )
    assert not ByokKey.objects.filter(user=user).exists()
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "insufficient_credits"


def test_credits_added_before_the_sweep_renew_instead_of_terminating(subscriber, t0):
    # SPEC L2/L3: the sweep judges the balance when it runs.
    user, sub = subscriber(credits_usd=20, now=t0)
    grant_credits(user=user, amount_micros=20 * MICROS, actor="system:test", now=t0)
    run = run_billing_sweep(now=sub.current_period_end)
    assert run.counts["renewed"] == 1 and run.counts["terminated"] == 0
    assert balance(user) == 0 == ledger_sum(user)
