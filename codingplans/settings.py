"""Settings, all from the environment (SPEC S4).

Development (DEBUG true) generates missing secrets once and keeps them in the git-ignored data
folder, so `make dev` and `make test` need no set-up; production (DEBUG false) refuses to start
without them, so a deployment can never run on throw-away keys.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from celery.schedules import crontab
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("CODING_PLANS_DATA_DIR", BASE_DIR / ".local"))


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)


def _dev_secrets() -> dict[str, str]:
    """Secrets for development, generated once and kept in DATA_DIR/dev-secrets.json."""
    path = DATA_DIR / "dev-secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    wanted = {
        "SECRET_KEY": lambda: secrets.token_urlsafe(50),
        "CODING_PLANS_ENCRYPTION_KEYS": lambda: Fernet.generate_key().decode(),
        "CODING_PLANS_FINGERPRINT_KEY": lambda: secrets.token_urlsafe(32),
    }
    changed = False
    for name, make in wanted.items():
        if name not in stored:
            stored[name] = make()
            changed = True
    if changed:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
    return stored


def _secret(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if not DEBUG:
        raise ImproperlyConfigured(f"{name} must be set in the environment (DEBUG is off).")
    return _dev_secrets()[name]


SECRET_KEY = _secret("SECRET_KEY")
CODING_PLANS_ENCRYPTION_KEYS = [
    k.strip() for k in _secret("CODING_PLANS_ENCRYPTION_KEYS").split(",") if k.strip()
]
CODING_PLANS_FINGERPRINT_KEY = _secret("CODING_PLANS_FINGERPRINT_KEY")
for _key in CODING_PLANS_ENCRYPTION_KEYS:
    try:
        Fernet(_key)
    except Exception as exc:  # a malformed key must stop start-up, not the first encryption
        raise ImproperlyConfigured(
            "CODING_PLANS_ENCRYPTION_KEYS holds an invalid Fernet key."
        ) from exc

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")


def parse_database_url(url: str) -> dict[str, object]:
    """postgres://user:pass@host:port/name; a socket directory as a %2F-encoded host or ?host=."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ImproperlyConfigured("DATABASE_URL must be a PostgreSQL URL.")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    host = query.pop("host", None) or unquote(parsed.hostname or "")
    if parsed.netloc and "%2f" in parsed.netloc.lower():
        host = unquote(parsed.netloc.rsplit("@", 1)[-1])
    pool_size = int(os.environ.get("DATABASE_POOL_MAX_SIZE", "0") or 0)
    if pool_size > 0:
        # A psycopg pool per process (Django's OPTIONS["pool"]): what Django advises instead of
        # persistent connections under ASGI. Opening a connection per request cost the gateway
        # ≈4 ms of its added latency; a pooled one is handed back at request end.
        # Each connection is checked as it is handed out (codingplans.postgres): after a database
        # restart the pool's idle connections are all dead (issue 13).
        query["pool"] = {"min_size": min(2, pool_size), "max_size": pool_size, "timeout": 10}
    return {
        "ENGINE": "codingplans.postgres",  # Django's, with a pool check (issue 13)
        "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or "") if "%2f" not in parsed.netloc.lower() else "",
        "OPTIONS": query,
        "CONN_MAX_AGE": 0 if pool_size > 0 else int(os.environ.get("CONN_MAX_AGE", "0")),
        # After a database restart or failover every kept connection is dead, and each would
        # fail one request with AdminShutdown / OperationalError (issue 13). A persistent
        # connection (CONN_MAX_AGE > 0, no pool) is health-checked before a request reuses it;
        # with the pool, our backend checks each connection as it is handed out (Django's
        # pool check, which this flag would also turn on, backs off a second and more per dead
        # connection: see codingplans/postgres/base.py).
        "CONN_HEALTH_CHECKS": pool_size == 0 and env_bool("CONN_HEALTH_CHECKS", True),
        "TEST": {"NAME": os.environ.get("TEST_DATABASE_NAME") or None},
    }


_database_url = os.environ.get("DATABASE_URL", "")
if not _database_url:
    if not DEBUG:
        raise ImproperlyConfigured("DATABASE_URL must be set (DEBUG is off).")
    _database_url = "postgres://postgres@localhost/codingplans"
DATABASES = {"default": parse_database_url(_database_url)}

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "accounts",
    "billing",
    "byok",
    "inventory",
    "subscriptions",
    "upstream",
    "gateway",
    "adminops",
    "payments",
]

MIDDLEWARE = [
    "codingplans.middleware.GatewayFastPathMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "codingplans.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "codingplans.middleware.NotFoundMiddleware",
    "codingplans.middleware.SecurityHeadersMiddleware",
    "codingplans.middleware.ApiMethodNotAllowedMiddleware",
]

ROOT_URLCONF = "codingplans.urls"
WSGI_APPLICATION = "codingplans.wsgi.application"
ASGI_APPLICATION = "codingplans.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "codingplans.context_processors.flags",
            ],
        },
    },
]

AUTH_USER_MODEL = "accounts.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/subscriptions/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve from the source folders too, so development and tests need no collectstatic step.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Security. Production (DEBUG off) defaults to secure cookies and HSTS; TLS is usually ended at
# the load balancer, so the HTTPS redirect is opt-in (SECURE_SSL_REDIRECT=1) and the proxy's
# X-Forwarded-Proto is trusted only when SECURE_PROXY_SSL_HEADER=1.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0" if DEBUG else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Content-Security-Policy for every response (codingplans.middleware.SecurityHeadersMiddleware):
# our own scripts and styles only; inline style attributes are allowed for progress bars.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# Rate limits (per minute): log-in attempts per client address and e-mail, purchases per user.
LOGIN_RATE_LIMIT_PER_MINUTE = int(os.environ.get("LOGIN_RATE_LIMIT_PER_MINUTE", "10"))
PURCHASE_RATE_LIMIT_PER_MINUTE = int(os.environ.get("PURCHASE_RATE_LIMIT_PER_MINUTE", "60"))
# Key tests and key replacements on /byok and /api/v1/byok, together, per user per minute.
BYOK_KEY_RATE_LIMIT_PER_MINUTE = int(os.environ.get("BYOK_KEY_RATE_LIMIT_PER_MINUTE", "10"))
# Sign-up attempts (/accounts/signup/ form posts) per client address per hour.
SIGNUP_RATE_LIMIT_PER_HOUR = int(os.environ.get("SIGNUP_RATE_LIMIT_PER_HOUR", "20"))

# E-mail: SMTP when EMAIL_HOST is set, otherwise the console.
EMAIL_HOST = os.environ.get("EMAIL_HOST", "")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "codingplans.mail.StderrConsoleBackend"
)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Coding Plans <no-reply@localhost>")
# The site's address for links in e-mails sent without a request (receipts and reminders from
# the sweep and Celery; SPEC E1). Links sent from a page (verification, reset) use the request's.
CODING_PLANS_SITE_URL = os.environ.get("CODING_PLANS_SITE_URL", "http://127.0.0.1:8000").rstrip("/")
# SPEC A1/A2: password-reset, verification and e-mail-change links expire after this long.
PASSWORD_RESET_TIMEOUT = int(os.environ.get("PASSWORD_RESET_TIMEOUT", str(24 * 3600)))
# Requests that send a link, per hour: a reset per typed address and per client address, a
# verification resend or an e-mail change per account (issue 19).
PASSWORD_RESET_RATE_LIMIT_PER_HOUR = int(os.environ.get("PASSWORD_RESET_RATE_LIMIT_PER_HOUR", "5"))
PASSWORD_RESET_IP_RATE_LIMIT_PER_HOUR = int(
    os.environ.get("PASSWORD_RESET_IP_RATE_LIMIT_PER_HOUR", "20")
)
EMAIL_LINK_RATE_LIMIT_PER_HOUR = int(os.environ.get("EMAIL_LINK_RATE_LIMIT_PER_HOUR", "5"))

# Upstream and product flags.
MINIMAX_API_BASE_URL = os.environ.get("MINIMAX_API_BASE_URL", "https://api.minimax.io").rstrip("/")
MINIMAX_TIMEOUT_SECONDS = float(os.environ.get("MINIMAX_TIMEOUT_SECONDS", "10"))
# BytePlus Coding Plan (SPEC 11.4): its OpenAI-compatible API and the model a key check asks for.
BYTEPLUS_API_BASE_URL = os.environ.get(
    "BYTEPLUS_API_BASE_URL", "https://ark.ap-southeast.bytepluses.com/api/coding/v3"
).rstrip("/")
BYTEPLUS_TIMEOUT_SECONDS = float(os.environ.get("BYTEPLUS_TIMEOUT_SECONDS", "10"))
BYTEPLUS_VALIDATION_MODEL = os.environ.get("BYTEPLUS_VALIDATION_MODEL", "ark-code-latest")
GATEWAY_TIMEOUT_SECONDS = float(os.environ.get("GATEWAY_TIMEOUT_SECONDS", "60"))
GATEWAY_RATE_LIMIT_PER_MINUTE = int(os.environ.get("GATEWAY_RATE_LIMIT_PER_MINUTE", "600"))
# One user's gateway calls per minute across all of their API tokens (and their session).
GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE = int(
    os.environ.get("GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE", "1200")
)
CODING_PLANS_PURCHASE_ENABLED = env_bool("CODING_PLANS_PURCHASE_ENABLED", False)
# SPEC H1: the daily re-validation of the stock sends at most this many requests per second.
CODING_PLANS_HEALTH_MAX_RPS = float(os.environ.get("CODING_PLANS_HEALTH_MAX_RPS", "5"))
# Auto top-up processor (SPEC M7). Development (DEBUG on) defaults to `simulated-approve` so
# `make dev` and the tests work; production has no default: unset, auto top-up is unavailable
# (customers cannot turn it on and the sweep never starts an attempt). A simulated backend
# grants credits without any payment, so with DEBUG off it is refused unless explicitly allowed.
CODING_PLANS_TOP_UP_BACKEND = os.environ.get(
    "CODING_PLANS_TOP_UP_BACKEND", "simulated-approve" if DEBUG else ""
).strip()
CODING_PLANS_ALLOW_SIMULATED_PAYMENTS = env_bool("CODING_PLANS_ALLOW_SIMULATED_PAYMENTS", False)
_SIMULATED_TOP_UP_BACKENDS = {"simulated-approve", "simulated-decline"}
# `stripe` (SPEC M4): the saved card charged off-session, by the backend the payments app
# registers (payments/topup.py); it needs the STRIPE_* keys below (checked after them).
if CODING_PLANS_TOP_UP_BACKEND and CODING_PLANS_TOP_UP_BACKEND not in (
    _SIMULATED_TOP_UP_BACKENDS | {"stripe"}
):
    raise ImproperlyConfigured(
        "CODING_PLANS_TOP_UP_BACKEND must be unset, stripe, simulated-approve or simulated-decline."
    )
if (
    CODING_PLANS_TOP_UP_BACKEND in _SIMULATED_TOP_UP_BACKENDS
    and not DEBUG
    and not CODING_PLANS_ALLOW_SIMULATED_PAYMENTS
):
    raise ImproperlyConfigured(
        f"CODING_PLANS_TOP_UP_BACKEND={CODING_PLANS_TOP_UP_BACKEND} is a simulated payment "
        "backend (top-ups without any real payment) and DEBUG is off: refusing to start. Unset "
        "it (auto top-up then unavailable), or set CODING_PLANS_ALLOW_SIMULATED_PAYMENTS=1 for "
        "a staging deployment that may hand out free credits (SPEC M7)."
    )

# Stripe (SPEC M1-M3, M7, M8; docs/payments.md). Card payments are available exactly when the
# three keys are set, whatever the top-up backend: `make dev` / `make test` set them for the
# embedded localstripe (codingplans/devenv.py); a deployment without them says card payments
# are unavailable (409 payments_unavailable). The `stripe` top-up backend needs them in
# production.
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "").strip()
STRIPE_PUBLISHABLE_KEY = os.environ.get("STRIPE_PUBLISHABLE_KEY", "").strip()
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "").strip()
STRIPE_API_BASE = (
    os.environ.get("STRIPE_API_BASE", "").strip() or "https://api.stripe.com"
).rstrip("/")
STRIPE_JS_URL = os.environ.get("STRIPE_JS_URL", "").strip() or "https://js.stripe.com/v3/"
STRIPE_TIMEOUT_SECONDS = float(os.environ.get("STRIPE_TIMEOUT_SECONDS", "20"))
if CODING_PLANS_TOP_UP_BACKEND == "stripe" and not DEBUG:
    _missing_stripe = [
        name
        for name, value in (
            ("STRIPE_SECRET_KEY", STRIPE_SECRET_KEY),
            ("STRIPE_PUBLISHABLE_KEY", STRIPE_PUBLISHABLE_KEY),
            ("STRIPE_WEBHOOK_SECRET", STRIPE_WEBHOOK_SECRET),
        )
        if not value
    ]
    if _missing_stripe:  # SPEC M7, S4: names the missing settings, never a value
        raise ImproperlyConfigured(
            "CODING_PLANS_TOP_UP_BACKEND=stripe needs "
            + ", ".join(_missing_stripe)
            + " (docs/payments.md); refusing to start."
        )
if STRIPE_SECRET_KEY and STRIPE_PUBLISHABLE_KEY:
    # Card entry is Stripe.js (SPEC M1): exactly the Stripe.js origin in use may run scripts and
    # frames, and the Stripe API origin may be fetched from the page (docs/payments.md).
    def _origin(url: str) -> str:
        parsed = urlparse(url)
        return f"{parsed.scheme}://{parsed.netloc}"

    _stripe_js = _origin(STRIPE_JS_URL)
    # Stripe's 3-D Secure pages are framed from hooks.stripe.com; localstripe needs no frame.
    _stripe_frames = " ".join(
        dict.fromkeys(
            [_stripe_js]
            + (["https://hooks.stripe.com"] if _stripe_js == "https://js.stripe.com" else [])
        )
    )
    CONTENT_SECURITY_POLICY = (
        CONTENT_SECURITY_POLICY.replace("script-src 'self'", f"script-src 'self' {_stripe_js}")
        .replace("connect-src 'self'", f"connect-src 'self' {_origin(STRIPE_API_BASE)}")
        .replace("frame-ancestors", f"frame-src {_stripe_frames}; frame-ancestors")
    )

# Celery: Redis broker; the hourly sweep is scheduled in code (SPEC L1).
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# Nothing reads a task's result (the sweep records its run in the database), and waiting for
# one made every `.delay()` subscribe to the Redis result backend, which, with Redis down, retries
# for 20 s before giving up. Queuing a task with the broker down fails within a couple of seconds
# (the callers log it and carry on), instead of Celery's 4 s connection timeout per retry.
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_TIMEOUT = 1
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "billing-sweep-hourly": {
        "task": "subscriptions.tasks.run_billing_sweep",
        "schedule": crontab(minute=0),
    },
    "inventory-purge-abandoned-uploads-hourly": {  # pasted keys are not kept past 24 h
        "task": "inventory.tasks.purge_abandoned_uploads",
        "schedule": crontab(minute=30),
    },
    "inventory-report-daily": {  # SPEC O3: 12:00 UTC (CELERY_TIMEZONE)
        "task": "inventory.tasks.send_daily_inventory_report",
        "schedule": crontab(hour=12, minute=0),
    },
    "stock-health-daily": {  # SPEC H1: re-validate the available stock
        "task": "inventory.tasks.check_stock_health",
        "schedule": crontab(hour=3, minute=15),
    },
    "credential-problems-hourly": {  # SPEC H3, H4: retry replacements, service credits
        "task": "subscriptions.tasks.review_credential_problems",
        "schedule": crontab(minute=45),
    },
    "pending-refunds-hourly": {  # SPEC M5: a lost webhook, a refund Stripe never got
        "task": "payments.tasks.sync_pending_refunds",
        "schedule": crontab(minute=20),
    },
}

CACHES = {
    "default": {
        # Django's Redis cache, with one connection pool per process also under ASGI.
        "BACKEND": "codingplans.cache.SharedPoolRedisCache",
        "LOCATION": REDIS_URL,
        # Its users (rate limits, quota) fail open when Redis is down (codingplans.outages);
        # short timeouts make that cost a request a fraction of a second, not a hang.
        "OPTIONS": {
            "socket_connect_timeout": float(os.environ.get("REDIS_CONNECT_TIMEOUT", "0.5")),
            "socket_timeout": float(os.environ.get("REDIS_SOCKET_TIMEOUT", "1")),
        },
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "codingplans.redaction.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["redact_secrets"],
            "formatter": "plain",
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # The SDK logs every request's URL at INFO; our own code logs what matters (S1).
        "stripe": {"level": "WARNING"},
    },
}

# Redact key-shaped strings in every log record, whatever handler (or test capture) sees it.
from codingplans.redaction import install_record_factory  # noqa: E402

install_record_factory()

# Providers (SPEC V1): their names, as customers read them (SPEC C2), and the module that speaks
# each one's API (`upstream.providers.registry`). A provider's keys can be kept in BYOK (B1) and
# routed by the gateway (G1, V4); the catalog below names the provider of each plan.
PROVIDERS = {"minimax": "MiniMax", "byteplus": "BytePlus"}
CODING_PLANS_PROVIDER_MODULES = {
    "minimax": "upstream.providers.minimax",
    "byteplus": "upstream.providers.byteplus",
}

# Catalog (SPEC C1): reviewed code, not the database or the admin. Prices in microdollars.
CODING_PLANS_CATALOG = [
    {
        "plan_id": "minimax-token-plan-plus",
        "provider_id": "minimax",
        "name": "Token Plan Plus",
        "price_micros": 20_000_000,
        "billing_period_days": 30,
        "features": ["MiniMax-M2 for everyday coding", "5-hour rolling quota", "Weekly quota"],
        "low_stock_threshold": 5,
    },
    {
        "plan_id": "minimax-token-plan-max",
        "provider_id": "minimax",
        "name": "Token Plan Max",
        "price_micros": 50_000_000,
        "billing_period_days": 30,
        "features": ["Everything in Plus", "About 3x the Plus quota", "Priority capacity"],
        "low_stock_threshold": 5,
    },
    {
        "plan_id": "minimax-token-plan-ultra",
        "provider_id": "minimax",
        "name": "Token Plan Ultra",
        "price_micros": 120_000_000,
        "billing_period_days": 30,
        "features": ["Everything in Max", "About 8x the Plus quota", "For heavy agent workloads"],
        "low_stock_threshold": 3,
    },
    # SPEC V2: BytePlus Coding Plan.
    {
        "plan_id": "byteplus-coding-plan-lite",
        "provider_id": "byteplus",
        "name": "Coding Plan Lite",
        "price_micros": 20_000_000,
        "billing_period_days": 30,
        "features": ["ark-code-latest for everyday coding", "OpenAI-compatible API"],
        "low_stock_threshold": 5,
    },
    {
        "plan_id": "byteplus-coding-plan-pro",
        "provider_id": "byteplus",
        "name": "Coding Plan Pro",
        "price_micros": 100_000_000,
        "billing_period_days": 30,
        "features": ["Everything in Lite", "About 5x the Lite capacity", "For heavy agent work"],
        "low_stock_threshold": 3,
    },
]
