"""Sign-up, log-in and log-out pages (SPEC 11.1a, S2, D1)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.contrib.auth import SESSION_KEY
from django.db import connection
from django.test import Client
from django.utils import timezone

from accounts.errors import EmailTaken, InvalidEmail
from accounts.models import User
from accounts.services import create_user
from billing.models import CreditAccount

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Secret-123!"


def signup(client: Client, email: str, password: str = PASSWORD, full_name: str = "Ada"):
    return client.post(
        "/accounts/signup/", {"email": email, "full_name": full_name, "password": password}
    )


def logged_in_user_id(client: Client) -> str | None:
    return client.session.get(SESSION_KEY)


def test_signup_page_renders_a_form_with_csrf(db):
    r = Client().get("/accounts/signup/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'name="email"' in html and 'name="password"' in html
    assert "csrfmiddlewaretoken" in html


def test_signup_creates_user_with_credit_account_and_logs_in(db):
    client = Client()
    r = signup(client, "  New.Person@Example.COM ")
    assert r.status_code == 302
    assert r["Location"] == "/subscriptions/"
    user = User.objects.get()
    assert user.email == "new.person@example.com"
    assert user.full_name == "Ada"
    assert user.check_password(PASSWORD)
    assert not user.is_staff and not user.is_superuser
    account = CreditAccount.objects.get(user=user)
    assert account.balance_micros == 0 and not account.auto_top_up_enabled
    assert logged_in_user_id(client) == str(user.pk)
    # The new session is good for the API too (SPEC 11.1).
    assert client.get("/api/v1/credits").json()["balance_usd"] == "0.00"


def test_signup_with_existing_email_in_other_case_is_refused(customer):
    # SPEC D1 / S2: e-mail addresses are unique case-insensitively; the message says why.
    client = Client()
    r = signup(client, "CUSTOMER@example.com")
    assert r.status_code == 200
    assert "An account with this e-mail address already exists." in r.content.decode()
    assert User.objects.filter(email__iexact="customer@example.com").count() == 1
    assert logged_in_user_id(client) is None


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("not-an-email", PASSWORD),
        ("", PASSWORD),
        ("weak@example.com", "123"),
        ("weak@example.com", "password"),
        ("lookalike@example.com", "lookalike@example.com"),
    ],
    ids=["bad-email", "no-email", "short-password", "common-password", "password-is-email"],
)
def test_signup_with_invalid_input_shows_errors_and_creates_nothing(db, email, password):
    client = Client()
    r = signup(client, email, password)
    assert r.status_code == 200
    assert 'class="errorlist"' in r.content.decode()
    assert not User.objects.exists()
    assert logged_in_user_id(client) is None


def test_signup_page_sends_a_logged_in_user_on(logged_in):
    r = logged_in.get("/accounts/signup/")
    assert r.status_code == 302
    assert r["Location"] == "/subscriptions/"


def test_signup_needs_csrf_token(db):
    # SPEC S2: CSRF on every form.
    r = signup(Client(enforce_csrf_checks=True), "csrf@example.com")
    assert r.status_code == 403
    assert not User.objects.exists()


def test_login_with_email_as_username(customer):
    # SPEC 11.1a: Django's log-in form; `username` holds the e-mail, matched case-insensitively.
    client = Client()
    assert client.get("/accounts/login/").status_code == 200
    r = client.post("/accounts/login/", {"username": "Customer@Example.com", "password": PASSWORD})
    assert r.status_code == 302
    assert r["Location"] == "/subscriptions/"
    assert logged_in_user_id(client) == str(customer.pk)


def test_login_follows_next_to_the_requested_page(customer):
    client = Client()
    r = client.post(
        "/accounts/login/",
        {"username": "customer@example.com", "password": PASSWORD, "next": "/credits/"},
    )
    assert r["Location"] == "/credits/"
    assert client.get("/credits/").status_code == 200


def test_login_refuses_an_offsite_next(customer):
    r = Client().post(
        "/accounts/login/",
        {"username": "customer@example.com", "password": PASSWORD, "next": "https://evil.example/"},
    )
    assert r.status_code == 302
    assert "evil.example" not in r["Location"]


@pytest.mark.parametrize(
    ("username", "password"),
    [("customer@example.com", "wrong-password"), ("nobody@example.com", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
def test_login_with_bad_credentials_shows_an_error(customer, username, password):
    client = Client()
    r = client.post("/accounts/login/", {"username": username, "password": password})
    assert r.status_code == 200
    assert 'class="errorlist"' in r.content.decode()
    assert logged_in_user_id(client) is None


def test_deactivated_user_cannot_log_in(customer):
    # SPEC D1: a deleted (deactivated) account's log-in stops working.
    customer.is_active = False
    customer.save(update_fields=["is_active"])
    client = Client()
    client.post("/accounts/login/", {"username": "customer@example.com", "password": PASSWORD})
    assert logged_in_user_id(client) is None


def test_user_created_without_password_cannot_log_in(db):
    user = create_user(email="nopw@example.com", password=None, now=timezone.now())
    assert not user.has_usable_password()
    client = Client()
    client.post("/accounts/login/", {"username": "nopw@example.com", "password": ""})
    assert logged_in_user_id(client) is None


def test_logout_is_a_post(logged_in, customer):
    # SPEC 11.1a: /accounts/logout/ (POST); a GET does not log out.
    assert logged_in.get("/accounts/logout/").status_code == 405
    assert logged_in_user_id(logged_in) == str(customer.pk)
    r = logged_in.post("/accounts/logout/")
    assert r.status_code == 302
    assert r["Location"] == "/accounts/login/"
    assert logged_in_user_id(logged_in) is None
    assert logged_in.get("/credits/").status_code == 302
    assert logged_in.get("/api/v1/credits").status_code == 401


def test_logout_needs_csrf_token(customer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    assert client.post("/accounts/logout/").status_code == 403
    assert logged_in_user_id(client) == str(customer.pk)


@pytest.mark.parametrize(
    "email", ["", "   ", "no-at-sign", "a@b@c.com", "x" * 250 + "@example.com"]
)
def test_create_user_refuses_invalid_email(db, email):
    with pytest.raises(InvalidEmail):
        create_user(email=email, password=PASSWORD, now=timezone.now())
    assert not User.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_signups_with_one_email_create_one_user():
    # SPEC D1 / DESIGN: the case-insensitive unique index decides a race between sign-ups.
    variants = ["race@example.com", "Race@example.com", "RACE@example.com", "race@EXAMPLE.com"] * 2
    barrier = threading.Barrier(len(variants))
    results: list[str] = [""] * len(variants)

    def run(i: int, email: str) -> None:
        try:
            barrier.wait(timeout=30)
            create_user(email=email, password=None, now=timezone.now())
            results[i] = "created"
        except EmailTaken:
            results[i] = "taken"
        except Exception as exc:
            results[i] = f"error: {exc!r}"
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, e)) for i, e in enumerate(variants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert Counter(results) == {"created": 1, "taken": len(variants) - 1}, results
    assert User.objects.count() == 1
    assert CreditAccount.objects.count() == 1
