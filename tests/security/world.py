"""The canary world for the secrets scan (SPEC S1): users holding every kind of object the app
has, every secret registered as a canary, and the enumeration of every route.

To cover a new feature:
- build its objects in `World.build` (and register any secret with `world.secrets`);
- name how to fill a new path parameter in `PATH_PARAMS` (a route with an unknown parameter
  fails `test_every_route_can_be_driven` until it is listed);
- give realistic request bodies in `API_BODIES` / `FORM_BODIES` when `{}` is not enough.
Admin routes need nothing: their object ids come from the model in the URL.
"""

from __future__ import annotations

import re
import secrets as _random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django.utils.http import urlsafe_base64_encode

PLAN = "minimax-token-plan-plus"
OTHER_PLAN = "minimax-token-plan-max"
PASSWORD_PREFIX = "pw-canary-"


# --- secrets ----------------------------------------------------------------------------------


class Secrets:
    """Every value that must never be shown: found by any 12-character fragment (checked every
    6 characters, so any leaked run of 17+ characters is caught). A key's hint (last 4) and a
    token's public prefix (first 10) are shorter than a fragment."""

    WINDOW = 12
    STRIDE = 6

    def __init__(self) -> None:
        self._fragments: dict[str, str] = {}  # fragment -> label
        self._staff_only: dict[str, str] = {}
        self.values: dict[str, str] = {}  # label -> value

    def copy(self) -> Secrets:
        clone = Secrets()
        clone._fragments = dict(self._fragments)
        clone._staff_only = dict(self._staff_only)
        clone.values = dict(self.values)
        return clone

    def new(self, label: str, prefix: str = "sk-canary-") -> str:
        """A fresh canary; only its random tail is searched for (the readable prefix is shared
        by all canaries, so it would blur which one leaked)."""
        head = f"{prefix}{label}-"
        value = head + _random.token_hex(16)
        self.add(label, value, search_from=len(head))
        return value

    def add(self, label: str, value: str, *, staff_only: bool = False, search_from: int = 0) -> str:
        assert len(value) - search_from >= self.WINDOW, (label, value)
        self.values[label] = value
        target = self._staff_only if staff_only else self._fragments
        for fragment in self._windows(value[search_from:]):
            target[fragment] = label
        return value

    def _windows(self, value: str) -> Iterator[str]:
        last = len(value) - self.WINDOW
        starts = sorted({*range(0, last + 1, self.STRIDE), last})
        for start in starts:
            yield value[start : start + self.WINDOW]

    def find(self, text: str, *, staff: bool = False) -> set[str]:
        """Labels of the secrets whose fragments occur in `text`."""
        found = {label for fragment, label in self._fragments.items() if fragment in text}
        if not staff:
            found |= {label for fragment, label in self._staff_only.items() if fragment in text}
        return found


# --- the world --------------------------------------------------------------------------------


@dataclass
class Actor:
    name: str
    user: Any
    password: str
    token: str
    staff: bool = False
    ids: dict[str, Any] = field(default_factory=dict)  # path parameter -> own object id

    @property
    def email(self) -> str:
        return self.user.email


@dataclass
class World:
    secrets: Secrets
    actors: dict[str, Actor]
    # Filled by the canary test: which requests reach MiniMax.
    upstream_calls: list[Any] = field(default_factory=list)

    # Customers whose own objects every customer route is driven with.
    CUSTOMERS = ("byok_owner", "plan_owner", "newcomer")

    @property
    def customers(self) -> list[Actor]:
        return [self.actors[name] for name in self.CUSTOMERS]

    @property
    def other(self) -> Actor:
        """Owns one of everything; its ids are what the customers probe for 404s."""
        return self.actors["other"]

    @property
    def staff(self) -> Actor:
        return self.actors["staff"]

    def fork(self) -> World:
        """The same objects with a private secrets registry (a test registers what it posts)."""
        return World(
            secrets=self.secrets.copy(), actors=self.actors, upstream_calls=self.upstream_calls
        )

    @classmethod
    def build(cls) -> World:
        from accounts.services import create_user
        from accounts.tokens import create_api_token
        from billing.services import grant_credits
        from byok.models import ByokKey
        from byok.services import add_key
        from subscriptions.actions import terminate_subscription
        from subscriptions.intents import save_intent
        from subscriptions.purchase import purchase_plan

        now = timezone.now()
        s = Secrets()
        # Settings secrets: never in a page, a response or a log.
        s.add("SECRET_KEY", settings.SECRET_KEY)
        for i, key in enumerate(settings.CODING_PLANS_ENCRYPTION_KEYS):
            s.add(f"encryption-key-{i}", key)
        s.add("fingerprint-key", settings.CODING_PLANS_FINGERPRINT_KEY)

        actors: dict[str, Actor] = {}

        def actor(name: str, *, staff: bool = False, credits_usd: int = 100) -> Actor:
            password = s.new(f"password-{name}", prefix=PASSWORD_PREFIX)
            user = create_user(
                email=f"canary-{name}@example.com",
                password=password,
                full_name=f"Canary {name.replace('_', ' ').title()}",
                is_staff=staff,
                is_superuser=staff,
                now=now,
            )
            if credits_usd:
                grant_credits(
                    user=user, amount_micros=credits_usd * 1_000_000, actor="system:test", now=now
                )
            issued = create_api_token(user=user, name=f"{name} token", now=now)
            s.add(f"api-token-{name}", issued.plaintext)
            a = Actor(name, user, password, issued.plaintext, staff=staff)
            a.ids["token_id"] = issued.token.pk
            actors[name] = a
            return a

        # Inventory: every credential is a canary; its upstream plan id is for staff eyes only.
        upstream_ids: list[str] = []
        credentials = [s.new(f"credential-{i}") for i in range(4)]
        for i in range(len(credentials)):
            upstream = f"up-canary-{_random.token_hex(8)}"
            upstream_ids.append(s.add(f"upstream-plan-{i}", upstream, staff_only=True))
        _upload(PLAN, list(zip(credentials, upstream_ids, strict=True)), now)

        # A customer with their own MiniMax key.
        owner = actor("byok_owner")
        key = add_key(user=owner.user, provider_id="minimax", api_key=s.new("byok-key"), now=now)
        owner.ids["key_id"] = key.pk
        owner.ids["plan_id"] = PLAN
        save_intent(user=owner.user, plan_id=OTHER_PLAN, now=now)

        # A customer with a Coding Plan: its installed entry holds a credential.
        def subscriber(name: str) -> Actor:
            a = actor(name)
            outcome = purchase_plan(
                user=a.user, plan_id=PLAN, idempotency_key=f"canary-{name}", now=now
            )
            assert outcome.status == 201, outcome.body
            a.ids["subscription_id"] = outcome.subscription_id
            a.ids["key_id"] = ByokKey.objects.get(user=a.user).pk
            a.ids["plan_id"] = PLAN
            return a

        subscriber("plan_owner")
        other = subscriber("other")
        save_intent(user=other.user, plan_id=OTHER_PLAN, now=now)
        # A second, terminated plan for `other` would need a free slot; instead terminate one
        # more subscriber so the revocation queue has an item.
        ended = subscriber("ended")
        terminate_subscription(
            subscription_id=ended.ids["subscription_id"], actor="system:test", now=now
        )

        # A customer with nothing yet (empty states, first-time success paths).
        newcomer = actor("newcomer")
        newcomer.ids["plan_id"] = PLAN

        actor("staff", staff=True, credits_usd=0)

        # Card payments (SPEC M1, M9): one declined payment each; Stripe's keys are canaries.
        from payments.models import CardPayment

        for a in actors.values():
            a.ids["payment_id"] = CardPayment.objects.create(
                user=a.user,
                amount_micros=25_000_000,
                status=CardPayment.Status.FAILED,
                failure_code="card_declined",
                created_at=now,
                updated_at=now,
            ).pk
        for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
            if getattr(settings, name, ""):
                s.add(name, getattr(settings, name))

        # Ciphertexts are not for display either.
        from byok.models import ByokKey as _Key
        from inventory.models import Credential

        # (Skipping a Fernet token's version and timestamp, which tokens made together share.)
        for row in _Key.objects.all():
            s.add(f"ciphertext-byok-{row.pk}", row.encrypted_key, search_from=12)
        for row in Credential.objects.exclude(encrypted_key="").exclude(encrypted_key=None):
            s.add(f"ciphertext-credential-{row.pk}", row.encrypted_key, search_from=12)
        return cls(secrets=s, actors=actors)


def _upload(plan_id: str, pairs: list[tuple[str, str]], now) -> None:
    from inventory.upload import upload_credentials

    text = "\n".join(f"{key}::{upstream}" for key, upstream in pairs)
    report = upload_credentials(plan_id=plan_id, text=text, actor="system:test", now=now)
    assert report.ok, report.errors


# --- routes -----------------------------------------------------------------------------------

_PARAM = re.compile(r"<(?:(?P<conv>\w+):)?(?P<name>\w+)>")
_REGEX_PARAM = re.compile(r"\(\?P<(?P<name>\w+)>(?P<body>[^)]*)\)")


@dataclass(frozen=True)
class Route:
    pattern: str  # as Django sees it, without the leading slash: "byok/<int:key_id>/replace/"
    name: str | None
    view: str
    methods: tuple[str, ...] | None  # declared methods (ninja); None: try the usual ones
    is_regex: bool

    @property
    def kind(self) -> str:
        if self.pattern.startswith("admin/"):
            return "admin"
        if self.pattern.startswith("api/"):
            return "api"
        return "page"

    @property
    def params(self) -> tuple[str, ...]:
        if self.is_regex:
            return tuple(m.group("name") for m in _REGEX_PARAM.finditer(self.pattern))
        return tuple(m.group("name") for m in _PARAM.finditer(self.pattern))

    @property
    def admin_model(self):
        """The model an admin route belongs to (admin/<app_label>/<model_name>/...)."""
        parts = self.pattern.split("/")
        if self.kind != "admin" or len(parts) < 3:
            return None
        try:
            return apps.get_model(parts[1], parts[2])
        except (LookupError, ValueError):
            return None

    def fill(self, values: dict[str, Any]) -> str:
        if self.is_regex:
            path = _REGEX_PARAM.sub(lambda m: str(values[m.group("name")]), self.pattern)
            path = path.replace("^", "").replace("$", "")
        else:
            path = _PARAM.sub(lambda m: str(values[m.group("name")]), self.pattern)
        return "/" + path

    def __str__(self) -> str:
        return f"/{self.pattern}"


def _methods_of(callback: Callable) -> tuple[str, ...] | None:
    """A django-ninja path's methods, from the PathView its view closes over."""
    for cell in getattr(callback, "__closure__", None) or ():
        operations = getattr(cell.cell_contents, "operations", None)
        if operations:
            return tuple(sorted({m for op in operations for m in op.methods}))
    return None


def all_routes() -> list[Route]:
    routes: dict[str, Route] = {}

    def walk(patterns, prefix: str, regex: bool) -> None:
        for p in patterns:
            text = str(p.pattern)
            is_regex = regex or type(p.pattern).__name__ == "RegexPattern"
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + text, is_regex)
            elif isinstance(p, URLPattern):
                full = prefix + text
                if full not in routes:
                    view = (
                        getattr(p.callback, "__module__", "")
                        + "."
                        + getattr(p.callback, "__qualname__", repr(p.callback))
                    )
                    routes[full] = Route(full, p.name, view, _methods_of(p.callback), is_regex)

    walk(get_resolver().url_patterns, "", False)
    return sorted(routes.values(), key=lambda r: r.pattern)


# --- path parameters --------------------------------------------------------------------------

MISSING_ID = 987_654_321
ADMIN_OBJECTS_PER_MODEL = 6

# Customer routes: how to fill each parameter for an actor's own objects. A route whose actor
# lacks the object (the newcomer has no subscription) is skipped for that actor.
PATH_PARAMS: dict[str, Callable[[World, Actor], Any]] = {
    "key_id": lambda w, a: a.ids.get("key_id"),
    "token_id": lambda w, a: a.ids.get("token_id"),
    "subscription_id": lambda w, a: a.ids.get("subscription_id"),
    "plan_id": lambda w, a: a.ids.get("plan_id"),
    "payment_id": lambda w, a: a.ids.get("payment_id"),
    # Issue 19: the links e-mailed for a password reset, a verification or an e-mail change.
    "uidb64": lambda w, a: urlsafe_base64_encode(str(a.user.pk).encode()),
    "token": lambda w, a: "forged:token",
}

# Someone else's object (404 expected) or one that does not exist.
FOREIGN_PARAMS: dict[str, Callable[[World], list[Any]]] = {
    "key_id": lambda w: [w.other.ids["key_id"], MISSING_ID],
    "token_id": lambda w: [w.other.ids["token_id"], MISSING_ID],
    "subscription_id": lambda w: [w.other.ids["subscription_id"], MISSING_ID, "abc"],
    "plan_id": lambda w: ["no-such-plan", "sk-canary-lookalike-0000000000"],
    "payment_id": lambda w: [w.other.ids["payment_id"], MISSING_ID],
    "uidb64": lambda w: [urlsafe_base64_encode(str(w.other.user.pk).encode()), "bad"],
    "token": lambda w: ["sk-canary-lookalike-0000000000"],
}


def _content_type_pairs(w: World) -> list[dict[str, Any]]:
    user_ct = ContentType.objects.get_for_model(w.other.user)
    return [{"content_type_id": user_ct.pk, "object_id": w.other.user.pk}]


# Admin routes whose parameters are not the id of the model in their path.
ADMIN_SPECIAL: dict[str, Callable[[World], list[dict[str, Any]]]] = {
    "view_on_site": _content_type_pairs,
}


def admin_param_sets(route: Route, w: World) -> list[dict[str, Any]]:
    """Objects of the route's model (the first and newest few), plus one that does not exist."""
    if route.name in ADMIN_SPECIAL:
        return ADMIN_SPECIAL[route.name](w)
    params = route.params
    if not params:
        return [{}]
    if route.is_regex:
        return regex_param_sets(route)
    model = route.admin_model
    if model is None or len(params) != 1:
        raise LookupError(
            f"{route}: add its parameters to ADMIN_SPECIAL in tests/security/world.py"
        )
    pks = list(model._default_manager.order_by("pk").values_list("pk", flat=True))
    if len(pks) > ADMIN_OBJECTS_PER_MODEL:  # the first few and the newest
        half = ADMIN_OBJECTS_PER_MODEL // 2
        pks = pks[:half] + pks[-half:]
    return [{params[0]: pk} for pk in [*pks, MISSING_ID]]


def regex_param_sets(route: Route) -> list[dict[str, Any]]:
    """Regex routes (one group): each alternative of `(a|b|c)`, or paths that do not exist."""
    groups = list(_REGEX_PARAM.finditer(route.pattern))
    if len(groups) != 1:
        raise LookupError(
            f"{route}: add its parameters to ADMIN_SPECIAL in tests/security/world.py"
        )
    name, body = groups[0].group("name"), groups[0].group("body")
    options = body.split("|") if "|" in body else ["no-such-page/", "sk-canary-lookalike-0000/"]
    return [{name: option} for option in options]


def customer_param_sets(route: Route, w: World, a: Actor) -> list[dict[str, Any]] | None:
    """The actor's own ids for the route's parameters; None when the actor has no such object."""
    values = {}
    for name in route.params:
        value = PATH_PARAMS[name](w, a)
        if value is None:
            return None
        values[name] = value
    return [values]


def foreign_param_sets(route: Route, w: World, own: dict[str, Any]) -> list[dict[str, Any]]:
    """Each parameter in turn replaced by someone else's / a missing id."""
    sets = []
    for name in route.params:
        for value in FOREIGN_PARAMS[name](w):
            if value != own[name]:
                sets.append({**own, name: value})
    return sets


def unknown_params(route: Route) -> set[str]:
    if route.kind == "admin":
        return set()
    return set(route.params) - set(PATH_PARAMS) | (set(route.params) - set(FOREIGN_PARAMS))


# --- request bodies ---------------------------------------------------------------------------

# API operations: (METHOD, pattern) -> bodies, tried in order after the bad ones. `None`: no body.
# Values from `world.secrets` are given as callables so each test registers fresh canaries.
BodyFactory = Callable[[World, Actor], Any]


def _new_key(label: str) -> BodyFactory:
    return lambda w, a: w.secrets.new(f"{label}-{a.name}")


API_BODIES: dict[tuple[str, str], list[BodyFactory]] = {
    ("POST", "api/v1/byok"): [
        lambda w, a: {"provider_id": "minimax", "api_key": w.secrets.new(f"posted-{a.name}")},
        lambda w, a: {"provider_id": "nope", "api_key": w.secrets.new(f"posted-bad-{a.name}")},
        lambda w, a: {
            "provider_id": "minimax",
            "api_key": w.secrets.new(f"spaced-{a.name}") + " x",
        },
    ],
    ("PATCH", "api/v1/byok/<int:key_id>"): [
        lambda w, a: {"api_key": w.secrets.new(f"patched-bad-{a.name}") + "\n\t"},
        lambda w, a: {"enabled": False},
        lambda w, a: {"enabled": True, "api_key": w.secrets.new(f"patched-{a.name}")},
    ],
    ("POST", "api/v1/coding-plans/purchases"): [
        lambda w, a: {"plan_id": "no-such-plan"},
        lambda w, a: {"plan_id": OTHER_PLAN},  # sold out
        lambda w, a: {"plan_id": PLAN},
    ],
    ("PUT", "api/v1/credits/auto-top-up"): [
        lambda w, a: {"enabled": True, "amount_usd": "abc"},
        lambda w, a: {"enabled": True, "amount_usd": "25.00"},
    ],
    ("POST", "api/v1/gateway/chat/completions"): [
        lambda w, a: {"model": "openai/gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        lambda w, a: {
            "model": "minimax/MiniMax-M2",
            "messages": [{"role": "user", "content": "hi"}],
        },
        lambda w, a: {
            "model": "minimax/MiniMax-M2",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        },
    ],
}

# Bodies every unsafe API method also gets: not JSON, wrong types, wrong shape.
BAD_API_BODIES: list[Any] = [
    "{not json",
    {"api_key": 12345678, "provider_id": 7, "plan_id": [], "enabled": "maybe", "amount_usd": {}},
    ["a", "list"],
]

# Page forms: URL name -> bodies (form fields), tried in order.
FORM_BODIES: dict[str, list[BodyFactory]] = {
    "byok-add": [
        lambda w, a: {"provider_id": "minimax", "api_key": w.secrets.new(f"form-{a.name}")},
        lambda w, a: {"provider_id": "bogus", "api_key": w.secrets.new(f"form-bad-{a.name}")},
        lambda w, a: {
            "provider_id": "minimax",
            "api_key": w.secrets.new(f"form-sp-{a.name}") + " x",
        },
    ],
    "byok-replace": [
        lambda w, a: {"api_key": w.secrets.new(f"replace-{a.name}")},
        lambda w, a: {"api_key": w.secrets.new(f"replace-bad-{a.name}") + " x", "confirm": "on"},
        lambda w, a: {"api_key": w.secrets.new(f"replace-ok-{a.name}"), "confirm": "on"},
    ],
    "byok-toggle": [lambda w, a: {"enabled": "0"}, lambda w, a: {"enabled": "0", "confirm": "on"}],
    "byok-delete": [lambda w, a: {}, lambda w, a: {"confirm": "on"}],
    "login": [
        lambda w, a: {
            "username": a.email,
            "password": w.secrets.new(f"wrong-pw-{a.name}", PASSWORD_PREFIX),
        },
        lambda w, a: {"username": a.email, "password": a.password},
    ],
    "signup": [
        lambda w, a: {
            "email": a.email,
            "password": w.secrets.new(f"signup-pw-{a.name}", PASSWORD_PREFIX),
        },
        lambda w, a: {
            "email": f"new-{a.name}@example.com",
            "password": w.secrets.new(f"signup-new-pw-{a.name}", PASSWORD_PREFIX),
            "full_name": "New Person",
        },
    ],
    "account-delete": [
        lambda w, a: {
            "confirm": "on",
            "password": w.secrets.new(f"del-pw-{a.name}", PASSWORD_PREFIX),
        },
        lambda w, a: {"confirm": "on", "password": a.password},
    ],
    "account-token-create": [lambda w, a: {"name": "laptop"}],
    "credits-auto-top-up": [
        lambda w, a: {"enabled": "on", "amount_usd": "abc"},
        lambda w, a: {"enabled": "on", "amount_usd": "20.00"},
    ],
    "coding-plans-purchase": [
        lambda w, a: {"plan_id": "no-such-plan", "idempotency_key": f"page-{a.name}-0"},
        lambda w, a: {"plan_id": PLAN, "idempotency_key": f"page-{a.name}-1"},
    ],
    "coding-plan-cancel": [lambda w, a: {"confirm": "on"}],
}

# Admin forms: URL name -> bodies.
ADMIN_FORM_BODIES: dict[str, list[BodyFactory]] = {
    "inventory_credential_upload": [
        lambda w, a: {
            "plan_id": PLAN,
            "lines": "\n".join(
                [
                    f"{w.secrets.new('upload-good')}::up-new-1",
                    f"{w.secrets.new('upload-malformed')}",
                    f"{w.secrets.values['credential-0']}::up-dup",
                    f"invalid-{w.secrets.new('upload-rejected')}::up-new-2",
                ]
            ),
        },
        lambda w, a: {"plan_id": PLAN, "lines": f"{w.secrets.new('upload-ok')}::up-ok-1"},
    ],
    "inventory_credential_record_revocation": [
        lambda w, a: {"outcome": "revocation_failed", "note": ""},
        lambda w, a: {
            "outcome": "revocation_failed",
            "note": f"MiniMax said: Authorization: Bearer {w.secrets.values['credential-3']} "
            f"is unknown (api_key={w.secrets.values['credential-3']})",
        },
        lambda w, a: {"outcome": "revoked", "note": ""},
    ],
}


def admin_actions(model) -> list[str]:
    """The model admin's actions, and the site-wide ones (delete_selected: only its confirmation
    page is reached, nothing is deleted without `post=yes`)."""
    model_admin = admin.site._registry.get(model)
    if model_admin is None:
        return []
    names = [name for name, _ in admin.site.actions]
    for action in model_admin.actions or ():
        names.append(action if isinstance(action, str) else action.__name__)
    return list(dict.fromkeys(names))
