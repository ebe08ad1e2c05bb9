"""Inventory upload (SPEC I1–I5, 11.3) against the stand-in MiniMax server over real HTTP."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from codingplans import crypto
from inventory.errors import UnknownPlan
from inventory.models import Credential
from inventory.upload import upload_credentials
from tests.inventory.helpers import OTHER_PLAN, PLAN, assert_no_key, lines_for, new_keys

pytestmark = pytest.mark.django_db

# SPEC 11.3: the exact validation call.
VALIDATION_BODY = {
    "model": "MiniMax-M2",
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 1,
}


def upload(text: str, plan_id: str = PLAN, **kwargs):
    return upload_credentials(
        plan_id=plan_id, text=text, actor="system:test", now=timezone.now(), **kwargs
    )


def error_lines(report) -> list[int]:
    return [error["line"] for error in report.errors]


# --- storing -------------------------------------------------------------------------------------


def test_hundred_valid_lines_are_stored_available_and_encrypted_at_rest(standin):
    keys = new_keys(100)
    report = upload(lines_for(keys))

    assert report.ok and report.stored == 100 and report.errors == []
    assert report.as_json() == {"stored": 100, "errors": []}
    rows = list(Credential.objects.order_by("id"))
    assert len(rows) == 100
    # SPEC I3: only a success makes it available; I4: the first state is `available`.
    assert {row.state for row in rows} == {Credential.State.AVAILABLE}
    assert {row.plan_id for row in rows} == {PLAN}
    assert sorted(row.upstream_plan_id for row in rows) == sorted(
        f"mm-plan-{i}" for i in range(1, 101)
    )
    # SPEC I5: the column holds ciphertext, never the key; it decrypts to exactly the key.
    with connection.cursor() as cursor:
        cursor.execute("SELECT encrypted_key FROM inventory_credential ORDER BY id")
        columns = [value for (value,) in cursor.fetchall()]
    by_fingerprint = {crypto.fingerprint(key): key for key in keys}
    for row, column in zip(rows, columns, strict=True):
        key = by_fingerprint[row.fingerprint]
        assert column and column != key and key not in column
        assert crypto.decrypt(column) == key
    # One validation call per key (SPEC I3).
    assert len(standin.state.calls("/v1/chat/completions")) == 100
    assert_no_key(keys, report.as_json(), report.message, [repr(r) + str(r) for r in rows])


def test_fingerprint_is_a_keyed_hmac_over_the_api_key_alone(settings):
    (key,) = new_keys(1)
    assert upload(f"{key}::mm-upstream-a").ok
    row = Credential.objects.get()

    # SPEC I2: keyed HMAC-SHA256 of the API key alone — not the line, not the upstream id.
    assert row.fingerprint == crypto.fingerprint(key)
    assert len(row.fingerprint) == 64
    assert row.fingerprint != hashlib.sha256(key.encode()).hexdigest()  # keyed, not a bare hash
    assert row.fingerprint != crypto.fingerprint(f"{key}::mm-upstream-a")
    settings.CODING_PLANS_FINGERPRINT_KEY = "another-fingerprint-secret"
    assert crypto.fingerprint(key) != row.fingerprint  # depends on the secret


def test_blank_lines_are_ignored_and_surrounding_whitespace_trimmed(standin):
    a, b = new_keys(2)
    text = f"\n   \n  {a}::mm-a  \n\t\n {b} ::  mm-b\t\r\n\n"
    report = upload(text)

    # SPEC I1: blank lines ignored; surrounding whitespace trimmed (key and upstream id).
    assert report.ok and report.stored == 2
    stored = {crypto.decrypt(c.encrypted_key): c.upstream_plan_id for c in Credential.objects.all()}
    assert stored == {a: "mm-a", b: "mm-b"}
    sent = {call["headers"]["authorization"] for call in standin.state.calls()}
    assert sent == {f"Bearer {a}", f"Bearer {b}"}


def test_each_validation_call_is_the_spec_minimal_completion(standin):
    keys = new_keys(3)
    assert upload(lines_for(keys)).ok

    calls = standin.state.calls()
    assert len(calls) == 3  # one call per key (SPEC I3)
    for call in calls:
        # SPEC 11.3: POST /v1/chat/completions, Bearer key, exactly this body.
        assert call["method"] == "POST" and call["path"] == "/v1/chat/completions"
        assert call["body"] == VALIDATION_BODY
    assert sorted(call["headers"]["authorization"] for call in calls) == sorted(
        f"Bearer {key}" for key in keys
    )


# --- rejections: all or nothing (SPEC I2) -------------------------------------------------------


def test_one_invalid_key_among_a_hundred_rejects_the_whole_upload(standin):
    keys = new_keys(100)
    keys[56] = "invalid-key-0057-abcdef"  # line 57; the stand-in rejects `invalid…` with 401
    report = upload(lines_for(keys))

    assert not report.ok and report.stored == 0
    assert error_lines(report) == [57]
    assert "rejected" in report.errors[0]["reason"]
    assert report.message
    assert Credential.objects.count() == 0
    assert_no_key(keys, report.as_json(), report.message)


def test_keys_outside_the_accepted_list_are_reported_by_line(standin):
    keys = new_keys(10)
    standin.state.configure({"accepted_keys": [k for i, k in enumerate(keys) if i not in (2, 7)]})
    report = upload(lines_for(keys))

    assert error_lines(report) == [3, 8] and report.stored == 0
    assert Credential.objects.count() == 0
    assert_no_key(keys, report.as_json(), report.message)


@pytest.mark.parametrize("failure", ["500", "401", "403", "429", "malformed", "redirect"])
def test_a_key_that_fails_validation_in_any_way_rejects_the_upload(standin, failure):
    keys = new_keys(5)
    standin.state.configure({"key_failures": {keys[3]: failure}})
    report = upload(lines_for(keys))

    # SPEC I3: only a success makes a key available; anything else rejects the whole upload.
    assert error_lines(report) == [4] and report.stored == 0
    assert Credential.objects.count() == 0
    assert_no_key(keys, report.as_json(), report.message)


def test_malformed_lines_are_reported_by_line_number_and_nothing_is_checked(standin):
    good = new_keys(3)
    text = "\n".join(
        [
            f"{good[0]}::mm-1",  # 1 ok
            "sk-no-separator-at-all-000",  # 2 no "::"
            "::mm-empty-key",  # 3 empty key
            "",  # 4 blank: ignored, not an error
            f"{good[1]}::",  # 5 empty upstream id
            f"{good[2]}::   ",  # 6 upstream id only whitespace
            "sk-has space inside::mm-7",  # 7 key is not one token
        ]
    )
    report = upload(text)

    assert error_lines(report) == [2, 3, 5, 6, 7]
    assert all(error["reason"].startswith("malformed") for error in report.errors)
    assert report.stored == 0 and Credential.objects.count() == 0
    # A malformed file is refused before any key leaves for MiniMax.
    assert standin.state.calls() == []
    assert_no_key([*good, "sk-no-separator-at-all-000"], report.as_json(), report.message)


def test_duplicate_within_the_file_names_the_later_line(standin):
    a, b = new_keys(2)
    report = upload(f"{a}::mm-1\n{b}::mm-2\n\n{a}::mm-1\n")

    assert error_lines(report) == [4]
    assert "line 1" in report.errors[0]["reason"]
    assert Credential.objects.count() == 0
    assert_no_key([a, b], report.as_json(), report.message)


def test_same_key_with_another_upstream_plan_id_is_a_duplicate():
    (a,) = new_keys(1)
    # SPEC I1: the fingerprint covers the API key alone.
    report = upload(f"{a}::mm-first\n{a}::mm-second")
    assert error_lines(report) == [2] and Credential.objects.count() == 0

    assert upload(f"{a}::mm-first").ok
    again = upload(f"{a}::mm-second")
    assert error_lines(again) == [1] and again.stored == 0
    assert Credential.objects.count() == 1


@pytest.mark.parametrize("state", [s.value for s in Credential.State])
def test_a_key_ever_stored_is_rejected_whatever_its_state(state, standin):
    old, fresh = new_keys(2)
    assert upload(f"{old}::mm-old").ok
    fields = {"state": state}
    if state in ("revocation_pending", "revoked", "revocation_failed"):
        fields["encrypted_key"] = ""  # SPEC I5: erased on the way to revocation
    Credential.objects.update(**fields)

    report = upload(f"{fresh}::mm-new\n{old}::mm-old", plan_id=OTHER_PLAN)

    # SPEC I2: "duplicate ... of any credential ever stored" — any state, any plan.
    assert error_lines(report) == [2] and report.stored == 0
    assert "already stored" in report.errors[0]["reason"]
    assert Credential.objects.count() == 1
    assert_no_key([old, fresh], report.as_json(), report.message)


def test_every_problem_in_a_file_is_reported_together_sorted_by_line(standin):
    stored, a, b = new_keys(3)
    assert upload(f"{stored}::mm-0").ok
    report = upload(f"{a}::mm-1\nbroken-line\n{stored}::mm-2\n{a}::mm-3\n{b}::mm-4")

    assert error_lines(report) == [2, 3, 4]
    assert Credential.objects.count() == 1


def test_unknown_plan_is_an_error_and_stores_nothing(standin):
    keys = new_keys(2)
    for plan_id in ("minimax-token-plan-nope", "", None, PLAN.upper()):
        with pytest.raises(UnknownPlan) as caught:
            upload(lines_for(keys), plan_id=plan_id)
        assert caught.value.code == "plan_not_found"
        assert_no_key(keys, str(caught.value))
    assert Credential.objects.count() == 0 and standin.state.calls() == []


def test_an_upload_without_credentials_stores_nothing_and_says_so(standin):
    report = upload("\n   \n\t\n")
    assert not report.ok and report.stored == 0 and report.message
    assert standin.state.calls() == []


# --- timeouts and bounded concurrency (SPEC I3) -------------------------------------------------


def test_minimax_timing_out_stores_nothing_with_a_clear_message_in_bounded_time(standin, settings):
    settings.MINIMAX_TIMEOUT_SECONDS = 1
    standin.state.configure({"failure": "timeout", "timeout_sleep_s": 3})
    keys = new_keys(50)

    started = time.monotonic()
    report = upload(lines_for(keys))
    elapsed = time.monotonic() - started

    assert report.stored == 0 and Credential.objects.count() == 0
    assert "MiniMax" in report.message and "in time" in report.message
    assert report.errors and all("in time" in e["reason"] for e in report.errors)
    # Each call gives up after the 1 s timeout, not the stand-in's 3 s; and once MiniMax is
    # known to be unreachable the rest are not tried (50 keys would otherwise take 5 rounds).
    assert elapsed < 2.0, f"took {elapsed:.2f}s"
    assert len(standin.state.calls()) <= 10
    assert_no_key(keys, report.as_json(), report.message)


def test_validation_runs_at_most_the_given_concurrency_at_once(standin):
    standin.state.configure({"latency_ms": 200})
    keys = new_keys(30)

    started = time.monotonic()
    report = upload(lines_for(keys), concurrency=10)
    elapsed = time.monotonic() - started

    assert report.ok and report.stored == 30
    # 30 keys, 200 ms each, 10 at a time: three rounds of ~0.2 s.
    assert 0.55 <= elapsed <= 2.0, f"took {elapsed:.2f}s"
    assert 2 <= standin.state.max_in_flight <= 10


def test_default_validation_concurrency_is_ten(standin):
    standin.state.configure({"latency_ms": 150})
    keys = new_keys(25)

    started = time.monotonic()
    assert upload(lines_for(keys)).ok
    elapsed = time.monotonic() - started

    # SPEC I3: default 10 — three rounds for 25 keys, never more than ten at once.
    assert elapsed >= 0.4, f"took {elapsed:.2f}s"
    assert 2 <= standin.state.max_in_flight <= 10


# --- concurrent uploads -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_uploads_of_one_key_store_it_once(standin):
    # Both pass the "already stored" check while the other is still validating (I2).
    standin.state.configure({"latency_ms": 300})
    shared = new_keys(1)[0]
    files = [[*new_keys(3), shared], [*new_keys(2), shared]]
    reports: list = [None, None]
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            barrier.wait()
            reports[i] = upload(lines_for(files[i]))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    winners = [r for r in reports if r.ok]
    losers = [r for r in reports if not r.ok]
    assert len(winners) == 1 and len(losers) == 1
    loser_index = reports.index(losers[0])
    # The loser stores nothing and names the clashing line (the shared key is last in each file).
    assert losers[0].stored == 0 and error_lines(losers[0]) == [len(files[loser_index])]
    assert Credential.objects.count() == winners[0].stored == len(files[1 - loser_index])
    assert_no_key([shared, *files[0], *files[1]], losers[0].as_json(), losers[0].message)
