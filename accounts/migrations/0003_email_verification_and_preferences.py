# Issue 19 (SPEC A2, E1): e-mail verification and the renewal-reminder preference.

from django.db import migrations, models
from django.db.models import F


def mark_existing_users_verified(apps, schema_editor):
    """Accounts that exist before verification was introduced are verified as of their sign-up:
    nobody who could buy yesterday is locked out today (SPEC A2)."""
    User = apps.get_model("accounts", "User")
    User.objects.filter(email_verified_at__isnull=True).update(email_verified_at=F("date_joined"))


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_user_delete_account_permission"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="email_verified_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="user",
            name="renewal_reminders",
            field=models.BooleanField(
                default=True,
                help_text="E-mail a reminder 3 days before a renewal the balance won't cover.",
            ),
        ),
        migrations.RunPython(mark_existing_users_verified, migrations.RunPython.noop),
    ]
