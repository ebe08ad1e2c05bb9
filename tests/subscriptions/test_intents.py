"""Availability intents — "notify me when available" (SPEC U6, 11.1), through the API.

Restocks go through the real upload service against the stand-in MiniMax server; the e-mail
fan-out runs after commit (Celery eager in tests), captured in Django's locmem outbox.
"""

from __future__ import annotations

import socket

import pytest
from django.utils import timezone

from accounts.services import delete_account
from billing.models import LedgerEntry
from inventory.models import Credential
from inventory.upload import upload_credentials
from subscriptions.models import AvailabilityIntent
from tests.conftest import api_client_for
from tests.inventory.helpers import lines_for, new_keys

pytestmark = pytest.mark.django_db

PLAN = "minimax-token-plan-plus"
OTHER_PLAN = "minimax-token-plan-max"
JSON = "application/json"


def url(plan_id: str = PLAN) -> str:
    return f"/api/v1/coding-plans/{plan_id}/availability-intent"


def put(client, plan_id: str = PLAN):
    return client.put(url(plan_id), content_type=JSON)


def saved(client, plan_id: str = PLAN) -> bool:
    response = client.get(url(plan_id))
    assert response.status_code == 200, response.content
    return response.json()["saved"]


def buy(client, plan_id: str = PLAN, key: str = "buy-1"):
    return client.post(
        "/api/v1/coding-plans/purchases",
        {"plan_id": plan_id},
        content_type=JSON,
        HTTP_IDEMPOTENCY_KEY=key,
    )


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Password hashing is not under test here; many users are made."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def restock(stock, django_capture_on_commit_callbacks):
    """Upload stock and run what the upload schedules after commit (the notify fan-out)."""

    def add(plan_id: str = PLAN, n: int = 1) -> list[str]:
        with django_capture_on_commit_callbacks(execute=True):
            return stock(plan_id, n)

    return add


def recipients(mailoutbox) -> list[str]:
    return sorted(address for message in mailoutbox for address in message.to)


# --- the API --------------------------------------------------------------------------------------


def test_put_get_delete_round_trip(api, customer):
    assert saved(api) is False

    response = put(api)
    assert response.status_code == 200
    assert response.json() == {"plan_id": PLAN, "saved": True}
    assert saved(api) is True

    response = api.delete(url())
    assert response.status_code == 200
    assert response.json() == {"plan_id": PLAN, "saved": False}
    assert saved(api) is False
    assert not AvailabilityIntent.objects.filter(user=customer).exists()

    # Withdrawing what is not there is not an error either.
    assert api.delete(url()).json() == {"plan_id": PLAN, "saved": False}


def test_saving_twice_is_idempotent_one_row(api, customer):
    first, second = put(api), put(api)

    # SPEC U6: one per user and plan; saving again is idempotent.
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == {"plan_id": PLAN, "saved": True}
    assert AvailabilityIntent.objects.filter(user=customer, plan_id=PLAN).count() == 1


def test_intents_are_per_user_and_per_plan(api, customer, make_user):
    other = api_client_for(make_user())
    put(api, PLAN)
    put(api, OTHER_PLAN)

    assert AvailabilityIntent.objects.filter(user=customer).count() == 2
    assert saved(api, PLAN) and saved(api, OTHER_PLAN)
    assert not saved(api, "minimax-token-plan-ultra")
    assert not saved(other, PLAN)  # another user's intent is not mine


@pytest.mark.parametrize("method", ["put", "get", "delete"])
def test_unknown_plan_is_404_plan_not_found(api, method):
    response = getattr(api, method)(url("minimax-token-plan-nope"), content_type=JSON)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "plan_not_found"
    assert not AvailabilityIntent.objects.exists()


@pytest.mark.parametrize("method", ["put", "get", "delete"])
def test_intents_need_an_authenticated_caller(client, method):
    response = getattr(client, method)(url(), content_type=JSON)
    assert response.status_code == 401
    assert not AvailabilityIntent.objects.exists()


def test_saving_charges_nothing_and_reserves_nothing(api, customer, make_user, stock):
    stock(PLAN, 1)
    ledger_before = LedgerEntry.objects.count()

    assert put(api).status_code == 200

    # SPEC U6: it reserves nothing and charges nothing.
    assert api.get("/api/v1/credits").json()["balance_usd"] == "100.00"
    assert LedgerEntry.objects.count() == ledger_before
    assert Credential.objects.get().state == Credential.State.AVAILABLE
    catalog = api.get("/api/v1/coding-plans/catalog").json()["plans"]
    assert next(p for p in catalog if p["plan_id"] == PLAN)["sold_out"] is False
    # Someone else can still buy the only credential.
    rival = api_client_for(make_user(credits_usd=50))
    assert buy(rival).status_code == 201
    assert buy(api).json()["error"]["code"] == "sold_out"
    assert saved(api) is True  # a refused purchase leaves the intent in place


def test_a_purchase_clears_the_intent(api, customer, stock):
    stock(PLAN, 1)
    put(api, PLAN)
    put(api, OTHER_PLAN)

    assert buy(api).status_code == 201

    # SPEC P4 step 7 / U6: activation clears the intent for that plan only.
    assert saved(api, PLAN) is False
    assert not AvailabilityIntent.objects.filter(user=customer, plan_id=PLAN).exists()
    assert saved(api, OTHER_PLAN) is True


# --- notification on restock --------------------------------------------------------------------


def test_restock_emails_each_holder_once_and_marks_the_intent_notified(
    make_user, restock, mailoutbox
):
    holders = [make_user() for _ in range(3)]
    clients = [api_client_for(user) for user in holders]
    for client in clients:
        put(client, PLAN)
    elsewhere = make_user()
    put(api_client_for(elsewhere), OTHER_PLAN)

    restock(PLAN, 2)

    # SPEC U6: each intent holder gets one e-mail, addressed to them alone.
    assert recipients(mailoutbox) == sorted(user.email for user in holders)
    assert all(len(message.to) == 1 for message in mailoutbox)
    assert all("Token Plan Plus" in message.subject for message in mailoutbox)
    notified = AvailabilityIntent.objects.filter(plan_id=PLAN)
    assert notified.count() == 3 and all(i.notified_at is not None for i in notified)
    assert AvailabilityIntent.objects.get(user=elsewhere).notified_at is None
    # Decision recorded by these tests: once notified, the intent is spent — GET reports
    # `saved: false` (the row stays, with its notified time) until the user saves it again.
    assert [saved(client) for client in clients] == [False, False, False]

    # A later restock sends nothing more.
    restock(PLAN, 1)
    assert len(mailoutbox) == 3


def test_saving_again_rearms_the_intent_for_the_next_restock(
    api, customer, make_user, restock, mailoutbox
):
    other = make_user()
    put(api)
    put(api_client_for(other))
    restock(PLAN, 1)
    assert recipients(mailoutbox) == sorted([customer.email, other.email])

    assert put(api).json() == {"plan_id": PLAN, "saved": True}
    assert saved(api) is True
    assert AvailabilityIntent.objects.filter(user=customer, plan_id=PLAN).count() == 1

    restock(PLAN, 1)
    # SPEC U6: nothing more "until the user saves the intent again" — then exactly one more.
    assert len(mailoutbox) == 3 and mailoutbox[-1].to == [customer.email]
    assert saved(api) is False


def test_a_withdrawn_intent_gets_no_email(api, restock, mailoutbox):
    put(api)
    api.delete(url())
    restock(PLAN, 1)
    assert mailoutbox == []


def test_inactive_and_deleted_users_get_no_email(make_user, restock, mailoutbox):
    active, inactive, deleted = make_user(), make_user(), make_user()
    for user in (active, inactive, deleted):
        put(api_client_for(user))
    inactive.is_active = False
    inactive.save(update_fields=["is_active"])
    # SPEC D1: account deletion removes the intents (and anonymizes the address).
    delete_account(user=deleted, actor="system:test", now=timezone.now())

    restock(PLAN, 1)

    assert recipients(mailoutbox) == [active.email]
    # The inactive user's intent is not spent on a mail that was never sent.
    assert AvailabilityIntent.objects.get(user=inactive).notified_at is None
    assert not AvailabilityIntent.objects.filter(user=deleted).exists()


def test_a_rejected_upload_notifies_nobody(api, django_capture_on_commit_callbacks, mailoutbox):
    put(api)
    keys = new_keys(2)
    keys[1] = "invalid-restock-key-2"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        report = upload_credentials(
            plan_id=PLAN, text=lines_for(keys), actor="system:test", now=timezone.now()
        )
    assert not report.ok and callbacks == []
    assert mailoutbox == [] and saved(api) is True


def test_a_restock_of_another_plan_notifies_nobody_here(api, restock, mailoutbox):
    put(api, PLAN)
    restock(OTHER_PLAN, 1)
    assert mailoutbox == [] and saved(api) is True


# --- after a real commit ------------------------------------------------------------------------


def restock_committed(plan_id: str = PLAN, n: int = 1):
    return upload_credentials(
        plan_id=plan_id, text=lines_for(new_keys(n)), actor="system:test", now=timezone.now()
    )


@pytest.mark.django_db(transaction=True)
def test_a_committed_upload_notifies_after_commit(api, customer, mailoutbox):
    put(api)
    assert restock_committed().ok
    assert [m.to for m in mailoutbox] == [[customer.email]]
    assert saved(api) is False


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_a_mail_outage_at_restock_keeps_the_upload_and_the_intent(
    api, customer, settings, mailoutbox
):
    put(api)
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", _closed_port()
    settings.EMAIL_TIMEOUT = 2

    report = restock_committed(n=2)

    # The credentials are stored and the upload says so; the notice is not lost, only pending.
    assert report.ok and report.stored == 2
    assert Credential.objects.filter(state="available").count() == 2
    assert saved(api) is True

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert restock_committed().ok
    assert [m.to for m in mailoutbox] == [[customer.email]]
