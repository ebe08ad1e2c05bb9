"""Staff roles: the groups "Inventory managers", "Support" and "Auditors" with their
permissions (adminops/roles.py). Re-applied, add-only, after every `migrate`."""

from django.db import migrations

from adminops.roles import AUDITORS, INVENTORY_MANAGERS, SUPPORT, ensure_permissions, sync_staff_roles


def create_roles(apps, schema_editor):
    using = schema_editor.connection.alias
    ensure_permissions(apps=apps, using=using)
    sync_staff_roles(apps=apps, using=using)


def remove_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(
        name__in=[INVENTORY_MANAGERS, SUPPORT, AUDITORS]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("adminops", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("accounts", "0002_user_delete_account_permission"),
        ("billing", "0002_topupattempt"),
        ("byok", "0002_byokkey_subscription"),
        ("gateway", "0001_initial"),
        ("inventory", "0002_lowstockalert"),
        ("subscriptions", "0002_sweeprun"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
