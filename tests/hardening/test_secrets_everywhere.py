"""Secrets everywhere (issue 8, hardening 5; SPEC S1): the canary scan extended to e-mails, the
Celery worker's and beat's task logs, and error pages with DEBUG off.

Canaries — credential keys (some `sk-`-shaped, some not key-shaped at all, so the logging
filter's redaction cannot be what saves them), upstream plan ids, a customer's own BYOK key,
API tokens, passwords, the settings' secret keys and every stored ciphertext — are planted,
then every flow that sends e-mail runs for real (`transaction=True`, so after-commit hooks and
the eager Celery tasks behave as in production): the restock notice (U6), the low-stock alert
and the daily inventory report (O3), past due with auto top-up (L4), termination for
non-payment (L3), the end of a customer's cancellation (L5), an operator's termination (L6),
an admin upload validated by the worker task (I1–I3), and the beat schedule's entries fired
through a real `celery.beat.Scheduler`. Every e-mail (subject, body, alternatives, headers) and
every log line (message, traceback, string extras — SQL included) is scanned.

Elsewhere: admin pages and customer routes are scanned by tests/security/test_canary.py and
tests/adminops/test_canary.py; upstream failures by tests/hardening/test_upstream_faults.py.
"""

from __future__ import annotations

import io
import json
import logging
import secrets as _random
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.core.management import call_command
from django.db import connections
from django.test import Client
from django.utils import timezone

from accounts.tokens import create_api_token
from billing.services import set_auto_top_up
from byok.services import add_key
from inventory.upload import upload_credentials
from subscriptions.actions import cancel_at_period_end
from subscriptions.intents import save_intent
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from tests.hardening.conftest import MAX, PLUS

PASSWORD = "pw-Canary-{}-{}"


class Canaries:
    """Values that must never be shown, found by any 12-character fragment (checked every 6
    characters, so a leaked run of 17+ characters is always caught)."""

    WINDOW, STRIDE = 12, 6

    def __init__(self) -> None:
        self.fragments: dict[str, str] = {}
        self.values: dict[str, str] = {}

    def add(self, label: str, value: str) -> str:
        assert len(value) >= self.WINDOW
        self.values[label] = value
        last = len(value) - self.WINDOW
        for start in sorted({*range(0, last + 1, self.STRIDE), last}):
            self.fragments[value[start : start + self.WINDOW]] = label
        return value

    def key_shaped(self, label: str) -> str:
        return self.add(label, f"sk-canary-{label}-{_random.token_hex(12)}")

    def odd(self, label: str) -> str:
        """A key nothing would recognize as one (no prefix, punctuation, no long alnum run)."""
        parts = [_random.token_hex(3) for _ in range(5)]
        return self.add(label, "Q!" + "#".join(parts) + f"@{label}")

    def find(self, text: str, *, ignore: tuple[str, ...] = ()) -> set[str]:
        return {
            label
            for fragment, label in self.fragments.items()
            if fragment in text and not label.startswith(ignore)
        }


class LogCapture(logging.Handler):
    """Every record any logger emits, as a handler would write it, with string extras."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
        "message",
        "asctime",
        "_redacted",
    }

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        parts = [self.format(record)]
        if record.stack_info:
            parts.append(record.stack_info)
        parts += [
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in self._STANDARD and isinstance(v, str)
        ]
        self.lines.append("\n".join(parts))


@pytest.fixture
def captured_logs():
    capture = LogCapture()
    root = logging.getLogger()
    loud = ["", "django", "django.request", "django.db.backends", "celery", "celery.beat", "httpx"]
    levels = {name: logging.getLogger(name).level for name in loud}
    for name in loud:
        logging.getLogger(name).setLevel(logging.DEBUG)
    isolated = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    root.addHandler(capture)
    for logger in isolated:
        logger.addHandler(capture)
    debug = {alias: connections[alias].force_debug_cursor for alias in connections}
    for alias in connections:
        connections[alias].force_debug_cursor = True  # SQL and its parameters are logged too
    yield capture
    for alias, value in debug.items():
        connections[alias].force_debug_cursor = value
    for logger in isolated:
        logger.removeHandler(capture)
    root.removeHandler(capture)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def settings_canaries(c: Canaries) -> None:
    c.add("SECRET_KEY", django_settings.SECRET_KEY)
    for i, key in enumerate(django_settings.CODING_PLANS_ENCRYPTION_KEYS):
        c.add(f"encryption-key-{i}", key)
    c.add("fingerprint-key", django_settings.CODING_PLANS_FINGERPRINT_KEY)


def ciphertext_canaries(c: Canaries) -> None:
    from byok.models import ByokKey
    from inventory.models import Credential, InventoryUpload

    for row in ByokKey.objects.all():
        c.add(f"ciphertext-byok-{row.pk}", row.encrypted_key)
    for row in Credential.objects.exclude(encrypted_key=""):
        c.add(f"ciphertext-credential-{row.pk}", row.encrypted_key)
    for row in InventoryUpload.objects.exclude(encrypted_payload=""):
        c.add(f"ciphertext-upload-{row.pk}", row.encrypted_payload)


def all_mail_text(message) -> str:
    parts = [message.subject, message.body, message.from_email, *message.to, *message.cc]
    parts += [f"{k}: {v}" for k, v in message.extra_headers.items()]
    parts += [content for content, _ in getattr(message, "alternatives", [])]
    parts.append(message.message().as_string())
    return "\n".join(str(p) for p in parts)


# The SQL debug log carries stored values as parameters: ciphertexts, and upstream plan ids
# (operator data staff see in the admin, SPEC I6). Neither may appear in any e-mail.
NOT_IN_LOGS = ("ciphertext-", "upstream-", "up-max-")


@pytest.mark.django_db(transaction=True)
def test_emails_and_task_logs_carry_no_secret(make_user, captured_logs, settings, standin):
    # Declined, so the past-due e-mail is sent (issue 16: it follows the top-up's outcome, and
    # an approved top-up sends none).
    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-decline"
    c = Canaries()
    settings_canaries(c)
    now = timezone.now()

    staff = make_user(
        "staff-ops@example.com", is_staff=True, is_superuser=True, password=c.odd("pw-staff")
    )

    # Stock with canary keys and upstream plan ids: two shapes of key.
    lines = []
    for i in range(6):
        key = c.key_shaped(f"credential-{i}") if i % 2 else c.odd(f"credential-{i}")
        lines.append(f"{key}::{c.add(f'upstream-{i}', f'up-canary-{_random.token_hex(8)}')}")
    report = upload_credentials(plan_id=PLUS, text="\n".join(lines), actor="system:test", now=now)
    assert report.ok, report.errors

    def customer(name: str, credits_usd: int):
        user = make_user(
            f"canary-{name}@example.com", credits_usd=credits_usd, password=c.odd(f"pw-{name}")
        )
        c.add(f"api-token-{name}", create_api_token(user=user, now=now).plaintext)
        return user

    def subscribe(user) -> Subscription:
        outcome = purchase_plan(user=user, plan_id=PLUS, idempotency_key="canary", now=now)
        assert outcome.status == 201, outcome.body
        return Subscription.objects.get(pk=outcome.subscription_id)

    own = customer("own-key", 100)
    add_key(user=own, provider_id="minimax", api_key=c.odd("own-byok-key"), now=now)
    save_intent(user=own, plan_id=MAX, now=now)

    ending = subscribe(customer("ending", 20))  # L3: no credits at renewal, no top-up
    grace_user = customer("grace", 20)
    grace = subscribe(grace_user)  # L4: short, auto top-up on
    set_auto_top_up(
        user=grace_user, enabled=True, amount_micros=25_000_000, actor="system:test", now=now
    )
    canceling_user = customer("canceling", 20)
    canceling = subscribe(canceling_user)  # L5
    cancel_at_period_end(user=canceling_user, subscription_id=canceling.pk, now=now)
    operated = subscribe(customer("operated", 20))  # L6
    # Four of six sold: the plan crossed its low-stock threshold (5) once (O3).

    due = now - timedelta(minutes=5)
    Subscription.objects.filter(pk__in=[ending.pk, grace.pk, canceling.pk]).update(
        current_period_start=due - timedelta(days=30), current_period_end=due
    )
    ciphertext_canaries(c)

    # The worker: the sweep task (terminations, past due, top-up, cancellation end).
    from subscriptions.tasks import notify_availability, run_billing_sweep

    counts = run_billing_sweep.delay().get()
    assert counts["terminated"] == 1 and counts["past_due"] == 1 and counts["canceled"] == 1

    # An operator's termination (L6), through the command.
    call_command("terminate_subscription", str(operated.pk), stdout=io.StringIO())

    # Restock of a sold-out plan: the upload's after-commit hook queues the notice task (U6).
    max_lines = [
        f"{c.odd(f'max-{i}')}::{c.add(f'up-max-{i}', f'up-max-{_random.token_hex(8)}')}"
        for i in range(2)
    ]
    assert upload_credentials(
        plan_id=MAX, text="\n".join(max_lines), actor="system:test", now=timezone.now()
    ).ok
    notify_availability.delay(MAX).get()  # a repeated run sends nothing more

    # An admin upload, validated by the worker's task; one key rejected by MiniMax.
    client = Client()
    client.force_login(staff)
    upload_lines = [
        f"{c.odd('admin-upload-ok')}::up-admin-1",
        f"invalid-{c.odd('admin-upload-rejected')}::up-admin-2",
    ]
    response = client.post(
        "/admin/inventory/credential/upload/", {"plan_id": MAX, "lines": "\n".join(upload_lines)}
    )
    assert response.status_code == 302
    assert client.get(response["Location"]).status_code == 200

    # The beat: every schedule entry fired through a real scheduler (tasks run eagerly).
    from celery.beat import Scheduler

    from codingplans.celery import app

    scheduler = Scheduler(app=app, lazy=False)
    names = set(django_settings.CELERY_BEAT_SCHEDULE)
    for entry in list(scheduler.schedule.values()):
        if entry.name in names:
            scheduler.apply_entry(entry)
    ciphertext_canaries(c)

    # Every kind of e-mail was really sent.
    subjects = [m.subject for m in mail.outbox]
    for expected in (
        "is available again",
        "Low stock",
        "inventory report",
        "Payment needed",
        "has ended",
    ):
        assert any(expected in s for s in subjects), (expected, subjects)
    assert sum("has ended" in s for s in subjects) == 3  # L3, L5, L6
    assert any("Sending due task" in line for line in captured_logs.lines)

    problems = []
    for message in mail.outbox:
        found = c.find(all_mail_text(message))
        if found:
            problems.append(f"e-mail {message.subject!r} to {message.to}: {sorted(found)}")
    for line in captured_logs.lines:
        found = c.find(line, ignore=NOT_IN_LOGS)
        if found:
            problems.append(f"log line {line[:200]!r}: {sorted(found)}")
    assert not problems, "\n".join(problems)


# --- error pages with DEBUG off ----------------------------------------------------------------


@pytest.fixture
def production_errors(settings):
    settings.DEBUG = False
    settings.DEBUG_PROPAGATE_EXCEPTIONS = False


@pytest.mark.django_db
def test_not_found_pages_echo_nothing(world, production_errors, captured_logs):
    c = Canaries()
    settings_canaries(c)
    key = c.key_shaped("probe-key")
    odd = c.odd("probe-odd")
    token = c.add("token", world.a.token)
    client = world.a.session()
    bearer = world.a.bearer()
    paths = [
        f"/byok/{key}/",
        f"/no-such-page/{odd}/",
        f"/subscriptions/coding-plans/{key}/",
        f"/api/v1/{key}",
        f"/api/v1/byok/{odd}",
        f"/api/v1/coding-plans/subscriptions/{key}",
        f"/static/{key}.js",
    ]
    problems = []
    for path in paths:
        for who, response in (
            ("session", client.get(path, {"q": key})),
            ("bearer", bearer.get(path)),
            ("anonymous", Client().get(path, HTTP_AUTHORIZATION=f"Bearer {token}")),
        ):
            if response.status_code not in (302, 401, 404):
                problems.append(f"{path} as {who}: HTTP {response.status_code}")
            found = c.find(response.content.decode(errors="replace"))
            if found:
                problems.append(f"{path} as {who}: {sorted(found)}")
    for line in captured_logs.lines:
        found = c.find(line)
        if found:
            problems.append(f"log line {line[:200]!r}: {sorted(found)}")
    assert not problems, "\n".join(problems)


def _crash(*args, **kwargs):
    raise RuntimeError("the database went away")


@pytest.mark.django_db
def test_server_error_page_and_its_log_carry_no_secret(
    world, production_errors, captured_logs, monkeypatch, settings
):
    """An unexpected crash while a key is being saved: the 500 page and the logged traceback
    show neither the key being sent nor the caller's token."""
    import byok.services

    settings.ADMINS = []  # no error e-mails here; see the report for ADMINS
    monkeypatch.setattr(byok.services.ByokKey.objects, "create", _crash)
    c = Canaries()
    settings_canaries(c)
    token = c.add("token", world.b.token)
    key = c.key_shaped("posted-key")
    odd = c.odd("posted-odd")
    bearer = Client(HTTP_AUTHORIZATION=f"Bearer {token}", raise_request_exception=False)
    session = world.b.session()
    responses = [
        bearer.post(
            "/api/v1/byok",
            json.dumps({"provider_id": "minimax", "api_key": key}),
            content_type="application/json",
        ),
        session.post("/byok/add/", {"provider_id": "minimax", "api_key": odd}),
    ]
    problems = []
    for response in responses:
        assert response.status_code == 500
        found = c.find(response.content.decode(errors="replace"))
        if found:
            problems.append(f"500 page: {sorted(found)}")
    assert any("Internal Server Error" in line for line in captured_logs.lines)
    for line in captured_logs.lines:
        found = c.find(line)
        if found:
            problems.append(f"log line {line[:300]!r}: {sorted(found)}")
    assert not problems, "\n".join(problems)


@pytest.mark.django_db
def test_error_emails_to_admins_carry_no_secret(world, production_errors, monkeypatch, settings):
    """ADMINS is unset by default; should an operator set it, Django mails every 500 with its
    traceback and request: neither the posted key nor the caller's token may be in it."""
    import byok.services

    settings.ADMINS = [("Ops", "ops@example.com")]
    monkeypatch.setattr(byok.services.ByokKey.objects, "create", _crash)
    c = Canaries()
    settings_canaries(c)
    token = c.add("token", world.b.token)
    bearer = Client(HTTP_AUTHORIZATION=f"Bearer {token}", raise_request_exception=False)
    body = {"provider_id": "minimax", "api_key": c.key_shaped("posted-key")}
    assert (
        bearer.post("/api/v1/byok", json.dumps(body), content_type="application/json").status_code
        == 500
    )
    form = {"provider_id": "minimax", "api_key": c.odd("posted-odd")}
    assert world.b.session().post("/byok/add/", form).status_code == 500
    assert len(mail.outbox) == 2
    for message in mail.outbox:
        assert "Internal Server Error" in message.subject
        assert not c.find(all_mail_text(message)), message.subject
