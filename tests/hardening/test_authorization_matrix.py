"""Authorization matrix (issue 8, hardening 1; SPEC S2, U5, 11.1).

Every URL pattern the Django resolver knows — pages, the django-ninja API, the gateway and the
admin — is listed in an explicit table below with how to fill its parameters with user A's
objects and the outcome expected for each role:

- anonymous: pages redirect to /accounts/login/, the API answers 401 in the error envelope,
  admin pages redirect to the admin log-in; public pages (log-in, sign-up, API docs) answer;
- customer B (another customer): 404 on A's objects — the very same answer as for an id that
  does not exist, never a 200 or a 403 that would confirm it exists;
- customer A (the owner): 200/201/204/302 as appropriate;
- staff without permissions: a customer like any other on customer routes; 403 on admin model
  pages (after the staff check, which customers fail with a redirect to the admin log-in);
- superuser: the admin as its ModelAdmins allow (403 where a model is read-only).

`test_every_route_is_in_the_table` walks the resolver (nested includes, regex routes, the
ninja API's operations and the admin's per-model URLs) and fails on any pattern the table does
not list — a new route cannot escape — and on table entries that no longer exist.
Also checked on every call: nothing B, staff or anonymous does changes any of A's state, and no
response to them carries A's e-mail address.

CSRF is checked separately (the matrix uses clients without CSRF enforcement): a session POST
without the token gets 403 on a page form and on an API route, and changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.hardening.conftest import MAX, PLUS, World

pytestmark = pytest.mark.django_db

MISSING = 987_654_321

# Expected outcomes besides a plain status code.
LOGIN = "login"  # 302 to /accounts/login/?next=...
ADMIN_LOGIN = "admin-login"  # 302 to /admin/login/?next=...
UNAUTH = "401"  # 401 with the error envelope and WWW-Authenticate
GONE = "404"  # 404 identical to the answer for an id that does not exist

ROLES = ("anonymous", "b", "staff", "superuser", "a")  # A last: its writes change the world
CUSTOMERS_AND_STAFF = ("b", "staff", "superuser")


def _walk(patterns, prefix: str = ""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern)


_APP_LIST = re.compile(r"\(\?P<app_label>([^)]*)\)")


def normalized(pattern: str) -> str:
    """The admin's app-list regex names the apps in registry order; only the set matters."""
    return _APP_LIST.sub(
        lambda m: "(?P<app_label>" + "|".join(sorted(m.group(1).split("|"))) + ")", pattern
    )


def resolver_patterns() -> set[str]:
    return {normalized(p) for p in _walk(get_resolver().url_patterns)}


# --- expectations ------------------------------------------------------------------------------


def own(a, *, others=GONE, anon=LOGIN) -> dict[str, Any]:
    """A route naming A's object: only A gets through."""
    return {"anonymous": anon, **dict.fromkeys(CUSTOMERS_AND_STAFF, others), "a": a}


def mine(status, *, anon=LOGIN, a=None) -> dict[str, Any]:
    """A route about the caller's own data: every logged-in role gets `status`."""
    return {"anonymous": anon, **dict.fromkeys(CUSTOMERS_AND_STAFF, status), "a": a or status}


def public(status) -> dict[str, Any]:
    return dict.fromkeys(ROLES, status)


def api_own(a) -> dict[str, Any]:
    return own(a, anon=UNAUTH)


def api_mine(status, *, a=None) -> dict[str, Any]:
    return mine(status, anon=UNAUTH, a=a)


Body = Callable[[World], Any] | dict | None


@dataclass(frozen=True)
class Call:
    method: str
    expect: dict[str, Any]
    body: Body = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    kind: str  # "page" | "api" | "admin"
    url: Callable[[dict[str, Any]], str]  # A's ids (or MISSING ones) -> path
    calls: tuple[Call, ...]
    owned: bool = False  # the URL names A's object: B's 404 must equal a missing id's 404


def page(url, *calls, owned=False) -> Entry:
    return Entry("page", url if callable(url) else (lambda ids, u=url: u), calls, owned)


def api(url, *calls, owned=False) -> Entry:
    return Entry("api", url if callable(url) else (lambda ids, u=url: u), calls, owned)


def new_key(world: World) -> dict[str, str]:
    return {"provider_id": "minimax", "api_key": "sk-matrix-new-key-0001"}


CHAT = {"model": "minimax/MiniMax-M2", "messages": [{"role": "user", "content": "hi"}]}
SUB = "/api/v1/coding-plans/subscriptions"

# --- the table: every non-admin route ----------------------------------------------------------

CUSTOMER_TABLE: dict[str, Entry] = {
    "": page("/", Call("GET", public(302))),
    # Public pages.
    "accounts/login/": page(
        "/accounts/login/",
        Call("GET", public(200)),
        Call("POST", public(200), {"username": "nobody@example.com", "password": "wrong-pw-1"}),
    ),
    "accounts/logout/": page(
        "/accounts/logout/", Call("GET", public(405)), Call("POST", public(302))
    ),
    "accounts/signup/": page(
        "/accounts/signup/",
        Call("GET", mine(302, anon=200)),
        Call("POST", mine(302, anon=200), {"email": "", "password": ""}),
    ),
    # Account pages: the caller's own.
    "account/": page("/account/", Call("GET", mine(200))),
    "account/delete/": page(
        "/account/delete/", Call("GET", mine(200)), Call("POST", mine(400), {"password": "x"})
    ),
    "account/tokens/": page(
        "/account/tokens/", Call("GET", mine(405)), Call("POST", mine(302), {"name": "laptop"})
    ),
    "account/tokens/<int:token_id>/revoke/": page(
        lambda ids: f"/account/tokens/{ids['token_id']}/revoke/",
        Call("GET", mine(405)),
        Call("POST", own(302)),
        owned=True,
    ),
    # Issue 19 (SPEC A1, A2, E1): password reset (public, the same answer for every address),
    # the links e-mailed to an address (public: the signed token is the authority; a bad one is
    # 400), and the caller's own password, address and preferences.
    "accounts/password-reset/": page(
        "/accounts/password-reset/",
        Call("GET", public(200)),
        Call("POST", public(302), {"email": "nobody@example.com"}),
    ),
    "accounts/password-reset/done/": page(
        "/accounts/password-reset/done/", Call("GET", public(200))
    ),
    "accounts/reset/<uidb64>/<token>/": page(
        "/accounts/reset/MQ/bad-token/", Call("GET", public(200))
    ),
    "accounts/reset/done/": page("/accounts/reset/done/", Call("GET", public(200))),
    "account/password/": page(
        "/account/password/",
        Call("GET", mine(200)),
        Call("POST", mine(400), {"old_password": "wrong-pw-1"}),
    ),
    "account/email/": page(
        "/account/email/",
        Call("GET", mine(405)),
        Call("POST", mine(400), {"email": "elsewhere@example.com", "password": "wrong-pw-1"}),
    ),
    "account/email/confirm/<str:token>/": page(
        "/account/email/confirm/forged:token/", Call("GET", public(400)), Call("POST", public(400))
    ),
    "account/verify/<str:token>/": page(
        "/account/verify/forged:token/", Call("GET", public(400)), Call("POST", public(400))
    ),
    "account/verify/resend/": page(
        "/account/verify/resend/", Call("GET", mine(405)), Call("POST", mine(302))
    ),
    "account/notifications/": page(
        "/account/notifications/",
        Call("GET", mine(405)),
        Call("POST", mine(302), {"renewal_reminders": "on"}),
    ),
    "credits/": page("/credits/", Call("GET", mine(200))),
    "credits/auto-top-up/": page(
        "/credits/auto-top-up/",
        Call("GET", mine(405)),
        Call("POST", mine(302), {"enabled": "on", "amount_usd": "15.00"}),
    ),
    # BYOK pages.
    "byok/": page("/byok/", Call("GET", mine(200))),
    "byok/add/": page(
        "/byok/add/",
        Call("GET", mine(405)),
        # A's MiniMax slot holds the plan's installed entry: refused (400), changes nothing.
        Call("POST", mine(302, a=400), new_key),
    ),
    "byok/<int:key_id>/replace/": page(
        lambda ids: f"/byok/{ids['key_id']}/replace/",
        Call("GET", mine(405)),
        Call("POST", own(302), {"api_key": "sk-matrix-replaced-0001", "confirm": "on"}),
        owned=True,
    ),
    "byok/<int:key_id>/toggle/": page(
        lambda ids: f"/byok/{ids['key_id']}/toggle/",
        Call("GET", mine(405)),
        Call("POST", own(302), {"enabled": "0", "confirm": "on"}),
        owned=True,
    ),
    "byok/<int:key_id>/test/": page(
        lambda ids: f"/byok/{ids['key_id']}/test/",
        Call("GET", mine(405)),
        Call("POST", own(302)),
        owned=True,
    ),
    "byok/<int:key_id>/delete/": page(
        lambda ids: f"/byok/{ids['key_id']}/delete/",
        Call("GET", mine(405)),
        Call("POST", own(302), {"confirm": "on"}),
        owned=True,
    ),
    # Subscription Center.
    "subscriptions/": page("/subscriptions/", Call("GET", mine(200))),
    "subscriptions/coding-plans/purchase/": page(
        "/subscriptions/coding-plans/purchase/",
        Call("GET", mine(405)),
        # MAX is sold out for everyone, and A already has a live MiniMax plan: 409 either way.
        Call("POST", mine(409), {"plan_id": MAX, "idempotency_key": "matrix-1"}),
    ),
    "subscriptions/coding-plans/<int:subscription_id>/": page(
        lambda ids: f"/subscriptions/coding-plans/{ids['subscription_id']}/",
        Call("GET", own(200)),
        owned=True,
    ),
    "subscriptions/coding-plans/<int:subscription_id>/cancel/": page(
        lambda ids: f"/subscriptions/coding-plans/{ids['subscription_id']}/cancel/",
        Call("GET", own(200)),
        Call("POST", own(302), {"confirm": "on"}),
        owned=True,
    ),
    "subscriptions/coding-plans/<int:subscription_id>/resume/": page(
        lambda ids: f"/subscriptions/coding-plans/{ids['subscription_id']}/resume/",
        Call("GET", mine(405)),
        Call("POST", own(302)),
        owned=True,
    ),
    "subscriptions/coding-plans/plans/<str:plan_id>/notify/": page(
        f"/subscriptions/coding-plans/plans/{MAX}/notify/",
        Call("GET", mine(405)),
        Call("POST", mine(302)),
    ),
    "subscriptions/coding-plans/plans/<str:plan_id>/notify/withdraw/": page(
        f"/subscriptions/coding-plans/plans/{MAX}/notify/withdraw/",
        Call("GET", mine(405)),
        Call("POST", mine(302)),
    ),
    # The API (bearer tokens; the session variant is the CSRF test below).
    "api/v1/": api("/api/v1/", Call("GET", public(404))),
    "api/v1/docs": api("/api/v1/docs", Call("GET", public(200))),
    "api/v1/openapi.json": api("/api/v1/openapi.json", Call("GET", public(200))),
    "api/v1/byok": api(
        "/api/v1/byok", Call("GET", api_mine(200)), Call("POST", api_mine(201, a=409), new_key)
    ),
    "api/v1/byok/<int:key_id>": api(
        lambda ids: f"/api/v1/byok/{ids['key_id']}",
        Call("GET", api_own(200)),
        Call("PATCH", api_own(200), {"enabled": False}),
        Call("DELETE", api_own(204)),
        owned=True,
    ),
    "api/v1/byok/<int:key_id>/test": api(
        lambda ids: f"/api/v1/byok/{ids['key_id']}/test",
        Call("POST", api_own(200)),
        owned=True,
    ),
    "api/v1/coding-plans/<plan_id>/availability-intent": api(
        f"/api/v1/coding-plans/{MAX}/availability-intent",
        Call("GET", api_mine(200)),
        Call("PUT", api_mine(200)),
        Call("DELETE", api_mine(200)),
    ),
    "api/v1/coding-plans/catalog": api("/api/v1/coding-plans/catalog", Call("GET", api_mine(200))),
    "api/v1/coding-plans/current": api("/api/v1/coding-plans/current", Call("GET", api_mine(200))),
    "api/v1/coding-plans/purchases": api(
        "/api/v1/coding-plans/purchases",
        Call("POST", api_mine(409), {"plan_id": MAX}, {"HTTP_IDEMPOTENCY_KEY": "matrix-1"}),
    ),
    "api/v1/coding-plans/subscriptions": api(SUB, Call("GET", api_mine(200))),
    "api/v1/coding-plans/subscriptions/<subscription_id>": api(
        lambda ids: f"{SUB}/{ids['subscription_id']}", Call("GET", api_own(200)), owned=True
    ),
    "api/v1/coding-plans/subscriptions/<subscription_id>/charges": api(
        lambda ids: f"{SUB}/{ids['subscription_id']}/charges",
        Call("GET", api_own(200)),
        owned=True,
    ),
    "api/v1/coding-plans/subscriptions/<int:subscription_id>/quota": api(
        lambda ids: f"{SUB}/{ids['subscription_id']}/quota",
        Call("GET", api_own(200)),
        owned=True,
    ),
    "api/v1/coding-plans/subscriptions/<int:subscription_id>/cancel": api(
        lambda ids: f"{SUB}/{ids['subscription_id']}/cancel",
        Call("POST", api_own(200)),
        owned=True,
    ),
    "api/v1/coding-plans/subscriptions/<int:subscription_id>/resume": api(
        lambda ids: f"{SUB}/{ids['subscription_id']}/resume",
        Call("POST", api_own(200)),
        owned=True,
    ),
    "api/v1/credits": api("/api/v1/credits", Call("GET", api_mine(200))),
    "api/v1/credits/auto-top-up": api(
        "/api/v1/credits/auto-top-up",
        Call("PUT", api_mine(200), {"enabled": True, "amount_usd": "15.00"}),
    ),
    # Card payments (SPEC M1-M3, M9, 11.1). Paying with no saved card and no new card: 409.
    "credits/pay/": page(
        "/credits/pay/", Call("GET", mine(405)), Call("POST", mine(302), {"amount": "25"})
    ),
    "credits/payment-method/remove/": page(
        "/credits/payment-method/remove/", Call("GET", mine(405)), Call("POST", mine(302))
    ),
    "credits/payments/<int:payment_id>/confirm/": page(
        lambda ids: f"/credits/payments/{ids['payment_id']}/confirm/",
        Call("GET", own(200)),
        Call("POST", own(302)),
        owned=True,
    ),
    "api/v1/credits/payment-method": api(
        "/api/v1/credits/payment-method",
        Call("GET", api_mine(200)),
        Call("DELETE", api_mine(204)),
    ),
    "api/v1/credits/payments": api(
        "/api/v1/credits/payments",
        Call("GET", api_mine(200)),
        Call("POST", api_mine(409), {"amount_usd": "25.00"}),
    ),
    "api/v1/credits/payments/<int:payment_id>": api(
        lambda ids: f"/api/v1/credits/payments/{ids['payment_id']}",
        Call("GET", api_own(200)),
        owned=True,
    ),
    # Creates a SetupIntent at the embedded Stripe for whoever asks (their own customer).
    "api/v1/credits/payment-method/setup": api(
        "/api/v1/credits/payment-method/setup", Call("POST", api_mine(201))
    ),
    # Stripe's signed events only: no session or token gets further than the signature (400).
    "api/v1/payments/stripe/webhook": api(
        "/api/v1/payments/stripe/webhook", Call("POST", public(400), {"id": "evt_forged"})
    ),
    # The gateway routes with the caller's own MiniMax entry: only A has one (G1: 403 otherwise).
    "api/v1/gateway/chat/completions": api(
        "/api/v1/gateway/chat/completions",
        Call("GET", public(405)),
        Call("POST", api_mine(403, a=200), CHAT),
    ),
}


# --- the table: the admin ----------------------------------------------------------------------

# Per registered model: what a superuser gets on each of the admin's per-model URLs. Staff
# without permission get 403 on all of them (the bare `<id>/` URL only redirects to `change/`),
# customers and anonymous visitors the admin log-in.
READ_ONLY = {"": 200, "add/": 403, "change/": 200, "delete/": 403, "history/": 200}
ADMIN_MODELS: dict[str, dict[str, Any]] = {
    "auth.group": {"": 200, "add/": 200, "change/": 200, "delete/": 200, "history/": 200},
    "accounts.user": READ_ONLY,
    "accounts.apitoken": READ_ONLY,
    "adminops.auditevent": READ_ONLY,
    "billing.creditaccount": READ_ONLY,
    "billing.ledgerentry": READ_ONLY,
    "billing.topupattempt": READ_ONLY,
    "byok.byokkey": READ_ONLY,
    "inventory.credential": READ_ONLY,
    # The change page of an upload is its status page (a redirect).
    "inventory.inventoryupload": {**READ_ONLY, "change/": 302},
    "subscriptions.subscription": READ_ONLY,
    "subscriptions.chargedterm": READ_ONLY,
    "subscriptions.sweeprun": READ_ONLY,
    "payments.cardpayment": READ_ONLY,
    "payments.stripecustomer": READ_ONLY,
    "payments.webhookevent": READ_ONLY,
    "payments.refund": READ_ONLY,
}
MODEL_SUFFIXES = ("", "add/", "<path:object_id>/", "change/", "delete/", "history/")


def admin_expect(staff, superuser, *, customers=ADMIN_LOGIN, anon=ADMIN_LOGIN) -> dict[str, Any]:
    return {
        "anonymous": anon,
        "b": customers,
        "a": customers,
        "staff": staff,
        "superuser": superuser,
    }


def admin(url, *calls) -> Entry:
    return Entry("admin", url if callable(url) else (lambda ids, u=url: u), calls)


def _model_entries() -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for label, superuser in ADMIN_MODELS.items():
        app, model = label.split(".")
        base = f"admin/{app}/{model}/"
        for suffix in MODEL_SUFFIXES:
            if suffix == "":
                pattern, url = base, (lambda ids, b=base: f"/{b}")
                expect = admin_expect(403, superuser[""])
            elif suffix == "add/":
                pattern, url = base + "add/", (lambda ids, b=base: f"/{b}add/")
                expect = admin_expect(403, superuser["add/"])
            elif suffix == "<path:object_id>/":
                pattern = base + suffix
                url = lambda ids, b=base, m=label: f"/{b}{ids[m]}/"  # noqa: E731
                expect = admin_expect(302, 302)  # a redirect to change/, whoever asks
            else:
                pattern = f"{base}<path:object_id>/{suffix}"
                url = lambda ids, b=base, m=label, s=suffix: f"/{b}{ids[m]}/{s}"  # noqa: E731
                # A redirect for everyone (the status page then checks the permission).
                staff = 302 if superuser[suffix] == 302 else 403
                expect = admin_expect(staff, superuser[suffix])
            entries[pattern] = admin(url, Call("GET", expect))
    return entries


APP_LABELS = "accounts|adminops|auth|billing|byok|inventory|payments|subscriptions"
ADMIN_TABLE: dict[str, Entry] = {
    **_model_entries(),
    "admin/": admin("/admin/", Call("GET", admin_expect(200, 200))),
    "admin/login/": admin(
        "/admin/login/", Call("GET", admin_expect(302, 302, customers=200, anon=200))
    ),
    "admin/logout/": admin(
        "/admin/logout/",
        Call("GET", admin_expect(405, 405, customers=302, anon=302)),
        # Logging out sends staff to the site's log-in page (LOGOUT_REDIRECT_URL).
        Call("POST", admin_expect(302, 302, customers=302, anon=302)),
    ),
    "admin/password_change/": admin("/admin/password_change/", Call("GET", admin_expect(200, 200))),
    "admin/password_change/done/": admin(
        "/admin/password_change/done/", Call("GET", admin_expect(200, 200))
    ),
    "admin/autocomplete/": admin("/admin/autocomplete/", Call("GET", admin_expect(403, 403))),
    "admin/jsi18n/": admin("/admin/jsi18n/", Call("GET", admin_expect(200, 200))),
    # Users have no public URL, so "view on site" has nowhere to go.
    "admin/r/<path:content_type_id>/<path:object_id>/": admin(
        lambda ids: f"/admin/r/{ids['user_content_type']}/{ids['accounts.user']}/",
        Call("GET", admin_expect(404, 404)),
    ),
    f"admin/^(?P<app_label>{APP_LABELS})/$": admin(
        "/admin/billing/", Call("GET", admin_expect(404, 200))
    ),
    "admin/(?P<url>.*)$": admin("/admin/no-such-page/", Call("GET", admin_expect(404, 404))),
    # Operators' account deletion (SPEC D1) and immediate termination (L6): their own permission.
    "admin/accounts/user/<int:user_id>/delete-account/": admin(
        lambda ids: f"/admin/accounts/user/{ids['accounts.user']}/delete-account/",
        Call("GET", admin_expect(403, 200)),
    ),
    "admin/subscriptions/subscription/<int:subscription_id>/terminate/": admin(
        lambda ids: (
            f"/admin/subscriptions/subscription/{ids['subscriptions.subscription']}/terminate/"
        ),
        Call("GET", admin_expect(403, 200)),
    ),
    # Without a selection: back to the list with a message.
    "admin/subscriptions/subscription/terminate/": admin(
        "/admin/subscriptions/subscription/terminate/", Call("GET", admin_expect(403, 302))
    ),
    # Refunds (SPEC M5) and adjustments (M6): their own permissions (the Billing role).
    "admin/payments/cardpayment/<int:payment_id>/refund/": admin(
        lambda ids: f"/admin/payments/cardpayment/{ids['payments.cardpayment']}/refund/",
        Call("GET", admin_expect(403, 200)),
    ),
    "admin/billing/creditaccount/<int:account_id>/adjust/": admin(
        lambda ids: f"/admin/billing/creditaccount/{ids['billing.creditaccount']}/adjust/",
        Call("GET", admin_expect(403, 200)),
    ),
    "admin/accounts/user/<id>/password/": admin(
        lambda ids: f"/admin/accounts/user/{ids['accounts.user']}/password/",
        Call("GET", admin_expect(403, 200)),
    ),
    # Operators' views (SPEC I1, R1, R2): their own permissions, checked again in POST tests.
    "admin/inventory/credential/upload/": admin(
        "/admin/inventory/credential/upload/", Call("GET", admin_expect(403, 200))
    ),
    "admin/inventory/credential/revocation-queue/": admin(
        "/admin/inventory/credential/revocation-queue/", Call("GET", admin_expect(403, 200))
    ),
    "admin/inventory/credential/<int:credential_id>/record-revocation/": admin(
        lambda ids: f"/admin/inventory/credential/{ids['inventory.credential']}/record-revocation/",
        Call("GET", admin_expect(403, 200)),
    ),
    "admin/inventory/credential/<int:credential_id>/stock-health/": admin(
        lambda ids: f"/admin/inventory/credential/{ids['inventory.credential']}/stock-health/",
        Call("GET", admin_expect(403, 200)),
    ),
    "admin/inventory/inventoryupload/<int:upload_id>/status/": admin(
        lambda ids: f"/admin/inventory/inventoryupload/{ids['inventory.inventoryupload']}/status/",
        Call("GET", admin_expect(403, 200)),
    ),
}

TABLE: dict[str, Entry] = {**CUSTOMER_TABLE, **ADMIN_TABLE}


# --- driving -----------------------------------------------------------------------------------


def client_for(world: World, role: str, kind: str) -> Client:
    if role == "anonymous":
        return Client(raise_request_exception=False)
    person = getattr(world, role)
    return person.bearer() if kind == "api" else person.session()


def send(client: Client, call: Call, path: str, world: World, kind: str):
    body = call.body(world) if callable(call.body) else call.body
    if call.method == "GET":
        return client.get(path, **call.headers)
    if kind == "api":
        data = json.dumps(body) if body is not None else ""
        return client.generic(
            call.method, path, data, content_type="application/json", **call.headers
        )
    return client.generic(
        call.method,
        path,
        _urlencode(body or {}),
        content_type="application/x-www-form-urlencoded",
        **call.headers,
    )


def _urlencode(data: dict) -> str:
    from urllib.parse import urlencode

    return urlencode(data)


def body_text(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def check(response, expected, where: str) -> list[str]:
    status = response.status_code
    location = response.get("Location", "")
    if expected == LOGIN:
        ok = status == 302 and location.startswith("/accounts/login/?next=")
    elif expected == ADMIN_LOGIN:
        ok = status == 302 and location.startswith("/admin/login/?next=")
    elif expected == UNAUTH:
        ok = status == 401 and _envelope(response) == "unauthenticated"
    elif expected == GONE:
        ok = status == 404
    else:
        ok = status == expected
    if ok:
        return []
    return [f"{where}: expected {expected}, got {status} {location}".rstrip()]


def _envelope(response) -> str | None:
    try:
        data = json.loads(response.content)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error.get("code")
    return None


def owner_state(world: World) -> dict[str, Any]:
    """Everything of A's that another role must never change."""
    from accounts.models import ApiToken, User
    from billing.models import CreditAccount, LedgerEntry
    from byok.models import ByokKey
    from inventory.models import Credential
    from subscriptions.models import AvailabilityIntent, ChargedTerm, Subscription

    user = world.a.user

    def rows(qs, *fields):
        return sorted(tuple(r) for r in qs.values_list(*fields))

    return {
        "user": rows(User.objects.filter(pk=user.pk), "email", "is_active", "password"),
        "tokens": rows(ApiToken.objects.filter(user=user), "id", "revoked_at"),
        "account": rows(
            CreditAccount.objects.filter(user=user),
            "balance_micros",
            "auto_top_up_enabled",
            "auto_top_up_amount_micros",
        ),
        "ledger": LedgerEntry.objects.filter(account__user=user).count(),
        "subscriptions": rows(
            Subscription.objects.filter(user=user),
            "id",
            "status",
            "cancel_at_period_end",
            "current_period_end",
        ),
        "terms": ChargedTerm.objects.filter(subscription__user=user).count(),
        "byok": rows(
            ByokKey.objects.filter(user=user), "id", "enabled", "encrypted_key", "subscription_id"
        ),
        "credentials": rows(Credential.objects.filter(assigned_to=user), "id", "state"),
        "intents": rows(AvailabilityIntent.objects.filter(user=user), "plan_id", "notified_at"),
    }


def world_ids(world: World) -> dict[str, Any]:
    ids = {**world.a.ids, **world.ids}
    ids["user_content_type"] = ContentType.objects.get_for_model(world.a.user).pk
    return ids


def drive(entry: Entry, world: World, pattern: str) -> list[str]:
    problems: list[str] = []
    ids = world_ids(world)
    missing_ids = {k: MISSING if isinstance(v, int) else v for k, v in ids.items()}
    path = entry.url(ids)
    for call in entry.calls:
        before = owner_state(world)
        for role in ROLES:
            if role == "a":
                after = owner_state(world)
                if after != before:
                    problems.append(f"{call.method} {pattern}: another role changed A's state")
            client = client_for(world, role, entry.kind)
            response = send(client, call, path, world, entry.kind)
            where = f"{call.method} {path} as {role}"
            problems += check(response, call.expect[role], where)
            text = body_text(response)
            if role in ("anonymous", "b", "staff") and world.a.email in text:
                problems.append(f"{where}: the response shows A's e-mail address")
            if response.status_code == 404 and entry.kind == "api" and _envelope(response) is None:
                problems.append(f"{where}: a 404 without the error envelope")
            if entry.owned and call.expect[role] == GONE and response.status_code == 404:
                # The answer for A's object equals the answer for one that does not exist.
                probe = send(
                    client_for(world, role, entry.kind),
                    call,
                    entry.url(missing_ids),
                    world,
                    entry.kind,
                )
                if probe.status_code != 404 or (
                    entry.kind == "api" and probe.content != response.content
                ):
                    problems.append(f"{where}: differs from the answer for a missing id")
            if entry.kind == "api" and role == "anonymous" and call.expect[role] == UNAUTH:
                bogus = Client(HTTP_AUTHORIZATION="Bearer cp_" + "x" * 40)
                problems += check(
                    send(bogus, call, path, world, entry.kind),
                    UNAUTH,
                    f"{where} (unknown bearer token)",
                )
    return problems


# --- tests -------------------------------------------------------------------------------------


def test_every_route_is_in_the_table():
    """A route the table does not list fails here: add it with its expected outcomes."""
    patterns = resolver_patterns()
    missing = sorted(patterns - set(TABLE))
    stale = sorted(set(TABLE) - patterns)
    assert not missing, "routes missing from the authorization table:\n" + "\n".join(missing)
    assert not stale, "table entries the resolver no longer has:\n" + "\n".join(stale)


def test_every_admin_model_is_in_the_table():
    from django.contrib import admin as django_admin

    registered = {m._meta.label_lower for m in django_admin.site._registry}
    assert registered == set(ADMIN_MODELS)


@pytest.mark.parametrize("pattern", sorted(CUSTOMER_TABLE), ids=lambda p: f"/{p}")
def test_customer_route(pattern, world, settings):
    settings.CODING_PLANS_PURCHASE_ENABLED = True  # the purchase form is flag-gated (C4)
    problems = drive(CUSTOMER_TABLE[pattern], world, pattern)
    assert not problems, "\n".join(problems)


def _admin_groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for pattern in ADMIN_TABLE:
        parts = [*pattern.split("/"), "", ""]
        label = f"{parts[1]}.{parts[2]}"
        key = label if label in ADMIN_MODELS else "site"
        groups.setdefault(key, []).append(pattern)
    return groups


@pytest.mark.parametrize("group", sorted(_admin_groups()))
def test_admin_routes(group, world):
    problems = []
    for pattern in _admin_groups()[group]:
        problems += drive(ADMIN_TABLE[pattern], world, pattern)
    assert not problems, "\n".join(problems)


# --- model permissions: one view permission opens exactly that model ---------------------------


@pytest.mark.parametrize("label", sorted(ADMIN_MODELS))
def test_view_permission_opens_only_its_model(label, world, make_user):
    app, model = label.split(".")
    user = make_user(f"viewer-{app}-{model}@example.com", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label=app, codename=f"view_{model}")
    )
    client = Client(raise_request_exception=False)
    client.force_login(user)
    ids = world_ids(world)
    assert client.get(f"/admin/{app}/{model}/").status_code == 200
    change = client.get(f"/admin/{app}/{model}/{ids[label]}/change/")
    assert change.status_code in (200, 302)
    assert client.get(f"/admin/{app}/{model}/add/").status_code == 403
    assert client.get(f"/admin/{app}/{model}/{ids[label]}/delete/").status_code == 403
    other = next(m for m in ADMIN_MODELS if m != label and m.split(".")[0] != app)
    other_app, other_model = other.split(".")
    assert client.get(f"/admin/{other_app}/{other_model}/").status_code == 403


# --- admin writes without permission change nothing --------------------------------------------


def test_admin_writes_need_the_permission(world, make_user):
    from inventory.models import Credential, InventoryUpload

    staff = world.staff.session()
    customer = world.b.session()
    credential_id = world.ids["inventory.credential"]
    uploads = InventoryUpload.objects.count()
    states = list(
        Credential.objects.order_by("id").values_list("id", "state", "revocation_attempts")
    )
    before = owner_state(world)
    upload = {"plan_id": PLUS, "lines": "sk-matrix-upload-0001::up-1"}
    record = {"outcome": "revoked", "note": "", "confirm": "yes"}
    for client, status in ((staff, 403), (customer, 302)):
        assert client.post("/admin/inventory/credential/upload/", upload).status_code == status
        url = f"/admin/inventory/credential/{credential_id}/record-revocation/"
        assert client.post(url, record).status_code == status
        # An admin action on the changelist (bulk) is refused as well.
        action = {"action": "delete_selected", "_selected_action": [credential_id], "post": "yes"}
        assert client.post("/admin/inventory/credential/", action).status_code == status
        user_delete = f"/admin/accounts/user/{world.a.user.pk}/delete/"
        assert client.post(user_delete, {"post": "yes"}).status_code == status
    assert InventoryUpload.objects.count() == uploads
    assert (
        list(Credential.objects.order_by("id").values_list("id", "state", "revocation_attempts"))
        == states
    )
    assert owner_state(world) == before


# --- CSRF: session POSTs without the token are refused -----------------------------------------


def test_page_form_without_csrf_token_is_refused(world):
    client = world.a.session(csrf=True)
    before = owner_state(world)
    key_id = world.a.ids["key_id"]
    response = client.post(f"/byok/{key_id}/delete/", {"confirm": "on"})
    assert response.status_code == 403
    response = client.post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": "15.00"})
    assert response.status_code == 403
    assert owner_state(world) == before
    # With the token from the page, the same form goes through.
    client.get("/byok/")
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/credits/auto-top-up/",
        {"enabled": "on", "amount_usd": "15.00", "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302


def test_api_session_write_without_csrf_token_is_refused(world):
    client = world.a.session(csrf=True)
    before = owner_state(world)
    sub = world.a.ids["subscription_id"]
    response = client.post(f"{SUB}/{sub}/cancel", content_type="application/json")
    assert response.status_code == 403
    assert _envelope(response) == "csrf_failed"
    response = client.put(
        "/api/v1/credits/auto-top-up",
        json.dumps({"enabled": True, "amount_usd": "15.00"}),
        content_type="application/json",
    )
    assert response.status_code == 403
    assert owner_state(world) == before
    # Reads need no token; a write with the token from the cookie goes through.
    assert client.get("/api/v1/credits").status_code == 200
    client.get("/byok/")
    token = client.cookies["csrftoken"].value
    response = client.post(
        f"{SUB}/{sub}/cancel", content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 200
    assert response.json()["cancel_at_period_end"] is True


def test_gateway_session_call_without_csrf_token_is_refused(world, standin):
    client = world.a.session(csrf=True)
    standin.state.reset()  # forget the world's stock validation calls
    response = client.post(
        "/api/v1/gateway/chat/completions", json.dumps(CHAT), content_type="application/json"
    )
    assert response.status_code == 403
    assert _envelope(response) == "csrf_failed"
    assert standin.state.calls() == []
