"""Operator commands (SPEC 11.2): `upload_inventory` and `inventory_report`.

Exit codes through `call_command` (a CommandError is a non-zero exit) and, for the stdin path and
the real exit status, as a subprocess `python manage.py ...` against this test's database.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from catalog import plan_ids
from codingplans import crypto
from inventory.models import Credential
from tests.inventory.helpers import OTHER_PLAN, PLAN, assert_no_key, lines_for, new_keys

pytestmark = pytest.mark.django_db

# SPEC 11.2 and H1: inventory_report counts `quarantined` too.
STATES = [
    "available",
    "assigned",
    "revocation_pending",
    "revoked",
    "revocation_failed",
    "quarantined",
]


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_failing(*args: str) -> tuple[str, CommandError]:
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue(), caught.value


@pytest.fixture
def upload_file(tmp_path):
    def write(text: str, name: str = "keys.txt", encoding: str = "utf-8"):
        path = tmp_path / name
        path.write_text(text, encoding=encoding)
        return str(path)

    return write


# --- upload_inventory via call_command ----------------------------------------------------------


def test_upload_json_prints_exactly_stored_and_errors(upload_file):
    keys = new_keys(3)
    out = run("upload_inventory", PLAN, upload_file(lines_for(keys)), "--json")

    # SPEC 11.2: exactly {"stored": n, "errors": [...]}, nothing else on stdout.
    assert json.loads(out) == {"stored": 3, "errors": []}
    assert Credential.objects.filter(plan_id=PLAN, state="available").count() == 3
    assert_no_key(keys, out)


def test_upload_text_prints_a_summary_without_keys(upload_file):
    keys = new_keys(2)
    out = run("upload_inventory", OTHER_PLAN, upload_file(lines_for(keys)))

    assert f"Stored 2 credential(s) for {OTHER_PLAN}" in out
    assert_no_key(keys, out)


def test_rejected_upload_exits_non_zero_lists_lines_and_stores_nothing(upload_file):
    keys = new_keys(4)
    keys[1] = "invalid-key-line-2-xyz"
    text = lines_for(keys) + "\nmalformed-line-without-separator"
    out, error = run_failing("upload_inventory", PLAN, upload_file(text), "--json")

    report = json.loads(out)
    assert report["stored"] == 0
    assert [e["line"] for e in report["errors"]] == [5]  # malformed lines stop it before MiniMax
    assert set(report["errors"][0]) == {"line", "reason"}
    assert "nothing stored" in str(error)
    assert Credential.objects.count() == 0
    assert_no_key([*keys, "malformed-line-without-separator"], out, str(error))

    out, error = run_failing("upload_inventory", PLAN, upload_file(lines_for(keys)), "--json")
    assert json.loads(out)["errors"][0]["line"] == 2 and json.loads(out)["stored"] == 0
    assert_no_key(keys, out, str(error))


def test_rejected_upload_in_text_mode_names_each_line(upload_file):
    a, b = new_keys(2)
    out, error = run_failing("upload_inventory", PLAN, upload_file(f"{a}::m1\n{b}::m2\n{a}::m3"))

    assert "line 3: duplicate of line 1" in out
    assert "Nothing was stored" in out
    assert_no_key([a, b], out, str(error))


def test_upload_of_a_duplicate_of_a_stored_key_fails(upload_file, stock):
    (key,) = stock(PLAN, 1)
    out, _ = run_failing("upload_inventory", PLAN, upload_file(f"{key}::another-id"), "--json")

    assert json.loads(out)["errors"][0]["line"] == 1
    assert Credential.objects.count() == 1
    assert_no_key([key], out)


def test_upload_with_no_credentials_fails_with_a_reason(upload_file):
    out, _ = run_failing("upload_inventory", PLAN, upload_file("\n \n"), "--json")
    report = json.loads(out)
    assert report["stored"] == 0 and report["errors"] and report["errors"][0]["reason"]


def test_unknown_plan_fails_clearly(upload_file):
    keys = new_keys(1)
    out, error = run_failing("upload_inventory", "no-such-plan", upload_file(lines_for(keys)))
    assert "Unknown plan id" in str(error)

    out, error = run_failing(
        "upload_inventory", "no-such-plan", upload_file(lines_for(keys)), "--json"
    )
    assert json.loads(out)["stored"] == 0 and json.loads(out)["errors"]
    assert_no_key(keys, out, str(error))


def test_unreadable_file_fails_clearly(tmp_path, upload_file):
    _, error = run_failing("upload_inventory", PLAN, str(tmp_path / "missing.txt"))
    assert "Cannot read" in str(error)

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("sk-\xe9\xe9\xe9-abcdefgh::mm-1\n".encode("latin-1"))
    _, error = run_failing("upload_inventory", PLAN, str(bad))
    assert "Cannot read" in str(error) and "\xe9" not in str(error)


def test_a_byte_order_mark_does_not_break_line_one(upload_file):
    keys = new_keys(2)
    out = run(
        "upload_inventory", PLAN, upload_file(lines_for(keys), encoding="utf-8-sig"), "--json"
    )
    assert json.loads(out) == {"stored": 2, "errors": []}
    assert {crypto.decrypt(c.encrypted_key) for c in Credential.objects.all()} == set(keys)


def test_dash_reads_the_file_from_stdin(monkeypatch):
    keys = new_keys(2)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n" + lines_for(keys) + "\n"))
    out = run("upload_inventory", PLAN, "-", "--json")
    assert json.loads(out) == {"stored": 2, "errors": []}


def test_timeout_makes_the_command_fail_with_a_clear_message(upload_file, standin, settings):
    settings.MINIMAX_TIMEOUT_SECONDS = 1
    standin.state.configure({"failure": "timeout", "timeout_sleep_s": 3})
    keys = new_keys(3)
    out, error = run_failing("upload_inventory", PLAN, upload_file(lines_for(keys)))

    assert "MiniMax could not be reached or did not answer in time" in out
    assert Credential.objects.count() == 0
    assert_no_key(keys, out, str(error))


# --- inventory_report ---------------------------------------------------------------------------


def test_report_json_has_every_catalog_plan_and_every_state_with_zeros():
    report = json.loads(run("inventory_report", "--json"))

    assert set(report) == {"plans"}
    assert set(report["plans"]) == set(plan_ids())
    # Issue 18, SPEC V2: BytePlus's plans too.
    assert {"byteplus-coding-plan-lite", "byteplus-coding-plan-pro"} <= set(report["plans"])
    for counts in report["plans"].values():
        assert counts == dict.fromkeys(STATES, 0)


def test_report_json_counts_per_plan_and_state(stock):
    stock(PLAN, 6)
    stock(OTHER_PLAN, 2)
    ids = list(Credential.objects.filter(plan_id=PLAN).order_by("id").values_list("id", flat=True))
    # States set directly: the report only counts what is there (SPEC 11.2, I4).
    Credential.objects.filter(id=ids[0]).update(state="assigned")
    Credential.objects.filter(id=ids[1]).update(state="revocation_pending", encrypted_key="")
    Credential.objects.filter(id__in=ids[2:4]).update(state="revoked", encrypted_key="")
    Credential.objects.filter(id=ids[4]).update(state="revocation_failed", encrypted_key="")

    plans = json.loads(run("inventory_report", "--json"))["plans"]

    assert plans[PLAN] == {
        "available": 1,
        "assigned": 1,
        "revocation_pending": 1,
        "revoked": 2,
        "revocation_failed": 1,
        "quarantined": 0,
    }
    assert plans[OTHER_PLAN] == {**dict.fromkeys(STATES, 0), "available": 2}
    assert plans["minimax-token-plan-ultra"] == dict.fromkeys(STATES, 0)


def test_report_text_lists_every_plan_and_state(stock):
    stock(PLAN, 2)
    out = run("inventory_report")
    lines = out.splitlines()
    for state in STATES:
        assert state in lines[0]
    for plan_id in plan_ids():
        assert any(line.startswith(plan_id) for line in lines[1:])
    plus = next(line for line in lines if line.startswith(PLAN))
    assert plus.split()[1:] == ["2", "0", "0", "0", "0", "0"]


# --- as real processes: exit status, stdout, stdin ----------------------------------------------


def manage(args: list[str], standin, stdin: str = "") -> subprocess.CompletedProcess:
    """`python manage.py ...` in a child process on this test's database and stand-in."""
    base = os.environ.get("DATABASE_URL")
    if not base:
        pytest.fail("DATABASE_URL is not set: run the tests through `make test`")
    url = urlparse(base)._replace(path="/" + settings.DATABASES["default"]["NAME"]).geturl()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MINIMAX_API_BASE_URL": standin.url,
        "MINIMAX_TIMEOUT_SECONDS": "2",
        "CELERY_TASK_ALWAYS_EAGER": "1",
    }
    env.pop("EMAIL_HOST", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=settings.BASE_DIR,
        timeout=120,
    )


@pytest.mark.django_db(transaction=True)
def test_subprocess_upload_from_stdin_exits_zero_and_prints_json(standin):
    keys = new_keys(4)
    done = manage(["upload_inventory", PLAN, "-", "--json"], standin, "\n" + lines_for(keys))

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"stored": 4, "errors": []}
    assert Credential.objects.filter(plan_id=PLAN, state="available").count() == 4
    assert {crypto.decrypt(c.encrypted_key) for c in Credential.objects.all()} == set(keys)
    assert_no_key(keys, done.stdout, done.stderr)

    report = manage(["inventory_report", "--json"], standin)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["plans"][PLAN] == {**dict.fromkeys(STATES, 0), "available": 4}


@pytest.mark.django_db(transaction=True)
def test_subprocess_rejected_upload_exits_non_zero_and_prints_no_key(standin):
    keys = new_keys(3)
    keys[2] = "invalid-subprocess-key-3"
    done = manage(["upload_inventory", PLAN, "-", "--json"], standin, lines_for(keys))

    assert done.returncode != 0
    report = json.loads(done.stdout)
    assert report["stored"] == 0 and [e["line"] for e in report["errors"]] == [3]
    assert "nothing stored" in done.stderr
    assert Credential.objects.count() == 0
    assert_no_key(keys, done.stdout, done.stderr)
