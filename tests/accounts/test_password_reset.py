"""Password reset end to end through a real SMTP server, password change on /account/, and the
e-mail change confirmed by a link to the new address (SPEC A1; issue 19)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.core import mail
from django.test import Client

from accounts.models import User
from adminops.models import AuditEvent
from tests.smtp import html_of, text_of

pytestmark = pytest.mark.django_db

OLD = "old-Secret-123!"
NEW = "brand-New-456!"
RESET_LINK = re.compile(r"http://testserver(/accounts/reset/[^/\s]+/[^/\s]+/)")


def request_reset(client: Client, email: str):
    return client.post("/accounts/password-reset/", {"email": email})


def log_in(client: Client, email: str, password: str):
    return client.post("/accounts/login/", {"username": email, "password": password})


def test_reset_link_by_smtp_sets_a_new_password_once(make_user, smtp_inbox):
    # SPEC A1: Django's reset views, a one-time link, then log in with the new password.
    user = make_user("reset.me@example.com", password=OLD)
    client = Client()
    r = request_reset(client, "Reset.Me@Example.com")
    assert r.status_code == 302 and r["Location"] == "/accounts/password-reset/done/"
    assert "If an account uses that address" in client.get(r["Location"]).content.decode()

    (message,) = smtp_inbox.messages
    assert message["To"] == user.email and "Reset your Coding Plans password" in message["Subject"]
    text, html = text_of(message), html_of(message)  # multipart: text and HTML
    path = RESET_LINK.search(text).group(1)
    assert path in html

    r = client.get(path)  # Django moves the token into the session, then to set-password
    assert r.status_code == 302 and r["Location"].endswith("/set-password/")
    form_url = r["Location"]
    assert 'name="new_password1"' in client.get(form_url).content.decode()
    r = client.post(form_url, {"new_password1": NEW, "new_password2": NEW})
    assert r.status_code == 302 and r["Location"] == "/accounts/reset/done/"
    assert "You can log in with your new password" in client.get(r["Location"]).content.decode()

    assert log_in(Client(), user.email, OLD).status_code == 200  # the old one is refused
    fresh = Client()
    assert log_in(fresh, user.email, NEW).status_code == 302
    assert fresh.get("/account/").status_code == 200
    event = AuditEvent.objects.get(event_type="user.password_changed")
    assert event.actor == f"user:{user.pk}" and event.new_values["via"] == "reset"

    # One-time: the same link again shows "no longer works" and no form.
    again = Client().get(path, follow=True)
    assert "This link no longer works" in again.content.decode()
    assert 'name="new_password1"' not in again.content.decode()


def test_unknown_address_gets_the_same_answer_and_no_mail(make_user, smtp_inbox):
    # SPEC A1: no account enumeration.
    make_user("known@example.com", password=OLD)
    known = request_reset(Client(), "known@example.com")
    unknown = request_reset(Client(), "nobody@example.com")
    assert (known.status_code, known["Location"]) == (unknown.status_code, unknown["Location"])
    assert Client().get(unknown["Location"]).content == Client().get(known["Location"]).content
    assert [m["To"] for m in smtp_inbox.messages] == ["known@example.com"]


def test_expired_link_is_refused(make_user, smtp_inbox, monkeypatch, settings):
    user = make_user("late@example.com", password=OLD)
    request_reset(Client(), user.email)
    path = RESET_LINK.search(text_of(smtp_inbox.messages[0])).group(1)
    # Django's token clock is naive (datetime.now()).
    later = datetime.now() + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT + 60)
    monkeypatch.setattr(PasswordResetTokenGenerator, "_now", lambda self: later)
    r = Client().get(path, follow=True)
    assert "This link no longer works" in r.content.decode()


def test_reset_requests_are_rate_limited_per_address_and_per_client(
    make_user, smtp_inbox, settings
):
    settings.PASSWORD_RESET_RATE_LIMIT_PER_HOUR = 2
    settings.PASSWORD_RESET_IP_RATE_LIMIT_PER_HOUR = 4
    make_user("busy@example.com", password=OLD)
    # Per typed address (known or not: the limit says nothing about the account), whatever
    # the client's address.
    for n, expected in enumerate((302, 302, 429)):
        client = Client(REMOTE_ADDR=f"10.0.0.{n + 1}")
        assert request_reset(client, "BUSY@example.com").status_code == expected
    r = request_reset(Client(REMOTE_ADDR="10.0.0.9"), "busy@example.com")
    assert r.status_code == 429 and "Too many reset requests" in r.content.decode()
    assert len(smtp_inbox.messages) == 2
    for n, expected in enumerate((302, 302, 429)):
        client = Client(REMOTE_ADDR=f"10.0.1.{n + 1}")
        assert request_reset(client, "ghost@example.com").status_code == expected
    # Per client address: many addresses from one place.
    statuses = [
        request_reset(Client(REMOTE_ADDR="10.9.9.9"), f"x{n}@example.com").status_code
        for n in range(5)
    ]
    assert statuses == [302, 302, 302, 302, 429]


def test_reset_of_a_deleted_or_passwordless_account_sends_nothing(make_user, smtp_inbox):
    make_user("nopw@example.com", password=None)
    assert request_reset(Client(), "nopw@example.com").status_code == 302
    assert smtp_inbox.messages == []


# --- password change on /account/ -----------------------------------------------------------


def test_password_change_keeps_this_session_and_ends_the_others(make_user):
    user = make_user("change@example.com", password=OLD)
    here, elsewhere = Client(), Client()
    assert log_in(here, user.email, OLD).status_code == 302
    assert log_in(elsewhere, user.email, OLD).status_code == 302
    page = here.get("/account/").content.decode()
    assert 'action="/account/password/"' in page and 'name="old_password"' in page

    wrong = here.post(
        "/account/password/",
        {"old_password": "nope", "new_password1": NEW, "new_password2": NEW},
    )
    assert wrong.status_code == 400 and "incorrect" in wrong.content.decode()
    r = here.post(
        "/account/password/",
        {"old_password": OLD, "new_password1": NEW, "new_password2": NEW},
    )
    assert r.status_code == 302 and r["Location"] == "/account/"
    assert here.get("/account/").status_code == 200
    assert elsewhere.get("/account/").status_code == 302  # logged out
    user.refresh_from_db()
    assert user.check_password(NEW)
    assert AuditEvent.objects.get(event_type="user.password_changed").new_values == {
        "via": "change"
    }


# --- e-mail change (SPEC A1) ------------------------------------------------------------------

CHANGE_LINK = re.compile(r"http://testserver(/account/email/confirm/[^/\s]+/)")


def test_email_change_is_confirmed_by_a_link_to_the_new_address(make_user):
    user = make_user("before@example.com", password=OLD)
    client = Client()
    client.force_login(user)
    r = client.post("/account/email/", {"email": "After@Example.com", "password": OLD})
    assert r.status_code == 302
    (link_mail,) = mail.outbox
    assert link_mail.to == ["after@example.com"]
    path = CHANGE_LINK.search(link_mail.body).group(1)
    user.refresh_from_db()
    assert user.email == "before@example.com"  # nothing changes until the link is used

    page = client.get(path)
    assert page.status_code == 200 and "after@example.com" in page.content.decode()
    r = client.post(path)
    assert r.status_code == 302 and r["Location"] == "/account/"
    user.refresh_from_db()
    assert user.email == "after@example.com" and user.email_verified
    notice = mail.outbox[-1]
    assert notice.to == ["before@example.com"] and "was changed" in notice.subject
    assert "after@example.com" in notice.body
    # The link is one-time, and the new address logs in.
    assert Client().post(path).status_code == 400
    assert log_in(Client(), "after@example.com", OLD).status_code == 302
    event = AuditEvent.objects.get(event_type="user.email_changed")
    assert event.new_values == {"email_domain": "example.com"}


def test_email_change_refusals(make_user):
    user = make_user("mine@example.com", password=OLD)
    make_user("taken@example.com")
    client = Client()
    client.force_login(user)
    wrong = client.post("/account/email/", {"email": "new@example.com", "password": "bad"})
    assert wrong.status_code == 400 and "password is not correct" in wrong.content.decode()
    taken = client.post("/account/email/", {"email": "TAKEN@example.com", "password": OLD})
    assert taken.status_code == 409
    same = client.post("/account/email/", {"email": "mine@example.com", "password": OLD})
    assert same.status_code == 400
    assert mail.outbox == []


def test_email_change_link_dies_when_the_password_changes_or_the_address_is_taken(
    make_user, settings
):
    user = make_user("p@example.com", password=OLD)
    client = Client()
    client.force_login(user)
    client.post("/account/email/", {"email": "q@example.com", "password": OLD})
    first = CHANGE_LINK.search(mail.outbox[-1].body).group(1)
    client.post("/account/email/", {"email": "r@example.com", "password": OLD})
    second = CHANGE_LINK.search(mail.outbox[-1].body).group(1)
    # Another account takes q@ meanwhile: its link is refused, nothing changes.
    make_user("q@example.com")
    assert Client().post(first).status_code == 409
    # A new password kills every pending link.
    user.set_password(NEW)
    user.save()
    assert Client().get(second).status_code == 400
    assert User.objects.get(pk=user.pk).email == "p@example.com"


def test_email_change_requests_are_rate_limited(make_user, settings):
    settings.EMAIL_LINK_RATE_LIMIT_PER_HOUR = 2
    user = make_user("rl@example.com", password=OLD)
    client = Client()
    client.force_login(user)
    statuses = [
        client.post("/account/email/", {"email": f"n{n}@example.com", "password": OLD}).status_code
        for n in range(3)
    ]
    assert statuses == [302, 302, 429]
    assert len(mail.outbox) == 2
