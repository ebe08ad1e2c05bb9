"""Staff roles, issue 16: the "Billing" group (refunds, adjustments: SPEC M5, M6) and Support's
read-only view of card payments (adminops/roles.py). Add-only, like 0002."""

from django.db import migrations

from adminops.roles import BILLING, ensure_permissions, sync_staff_roles


def create_roles(apps, schema_editor):
    using = schema_editor.connection.alias
    ensure_permissions(apps=apps, using=using)
    sync_staff_roles(apps=apps, using=using)


def remove_billing_role(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name=BILLING).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("adminops", "0002_staff_roles"),
        ("billing", "0004_top_up_by_card_refunds_adjustments"),
        ("payments", "0002_top_up_and_refunds"),
    ]

    operations = [migrations.RunPython(create_roles, remove_billing_role)]
