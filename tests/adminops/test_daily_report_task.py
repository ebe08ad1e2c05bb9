"""The daily inventory report at 12:00 UTC from Celery beat (SPEC O3)."""

from __future__ import annotations

import pytest
from celery.schedules import crontab
from django.conf import settings
from django.core import mail
from django.utils import timezone

from accounts.models import User
from codingplans.celery import app as celery_app
from inventory.tasks import send_daily_inventory_report
from subscriptions.actions import terminate_subscription
from subscriptions.purchase import purchase_plan
from tests.adminops.conftest import MAX, PLUS, ULTRA

TASK = "inventory.tasks.send_daily_inventory_report"


def test_beat_runs_the_report_daily_at_noon_utc():
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == TASK]
    assert len(entries) == 1
    assert entries[0]["schedule"] == crontab(hour=12, minute=0)
    assert settings.CELERY_TIMEZONE == "UTC"
    assert celery_app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
    assert celery_app.conf.timezone == "UTC"
    assert TASK in celery_app.tasks  # the name beat sends resolves to the task


@pytest.mark.django_db
def test_the_task_sends_one_email_with_the_counts(make_user, stock):
    make_user("ops1@example.com", is_staff=True)
    make_user("ops2@example.com", is_staff=True)
    gone = make_user("gone@example.com", is_staff=True)
    User.objects.filter(pk=gone.pk).update(is_active=False)
    make_user("customer-only@example.com")
    stock(PLUS, 4)
    stock(MAX, 2)
    now = timezone.now()
    buyers = [make_user(credits_usd=100) for _ in range(2)]
    bought = [
        purchase_plan(user=buyer, plan_id=PLUS, idempotency_key=f"r{i}", now=now)
        for i, buyer in enumerate(buyers)
    ]
    terminate_subscription(subscription_id=bought[0].subscription_id, actor="staff:0", now=now)
    mail.outbox.clear()

    assert send_daily_inventory_report.delay().get() == 2

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert sorted(message.to) == ["ops1@example.com", "ops2@example.com"]
    assert message.subject == f"Coding Plans inventory report {timezone.now():%Y-%m-%d}"
    rows = {line.split()[0]: line.split()[1:] for line in message.body.splitlines() if line}
    # available, assigned, revocation_pending, revoked, revocation_failed, quarantined (H1)
    # (+ LOW flag)
    assert rows[PLUS][:6] == ["2", "1", "1", "0", "0", "0"] and rows[PLUS][6:] == ["LOW"]
    assert rows[MAX][:5] == ["2", "0", "0", "0", "0"]
    assert rows[ULTRA][:5] == ["0", "0", "0", "0", "0"]
    assert "Revocation backlog: 1 credential(s), oldest requested" in message.body
