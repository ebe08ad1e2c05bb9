"""A sold credential that stops working (SPEC H3, H4): flagged by the gateway, the quota fetch and
the BYOK key test; replaced with fresh stock (automatically, on restock, or by staff); service
credit after 24 hours. The stand-in MiniMax revokes the key at run time; everything runs over
real HTTP, nothing of ours is mocked."""

from __future__ import annotations

import itertools
import logging
import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.tokens import create_api_token
from adminops.models import AuditEvent
from billing.models import LedgerEntry
from byok.models import ByokKey
from byok.services import update_key
from codingplans import crypto
from inventory.models import Credential
from inventory.selectors import revocation_queue
from inventory.upload import upload_credentials
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.replacement import (
    PROBLEM_MESSAGE,
    flag_credential_problem,
    review_credential_problems,
)

PLUS = "minimax-token-plan-plus"
GATEWAY = "/api/v1/gateway/chat/completions"
BODY = {"model": "minimax/MiniMax-M2", "messages": [{"role": "user", "content": "hello"}]}
CHAT = "/v1/chat/completions"


_serial = itertools.count(1)


@pytest.fixture
def stock(db):
    """Fresh credentials through the real upload; upstream plan ids that do not repeat the key
    (the canary looks for the keys in pages that show upstream plan ids)."""

    def add(plan_id: str = PLUS, n: int = 1) -> list[str]:
        keys = [f"sk-dead-{next(_serial):06d}-Zq8w" for _ in range(n)]
        text = "\n".join(f"{key}::mm-plan-{i}" for i, key in enumerate(keys))
        report = upload_credentials(
            plan_id=plan_id, text=text, actor="system:test", now=timezone.now()
        )
        assert report.ok, report.errors
        return keys

    return add


def _buy(user, stock) -> tuple[Subscription, str]:
    (key,) = stock(PLUS)
    out = purchase_plan(user=user, plan_id=PLUS, idempotency_key="dead-key", now=timezone.now())
    assert out.status == 201, out.body
    subscription = Subscription.objects.get(pk=out.subscription_id)
    assert subscription.credential.fingerprint == crypto.fingerprint(key)
    return subscription, key


def _gateway(client: Client):
    return client.post(GATEWAY, BODY, content_type="application/json")


def _last_key(standin) -> str:
    return standin.state.calls(CHAT)[-1]["key"]


def _balance(user) -> int:
    user.credit_account.refresh_from_db()
    return user.credit_account.balance_micros


def _events(subscription, event_type: str):
    return AuditEvent.objects.filter(
        subject_type="subscriptions.subscription",
        subject_id=str(subscription.pk),
        event_type=event_type,
    )


@pytest.mark.django_db
def test_dead_key_at_the_gateway_is_replaced_with_stock_and_the_next_call_works(
    customer, api, logged_in, stock, standin, make_user, caplog, django_capture_on_commit_callbacks
):
    caplog.set_level(logging.DEBUG)
    staff = make_user(is_staff=True, is_superuser=True)
    subscription, old_key = _buy(customer, stock)
    entry = ByokKey.objects.get(subscription=subscription)
    (new_key,) = stock(PLUS)
    balance = _balance(customer)
    charges = LedgerEntry.objects.exclude(kind="service_credit").count()
    mail.outbox.clear()

    standin.state.revoke(old_key)
    with django_capture_on_commit_callbacks(execute=True):
        response = _gateway(api)
    # SPEC G3: the caller sees the rejection as it happened...
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "provider_key_rejected"
    # ...the flag was raised (H3) and, with stock, the replacement ran at once.
    assert _events(subscription, "subscription.credential_problem").count() == 1
    subscription.refresh_from_db()
    assert subscription.credential_problem_at is None
    new = subscription.credential
    assert new.fingerprint == crypto.fingerprint(new_key)
    assert new.state == Credential.State.ASSIGNED

    # The same installed entry (id, link), now with the new key.
    entry.refresh_from_db()
    assert entry.subscription_id == subscription.pk and entry.managed_by == "coding_plan"
    assert crypto.decrypt(entry.encrypted_key) == new_key
    # The old credential is in the revocation queue, its key erased (I5).
    old = Credential.objects.get(fingerprint=crypto.fingerprint(old_key))
    assert old.state == Credential.State.REVOCATION_PENDING and old.encrypted_key == ""
    assert old.pk in [c.pk for c in revocation_queue()]
    # No charge; one audit event for the replacement.
    assert _balance(customer) == balance
    assert LedgerEntry.objects.exclude(kind="service_credit").count() == charges
    assert _events(subscription, "subscription.credential_replaced").count() == 1
    assert not AuditEvent.objects.filter(
        subject_type="inventory.credential", subject_id=str(old.pk)
    ).exclude(event_type="credential.assigned")
    # The customer got an e-mail (staff also hear the plan ran low, O3).
    assert [m.to for m in mail.outbox if "replaced the key" in m.subject] == [[customer.email]]

    # The next gateway call succeeds with the new key.
    response = _gateway(api)
    assert response.status_code == 200, response.content
    assert _last_key(standin) == new_key

    # Canary (S1): neither key in logs, pages, e-mails or audit values.
    page = logged_in.get(f"/subscriptions/coding-plans/{subscription.pk}/").content.decode()
    assert PROBLEM_MESSAGE not in page  # replaced: nothing to tell any more
    admin = Client()
    admin.force_login(staff)
    pages = [
        page,
        logged_in.get("/byok/").content.decode(),
        admin.get(f"/admin/subscriptions/subscription/{subscription.pk}/change/").content.decode(),
        admin.get(f"/admin/inventory/credential/{old.pk}/change/").content.decode(),
        admin.get(f"/admin/inventory/credential/{new.pk}/change/").content.decode(),
        admin.get("/admin/adminops/auditevent/").content.decode(),
        admin.get("/admin/").content.decode(),
    ]
    audit = [str(v) for v in AuditEvent.objects.values_list("old_values", "new_values")]
    mails = [m.subject + m.body for m in mail.outbox]
    logs = [r.getMessage() for r in caplog.records]
    for key in (old_key, new_key):
        for text in (*pages, *audit, *mails, *logs):
            assert key not in text


@pytest.mark.django_db
def test_no_stock_staff_emailed_once_then_restock_replaces(
    customer, api, logged_in, stock, standin, make_user, django_capture_on_commit_callbacks
):
    staff = make_user(is_staff=True)
    subscription, old_key = _buy(customer, stock)
    standin.state.revoke(old_key)
    mail.outbox.clear()
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            assert _gateway(api).json()["error"]["code"] == "provider_key_rejected"
    subscription.refresh_from_db()
    assert subscription.credential_problem_at is not None
    assert [m.to for m in mail.outbox] == [[staff.email]]  # once, at once
    assert _events(subscription, "subscription.credential_problem").count() == 1
    # The customer sees what is happening; staff find it in a filtered list.
    page = logged_in.get(f"/subscriptions/coding-plans/{subscription.pk}/").content.decode()
    assert "Your plan's key stopped working; we are replacing it" in page
    admin = Client()
    admin.force_login(make_user(is_staff=True, is_superuser=True))
    listing = admin.get("/admin/subscriptions/subscription/?credential_problem=yes")
    assert (
        f"/admin/subscriptions/subscription/{subscription.pk}/change/" in listing.content.decode()
    )
    assert "waiting for a replacement" in admin.get("/admin/").content.decode()
    # The command exits non-zero while there is no stock.
    with pytest.raises(CommandError, match="sold_out"):
        call_command("replace_credential", str(subscription.pk))
    assert len(mail.outbox) == 1

    # Restock (the plan_restocked hook): the replacement runs.
    with django_capture_on_commit_callbacks(execute=True):
        (new_key,) = stock(PLUS)
    subscription.refresh_from_db()
    assert subscription.credential_problem_at is None
    assert subscription.credential.fingerprint == crypto.fingerprint(new_key)
    assert _gateway(api).status_code == 200
    assert _last_key(standin) == new_key
    page = logged_in.get(f"/subscriptions/coding-plans/{subscription.pk}/").content.decode()
    assert "stopped working" not in page


@pytest.mark.django_db
def test_quota_fetch_and_byok_test_flag_a_dead_installed_key(
    customer, api, stock, standin, django_capture_on_commit_callbacks
):
    subscription, old_key = _buy(customer, stock)
    entry = ByokKey.objects.get(subscription=subscription)
    standin.state.revoke(old_key)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.get(f"/api/v1/coding-plans/subscriptions/{subscription.pk}/quota")
    assert response.status_code == 502
    subscription.refresh_from_db()
    assert subscription.credential_problem_at is not None
    assert (
        _events(subscription, "subscription.credential_problem").get().new_values["source"]
        == "quota"
    )

    # The BYOK key test of the installed entry does it too (on a fresh problem).
    Subscription.objects.filter(pk=subscription.pk).update(credential_problem_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/byok/{entry.pk}/test")
    assert response.json()["ok"] is False
    subscription.refresh_from_db()
    assert subscription.credential_problem_at is not None
    sources = [
        e.new_values["source"] for e in _events(subscription, "subscription.credential_problem")
    ]
    assert sorted(sources) == ["byok_test", "quota"]


@pytest.mark.django_db
def test_a_key_the_customer_replaced_is_theirs_and_only_the_credential_changes(
    customer, stock, standin, django_capture_on_commit_callbacks
):
    subscription, old_key = _buy(customer, stock)
    entry = ByokKey.objects.get(subscription=subscription)
    update_key(user=customer, key_id=entry.pk, api_key="sk-customer-own-0001", now=timezone.now())
    (new_key,) = stock(PLUS)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("replace_credential", str(subscription.pk), stdout=out)
    assert "no linked installed entry" in out.getvalue()
    subscription.refresh_from_db()
    assert subscription.credential.fingerprint == crypto.fingerprint(new_key)
    entry.refresh_from_db()
    assert entry.subscription_id is None
    assert crypto.decrypt(entry.encrypted_key) == "sk-customer-own-0001"
    assert Credential.objects.get(fingerprint=crypto.fingerprint(old_key)).state == (
        "revocation_pending"
    )
    for text in (out.getvalue(), *(m.body for m in mail.outbox)):
        assert old_key not in text and new_key not in text


@pytest.mark.django_db
def test_service_credit_after_24_hours_once(
    customer, stock, standin, django_capture_on_commit_callbacks
):
    # SPEC H4: $20 / 30 days; a problem 25 hours old has cost 2 days (begun) → $1.33.
    subscription, old_key = _buy(customer, stock)
    t0 = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):  # no stock: stays flagged
        assert flag_credential_problem(
            subscription_id=subscription.pk,
            key_fingerprint=crypto.fingerprint(old_key),
            source="gateway",
            now=t0,
        )
    balance = _balance(customer)
    assert review_credential_problems(now=t0 + timedelta(hours=23))["service_credits"] == 0
    assert _balance(customer) == balance
    with django_capture_on_commit_callbacks(execute=True):
        counts = review_credential_problems(now=t0 + timedelta(hours=25))
    assert counts["service_credits"] == 1
    credit = LedgerEntry.objects.get(kind="service_credit")
    assert credit.amount_micros == 1_330_000
    assert _balance(customer) == balance + 1_330_000
    # Once per problem: later reviews, and the replacement when stock comes, add nothing.
    review_credential_problems(now=t0 + timedelta(hours=49))
    with django_capture_on_commit_callbacks(execute=True):
        stock(PLUS)
    assert LedgerEntry.objects.filter(kind="service_credit").count() == 1
    subscription.refresh_from_db()
    assert subscription.credential_problem_at is None
    # A problem fixed within 24 hours earns nothing.
    assert _balance(customer) == balance + 1_330_000


@pytest.mark.django_db
def test_a_late_rejection_of_a_replaced_key_raises_nothing(customer, stock, standin):
    subscription, old_key = _buy(customer, stock)
    stock(PLUS)
    call_command("replace_credential", str(subscription.pk), stdout=StringIO())
    assert not flag_credential_problem(
        subscription_id=subscription.pk,
        key_fingerprint=crypto.fingerprint(old_key),
        source="gateway",
        now=timezone.now(),
    )


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_gateway_calls_with_a_dead_key_flag_once_and_replace_once(
    customer, stock, standin
):
    subscription, old_key = _buy(customer, stock)
    (new_key,) = stock(PLUS)
    stock(PLUS, 3)  # more stock: a second replacement would find some
    token = create_api_token(user=customer, now=timezone.now()).plaintext
    standin.state.revoke(old_key)
    standin.state.latency_ms = 20
    barrier = threading.Barrier(32)
    codes: list[object] = []

    def call() -> None:
        try:
            client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
            barrier.wait()
            response = client.post(GATEWAY, BODY, content_type="application/json")
            codes.append(response.json()["error"]["code"] if response.status_code != 200 else 200)
        except Exception as exc:  # surfaced by the assertion below
            codes.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(codes) == 32
    assert set(codes) <= {"provider_key_rejected", 200}, codes
    assert "provider_key_rejected" in codes
    assert _events(subscription, "subscription.credential_problem").count() == 1
    assert _events(subscription, "subscription.credential_replaced").count() == 1
    subscription.refresh_from_db()
    assert subscription.credential.fingerprint == crypto.fingerprint(new_key)
    assert subscription.credential_problem_at is None
    assert Credential.objects.filter(state="revocation_pending").count() == 1
    assert Credential.objects.filter(state="available").count() == 3
