"""Security settings (issue 8 hardening 6): deploy checks, headers, rate limits."""

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings

pytestmark = pytest.mark.django_db


def test_check_deploy_is_clean_with_production_settings():
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "x" * 20 + "-production-secret-key-with-enough-entropy-0123456789",
        "CODING_PLANS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "CODING_PLANS_FINGERPRINT_KEY": "fingerprint-key-for-the-deploy-check",
        "ALLOWED_HOSTS": "plans.example.com",
        "SECURE_SSL_REDIRECT": "1",
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://localhost/x"),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_keys():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODING_PLANS_")}
    env.update({"DEBUG": "0", "SECRET_KEY": "s" * 60, "ALLOWED_HOSTS": "x"})
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=env,
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CODING_PLANS_ENCRYPTION_KEYS must be set" in result.stderr


def test_pages_carry_csp_and_security_headers(client):
    r = client.get("/accounts/login/")
    assert "script-src 'self'" in r["Content-Security-Policy"]
    assert r["X-Frame-Options"] == "DENY"
    assert r["X-Content-Type-Options"] == "nosniff"


def test_login_is_rate_limited(client, make_user, settings):
    settings.LOGIN_RATE_LIMIT_PER_MINUTE = 3
    make_user("victim@example.com")
    codes = [
        client.post(
            "/accounts/login/", {"username": "victim@example.com", "password": "nope"}
        ).status_code
        for _ in range(5)
    ]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]


def test_purchase_is_rate_limited(api, settings):
    settings.PURCHASE_RATE_LIMIT_PER_MINUTE = 2
    codes = [
        api.post(
            "/api/v1/coding-plans/purchases",
            {"plan_id": "minimax-token-plan-plus"},
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY=f"k{i}",
        ).status_code
        for i in range(3)
    ]
    assert codes[2] == 429


def test_unknown_api_path_gets_json_404(api, client):
    r = api.get("/api/v1/coding-plans/subscriptions/abc/quota")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert client.get("/no-such-page/").status_code == 404


@pytest.mark.parametrize(
    "text", ["20.0000000000000000000000000001", "1_000", "1e3", "nan", "", ".5", "1.1234567"]
)
def test_usd_parser_refuses_what_it_cannot_represent_exactly(text):
    from codingplans.money import InvalidAmount, usd_to_micros

    with pytest.raises(InvalidAmount):
        usd_to_micros(text)


def test_wrong_method_on_an_api_route_keeps_the_envelope(api):
    r = api.put("/api/v1/credits")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed" and "GET" in r["Allow"]


_PRINT_SETTINGS = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({name: getattr(s, name, None) for name in ("
    "'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE', 'CSRF_TRUSTED_ORIGINS', "
    "'SECURE_PROXY_SSL_HEADER')}))"
)


def _production_settings(**extra: str) -> dict:
    """The cookie and proxy settings a production process (DEBUG off) reads from `extra`."""
    import json

    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "SESSION_COOKIE_SECURE",
            "CSRF_COOKIE_SECURE",
            "CSRF_TRUSTED_ORIGINS",
            "SECURE_PROXY_SSL_HEADER",
        }
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "codingplans.settings",
            "DEBUG": "0",
            "SECRET_KEY": "s" * 60,
            "CODING_PLANS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "CODING_PLANS_FINGERPRINT_KEY": "fingerprint-key",
            "ALLOWED_HOSTS": "plans.example.com",
            "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://localhost/x"),
            **extra,
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", _PRINT_SETTINGS],
        env=env,
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_cookies_are_secure_only_and_no_proxy_header_is_trusted_by_default():
    # Over plain HTTP a browser then never sends the CSRF cookie back: log-in answers 403.
    assert _production_settings() == {
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "CSRF_TRUSTED_ORIGINS": [],
        "SECURE_PROXY_SSL_HEADER": None,
    }


def test_cookie_security_trusted_origins_and_proxy_header_come_from_the_environment():
    assert _production_settings(
        SESSION_COOKIE_SECURE="0",
        CSRF_COOKIE_SECURE="false",
        CSRF_TRUSTED_ORIGINS="https://plans.example.com, https://admin.example.com",
        SECURE_PROXY_SSL_HEADER="1",
    ) == {
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "CSRF_TRUSTED_ORIGINS": ["https://plans.example.com", "https://admin.example.com"],
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
    }
