"""Personal API tokens: shown once, stored hashed, Bearer auth for the owner only (SPEC S2)."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import ApiToken
from accounts.tokens import create_api_token, revoke_api_token
from adminops.models import AuditEvent
from billing.models import CreditAccount

pytestmark = pytest.mark.django_db

TOKEN_RE = re.compile(r'<code id="new-token">(cp_[^<]+)</code>')


def bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def create_token_on_page(client: Client, name: str = "laptop CLI") -> str:
    r = client.post("/account/tokens/", {"name": name})
    assert r.status_code == 302
    assert r["Location"] == "/account/"
    page = client.get("/account/")
    match = TOKEN_RE.search(page.content.decode())
    assert match, "the new token is not shown"
    return match.group(1)


def test_account_page_requires_login(db):
    r = Client().get("/account/")
    assert r.status_code == 302
    assert r["Location"] == "/accounts/login/?next=/account/"


def test_account_page_shows_profile_and_token_form(logged_in):
    html = logged_in.get("/account/").content.decode()
    assert "customer@example.com" in html
    assert 'action="/account/tokens/"' in html
    assert "csrfmiddlewaretoken" in html
    assert not TOKEN_RE.search(html)


def test_new_token_is_shown_once_and_stored_hashed(logged_in, customer):
    # SPEC 11.1a, S1: the plaintext appears only on the page right after creation.
    plaintext = create_token_on_page(logged_in)
    assert plaintext.startswith("cp_")
    token = ApiToken.objects.get(user=customer)
    assert token.name == "laptop CLI"
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext.startswith(token.prefix) and len(token.prefix) < len(plaintext)
    stored = [
        str(v)
        for v in ApiToken.objects.values_list(*[f.attname for f in ApiToken._meta.fields]).get()
    ]
    assert plaintext not in stored
    # Later views list the token by its prefix only.
    later = logged_in.get("/account/").content.decode()
    assert plaintext not in later
    assert f"{token.prefix}…" in later
    assert "laptop CLI" in later


def test_token_page_is_never_cached(logged_in):
    # S1: a page that may carry a plaintext token must not be stored by browsers or proxies.
    logged_in.post("/account/tokens/", {"name": "x"})
    r = logged_in.get("/account/")
    assert "no-store" in r["Cache-Control"]


def test_token_creation_is_audited_without_the_secret(logged_in, customer):
    # SPEC O1: audit event, never a secret.
    plaintext = create_token_on_page(logged_in)
    event = AuditEvent.objects.get(event_type="api_token.created")
    assert event.actor == f"user:{customer.pk}"
    assert plaintext not in str(event.new_values) + str(event.old_values)


def test_token_creation_needs_post_and_login(logged_in, customer):
    assert logged_in.get("/account/tokens/").status_code == 405
    r = Client().post("/account/tokens/", {"name": "x"})
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")
    assert not ApiToken.objects.exists()


def test_token_creation_needs_csrf(customer):
    # SPEC S2: CSRF on every form.
    client = Client(enforce_csrf_checks=True)
    client.force_login(customer)
    assert client.post("/account/tokens/", {"name": "x"}).status_code == 403
    assert not ApiToken.objects.exists()


def test_token_from_page_authenticates_api_calls(logged_in, customer):
    # SPEC 11.1: `Authorization: Bearer <token>` acts for the token's owner.
    plaintext = create_token_on_page(logged_in)
    r = bearer(plaintext).get("/api/v1/credits")
    assert r.status_code == 200
    assert r.json()["balance_usd"] == "100.00"
    assert ApiToken.objects.get(user=customer).last_used_at is not None


def test_bearer_scheme_is_case_insensitive(customer):
    plaintext = create_api_token(user=customer, now=timezone.now()).plaintext
    r = Client(HTTP_AUTHORIZATION=f"bearer {plaintext}").get("/api/v1/credits")
    assert r.status_code == 200


def test_revoked_token_stops_working(logged_in, customer):
    # SPEC S2: a revoked token gets 401 at once.
    plaintext = create_token_on_page(logged_in)
    token = ApiToken.objects.get(user=customer)
    r = logged_in.post(f"/account/tokens/{token.pk}/revoke/")
    assert r.status_code == 302 and r["Location"] == "/account/"
    token.refresh_from_db()
    assert token.revoked_at is not None
    r = bearer(plaintext).get("/api/v1/credits")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthenticated"
    page = logged_in.get("/account/").content.decode()
    assert "The token was revoked." in page and "revoked" in page


def test_revoking_twice_is_harmless(customer):
    issued = create_api_token(user=customer, now=timezone.now())
    first = revoke_api_token(user=customer, token_id=issued.token.pk, now=timezone.now())
    again = revoke_api_token(user=customer, token_id=issued.token.pk, now=timezone.now())
    assert again.revoked_at == first.revoked_at
    assert AuditEvent.objects.filter(event_type="api_token.revoked").count() == 1


def test_revoking_another_users_token_gives_404(logged_in, make_user):
    # SPEC S2, U5: someone else's object is a 404, and nothing changes.
    other = make_user("other@example.com")
    issued = create_api_token(user=other, now=timezone.now())
    r = logged_in.post(f"/account/tokens/{issued.token.pk}/revoke/")
    assert r.status_code == 404
    issued.token.refresh_from_db()
    assert issued.token.revoked_at is None
    assert bearer(issued.plaintext).get("/api/v1/credits").status_code == 200


def test_revoking_a_missing_token_gives_404(logged_in):
    assert logged_in.post("/account/tokens/999999/revoke/").status_code == 404


def test_token_acts_only_for_its_owner(make_user):
    # SPEC S2: a token of user A never acts for user B.
    alice = make_user("alice@example.com", credits_usd=5)
    bob = make_user("bob@example.com", credits_usd=70)
    alice_api = bearer(create_api_token(user=alice, now=timezone.now()).plaintext)
    bob_api = bearer(create_api_token(user=bob, now=timezone.now()).plaintext)
    assert alice_api.get("/api/v1/credits").json()["balance_usd"] == "5.00"
    assert bob_api.get("/api/v1/credits").json()["balance_usd"] == "70.00"
    r = alice_api.put(
        "/api/v1/credits/auto-top-up",
        {"enabled": True, "amount_usd": "50"},
        content_type="application/json",
    )
    assert r.status_code == 200
    assert CreditAccount.objects.get(user=alice).auto_top_up_enabled
    assert not CreditAccount.objects.get(user=bob).auto_top_up_enabled


def test_bearer_token_wins_over_a_session_of_another_user(customer, make_user):
    # SPEC S2: an API token acts only for its owner, whatever cookie comes with it.
    other = make_user("other@example.com", credits_usd=3)
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {create_api_token(user=other, now=timezone.now()).plaintext}"
    )
    client.force_login(customer)
    assert client.get("/api/v1/credits").json()["balance_usd"] == "3.00"


@pytest.mark.parametrize(
    "header",
    [
        "Basic x",
        "Basic Y3VzdG9tZXJAZXhhbXBsZS5jb206cHctU2VjcmV0LTEyMyE=",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Token {token}",
        "{token}",
        "Bearer cp_not-a-real-token",
        "Bearer not-even-prefixed",
        "Bearer {token}x",
    ],
)
def test_bad_authorization_headers_get_401(customer, header):
    # SPEC 11.1, S2: anything but a valid Bearer token is unauthenticated, in the envelope.
    token = create_api_token(user=customer, now=timezone.now()).plaintext
    client = Client(HTTP_AUTHORIZATION=header.format(token=token))
    for r in (
        client.get("/api/v1/credits"),
        client.put(
            "/api/v1/credits/auto-top-up",
            {"enabled": True, "amount_usd": "50"},
            content_type="application/json",
        ),
    ):
        assert r.status_code == 401, (header, r.content)
        assert r.json()["error"]["code"] == "unauthenticated"
    assert not CreditAccount.objects.get(user=customer).auto_top_up_enabled


def test_bad_authorization_header_is_not_rescued_by_the_session(logged_in):
    # An explicit but invalid Bearer header is refused rather than silently ignored.
    r = logged_in.get("/api/v1/credits", HTTP_AUTHORIZATION="Bearer cp_wrong")
    assert r.status_code == 401


def test_token_of_deactivated_user_gets_401(customer):
    # SPEC D1: a removed account's API tokens stop working at once.
    plaintext = create_api_token(user=customer, now=timezone.now()).plaintext
    customer.is_active = False
    customer.save(update_fields=["is_active"])
    assert bearer(plaintext).get("/api/v1/credits").status_code == 401
