"""Account deletion (SPEC D1): the service, the `delete_account` command, and what stops working."""

from __future__ import annotations

import io
import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.services import delete_account
from accounts.tokens import create_api_token
from billing.models import CreditAccount, LedgerEntry
from byok.models import ByokKey
from byok.services import add_key, update_key
from inventory.models import Credential
from subscriptions.actions import terminate_subscription
from subscriptions.intents import save_intent
from subscriptions.models import AvailabilityIntent, ChargedTerm, Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep
from tests.lifecycle.helpers import MAX, MICROS, PLUS, buy

PASSWORD = "pw-Secret-123!"


@pytest.fixture
def t0():
    return timezone.now().replace(microsecond=0)


@pytest.fixture
def rich_account(make_user, stock, t0):
    """A customer with a terminal subscription (credential already queued), a live one whose
    installed entry they replaced with their own key, an availability intent, an API token and a
    logged-in session."""
    stock(PLUS)
    stock(MAX)
    user = make_user("leaver@example.com", credits_usd=200, full_name="Lea Ver")
    old = buy(user, t0)
    terminate_subscription(subscription_id=old.pk, actor="staff:1", now=t0 + timedelta(days=1))
    live = buy(user, t0 + timedelta(days=2), MAX)
    entry = ByokKey.objects.get(subscription=live)
    update_key(user=user, key_id=entry.pk, api_key="sk-leaver-own-key-42", now=t0)
    save_intent(user=user, plan_id=PLUS, now=t0)
    token = create_api_token(user=user, now=t0).plaintext
    session = Client()
    session.force_login(user)
    return user, old, live, token, session


def _assert_deleted(user_pk: int, old: Subscription, live: Subscription, now) -> None:
    user = User.objects.get(pk=user_pk)
    assert user.email != "leaver@example.com" and "leaver" not in user.email
    assert user.full_name == "" and not user.is_active and user.deleted_at == now
    assert not user.has_usable_password()
    live.refresh_from_db()
    assert live.status == "canceled" and live.cancellation_reason == "account_deleted"
    assert live.canceled_at == now
    old.refresh_from_db()
    assert old.cancellation_reason == "administrative_termination"  # terminal one untouched
    # All BYOK entries go, the customer's own key too; all intents go.
    assert not ByokKey.objects.filter(user_id=user_pk).exists()
    assert not AvailabilityIntent.objects.filter(user_id=user_pk).exists()
    # Issued credentials: revocation_pending, key erased, no link to the person.
    for sub in (old, live):
        credential = Credential.objects.get(pk=sub.credential_id)
        assert credential.state == "revocation_pending" and credential.encrypted_key == ""
        assert credential.assigned_to_id is None and credential.holder_ref
    # Financial records remain, attached to the anonymized user.
    assert Subscription.objects.filter(user_id=user_pk).count() == 2
    assert ChargedTerm.objects.filter(subscription__user_id=user_pk).count() == 2
    # ...and SPEC M10's `forfeited` entry zeroes the balance left.
    assert LedgerEntry.objects.filter(account__user_id=user_pk).count() == 4
    assert LedgerEntry.objects.filter(account__user_id=user_pk, kind="forfeited").count() == 1
    assert CreditAccount.objects.get(user_id=user_pk).balance_micros == 0
    assert CreditAccount.objects.filter(user_id=user_pk).exists()
    assert not ApiToken.objects.filter(user_id=user_pk, revoked_at__isnull=True).exists()


@pytest.mark.django_db
def test_delete_account_service(rich_account, t0):
    # SPEC D1
    user, old, live, token, session = rich_account
    assert Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/credits").status_code == 200
    assert session.get("/api/v1/credits").status_code == 200
    now = t0 + timedelta(days=3)

    delete_account(user=user, actor=f"user:{user.pk}", now=now)

    _assert_deleted(user.pk, old, live, now)
    # Tokens and sessions stop working at once.
    r = Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/credits")
    assert r.status_code == 401
    assert session.get("/api/v1/credits").status_code == 401
    page = session.get("/subscriptions/")
    assert page.status_code == 302 and page["Location"].startswith("/accounts/login/")
    # The e-mail address is free for a new sign-up.
    r = Client().post(
        "/accounts/signup/",
        {"email": "leaver@example.com", "full_name": "", "password": PASSWORD},
    )
    assert r.status_code == 302, r.content
    newcomer = User.objects.get(email="leaver@example.com")
    assert newcomer.pk != user.pk and newcomer.is_active
    # Deleting again is a no-op.
    delete_account(user=user, actor="staff:1", now=now + timedelta(hours=1))
    assert User.objects.get(pk=user.pk).deleted_at == now


@pytest.mark.django_db
def test_delete_account_command(rich_account):
    # SPEC 11.2 delete_account EMAIL
    user, old, live, token, _session = rich_account
    out = io.StringIO()
    call_command("delete_account", "Leaver@Example.com", stdout=out)
    user.refresh_from_db()
    assert user.deleted_at is not None
    _assert_deleted(user.pk, old, live, user.deleted_at)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {token}").get("/api/v1/credits").status_code == 401
    with pytest.raises(CommandError):
        call_command("delete_account", "leaver@example.com")  # nobody has it any more


@pytest.mark.django_db
def test_delete_account_ends_a_past_due_subscription(make_user, stock, settings, t0):
    # SPEC D1: every live subscription, including one in grace.
    from billing.services import set_auto_top_up

    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    stock(PLUS)
    user = make_user(credits_usd=20)
    set_auto_top_up(user=user, enabled=True, amount_micros=5 * MICROS, actor="t", now=t0)
    sub = buy(user, t0)
    run_billing_sweep(now=sub.current_period_end)
    sub.refresh_from_db()
    assert sub.status == "past_due"
    delete_account(user=user, actor="staff:1", now=sub.current_period_end + timedelta(hours=1))
    sub.refresh_from_db()
    assert sub.status == "canceled" and sub.cancellation_reason == "account_deleted"
    assert sub.grace_deadline is None
    assert Credential.objects.get(pk=sub.credential_id).state == "revocation_pending"
    # The sweep leaves it alone afterwards.
    run = run_billing_sweep(now=sub.current_period_end + timedelta(days=2))
    assert run.counts == dict.fromkeys(run.counts, 0)


@pytest.mark.django_db
def test_own_key_without_any_subscription_is_deleted(make_user, t0):
    # SPEC D1: all the user's BYOK entries, not only installed ones.
    user = make_user()
    add_key(user=user, provider_id="minimax", api_key="sk-only-my-own-key", now=t0)
    delete_account(user=user, actor=f"user:{user.pk}", now=t0)
    assert not ByokKey.objects.filter(user=user).exists()


# -- concurrency: deletion racing a purchase ----------------------------------------------------


def _blocked(pids: list[int]) -> int:
    """How many of these backends wait for a lock (pg_locks is live, not a snapshot)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid = ANY(%s)", [pids]
        )
        return cursor.fetchone()[0]


def _wait_until_blocked(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _blocked(pids) < len(pids):
        assert time.monotonic() < deadline, "expected the transactions to wait for a lock"
        time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_account_deletion_racing_a_purchase_does_not_deadlock(make_user, stock):
    # SPEC D1 with P4's lock order (credit account first). A purchase that got the credit
    # account lock goes on to reference the user row (credential.assigned_to, the new
    # subscription); a deletion that locked the user row and waits for the credit account must
    # not block that reference, or PostgreSQL aborts one of them with a deadlock.
    stock(PLUS)
    user = make_user(credits_usd=40)
    now = timezone.now()
    results: dict[str, str] = {}

    pids: dict[str, int] = {}
    started = {name: threading.Event() for name in ("purchase", "delete")}

    def run(name, work):
        try:
            connection.ensure_connection()
            pids[name] = connection.connection.info.backend_pid
            started[name].set()
            work()
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()

    purchase = threading.Thread(
        target=run,
        args=(
            "purchase",
            lambda: purchase_plan(user=user, plan_id=PLUS, idempotency_key="race", now=now),
        ),
    )
    deletion = threading.Thread(
        target=run,
        args=("delete", lambda: delete_account(user=user, actor="staff:1", now=now)),
    )
    # Something else (a grant, say) holds the credit account while both arrive, purchase first.
    with transaction.atomic():
        CreditAccount.objects.select_for_update().get(user=user)
        purchase.start()
        started["purchase"].wait(10)
        _wait_until_blocked([pids["purchase"]])
        deletion.start()
        started["delete"].wait(10)
        _wait_until_blocked([pids["purchase"], pids["delete"]])
    purchase.join(30)
    deletion.join(30)
    assert results == {"purchase": "ok", "delete": "ok"}, results
    sub = Subscription.objects.get(user=user)
    assert sub.status == "canceled" and sub.cancellation_reason == "account_deleted"
    assert not ByokKey.objects.filter(user=user).exists()
    assert Credential.objects.get(pk=sub.credential_id).state == "revocation_pending"
