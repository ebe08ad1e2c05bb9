"""Audit events, users and tokens, credits, subscriptions, sweep runs and BYOK entries in the
admin: read-only, in USD, without hashes or secrets (SPEC O1, O2, S1, S2)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import ApiToken
from accounts.tokens import create_api_token
from adminops.audit import record_event
from adminops.models import AuditEvent
from byok.services import add_key
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep
from tests.adminops.conftest import PLUS

pytestmark = pytest.mark.django_db

AUDIT_URL = "/admin/adminops/auditevent/"


def test_audit_events_read_only_with_filters_and_search(operator, make_user):
    user = make_user()
    now = timezone.now()
    record_event(
        actor="staff:7",
        subject=("inventory.credential", 41),
        event_type="credential.revoked",
        now=now,
    )
    record_event(
        actor="system:sweep",
        subject=("subscriptions.subscription", 9),
        event_type="subscription.renewed",
        now=now - timedelta(days=40),
    )
    total = AuditEvent.objects.count()
    assert operator.get(AUDIT_URL).context["cl"].result_count == total
    assert (
        operator.get(AUDIT_URL, {"event_type": "credential.revoked"}).context["cl"].result_count
        == 1
    )
    assert operator.get(AUDIT_URL, {"actor_kind": "system"}).context["cl"].result_count == 1
    assert operator.get(AUDIT_URL, {"actor": "staff:7"}).context["cl"].result_count == 1
    assert (
        operator.get(AUDIT_URL, {"subject_type": "inventory.credential", "subject_id": "41"})
        .context["cl"]
        .result_count
        == 1
    )
    assert operator.get(AUDIT_URL, {"q": "41"}).context["cl"].result_count == 1
    assert operator.get(AUDIT_URL, {"q": "system:sweep"}).context["cl"].result_count == 1
    old = now - timedelta(days=40)
    by_date = operator.get(
        AUDIT_URL, {"created_at__year": old.year, "created_at__month": old.month}
    )
    assert by_date.status_code == 200
    assert any(e.event_type == "subscription.renewed" for e in by_date.context["cl"].result_list)
    event = AuditEvent.objects.get(event_type="user.created", subject_id=str(user.pk))
    assert operator.get(f"{AUDIT_URL}{event.pk}/change/").status_code == 200
    assert operator.post(f"{AUDIT_URL}{event.pk}/change/", {"event_type": "x"}).status_code == 403
    assert operator.get(f"{AUDIT_URL}add/").status_code == 403
    assert operator.get(f"{AUDIT_URL}{event.pk}/delete/").status_code == 403


def test_user_admin_is_email_based_and_hides_the_password_hash(operator, make_user):
    user = make_user("alice@example.com", full_name="Alice Example")
    listing = operator.get("/admin/accounts/user/", {"q": "alice"})
    html = listing.content.decode()
    assert "alice@example.com" in html and "Alice Example" in html
    algorithm, *parts = user.password.split("$")
    assert user.password not in html
    change = operator.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert user.password not in change
    assert not any(part in change for part in parts if len(part) > 6)  # salt, hash
    assert "Set a new password" in change
    assert operator.get("/admin/accounts/user/add/").status_code == 403
    assert operator.get(f"/admin/accounts/user/{user.pk}/delete/").status_code == 403
    assert (
        operator.get("/admin/accounts/user/", {"password__startswith": algorithm}).status_code
        == 400
    )


def test_only_superusers_grant_superuser_or_permissions(make_staff, make_user, client_for):
    staff = make_staff("accounts.view_user", "accounts.change_user")
    target = make_user()
    client = client_for(staff)
    page = client.get(f"/admin/accounts/user/{target.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    assert "is_superuser" not in form.fields and "user_permissions" not in form.fields
    client.post(
        f"/admin/accounts/user/{target.pk}/change/",
        {"full_name": "Renamed", "is_active": "on", "is_superuser": "on"},
    )
    target.refresh_from_db()
    assert target.full_name == "Renamed" and not target.is_superuser


def test_api_tokens_show_prefix_only(operator, make_user):
    user = make_user()
    created = create_api_token(user=user, now=timezone.now())
    token = ApiToken.objects.get(user=user)
    for url in ("/admin/accounts/apitoken/", f"/admin/accounts/apitoken/{token.pk}/change/"):
        html = operator.get(url).content.decode()
        assert f"{token.prefix}…" in html
        assert created.plaintext not in html and token.token_hash not in html
    assert (
        operator.get("/admin/accounts/apitoken/", {"token_hash__startswith": "a"}).status_code
        == 400
    )


def test_credit_accounts_and_ledger_in_usd(operator, make_user):
    user = make_user(credits_usd=100)
    html = operator.get("/admin/billing/creditaccount/", {"q": user.email}).content.decode()
    assert "$100.00" in html and "100000000" not in html
    ledger = operator.get("/admin/billing/ledgerentry/", {"q": user.email}).content.decode()
    assert "$100.00" in ledger and "Grant" in ledger
    assert operator.get("/admin/billing/creditaccount/add/").status_code == 403


def test_subscriptions_terms_and_byok_read_only(operator, make_user, stock):
    buyer = make_user(credits_usd=100)
    stock(PLUS, 1)
    outcome = purchase_plan(user=buyer, plan_id=PLUS, idempotency_key="k-adm", now=timezone.now())
    listing = operator.get("/admin/subscriptions/subscription/").content.decode()
    assert buyer.email in listing and PLUS in listing
    detail = operator.get(f"/admin/subscriptions/subscription/{outcome.subscription_id}/change/")
    assert detail.status_code == 200 and "$20.00 / 30 days" in detail.content.decode()
    terms = operator.get("/admin/subscriptions/chargedterm/").content.decode()
    assert "$20.00" in terms and buyer.email in terms
    byok = operator.get("/admin/byok/byokkey/").content.decode()
    assert buyer.email in byok
    assert (
        operator.get("/admin/byok/byokkey/", {"encrypted_key__startswith": "g"}).status_code == 400
    )
    for url in ("/admin/subscriptions/subscription/add/", "/admin/byok/byokkey/add/"):
        assert operator.get(url).status_code == 403


def test_sweep_runs_listed(operator):
    run_billing_sweep(now=timezone.now(), trigger="command")
    html = operator.get("/admin/subscriptions/sweeprun/").content.decode()
    assert "Management command" in html


def test_changelists_query_count_is_flat(operator, make_user, stock, django_assert_max_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    urls = [
        "/admin/billing/ledgerentry/",
        "/admin/billing/creditaccount/",
        "/admin/subscriptions/subscription/",
        "/admin/subscriptions/chargedterm/",
        "/admin/byok/byokkey/",
        "/admin/accounts/apitoken/",
    ]

    def buy(n):
        for i in range(n):
            user = make_user(credits_usd=50)
            create_api_token(user=user, now=timezone.now())
            stock(PLUS, 1)
            purchase_plan(user=user, plan_id=PLUS, idempotency_key=f"k{i}", now=timezone.now())

    def counts():
        result = {}
        for url in urls:
            with CaptureQueriesContext(connection) as queries:
                assert operator.get(url).status_code == 200
            result[url] = len(queries)
        return result

    buy(1)
    few = counts()
    buy(4)
    assert counts() == few


def test_byok_admin_shows_hint_not_key(operator, make_user):
    user = make_user()
    entry = add_key(
        user=user, provider_id="minimax", api_key="sk-own-admin-view-9876", now=timezone.now()
    )
    html = operator.get(f"/admin/byok/byokkey/{entry.pk}/change/").content.decode()
    assert entry.key_hint in html
    assert "sk-own-admin-view-9876" not in html and entry.encrypted_key not in html


def test_admin_home_warns_about_sweeps(operator):
    # SPEC O2: nothing finished in the last 2 hours, then the last run had errors
    from subscriptions.models import SweepRun

    home = operator.get("/admin/").content.decode()
    assert "No billing sweep has finished in the last 2 hours" in home
    run_billing_sweep(now=timezone.now(), trigger="command")
    assert 'id="sweep-health"' not in operator.get("/admin/").content.decode()
    old = timezone.now() - timedelta(hours=3)
    SweepRun.objects.update(finished_at=old)
    assert "No billing sweep has finished" in operator.get("/admin/").content.decode()
    SweepRun.objects.create(
        trigger="beat",
        started_at=timezone.now(),
        finished_at=timezone.now(),
        as_of=timezone.now(),
        counts={"errors": 2},
        errors=[
            {"subscription_id": 5, "error": "RuntimeError"},
            {"subscription_id": 6, "error": "X"},
        ],
    )
    home = operator.get("/admin/").content.decode()
    assert "had 2 error(s)" in home and "No billing sweep has finished" not in home


def test_staff_without_sweep_permission_see_no_sweep_warning(make_staff, client_for):
    client = client_for(make_staff())
    home = client.get("/admin/")
    assert home.status_code == 200 and "billing sweep" not in home.content.decode()
