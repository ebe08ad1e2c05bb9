"""The revocation queue and recorded outcomes (SPEC R1-R3)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from adminops.models import AuditEvent
from byok.models import ByokKey
from byok.services import add_key
from inventory.errors import (
    InvalidRevocationOutcome,
    InvalidRevocationState,
    RevocationItemNotFound,
    RevocationNoteRequired,
)
from inventory.models import Credential
from inventory.services import record_revocation_outcome
from subscriptions.actions import terminate_subscription
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from tests.adminops.conftest import MAX, PLUS, QUEUE_URL, ULTRA, credential_for, record_url

pytestmark = pytest.mark.django_db


def record(credential, outcome="revoked", note=""):
    return record_revocation_outcome(
        credential_id=credential.pk, outcome=outcome, note=note, actor="staff:1", now=timezone.now()
    )


def test_queue_lists_pending_and_failed_oldest_first(operator, stock, queue_item):
    # SPEC R1
    newest = queue_item(PLUS, minutes_ago=1)
    oldest = queue_item(MAX, minutes_ago=60)
    middle = queue_item(ULTRA, minutes_ago=30)
    record(middle, "revocation_failed", "MiniMax console timed out")
    done = queue_item(PLUS, minutes_ago=90)
    record(done, "revoked")
    stock(PLUS, 1)
    html = operator.get(QUEUE_URL).content.decode()
    positions = [html.index(c.upstream_plan_id) for c in (oldest, middle, newest)]
    assert positions == sorted(positions)
    assert done.upstream_plan_id not in html
    assert "3 credentials to deprovision" in html
    assert "MiniMax console timed out" in html
    assert "Revocation failed" in html and "Revocation pending" in html
    assert record_url(oldest.pk) in html


def test_empty_queue(operator):
    assert "The revocation queue is empty." in operator.get(QUEUE_URL).content.decode()


def test_recording_revoked_asks_for_confirmation_first(operator, queue_item, superuser):
    # SPEC R2
    item = queue_item(PLUS)
    form = operator.get(record_url(item.pk)).content.decode()
    assert item.upstream_plan_id in form and 'value="revoked"' in form
    confirm = operator.post(record_url(item.pk), {"outcome": "revoked", "note": ""})
    assert confirm.status_code == 200
    assert (
        "Record <strong>revoked at the provider</strong> for credential" in confirm.content.decode()
    )
    item.refresh_from_db()
    assert item.state == "revocation_pending" and item.revocation_attempts == 0

    done = operator.post(
        record_url(item.pk), {"outcome": "revoked", "note": "", "confirm": "yes"}, follow=True
    )
    assert done.redirect_chain[-1][0] == QUEUE_URL
    assert f"Credential #{item.pk} recorded as revoked (attempt 1)." in done.content.decode()
    item.refresh_from_db()
    assert item.state == "revoked"
    assert item.revocation_attempts == 1
    assert item.revoked_at is not None and item.last_attempt_at == item.revoked_at
    event = AuditEvent.objects.get(event_type="credential.revoked")
    assert event.actor == f"staff:{superuser.pk}" and event.subject_id == str(item.pk)
    assert event.old_values["state"] == "revocation_pending"


def test_failed_outcome_needs_a_note_and_stores_it_redacted(operator, queue_item):
    item = queue_item(PLUS)
    page = operator.post(record_url(item.pk), {"outcome": "revocation_failed", "note": "  "})
    assert "a failed revocation needs a note" in page.content.decode()
    raw = "MiniMax said no for sk-abcdef1234567890abcd, retry tomorrow"
    confirm = operator.post(record_url(item.pk), {"outcome": "revocation_failed", "note": raw})
    html = confirm.content.decode()
    assert "sk-abcdef1234567890abcd" not in html  # not even in the hidden field
    assert "[REDACTED]" in html
    operator.post(
        record_url(item.pk), {"outcome": "revocation_failed", "note": raw, "confirm": "yes"}
    )
    item.refresh_from_db()
    assert item.state == "revocation_failed"
    assert item.failure_note == "MiniMax said no for [REDACTED], retry tomorrow"
    assert item.revocation_attempts == 1


def test_outcomes_count_attempts_and_revoked_is_final(queue_item):
    item = queue_item(PLUS)
    first = record(item, "revocation_failed", "sk-abcdef1234567890abcd leaked in the console")
    assert first.failure_note == "[REDACTED] leaked in the console"
    second = record(item, "revocation_failed", "x" * 700)
    assert second.failure_note == "x" * 500
    assert second.revocation_attempts == 2
    assert second.revoked_at is None
    final = record(item, "revoked")
    assert (final.state, final.revocation_attempts) == ("revoked", 3)
    assert final.revoked_at is not None
    with pytest.raises(InvalidRevocationState) as exc:
        record(item, "revocation_failed", "again")
    assert exc.value.code == "invalid_state"
    with pytest.raises(InvalidRevocationState):
        record(item, "revoked")
    item.refresh_from_db()
    assert (item.state, item.revocation_attempts) == ("revoked", 3)
    assert (
        AuditEvent.objects.filter(
            subject_id=str(item.pk), event_type__startswith="credential.revo"
        ).count()
        == 4
    )  # requested + 3 outcomes


@pytest.mark.parametrize("state", ["available", "assigned"])
def test_outcome_refused_outside_the_queue(stock, state):
    (key,) = stock(PLUS, 1)
    credential = credential_for(key)
    Credential.objects.filter(pk=credential.pk).update(state=state)
    with pytest.raises(InvalidRevocationState) as exc:
        record(credential, "revoked")
    assert exc.value.code == "invalid_state"
    credential.refresh_from_db()
    assert credential.state == state and credential.revocation_attempts == 0


def test_unknown_item_and_bad_outcome(queue_item):
    item = queue_item(PLUS)
    with pytest.raises(RevocationItemNotFound):
        record_revocation_outcome(
            credential_id=10**9, outcome="revoked", note="", actor="staff:1", now=timezone.now()
        )
    with pytest.raises(RevocationItemNotFound):
        record_revocation_outcome(
            credential_id="abc", outcome="revoked", note="", actor="staff:1", now=timezone.now()
        )
    with pytest.raises(InvalidRevocationOutcome):
        record(item, "available")
    with pytest.raises(RevocationNoteRequired):
        record(item, "revocation_failed", "   ")


def test_record_page_for_a_revoked_item_offers_no_form(operator, queue_item):
    item = queue_item(PLUS)
    record(item, "revoked")
    html = operator.get(record_url(item.pk)).content.decode()
    assert "revoked is final" in html and 'name="outcome"' not in html
    assert item.upstream_plan_id not in html
    operator.post(
        record_url(item.pk), {"outcome": "revocation_failed", "note": "x", "confirm": "yes"}
    )
    item.refresh_from_db()
    assert item.state == "revoked" and item.revocation_attempts == 1
    assert operator.get(record_url(10**9)).status_code == 404


def test_outcomes_never_touch_subscriptions_or_byok_entries(make_user, stock):
    # SPEC R3
    buyer = make_user(credits_usd=100)
    stock(PLUS, 1)
    outcome = purchase_plan(user=buyer, plan_id=PLUS, idempotency_key="k-r3", now=timezone.now())
    terminate_subscription(
        subscription_id=outcome.subscription_id, actor="staff:1", now=timezone.now()
    )
    add_key(
        user=buyer, provider_id="minimax", api_key="sk-own-key-of-buyer-123456", now=timezone.now()
    )
    credential = Subscription.objects.get(pk=outcome.subscription_id).credential
    assert credential.state == "revocation_pending"

    def snapshot():
        return (
            list(Subscription.objects.order_by("id").values()),
            list(ByokKey.objects.order_by("id").values()),
        )

    before = snapshot()
    record(credential, "revocation_failed", "MiniMax support ticket open")
    record(credential, "revoked")
    assert snapshot() == before
