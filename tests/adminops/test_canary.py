"""Canary scan (SPEC I6, S1): plant key-shaped secrets everywhere an operator could look, then
open every admin page — lists, change pages, history, the upload form and status pages, the
revocation queue and its forms — and assert that no key, ciphertext, fingerprint, token or
password hash ever appears."""

from __future__ import annotations

import secrets

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, User
from accounts.tokens import create_api_token
from byok.models import ByokKey
from byok.services import add_key
from inventory import services, upload_jobs
from inventory.models import Credential, InventoryUpload
from subscriptions.actions import terminate_subscription
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep
from tests.adminops.conftest import MAX, PLUS, QUEUE_URL, UPLOAD_URL, record_url, status_url

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-admin-"


def canary(label: str) -> str:
    return f"{CANARY}{label}-{secrets.token_hex(10)}"


def _plant(operator, superuser, admin_upload, make_user) -> list[str]:
    now = timezone.now()
    keys = [canary(f"stock{i}") for i in range(3)]
    stored = admin_upload(
        operator, PLUS, "\n".join(f"{k}::up-canary-{i}" for i, k in enumerate(keys))
    )
    assert "Stored 3 credentials" in stored.content.decode()
    rejected_keys = [canary("dup"), f"invalid-{canary('bad')}"]
    rejected = admin_upload(
        operator,
        PLUS,
        f"{rejected_keys[0]}::up-r1\n{rejected_keys[1]}::up-r2\n{keys[0]}::up-r3\n",
    )
    assert "Rejected" in rejected.content.decode()
    rejected_live = admin_upload(operator, MAX, f"{rejected_keys[1]}::up-r4\n")
    assert "failed live validation" in rejected_live.content.decode()
    pending_key = canary("pending")
    upload_jobs.start_upload(plan_id=MAX, text=f"{pending_key}::up-p", user=superuser, now=now)

    alice = make_user(credits_usd=100)
    first = purchase_plan(user=alice, plan_id=PLUS, idempotency_key="canary-1", now=now)
    terminate_subscription(subscription_id=first.subscription_id, actor="staff:1", now=now)
    bob = make_user(credits_usd=100)
    purchase_plan(user=bob, plan_id=PLUS, idempotency_key="canary-2", now=now)
    own_key = canary("own")
    carol = make_user(credits_usd=5)
    add_key(user=carol, provider_id="minimax", api_key=own_key, now=now)
    token = create_api_token(user=carol, now=now).plaintext
    pending = Subscription.objects.get(pk=first.subscription_id).credential
    services.record_revocation_outcome(
        credential_id=pending.pk,
        outcome="revocation_failed",
        note=f"MiniMax echoed {canary('note')} back",
        actor="staff:1",
        now=now,
    )
    run_billing_sweep(now=now, trigger="command")

    derived = [
        *[c.encrypted_key for c in Credential.objects.exclude(encrypted_key="")],
        *Credential.objects.values_list("fingerprint", flat=True),
        *ByokKey.objects.values_list("encrypted_key", flat=True),
        *InventoryUpload.objects.exclude(encrypted_payload="").values_list(
            "encrypted_payload", flat=True
        ),
        *ApiToken.objects.values_list("token_hash", flat=True),
        *[u.password for u in User.objects.all()],
        *[u.password.rsplit("$", 1)[-1] for u in User.objects.all()],
    ]
    assert InventoryUpload.objects.exclude(encrypted_payload="").count() == 1  # the pending one
    assert ByokKey.objects.count() >= 2
    return [*keys, *rejected_keys, pending_key, own_key, token, *derived]


def _admin_urls() -> list[str]:
    urls = ["/admin/", UPLOAD_URL, QUEUE_URL]
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        urls.append(reverse("admin:app_list", args=[opts.app_label]))
        for pk in model._default_manager.values_list("pk", flat=True):
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk]))
            urls.append(reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[pk]))
        if model is User:
            for pk in User.objects.values_list("pk", flat=True):
                urls.append(reverse("admin:auth_user_password_change", args=[pk]))
        if model_admin.date_hierarchy or model_admin.list_filter:
            urls.append(
                reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist") + "?q=sk-canary"
            )
    for upload in InventoryUpload.objects.all():
        urls.append(status_url(upload.pk))
    for credential in Credential.objects.all():
        urls.append(record_url(credential.pk))
    # The operator actions' confirmation pages (L6, D1).
    for pk in Subscription.objects.values_list("pk", flat=True):
        urls.append(f"/admin/subscriptions/subscription/{pk}/terminate/")
    for pk in User.objects.values_list("pk", flat=True):
        urls.append(f"/admin/accounts/user/{pk}/delete-account/")
    for state in [s.value for s in Credential.State]:
        urls.append(f"/admin/inventory/credential/?state={state}")
    return sorted(set(urls))


def test_no_secret_on_any_admin_page(operator, superuser, admin_upload, make_user):
    forbidden = [s for s in _plant(operator, superuser, admin_upload, make_user) if s]

    pages = {url: operator.get(url, follow=True) for url in _admin_urls()}
    # The forms that take secrets as input, with errors and at the confirmation step.
    pages["upload form with errors"] = operator.post(
        UPLOAD_URL, {"plan_id": "nope", "lines": f"{forbidden[0]}::u"}
    )
    queued = Credential.objects.filter(
        state__in=["revocation_pending", "revocation_failed"]
    ).first()
    for outcome in ("revocation_failed", "revoked"):
        pages[f"confirm {outcome}"] = operator.post(
            record_url(queued.pk), {"outcome": outcome, "note": f"see {canary('confirm')}"}
        )
    pages["note missing"] = operator.post(record_url(queued.pk), {"outcome": "revocation_failed"})

    assert len(pages) > 60
    for url, page in pages.items():
        assert page.status_code == 200, url
        html = page.content.decode()
        assert CANARY not in html, url
        for secret in forbidden:
            assert secret not in html, (url, secret[:12])
