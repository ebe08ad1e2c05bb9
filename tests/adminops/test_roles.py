"""Staff roles (SPEC S2, issue 7): each group reaches exactly its admin pages and actions, and
gets 403 everywhere else."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.utils import timezone

from accounts.models import User
from adminops.roles import AUDITORS, BILLING, INVENTORY_MANAGERS, SUPPORT
from inventory import upload_jobs
from inventory.models import Credential, InventoryUpload
from subscriptions.models import Subscription
from subscriptions.purchase import purchase_plan
from subscriptions.sweep import run_billing_sweep
from tests.adminops.conftest import PLUS, QUEUE_URL, UPLOAD_URL, record_url, status_url

pytestmark = pytest.mark.django_db

NO_ROLE = "staff without a group"
ROLES = (INVENTORY_MANAGERS, SUPPORT, AUDITORS, NO_ROLE)

EXPECTED_PERMISSIONS = {
    INVENTORY_MANAGERS: {
        "inventory.view_credential",
        "inventory.upload_credentials",
        "inventory.view_inventoryupload",
        "inventory.manage_stock_health",  # SPEC H2: retire and re-test
        "adminops.view_auditevent",
    },
    SUPPORT: {
        "subscriptions.view_subscription",
        "subscriptions.view_chargedterm",
        "accounts.view_user",
        "inventory.view_credential",
        "inventory.record_revocation",
        "subscriptions.terminate_subscription",
        "subscriptions.replace_credential",  # SPEC H3
        "inventory.manage_stock_health",  # SPEC H2
        "accounts.delete_account",
        "adminops.view_auditevent",
        # issue 16: card payments read-only (SPEC M5: refunds are the Billing role's)
        "payments.view_cardpayment",
        "payments.view_refund",
        "payments.view_stripecustomer",
        "payments.view_webhookevent",
        "billing.view_creditaccount",
        "billing.view_ledgerentry",
        "billing.view_topupattempt",
    },
    BILLING: {
        "payments.view_cardpayment",
        "payments.view_refund",
        "payments.view_stripecustomer",
        "payments.view_webhookevent",
        "billing.view_creditaccount",
        "billing.view_ledgerentry",
        "billing.view_topupattempt",
        "accounts.view_user",
        "subscriptions.view_subscription",
        "payments.refund_cardpayment",
        "billing.adjust_credits",
        "adminops.view_auditevent",
    },
}


def _names(permissions) -> set[str]:
    return {f"{p.content_type.app_label}.{p.codename}" for p in permissions}


def test_groups_hold_exactly_their_permissions():
    for name, expected in EXPECTED_PERMISSIONS.items():
        assert _names(Group.objects.get(name=name).permissions.all()) == expected, name
    auditors = _names(Group.objects.get(name=AUDITORS).permissions.all())
    every_view = _names(Permission.objects.filter(codename__startswith="view_"))
    assert auditors == every_view - {"sessions.view_session"}
    assert all(name.split(".")[1].startswith("view_") for name in auditors)  # no actions


@pytest.fixture
def world(make_user, stock, superuser):
    """One object of each kind the pages show."""
    now = timezone.now()
    buyer = make_user(credits_usd=100)
    stock(PLUS, 2)
    outcome = purchase_plan(user=buyer, plan_id=PLUS, idempotency_key="roles", now=now)
    subscription = Subscription.objects.get(pk=outcome.subscription_id)
    queued_buyer = make_user(credits_usd=100)
    queued = purchase_plan(user=queued_buyer, plan_id=PLUS, idempotency_key="roles-q", now=now)
    from subscriptions.actions import terminate_subscription

    terminate_subscription(subscription_id=queued.subscription_id, actor="staff:0", now=now)
    queued_credential = Subscription.objects.get(pk=queued.subscription_id).credential
    upload = upload_jobs.start_upload(
        plan_id=PLUS, text="sk-roles-0000001::u", user=superuser, now=now
    )
    run_billing_sweep(now=now, trigger="command")
    from adminops.models import AuditEvent
    from subscriptions.models import ChargedTerm, SweepRun

    return {
        "buyer": buyer,
        "subscription": subscription,
        "credential": subscription.credential,
        "queued": queued_credential,
        "upload": upload,
        "term": ChargedTerm.objects.filter(subscription=subscription).first(),
        "sweep": SweepRun.objects.first(),
        "event": AuditEvent.objects.first(),
    }


def pages(w) -> dict[str, str]:
    return {
        "credentials": "/admin/inventory/credential/",
        "credential": f"/admin/inventory/credential/{w['credential'].pk}/change/",
        "upload": UPLOAD_URL,
        "uploads": "/admin/inventory/inventoryupload/",
        "upload status": status_url(w["upload"].pk),
        "revocation queue": QUEUE_URL,
        "record revocation": record_url(w["queued"].pk),
        "subscriptions": "/admin/subscriptions/subscription/",
        "subscription": f"/admin/subscriptions/subscription/{w['subscription'].pk}/change/",
        "terminate": f"/admin/subscriptions/subscription/{w['subscription'].pk}/terminate/",
        "charged terms": "/admin/subscriptions/chargedterm/",
        "charged term": f"/admin/subscriptions/chargedterm/{w['term'].pk}/change/",
        "users": "/admin/accounts/user/",
        "user": f"/admin/accounts/user/{w['buyer'].pk}/change/",
        "delete account": f"/admin/accounts/user/{w['buyer'].pk}/delete-account/",
        "audit events": "/admin/adminops/auditevent/",
        "audit event": f"/admin/adminops/auditevent/{w['event'].pk}/change/",
        "sweep runs": "/admin/subscriptions/sweeprun/",
        "sweep run": f"/admin/subscriptions/sweeprun/{w['sweep'].pk}/change/",
        "ledger": "/admin/billing/ledgerentry/",
        "credit accounts": "/admin/billing/creditaccount/",
        "top-ups": "/admin/billing/topupattempt/",
        "byok entries": "/admin/byok/byokkey/",
        "api tokens": "/admin/accounts/apitoken/",
        "groups": "/admin/auth/group/",
    }


INVENTORY_PAGES = {"credentials", "credential", "upload", "uploads", "upload status"}
AUDIT_PAGES = {"audit events", "audit event"}
SUPPORT_PAGES = {
    "credentials",
    "credential",
    "revocation queue",
    "record revocation",
    "subscriptions",
    "subscription",
    "terminate",
    "charged terms",
    "charged term",
    "users",
    "user",
    "delete account",
    # issue 16: payments and the ledger, read-only (SPEC M5: refunds are the Billing role's)
    "ledger",
    "credit accounts",
    "top-ups",
}
ACTION_PAGES = {"upload", "revocation queue", "record revocation", "terminate", "delete account"}


def reachable(role: str, every_page: set[str]) -> set[str]:
    if role == INVENTORY_MANAGERS:
        return INVENTORY_PAGES | AUDIT_PAGES
    if role == SUPPORT:
        return SUPPORT_PAGES | AUDIT_PAGES
    if role == AUDITORS:  # everything there is to read, no action
        return every_page - ACTION_PAGES
    return set()


@pytest.fixture
def member(make_staff, client_for):
    def make(role: str):
        user = make_staff()
        if role != NO_ROLE:
            user.groups.add(Group.objects.get(name=role))
        user = User.objects.get(pk=user.pk)
        return user, client_for(user)

    return make


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_exactly_its_pages(role, world, member):
    _, client = member(role)
    urls = pages(world)
    allowed = reachable(role, set(urls))
    assert client.get("/admin/").status_code == 200
    results = {name: client.get(url).status_code for name, url in urls.items()}
    assert {name for name, code in results.items() if code == 200} == allowed, results
    assert {code for name, code in results.items() if name not in allowed} <= {403}, results


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_only_its_actions(role, world, member):
    _, client = member(role)
    home = client.get("/admin/").content.decode()
    subscription = world["subscription"]
    assert (UPLOAD_URL in home) == (role == INVENTORY_MANAGERS)
    assert (QUEUE_URL in home) == (role == SUPPORT)
    assert ('id="sweep-status"' in home) == (role == AUDITORS)
    if role in (SUPPORT, AUDITORS):
        listing = client.get("/admin/subscriptions/subscription/").content.decode()
        assert ('value="terminate_selected"' in listing) == (role == SUPPORT)
        detail = client.get(f"/admin/subscriptions/subscription/{subscription.pk}/change/")
        assert ("/terminate/" in detail.content.decode()) == (role == SUPPORT)
        assert "/admin/adminops/auditevent/?subject_type=" in detail.content.decode()
        users = client.get("/admin/accounts/user/").content.decode()
        assert ('value="delete_selected_account"' in users) == (role == SUPPORT)
        user = client.get(f"/admin/accounts/user/{world['buyer'].pk}/change/").content.decode()
        assert ("/delete-account/" in user) == (role == SUPPORT)
        assert 'name="_save"' not in user  # read-only for both
    if role in (INVENTORY_MANAGERS, SUPPORT, AUDITORS):
        credential = client.get(
            f"/admin/inventory/credential/{world['queued'].pk}/change/"
        ).content.decode()
        assert ("/record-revocation/" in credential) == (role == SUPPORT)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_performs_exactly_its_actions(
    role, world, member, django_capture_on_commit_callbacks
):
    _user, client = member(role)
    subscription, buyer, queued = world["subscription"], world["buyer"], world["queued"]
    uploads = InventoryUpload.objects.count()

    with django_capture_on_commit_callbacks(execute=True):
        upload = client.post(UPLOAD_URL, {"plan_id": PLUS, "lines": "sk-roles-action-01::u"})
    record = client.post(
        record_url(queued.pk), {"outcome": "revoked", "note": "", "confirm": "yes"}
    )
    terminate = client.post(
        f"/admin/subscriptions/subscription/{subscription.pk}/terminate/", {"confirm": "yes"}
    )
    delete = client.post(
        f"/admin/accounts/user/{buyer.pk}/delete-account/",
        {"confirm": "yes", "confirm_email": buyer.email},
    )
    edit_user = client.post(
        f"/admin/accounts/user/{buyer.pk}/change/", {"is_active": "", "full_name": "x"}
    )
    codes = {
        "upload": upload.status_code,
        "record": record.status_code,
        "terminate": terminate.status_code,
        "delete": delete.status_code,
        "edit user": edit_user.status_code,
    }
    performs = {
        INVENTORY_MANAGERS: {"upload"},
        SUPPORT: {"record", "terminate", "delete"},
    }.get(role, set())
    assert {name for name, code in codes.items() if code == 302} == performs, codes
    assert {code for name, code in codes.items() if name not in performs} == {403}, codes

    subscription.refresh_from_db()
    buyer.refresh_from_db()
    queued.refresh_from_db()
    assert (InventoryUpload.objects.count() > uploads) == ("upload" in performs)
    assert (queued.state == Credential.State.REVOKED) == ("record" in performs)
    assert (subscription.status == "canceled") == ("terminate" in performs)
    assert (buyer.deleted_at is not None) == ("delete" in performs)
    assert buyer.is_active == (buyer.deleted_at is None)
