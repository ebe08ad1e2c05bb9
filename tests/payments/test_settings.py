"""Stripe settings (SPEC M7, S4): production refuses the `stripe` backend without its keys; the
CSP allows exactly the Stripe.js origin in use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.test import Client

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "x" * 20 + "-production-secret-key-with-enough-entropy-0123456789",
    "CODING_PLANS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "CODING_PLANS_FINGERPRINT_KEY": "fingerprint-key-for-the-settings-check",
    "ALLOWED_HOSTS": "plans.example.com",
}


def _check(**extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env.update(PRODUCTION, DATABASE_URL=os.environ.get("DATABASE_URL", "postgres://x/y"), **extra)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings;"
            " print(settings.CONTENT_SECURITY_POLICY)",
        ],
        env={**env, "DJANGO_SETTINGS_MODULE": "codingplans.settings"},
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_the_stripe_backend_without_its_keys():
    result = _check(CODING_PLANS_TOP_UP_BACKEND="stripe", STRIPE_PUBLISHABLE_KEY="pk_live_x")
    assert result.returncode != 0
    assert "STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET" in result.stderr
    assert "pk_live_x" not in result.stderr  # names the missing settings, never a value


def test_production_with_the_stripe_backend_and_keys_allows_exactly_stripes_origins():
    result = _check(
        CODING_PLANS_TOP_UP_BACKEND="stripe",
        STRIPE_SECRET_KEY="sk_live_" + "a" * 24,
        STRIPE_PUBLISHABLE_KEY="pk_live_" + "b" * 24,
        STRIPE_WEBHOOK_SECRET="whsec_" + "c" * 24,
    )
    assert result.returncode == 0, result.stderr
    csp = result.stdout.strip()
    assert "script-src 'self' https://js.stripe.com;" in csp
    assert "frame-src https://js.stripe.com https://hooks.stripe.com;" in csp
    assert "connect-src 'self' https://api.stripe.com;" in csp


def test_without_keys_the_policy_names_no_stripe_origin():
    result = _check()
    assert result.returncode == 0, result.stderr
    assert "stripe" not in result.stdout and "frame-src" not in result.stdout


@pytest.mark.django_db
def test_pages_allow_the_embedded_stripe_js_origin(localstripe, make_user):
    # make test: the CSP names localstripe's origin, the one STRIPE_JS_URL points at.
    page = Client()
    page.force_login(make_user())
    response = page.get("/credits/")
    base = localstripe["STRIPE_API_BASE"]
    assert localstripe["STRIPE_JS_URL"] in response.content.decode()
    csp = response["Content-Security-Policy"]
    assert f"script-src 'self' {base};" in csp and f"connect-src 'self' {base};" in csp
