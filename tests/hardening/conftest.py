"""Shared fixtures for the hardening tests (issue 8): a small world of owner A, another
customer B, staff without permissions and a superuser, and a snapshot of every balance and state
that a refused request must leave untouched."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

PLUS = "minimax-token-plan-plus"
MAX = "minimax-token-plan-max"

_seq = itertools.count(1)


@dataclass
class Person:
    name: str
    user: Any
    token: str
    ids: dict[str, Any] = field(default_factory=dict)

    @property
    def email(self) -> str:
        return self.user.email

    def session(self, *, csrf: bool = False) -> Client:
        client = Client(enforce_csrf_checks=csrf, raise_request_exception=False)
        client.force_login(self.user)
        return client

    def bearer(self) -> Client:
        return Client(HTTP_AUTHORIZATION=f"Bearer {self.token}", raise_request_exception=False)


@dataclass
class World:
    a: Person  # the owner of every object the matrix probes
    b: Person  # another customer
    staff: Person  # is_staff, no permissions
    superuser: Person
    ids: dict[str, Any]


def build_world(make_user, stock) -> World:
    """A holds a live Coding Plan (subscription, installed BYOK entry, charged term, ledger
    entries, an assigned credential), an API token and a saved availability intent."""
    from accounts.tokens import create_api_token
    from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
    from byok.models import ByokKey
    from inventory.models import Credential
    from inventory.upload_jobs import start_upload
    from subscriptions.intents import save_intent
    from subscriptions.models import ChargedTerm, SweepRun
    from subscriptions.purchase import purchase_plan

    now = timezone.now()
    n = next(_seq)

    def person(name: str, **extra) -> Person:
        user = make_user(f"{name}-{n}@example.com", credits_usd=100, **extra)
        issued = create_api_token(user=user, name=f"{name} token", now=now)
        p = Person(name, user, issued.plaintext)
        p.ids["token_id"] = issued.token.pk
        return p

    stock(PLUS, 2)
    a = person("owner-a")
    outcome = purchase_plan(user=a.user, plan_id=PLUS, idempotency_key=f"world-{n}", now=now)
    assert outcome.status == 201, outcome.body
    a.ids["subscription_id"] = outcome.subscription_id
    a.ids["key_id"] = ByokKey.objects.get(user=a.user).pk
    a.ids["plan_id"] = PLUS
    save_intent(user=a.user, plan_id=MAX, now=now)
    b = person("other-b")
    staff = person("staff-noperm", is_staff=True)
    superuser = person("super", is_staff=True, is_superuser=True)

    account = CreditAccount.objects.get(user=a.user)
    top_up = TopUpAttempt.objects.create(
        account=account,
        subscription_id=outcome.subscription_id,
        due_at=now,
        amount_micros=10_000_000,
        backend="simulated-approve",
        created_at=now,
    )
    group = Group.objects.create(name=f"support-{n}")
    run = SweepRun.objects.create(trigger=SweepRun.Trigger.OTHER, started_at=now, as_of=now)
    upload = start_upload(plan_id=PLUS, text="", user=superuser.user, now=now)
    from adminops.models import AuditEvent
    from payments.models import CardPayment, StripeCustomer, WebhookEvent

    # Card payments (SPEC M1, M9): a declined one of A's, A's Stripe customer, one event.
    payment = CardPayment.objects.create(
        user=a.user,
        amount_micros=25_000_000,
        status=CardPayment.Status.FAILED,
        failure_code="card_declined",
        created_at=now,
        updated_at=now,
    )
    a.ids["payment_id"] = payment.pk
    customer = StripeCustomer.objects.create(
        user=a.user, customer_id=f"cus_world{n}", created_at=now, updated_at=now
    )
    event = WebhookEvent.objects.create(
        event_id=f"evt_world{n}", type="customer.created", outcome="ignored", received_at=now
    )
    from payments.models import Refund

    # A refund record (SPEC M5), shown read-only in the admin.
    refund = Refund.objects.create(
        payment=payment,
        amount_micros=1_000_000,
        reason="world",
        actor="staff:0",
        ledger_entry=LedgerEntry.objects.filter(account=account).latest("id"),
        created_at=now,
    )

    ids = {
        "accounts.user": a.user.pk,
        "accounts.apitoken": a.ids["token_id"],
        "auth.group": group.pk,
        "adminops.auditevent": AuditEvent.objects.order_by("id").values_list("id", flat=True)[0],
        "billing.creditaccount": account.pk,
        "billing.ledgerentry": LedgerEntry.objects.filter(account=account).latest("id").pk,
        "billing.topupattempt": top_up.pk,
        "byok.byokkey": a.ids["key_id"],
        "inventory.credential": Credential.objects.get(assigned_to=a.user).pk,
        "inventory.inventoryupload": upload.pk,
        "subscriptions.subscription": outcome.subscription_id,
        "subscriptions.chargedterm": ChargedTerm.objects.get(
            subscription_id=outcome.subscription_id
        ).pk,
        "subscriptions.sweeprun": run.pk,
        "payments.cardpayment": payment.pk,
        "payments.stripecustomer": customer.pk,
        "payments.webhookevent": event.pk,
        "payments.refund": refund.pk,
    }
    return World(a=a, b=b, staff=staff, superuser=superuser, ids=ids)


@pytest.fixture
def world(make_user, stock):
    return build_world(make_user, stock)


def _snapshot_models():
    from accounts.models import ApiToken, User
    from adminops.models import AuditEvent
    from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
    from byok.models import ByokKey
    from inventory.models import Credential
    from subscriptions.models import AvailabilityIntent, ChargedTerm, PurchaseRequest, Subscription

    return [
        User,
        ApiToken,
        CreditAccount,
        LedgerEntry,
        TopUpAttempt,
        Subscription,
        ChargedTerm,
        PurchaseRequest,
        ByokKey,
        Credential,
        AvailabilityIntent,
        AuditEvent,
    ]


def snapshot() -> dict[str, Any]:
    """Every row of every table a customer request can change (users, tokens, credit accounts
    and their balances, ledger entries, top-ups, subscriptions, charged terms, purchase
    requests, BYOK entries, credentials and their states, availability intents, audit events),
    as one digest per table, read in a single query."""
    from django.db import connection

    tables = [m._meta.db_table for m in _snapshot_models()]
    # Whole rows, except a token's `last_used_at` and a user's `last_login`: using a token or
    # logging in is not the kind of state change a refused request must not make.
    row = {
        "accounts_apitoken": "(t.id, t.user_id, t.name, t.token_hash, t.revoked_at)",
        "accounts_user": "(t.id, t.email, t.password, t.full_name, t.is_active, t.is_staff, "
        "t.is_superuser, t.deleted_at)",
    }
    columns = ", ".join(
        f"(SELECT count(*) || ':' || "
        f"coalesce(md5(string_agg({row.get(table, 't')}::text, '|' ORDER BY t.id)), '') "
        f"FROM {table} t)"
        for table in tables
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns}")
        return dict(zip(tables, cursor.fetchone(), strict=True))
