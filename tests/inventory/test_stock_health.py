"""The daily re-validation of the stock (SPEC H1) and the staff's retire / re-test (H2), against
the stand-in MiniMax over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from adminops.models import AuditEvent
from codingplans import crypto
from inventory.errors import InvalidCredentialState, RetireNoteRequired
from inventory.health import run_stock_health
from inventory.models import Credential, StockHealthRun
from inventory.selectors import counts_by_plan
from inventory.services import claim_credential, retire_credential
from subscriptions.selectors import sold_out_plan_ids
from tests.inventory.helpers import PLAN, assert_no_key

ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


def _by_key(keys: list[str]) -> dict[str, Credential]:
    by_fp = {crypto.fingerprint(key): key for key in keys}
    return {by_fp[c.fingerprint]: c for c in Credential.objects.filter(fingerprint__in=by_fp)}


def _clear_requests(standin) -> None:
    with standin.state.lock:
        standin.state.requests.clear()


@pytest.mark.django_db
def test_run_over_200_quarantines_exactly_the_revoked_and_none_is_sold(
    stock, standin, settings, make_user
):
    # SPEC H1: a credential MiniMax rejects (401) moves to quarantined; the rest stay available.
    settings.CODING_PLANS_HEALTH_MAX_RPS = 2000  # the rate itself is measured below
    keys = stock(PLAN, 200)
    revoked = keys[5::20]
    assert len(revoked) == 10
    standin.state.revoke(*revoked)
    _clear_requests(standin)

    out = StringIO()
    call_command("check_stock_health", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"checked": 200, "quarantined": 10, "errors": 0}

    credentials = _by_key(keys)
    quarantined = {k for k, c in credentials.items() if c.state == Credential.State.QUARANTINED}
    assert quarantined == set(revoked)
    for key in revoked:
        assert credentials[key].quarantined_at is not None
        assert credentials[key].health_note  # shown to staff with time and reason
    assert len(standin.state.calls(CHAT)) == 200
    assert standin.state.max_in_flight <= 10

    # inventory_report counts them (SPEC 11.2, H1).
    out = StringIO()
    call_command("inventory_report", "--json", stdout=out)
    assert json.loads(out.getvalue())["plans"][PLAN]["quarantined"] == 10
    assert counts_by_plan()[PLAN]["available"] == 190

    # Never sold: claiming until the plan runs out hands out only the 190 healthy ones.
    user = make_user()
    claimed = []
    with transaction.atomic():
        while (got := claim_credential(plan_id=PLAN, user=user, now=timezone.now())) is not None:
            claimed.append(got.id)
    assert len(claimed) == 190
    assert not {credentials[k].pk for k in revoked} & set(claimed)
    assert PLAN in sold_out_plan_ids()  # quarantined stock is not stock

    events = AuditEvent.objects.filter(event_type="credential.quarantined")
    assert events.count() == 10
    assert_no_key(keys, list(events.values("old_values", "new_values")), out.getvalue())
    run = StockHealthRun.objects.get()
    assert run.finished_at is not None
    assert run.counts() == {"checked": 200, "quarantined": 10, "errors": 0}


@pytest.mark.django_db
def test_transient_failure_leaves_the_key_available_and_the_next_run_retries_it(
    stock, standin, settings
):
    settings.CODING_PLANS_HEALTH_MAX_RPS = 1000
    keys = stock(PLAN, 3)
    standin.state.configure({"key_failures": {keys[0]: "500", keys[1]: "timeout"}})
    standin.state.timeout_sleep_s = 3  # past the 2 s client timeout of the tests
    run = run_stock_health(now=timezone.now())
    assert run.counts() == {"checked": 3, "quarantined": 0, "errors": 2}
    assert {c.state for c in _by_key(keys).values()} == {Credential.State.AVAILABLE}

    # The next run (the next day) checks them again; healthy now, nothing quarantined.
    standin.state.reset()
    later = run_stock_health(now=timezone.now() + timedelta(seconds=1))
    assert later.pk != run.pk
    assert later.counts() == {"checked": 3, "quarantined": 0, "errors": 0}
    assert len(standin.state.calls(CHAT)) == 3


@pytest.mark.django_db
def test_rate_limit_holds(stock, standin, settings):
    # SPEC H1: never more than CODING_PLANS_HEALTH_MAX_RPS requests in any second, measured at
    # the stand-in.
    settings.CODING_PLANS_HEALTH_MAX_RPS = 5
    stock(PLAN, 16)
    _clear_requests(standin)
    started = time.monotonic()
    run = run_stock_health(now=timezone.now())
    elapsed = time.monotonic() - started
    assert run.counts()["checked"] == 16
    stamps = sorted(call["at"] for call in standin.state.calls(CHAT))
    assert len(stamps) == 16
    # Any 6 consecutive requests span at least a second (a few ms of arrival jitter allowed):
    # no one-second window holds more than 5.
    spans = [stamps[i + 5] - stamps[i] for i in range(len(stamps) - 5)]
    assert min(spans) >= 0.97, spans
    assert elapsed >= 15 / 5 - 0.05


@pytest.mark.django_db(transaction=True)
def test_a_run_killed_half_way_resumes_where_it_stopped(stock, standin):
    from tests.lifecycle.helpers import backends_on_this_database, other_backends_on_this_database
    from tests.servers import test_database_url

    keys = stock(PLAN, 60)
    revoked = [keys[2], keys[45]]
    standin.state.revoke(*revoked)
    _clear_requests(standin)
    env = dict(
        os.environ,
        DATABASE_URL=test_database_url(),
        DEBUG="1",
        PYTHONUNBUFFERED="1",
        MINIMAX_API_BASE_URL=standin.url,
        CODING_PLANS_HEALTH_MAX_RPS="20",
    )
    before = backends_on_this_database()  # sessions already here are not the child's
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(
            [sys.executable, "manage.py", "check_stock_health", "--json"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 60
            while len(standin.state.calls(CHAT)) < 20:
                assert child.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the child run made no progress"
                time.sleep(0.02)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(30)
        assert child.returncode == -signal.SIGKILL
        stderr.seek(0)
        assert b"Traceback" not in stderr.read()
    deadline = time.monotonic() + 30
    while other_backends_on_this_database(before):  # its advisory lock goes with its session
        assert time.monotonic() < deadline
        time.sleep(0.05)

    killed = StockHealthRun.objects.get()
    assert killed.finished_at is None
    done_before = killed.checked
    assert 0 < done_before < 60
    first_pass = len(standin.state.calls(CHAT))

    run = run_stock_health(now=timezone.now(), rps=1000)
    assert run.pk == killed.pk  # the same run, continued
    assert run.resumed == 1 and run.finished_at is not None
    assert run.checked == 60 and run.quarantined == 2
    # Only what was not recorded was checked again: at most the ≤ 10 calls in flight at the kill.
    second_pass = len(standin.state.calls(CHAT)) - first_pass
    assert second_pass == 60 - done_before
    assert first_pass + second_pass <= 60 + 10
    credentials = _by_key(keys)
    assert {k for k, c in credentials.items() if c.state == "quarantined"} == set(revoked)
    assert all(c.health_checked_at >= run.started_at for c in credentials.values())


@pytest.mark.django_db
def test_a_second_run_at_once_is_refused(stock, standin):
    from django.db import connections

    from inventory.errors import HealthRunInProgress
    from inventory.health import _ADVISORY_LOCK

    stock(PLAN, 1)
    # Another session holds the run's lock.
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_ADVISORY_LOCK])
        with pytest.raises(HealthRunInProgress):
            run_stock_health(now=timezone.now())
        with pytest.raises(Exception, match="health_run_in_progress"):
            call_command("check_stock_health")
    finally:
        other.close()


# --- staff actions (SPEC H2) ----------------------------------------------------------------


def _quarantine(stock, standin, n: int = 1) -> tuple[list[str], list[Credential]]:
    keys = stock(PLAN, n)
    standin.state.revoke(*keys)
    run_stock_health(now=timezone.now(), rps=1000)
    standin.state.restore(*keys)
    credentials = _by_key(keys)
    assert {c.state for c in credentials.values()} == {Credential.State.QUARANTINED}
    return keys, [credentials[k] for k in keys]


@pytest.mark.django_db
def test_staff_retire_available_and_quarantined_credentials(stock, standin):
    (key,) = stock(PLAN, 1)
    available = _by_key([key])[key]
    _, (quarantined,) = _quarantine(stock, standin)
    now = timezone.now()
    with pytest.raises(RetireNoteRequired):
        retire_credential(credential_id=available.pk, note="  ", actor="staff:1", now=now)
    for credential in (available, quarantined):
        retire_credential(
            credential_id=credential.pk,
            note=f"bad batch, see {key}",
            actor="staff:1",
            now=now,
        )
        credential.refresh_from_db()
        assert credential.state == Credential.State.REVOCATION_PENDING
        assert credential.encrypted_key == ""  # I5
        assert key not in credential.failure_note  # sanitized
        assert credential.revocation_requested_at == now
    events = AuditEvent.objects.filter(event_type="credential.retired")
    assert sorted(e.actor for e in events) == ["staff:1", "staff:1"]
    assert_no_key([key], list(events.values("old_values", "new_values")))
    # A sold credential is not the staff's to retire.
    user_credential = Credential.objects.filter(state="revocation_pending").first()
    with pytest.raises(InvalidCredentialState):
        retire_credential(credential_id=user_credential.pk, note="x", actor="staff:1", now=now)


@pytest.mark.django_db
def test_retest_returns_a_quarantined_credential_only_when_it_passes(stock, standin):
    from inventory.health import retest_credential

    keys, (credential,) = _quarantine(stock, standin)
    standin.state.revoke(*keys)
    verdict = retest_credential(credential_id=credential.pk, actor="staff:2", now=timezone.now())
    assert not verdict.ok
    credential.refresh_from_db()
    assert credential.state == Credential.State.QUARANTINED

    standin.state.restore(*keys)
    verdict = retest_credential(credential_id=credential.pk, actor="staff:2", now=timezone.now())
    assert verdict.ok
    credential.refresh_from_db()
    assert credential.state == Credential.State.AVAILABLE
    assert credential.quarantined_at is None
    types = list(
        AuditEvent.objects.filter(actor="staff:2")
        .order_by("id")
        .values_list("event_type", flat=True)
    )
    assert types == ["credential.retest_failed", "credential.returned_to_stock"]
    with pytest.raises(InvalidCredentialState):  # only a quarantined one is re-tested
        retest_credential(credential_id=credential.pk, actor="staff:2", now=timezone.now())


def test_standin_revokes_a_key_at_run_time_over_http(standin):
    key = "sk-revocable-0001"
    body = {"model": "MiniMax-M2", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.post(standin.url + CHAT, json=body, headers=headers).status_code == 200
    assert httpx.post(standin.url + "/_standin/revoke", json={"keys": [key]}).status_code == 200
    assert httpx.post(standin.url + CHAT, json=body, headers=headers).status_code == 401
    assert httpx.get(standin.url + "/v1/token_plan/remains", headers=headers).status_code == 401
    httpx.post(standin.url + "/_standin/revoke", json={"keys": [key], "revoked": False})
    assert httpx.post(standin.url + CHAT, json=body, headers=headers).status_code == 200
    assert httpx.post(standin.url + "/_standin/revoke", json={"keys": "x"}).status_code == 400
