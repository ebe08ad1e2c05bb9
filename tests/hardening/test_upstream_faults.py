"""Upstream faults (issue 8, hardening 3; SPEC I2, I3, B1, Q2, S1): the stand-in MiniMax times out,
answers 500/401/403/429, redirects, sends malformed, oversized or trickling bodies, or echoes the
key back in its error text — during an upload, a key test and a quota read.

Covered elsewhere, and not repeated here:
- tests/upstream/test_client.py — every failure mode classified (`network`, `http`,
  `invalid_key`, `invalid_response`), bounded reads and timeouts, no key or provider text in
  any exception;
- tests/inventory/test_upload.py — the upload service rejects a whole file on 500, 401, 403,
  429, malformed and redirect answers and on timeouts, in bounded time;
- tests/byok/test_api.py::test_key_test_failure_shape and
  tests/byok/test_pages.py::test_test_failure_shows_our_message — the key test's
  `{"ok": false, "error": {code, message}}` for most modes;
- tests/subscriptions/test_quota.py — the quota's typed errors in the API, `/current` and on
  the detail page;
- tests/security/test_canary.py::test_upstream_failure_modes_leak_nothing — canary scan of
  customer responses and logs under every mode.

Here, the gaps: the admin upload (the production path: a background task) and the
`upload_inventory` command under *every* mode, the oversized and trickling answers and a
provider that echoes the key — nothing stored, the payload erased, a clear reason per line, no
key and no provider text in the status page, the stored report, audit events, command output
or logs; and the key test and quota under every mode, with the state unchanged and the page
still 200.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.core.management import CommandError, call_command

from adminops.models import AuditEvent
from byok.models import ByokKey
from inventory.models import Credential, InventoryUpload
from standins.minimax import FAILURE_MODES
from tests.hardening.conftest import PLUS

pytestmark = pytest.mark.django_db

PROVIDER_TEXT = "stand-in"  # every failure body of the stand-in says "(stand-in)"
ECHO = "echo"  # a provider that quotes the key back in its error message
MODES = [*sorted(FAILURE_MODES), ECHO]
KEYS = [f"sk-fault-upload-{i:06d}-secret" for i in range(3)]
UPLOAD_URL = "/admin/inventory/credential/upload/"


@pytest.fixture
def faulty(standin, settings):
    """Configure the stand-in to fail in `mode`, with timeouts short enough for a test."""

    def configure(mode: str, *, key: str | None = None) -> None:
        settings.MINIMAX_TIMEOUT_SECONDS = 0.3
        standin.state.configure({"timeout_sleep_s": 0.6, "trickle_interval_s": 0.05})
        if mode == ECHO:
            echoed = key or KEYS[0]
            body = {
                "error": {"message": f"invalid api key {echoed} (stand-in)"},
                "base_resp": {"status_code": 1004, "status_msg": f"key {echoed} (stand-in)"},
            }
            standin.state.configure({"response": {"status": 401, "body": body}})
        elif key is not None:
            standin.state.configure({"key_failures": {key: mode}})
        else:
            standin.state.configure({"failure": mode})

    return configure


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_clean(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{where} shows a key"
    assert PROVIDER_TEXT not in text.lower(), f"{where} shows the provider's text"


def log_text(caplog) -> str:
    return "\n".join(r.getMessage() + "\n" + (r.exc_text or "") for r in caplog.records)


# --- upload ------------------------------------------------------------------------------------


def _upload_through_admin(client, text: str, capture) -> tuple[InventoryUpload, str]:
    with capture(execute=True):  # the background task runs (eagerly) once the request commits
        response = client.post(UPLOAD_URL, {"plan_id": PLUS, "lines": text})
    assert response.status_code == 302, response.status_code
    page = client.get(response["Location"])
    assert page.status_code == 200
    upload = InventoryUpload.objects.latest("id")
    return upload, page.content.decode()


@pytest.mark.parametrize("mode", MODES)
def test_admin_upload_under_upstream_fault_stores_nothing_and_leaks_nothing(
    mode, world, faulty, logs, django_capture_on_commit_callbacks
):
    faulty(mode)
    credentials = Credential.objects.count()
    events = AuditEvent.objects.count()
    text = "\n".join(f"{key}::up-fault-{i}" for i, key in enumerate(KEYS, start=1))
    upload, page = _upload_through_admin(
        world.superuser.session(), text, django_capture_on_commit_callbacks
    )
    assert Credential.objects.count() == credentials  # I2: all or nothing
    assert upload.status == InventoryUpload.Status.REJECTED
    assert upload.stored_count == 0
    assert upload.encrypted_payload == ""  # the pasted keys are erased whatever happened
    # A clear reason: every failing line named with a MiniMax reason (or, when MiniMax could not
    # be reached, the lines left unchecked counted in the message).
    assert upload.errors, upload.message
    assert all("MiniMax" in e["reason"] for e in upload.errors)
    assert "Nothing was stored" in upload.message
    assert "Nothing was stored" in page or "nothing was stored" in page.lower()
    stored_report = json.dumps({"errors": upload.errors, "message": upload.message})
    assert_clean(stored_report, KEYS, "the stored report")
    assert_clean(page, KEYS, "the status page")
    audit = json.dumps(
        list(AuditEvent.objects.order_by("id")[events:].values("old_values", "new_values")),
        default=str,
    )
    assert_clean(audit, KEYS, "the audit events")
    assert_clean(log_text(logs), KEYS, "the logs")


def test_one_key_failing_rejects_the_whole_admin_upload(
    world, faulty, django_capture_on_commit_callbacks
):
    faulty("500", key=KEYS[1])
    text = "\n".join(f"{key}::up-fault-{i}" for i, key in enumerate(KEYS, start=1))
    upload, page = _upload_through_admin(
        world.superuser.session(), text, django_capture_on_commit_callbacks
    )
    assert upload.status == InventoryUpload.Status.REJECTED
    assert [e["line"] for e in upload.errors] == [2]
    assert not Credential.objects.filter(upstream_plan_id__startswith="up-fault-").exists()
    assert_clean(page, KEYS, "the status page")


@pytest.mark.parametrize("mode", MODES)
def test_upload_command_under_upstream_fault(mode, db, faulty, logs, tmp_path):
    faulty(mode)
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(f"{key}::up-cmd-{i}" for i, key in enumerate(KEYS, start=1)))
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("upload_inventory", PLUS, str(path), "--json", stdout=out, stderr=err)
    report = json.loads(out.getvalue())
    assert report["stored"] == 0 and report["errors"]
    assert Credential.objects.count() == 0
    for text, where in (
        (out.getvalue(), "stdout"),
        (err.getvalue(), "stderr"),
        (str(caught.value), "the error"),
        (log_text(logs), "the logs"),
    ):
        assert_clean(text, KEYS, where)


# --- key test ----------------------------------------------------------------------------------

KEY_TEST_CODES = {"invalid_key", "http", "invalid_response", "network"}


@pytest.mark.parametrize("mode", MODES)
def test_key_test_under_upstream_fault(mode, world, faulty, logs):
    owner = world.b
    secret = "sk-fault-own-key-000001-secret"
    response = owner.bearer().post(
        "/api/v1/byok",
        json.dumps({"provider_id": "minimax", "api_key": secret}),
        content_type="application/json",
    )
    assert response.status_code == 201
    key_id = response.json()["id"]
    before = list(ByokKey.objects.filter(pk=key_id).values())
    faulty(mode, key=secret)

    response = owner.bearer().post(f"/api/v1/byok/{key_id}/test")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is False
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] in KEY_TEST_CODES
    assert_clean(response.content.decode(), [secret], "the API answer")

    page = owner.session().post(f"/byok/{key_id}/test/", follow=True)
    assert page.status_code == 200
    assert "Key test failed" in page.content.decode()
    assert_clean(page.content.decode(), [secret], "the BYOK page")

    assert list(ByokKey.objects.filter(pk=key_id).values()) == before  # non-mutating (B1)
    assert_clean(log_text(logs), [secret], "the logs")


# --- quota -------------------------------------------------------------------------------------

QUOTA_CODES = {"network", "http", "invalid_response", "application", "subscription_inactive"}


@pytest.mark.parametrize("mode", MODES)
def test_quota_under_upstream_fault(mode, world, faulty, logs):
    from subscriptions.models import Subscription

    owner = world.a
    sub = owner.ids["subscription_id"]
    subscription = Subscription.objects.select_related("credential").get(pk=sub)
    from inventory.services import decrypted_key

    secret = decrypted_key(subscription.credential)
    faulty(mode, key=secret)
    before = list(Subscription.objects.filter(pk=sub).values())

    response = owner.bearer().get(f"/api/v1/coding-plans/subscriptions/{sub}/quota")
    assert response.status_code in (502, 409), response.status_code
    error = response.json()["error"]
    assert error["code"] in QUOTA_CODES
    assert (response.status_code == 409) == (error["code"] == "subscription_inactive")
    assert_clean(response.content.decode(), [secret], "the quota answer")

    current = owner.bearer().get("/api/v1/coding-plans/current")
    assert current.status_code == 200
    assert current.json()["subscriptions"][0]["quota_error"]["code"] in QUOTA_CODES
    assert_clean(current.content.decode(), [secret], "/current")

    page = owner.session().get(f"/subscriptions/coding-plans/{sub}/")
    assert page.status_code == 200  # Q2: never breaks the page
    assert_clean(page.content.decode(), [secret], "the detail page")

    after = list(Subscription.objects.filter(pk=sub).values())
    # SPEC H3: a 401/403 on the plan's own key flags the subscription's credential problem;
    # nothing else changes (the replacement runs after commit, not in this test's transaction).
    flagged = {"credential_problem_at", "credential_problem_staff_emailed_at", "updated_at"}
    assert (after[0]["credential_problem_at"] is not None) == (mode in ("401", "403", ECHO))
    assert [{k: v for k, v in row.items() if k not in flagged} for row in after] == [
        {k: v for k, v in row.items() if k not in flagged} for row in before
    ]
    assert_clean(log_text(logs), [secret], "the logs")
