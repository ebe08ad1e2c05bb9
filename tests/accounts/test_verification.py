"""E-mail verification (SPEC A2; issue 19): sign-up sends a link; until it is opened the
customer browses but cannot buy a plan or add credits (403 `email_unverified`)."""

from __future__ import annotations

import importlib
import json
import re

import pytest
from django.apps import apps
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts import verification
from accounts.models import User
from accounts.services import change_email, create_user
from adminops.models import AuditEvent
from billing.services import grant_credits
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db

PLUS = "minimax-token-plan-plus"
PASSWORD = "pw-Secret-123!"
VERIFY_LINK = re.compile(r"http://testserver(/account/verify/[^/\s]+/)")


def sign_up(client: Client, email: str = "fresh@example.com") -> User:
    r = client.post(
        "/accounts/signup/", {"email": email, "full_name": "Fresh", "password": PASSWORD}
    )
    assert r.status_code == 302
    return User.objects.get(email=email)


def buy(client: Client, key: str = "k-1"):
    return client.post(
        "/api/v1/coding-plans/purchases",
        json.dumps({"plan_id": PLUS}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def with_credits(user: User, usd: int = 100) -> User:
    grant_credits(user=user, amount_micros=usd * 1_000_000, actor="system:test", now=timezone.now())
    return user


def test_signup_sends_a_verification_link_and_shows_the_banner(db):
    client = Client()
    user = sign_up(client)
    assert user.email_verified_at is None
    (message,) = mail.outbox
    assert message.to == ["fresh@example.com"] and "Confirm your e-mail" in message.subject
    assert VERIFY_LINK.search(message.body)
    assert any(mimetype == "text/html" for _, mimetype in message.alternatives)
    page = client.get("/subscriptions/").content.decode()  # browsing works
    assert 'id="verify-banner"' in page and "Resend link" in page


def test_unverified_customer_cannot_buy_or_pay_until_the_link_is_opened(db, stock, settings):
    settings.CODING_PLANS_PURCHASE_ENABLED = True
    stock(PLUS)
    client = Client()
    user = with_credits(sign_up(client))
    api = api_client_for(user)

    # The API: purchase, card payment and card set-up all answer 403 email_unverified.
    r = buy(api)
    assert r.status_code == 403 and r.json()["error"]["code"] == "email_unverified"
    for path, body in (
        ("/api/v1/credits/payments", {"amount_usd": "25.00", "save_card": False}),
        ("/api/v1/credits/payments", {"amount_usd": "1.00", "save_card": False}),  # bad amount
        ("/api/v1/credits/payment-method/setup", {}),
    ):
        r = api.post(path, json.dumps(body), content_type="application/json")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "email_unverified"), path
    # The pages: the purchase form answers 403 with the reason; the pay form says why.
    r = client.post(
        "/subscriptions/coding-plans/purchase/", {"plan_id": PLUS, "idempotency_key": "x"}
    )
    assert r.status_code == 403 and "Confirm your e-mail address" in r.content.decode()
    r = client.post("/credits/pay/", {"amount": "25", "card": "saved"}, follow=True)
    assert "Confirm your e-mail address" in r.content.decode()
    assert not user.subscriptions.exists()

    # Open the link (GET shows a button, POST verifies): now buying works.
    path = VERIFY_LINK.search(mail.outbox[0].body).group(1)
    assert "Confirm my address" in client.get(path).content.decode()
    r = client.post(path)
    assert r.status_code == 302
    user.refresh_from_db()
    assert user.email_verified
    assert AuditEvent.objects.filter(event_type="user.email_verified", subject_id=str(user.pk))
    assert "verify-banner" not in client.get("/subscriptions/").content.decode()
    r = buy(api)
    assert r.status_code == 201, r.content
    # Opening the link again changes nothing.
    assert "already confirmed" in client.get(path).content.decode()


def test_email_unverified_comes_after_the_idempotency_checks(db, stock):
    # P5 order with A2 (docs/api.md): key missing, plan unknown and key reused come first;
    # then the account (inactive, then unverified); then the purchase's own refusals.
    user = with_credits(
        create_user(email="u@example.com", password=PASSWORD, now=timezone.now(), verified=False)
    )
    api = api_client_for(user)
    r = api.post(
        "/api/v1/coding-plans/purchases",
        json.dumps({"plan_id": PLUS}),
        content_type="application/json",
    )
    assert r.json()["error"]["code"] == "idempotency_key_missing"
    r = api.post(
        "/api/v1/coding-plans/purchases",
        json.dumps({"plan_id": "nope"}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert r.json()["error"]["code"] == "plan_not_found"
    assert buy(api).json()["error"]["code"] == "email_unverified"  # even when sold out


def test_resend_link_is_rate_limited(db, settings):
    settings.EMAIL_LINK_RATE_LIMIT_PER_HOUR = 2
    client = Client()
    sign_up(client)
    statuses = [client.post("/account/verify/resend/").status_code for _ in range(3)]
    assert statuses == [302, 302, 429]
    assert len(mail.outbox) == 3  # the sign-up's, then two resends
    links = {VERIFY_LINK.search(m.body).group(1) for m in mail.outbox}
    assert all(client.get(link).status_code == 200 for link in links)


def test_forged_expired_or_stale_links_verify_nothing(db, settings):
    client = Client()
    user = sign_up(client, "stale@example.com")
    path = VERIFY_LINK.search(mail.outbox[0].body).group(1)
    token = path.split("/")[-2]
    assert client.post(f"/account/verify/{token[:-2]}xx/").status_code == 400
    assert client.post("/account/verify/not-a-token/").status_code == 400
    # A link sent to an address the account no longer has verifies nothing.
    change_email(user=user, new_email="moved@example.com", now=timezone.now())
    User.objects.filter(pk=user.pk).update(email_verified_at=None)
    assert client.post(path).status_code == 400
    assert User.objects.get(pk=user.pk).email_verified_at is None
    # Expired.
    settings.PASSWORD_RESET_TIMEOUT = -1
    fresh = User.objects.get(pk=user.pk)
    assert verification.user_for_verification(verification.verification_token(fresh)) is None


def test_accounts_made_by_operators_and_existing_accounts_are_verified(db):
    call_command("create_user", "ops-made@example.com", "--password", PASSWORD)
    assert User.objects.get(email="ops-made@example.com").email_verified
    assert create_user(email="svc@example.com", password=None, now=timezone.now()).email_verified
    # The migration marks every existing account verified as of its sign-up.
    old = create_user(email="old@example.com", password=None, now=timezone.now(), verified=False)
    migration = importlib.import_module(
        "accounts.migrations.0003_email_verification_and_preferences"
    )
    migration.mark_existing_users_verified(apps, None)
    old.refresh_from_db()
    assert old.email_verified_at == old.date_joined
