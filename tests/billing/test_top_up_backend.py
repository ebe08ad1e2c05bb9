"""Which auto top-up backend runs, and what happens when none is configured (SPEC M7, S4, L4;
issue 13 item 4: production must never hand out free credits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core import mail
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
from billing.services import set_auto_top_up
from subscriptions.sweep import run_billing_sweep
from tests.billing.helpers import ledger_state
from tests.lifecycle.helpers import MICROS, buy

ROOT = Path(__file__).resolve().parents[2]


def _settings_in_subprocess(**env: str) -> subprocess.CompletedProcess:
    """Import the settings module the way a production process starts: a fresh interpreter,
    DEBUG off, every required secret present, and only the variables under test changed."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CODING_PLANS_", "DEBUG", "DJANGO_"))
    }
    base.update(
        DEBUG="0",
        SECRET_KEY="s" * 50,
        CODING_PLANS_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        CODING_PLANS_FINGERPRINT_KEY="f" * 32,
        DATABASE_URL="postgres://u@localhost/db",
        CODING_PLANS_DATA_DIR=str(ROOT / ".local" / "settings-probe"),
    )
    base.update(env)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, codingplans.settings as s; "
            "print(json.dumps([s.CODING_PLANS_TOP_UP_BACKEND, s.DEBUG]))",
        ],
        cwd=ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("backend", ["simulated-approve", "simulated-decline"])
def test_production_refuses_to_start_with_a_simulated_backend(backend):
    # SPEC M7: with DEBUG off a simulated backend is refused at start-up.
    result = _settings_in_subprocess(CODING_PLANS_TOP_UP_BACKEND=backend)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"CODING_PLANS_TOP_UP_BACKEND={backend}" in result.stderr
    assert "CODING_PLANS_ALLOW_SIMULATED_PAYMENTS=1" in result.stderr


def test_production_accepts_a_simulated_backend_only_when_explicitly_allowed():
    # SPEC M7: ... unless CODING_PLANS_ALLOW_SIMULATED_PAYMENTS=1.
    result = _settings_in_subprocess(
        CODING_PLANS_TOP_UP_BACKEND="simulated-decline", CODING_PLANS_ALLOW_SIMULATED_PAYMENTS="1"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["simulated-decline", False]


def test_production_without_a_backend_starts_with_auto_top_up_unavailable():
    # SPEC M7, S4: unset in production is no backend at all -- never `simulated-approve`.
    result = _settings_in_subprocess()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["", False]


def test_development_keeps_simulated_approve_as_the_default():
    result = _settings_in_subprocess(DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["simulated-approve", True]


def test_unknown_backend_is_refused_at_start_up():
    result = _settings_in_subprocess(CODING_PLANS_TOP_UP_BACKEND="free-money")
    assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr


# --- no backend configured: auto top-up unavailable ------------------------------------------


@pytest.fixture
def no_backend(settings):
    settings.CODING_PLANS_TOP_UP_BACKEND = ""


@pytest.mark.django_db
def test_credits_page_refuses_turning_auto_top_up_on_without_a_backend(
    no_backend, logged_in, customer
):
    # SPEC M7: no processor, so auto top-up cannot be turned on; the page says why.
    page = logged_in.get("/credits/").content.decode()
    assert "Automatic top-up is not available" in page
    r = logged_in.post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": "25"})
    assert r.status_code == 409
    assert "Automatic top-up is not available" in r.content.decode()
    account = CreditAccount.objects.filter(user=customer).first()
    assert account is None or not account.auto_top_up_enabled
    # Turning it off (or changing the amount while off) is still allowed.
    r = logged_in.post("/credits/auto-top-up/", {"amount_usd": "30"})
    assert r.status_code == 302
    assert CreditAccount.objects.get(user=customer).auto_top_up_amount_micros == 30 * MICROS


@pytest.mark.django_db
def test_api_refuses_turning_auto_top_up_on_without_a_backend(no_backend, api, customer):
    # SPEC M7, 11.1: 409 auto_top_up_unavailable in the error envelope; nothing changes.
    r = api.put(
        "/api/v1/credits/auto-top-up",
        json.dumps({"enabled": True, "amount_usd": "25.00"}),
        content_type="application/json",
    )
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "auto_top_up_unavailable"
    assert "not available" in r.json()["error"]["message"]
    assert not CreditAccount.objects.get(user=customer).auto_top_up_enabled
    r = api.put(
        "/api/v1/credits/auto-top-up",
        json.dumps({"enabled": False, "amount_usd": "25.00"}),
        content_type="application/json",
    )
    assert r.status_code == 200 and r.json()["auto_top_up"] == {
        "enabled": False,
        "amount_usd": "25.00",
    }


@pytest.mark.django_db
def test_sweep_without_a_backend_never_grants_credits(
    make_user, stock, settings, django_capture_on_commit_callbacks
):
    # SPEC M7, L4, S5: an account left with auto top-up on (from before) gets no attempt and
    # no credits when no backend is configured; the plan waits in grace for real credits.
    now = timezone.now().replace(microsecond=0)
    stock("minimax-token-plan-plus")
    user = make_user(credits_usd=20)
    set_auto_top_up(user=user, enabled=True, amount_micros=25 * MICROS, actor="t", now=now)
    sub = buy(user, now)
    settings.CODING_PLANS_TOP_UP_BACKEND = ""
    before = ledger_state(user)
    with django_capture_on_commit_callbacks(execute=True):
        run = run_billing_sweep(now=sub.current_period_end)
    assert run.counts["past_due"] == 1 and run.counts["auto_top_up_triggered"] == 0
    assert run.counts["errors"] == 0
    assert not TopUpAttempt.objects.exists()
    assert not LedgerEntry.objects.filter(kind="top_up").exists()
    assert ledger_state(user) == before
    (email,) = [m for m in mail.outbox if m.subject.startswith("Payment needed")]
    assert "Automatic top-up is not available" in email.body
    # A later sweep within grace still grants nothing.
    with django_capture_on_commit_callbacks(execute=True):
        run_billing_sweep(now=sub.current_period_end + timedelta(hours=2))
    assert ledger_state(user) == before
