"""`revocation_queue [--json]` and `record_revocation ITEM_ID (--revoked | --failed NOTE)`
(SPEC 11.2, R1, R2)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from adminops.models import AuditEvent
from inventory.models import Credential
from tests.adminops.conftest import MAX, PLUS, credential_for

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_revocation_queue_json_oldest_first(queue_item, stock):
    newer = queue_item(PLUS, minutes_ago=5)
    older = queue_item(MAX, minutes_ago=50)
    stock(PLUS, 1)
    data = json.loads(run("revocation_queue", "--json"))
    assert [item["id"] for item in data["items"]] == [older.pk, newer.pk]
    first = data["items"][0]
    assert set(first) == {"id", "plan_id", "state", "upstream_plan_id", "requested_at", "attempts"}
    assert first["plan_id"] == MAX and first["state"] == "revocation_pending"
    assert first["upstream_plan_id"] == older.upstream_plan_id
    assert first["attempts"] == 0
    assert first["requested_at"].endswith("Z")
    assert first["requested_at"].startswith(
        older.revocation_requested_at.strftime("%Y-%m-%dT%H:%M:%S")
    )


def test_revocation_queue_text_and_empty(queue_item):
    assert json.loads(run("revocation_queue", "--json")) == {"items": []}
    assert "empty" in run("revocation_queue")
    item = queue_item(PLUS)
    out = run("revocation_queue")
    assert f"#{item.pk}" in out and item.upstream_plan_id in out


def test_record_revocation_failed_then_revoked(queue_item):
    item = queue_item(PLUS)
    out = run("record_revocation", str(item.pk), "--failed", "ticket 42: sk-abcdef1234567890abcd")
    assert "revocation_failed" in out and "attempt 1" in out
    item.refresh_from_db()
    assert item.failure_note == "ticket 42: [REDACTED]"
    data = json.loads(run("revocation_queue", "--json"))
    assert data["items"][0]["state"] == "revocation_failed" and data["items"][0]["attempts"] == 1
    run("record_revocation", str(item.pk), "--revoked")
    item.refresh_from_db()
    assert (item.state, item.revocation_attempts) == ("revoked", 2)
    assert json.loads(run("revocation_queue", "--json")) == {"items": []}
    assert AuditEvent.objects.filter(
        event_type="credential.revoked", actor="system:command"
    ).exists()


def test_record_revocation_failures_exit_non_zero(queue_item, stock):
    with pytest.raises(CommandError, match="There is no credential #999999"):
        run("record_revocation", "999999", "--revoked")
    with pytest.raises(CommandError, match="no credential"):
        run("record_revocation", "abc", "--revoked")
    (key,) = stock(PLUS, 1)
    available = credential_for(key)
    with pytest.raises(CommandError, match=r"is available.*\(invalid_state\)"):
        run("record_revocation", str(available.pk), "--revoked")
    item = queue_item(PLUS)
    with pytest.raises(CommandError, match="note_required"):
        run("record_revocation", str(item.pk), "--failed", "  ")
    run("record_revocation", str(item.pk), "--revoked")
    with pytest.raises(CommandError, match="revoked is final"):
        run("record_revocation", str(item.pk), "--failed", "late")
    assert Credential.objects.get(pk=item.pk).revocation_attempts == 1


def test_record_revocation_needs_exactly_one_outcome(queue_item):
    item = queue_item(PLUS)
    with pytest.raises(CommandError):
        run("record_revocation", str(item.pk))
    with pytest.raises(CommandError):
        run("record_revocation", str(item.pk), "--revoked", "--failed", "x")
