"""Staff roles (SPEC S2, issue 7): three groups whose permissions decide which admin pages and
actions a staff member reaches. A staff member is `is_staff` plus membership of one group.

- Inventory managers: read the inventory, upload credentials, follow their uploads.
- Support: read subscriptions, users, credentials and charged terms; record revocation outcomes,
  terminate subscriptions, delete accounts.
- Auditors: view-only on everything, no actions.
- Billing (issue 16, SPEC M5, M6): read card payments, refunds, credit accounts and the ledger;
  refund card payments and adjust credits. Only this role (and superusers) moves money back.
  Support sees payments read-only.

`sync_staff_roles` creates the groups and adds missing permissions; it never removes one, so a
permission an operator adds by hand stays. It runs from the data migration and after every
`migrate` (and test database flush), which also gives Auditors the view permission of any model
added later.
"""

from __future__ import annotations

from django.apps import apps as global_apps
from django.db import DEFAULT_DB_ALIAS

INVENTORY_MANAGERS = "Inventory managers"
SUPPORT = "Support"
AUDITORS = "Auditors"
BILLING = "Billing"

# SPEC M9, M5: what Support and Billing read of card payments (read-only for Support).
_PAYMENTS_READ = (
    "payments.view_cardpayment",
    "payments.view_refund",
    "payments.view_stripecustomer",
    "payments.view_webhookevent",
    "billing.view_creditaccount",
    "billing.view_ledgerentry",
    "billing.view_topupattempt",
)

ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    INVENTORY_MANAGERS: (
        "inventory.view_credential",
        "inventory.upload_credentials",
        "inventory.view_inventoryupload",
        "inventory.manage_stock_health",
        "adminops.view_auditevent",
    ),
    SUPPORT: (
        "subscriptions.view_subscription",
        "subscriptions.view_chargedterm",
        "accounts.view_user",
        "inventory.view_credential",
        "inventory.record_revocation",
        "subscriptions.terminate_subscription",
        "subscriptions.replace_credential",
        "inventory.manage_stock_health",
        "accounts.delete_account",
        "adminops.view_auditevent",
        *_PAYMENTS_READ,
    ),
    BILLING: (
        *_PAYMENTS_READ,
        "accounts.view_user",
        "subscriptions.view_subscription",
        "payments.refund_cardpayment",
        "billing.adjust_credits",
        "adminops.view_auditevent",
    ),
}

# Auditors get every `view_*` permission except these (never shown in the admin, and a session
# row carries a live session key).
AUDITOR_EXCLUDED = frozenset({"sessions.view_session"})


def ensure_permissions(apps=global_apps, using: str = DEFAULT_DB_ALIAS) -> None:
    """Create content types and permissions now (Django otherwise creates them only after the
    last migration, too late for a data migration that hands them out)."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        # Migration state apps hold stubs without a models module, which create_permissions
        # would skip; any truthy value lets it read the models from `apps`.
        previous = getattr(app_config, "models_module", None)
        app_config.models_module = previous or True
        try:
            create_permissions(app_config, apps=apps, using=using, verbosity=0)
        finally:
            app_config.models_module = previous


def sync_staff_roles(apps=global_apps, using: str = DEFAULT_DB_ALIAS) -> None:
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permissions = Permission.objects.using(using).select_related("content_type")
    by_name = {f"{p.content_type.app_label}.{p.codename}": p for p in permissions}
    wanted = dict(ROLE_PERMISSIONS)
    wanted[AUDITORS] = tuple(
        sorted(
            name
            for name in by_name
            if name.split(".", 1)[1].startswith("view_") and name not in AUDITOR_EXCLUDED
        )
    )
    for group_name, names in wanted.items():
        group, _ = Group.objects.using(using).get_or_create(name=group_name)
        missing = [by_name[name] for name in names if name in by_name]
        if missing:
            group.permissions.add(*missing)


def on_post_migrate(sender, app_config=None, using: str = DEFAULT_DB_ALIAS, **kwargs) -> None:
    """After `migrate` or a flush: permissions may be new, or the groups may have been wiped."""
    apps = kwargs.get("apps") or global_apps
    try:
        apps.get_model("auth", "Group")
        apps.get_model("inventory", "Credential")
    except LookupError:  # a partial migration plan: nothing to hand out yet
        return
    ensure_permissions(apps=apps, using=using)
    sync_staff_roles(apps=apps, using=using)
