"""Hostile input (issue 8, hardening 2): property-based fuzzing of every API body and form.

Each API operation and each page form is fed wrong types, huge strings (100 KB), unicode (lone
surrogates, right-to-left marks, non-ASCII digits), NUL bytes, negative and huge amounts,
malformed idempotency keys (empty, 10 KB, NUL, unicode), malformed JSON, deep nesting and
arrays instead of objects. The assertions, for every example:
- never a 500 (the API also always answers in the error envelope);
- on any 4xx, no state change: the counts, sums and states of users, tokens, credit accounts,
  ledger entries, subscriptions, charged terms, BYOK entries, credentials, availability intents
  and purchase requests are exactly as before.
Upload lines of 1 MB go through the upload service, the `upload_inventory` command and the
admin upload form.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.hardening.conftest import MAX, PLUS, World, snapshot

pytestmark = pytest.mark.django_db

EXAMPLES = 15
FUZZ = hsettings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ_PATHS = hsettings(FUZZ, max_examples=10)  # several requests per example

HUGE = "x" * 100_000
NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "sk-valid-looking\x00-key-000001",
    HUGE,
    "ü" * 2000,
    "🙂" * 1000,
    "\u202eevil",
    "\ud800",  # a lone surrogate: valid JSON text (escaped), not valid UTF-8
    "-1",
    "-0.01",
    "0",
    "0.001",
    "1e999999999",
    "-1e999999999",
    "1e-999999999",
    "NaN",
    "sNaN",
    "Infinity",
    "99999999999999999999999999999",
    "20.001",
    "٢٠",  # Arabic-Indic digits
    "²",
    "0x10",
    "1_000",
    " 20.00 ",
    "20,00",
    "null",
    "true",
    "[]",
    "{}",
    "<script>alert(1)</script>",
    "' OR 1=1 --",
    "%s%s%n",
    "../../etc/passwd",
    "minimax",
    PLUS,
    "minimax/MiniMax-M2",
    "sk-fuzz-plain-key-000001",
]
NASTY_NUMBERS = [
    0,
    -1,
    1,
    20,
    2**31,
    2**63,
    -(2**63) - 1,
    10**30,
    -(10**30),
    1.5,
    -0.0,
    1e308,
    float("inf"),
    float("nan"),
]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(NASTY_NUMBERS),
    st.text(max_size=20),
    st.sampled_from(NASTY_STRINGS),
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
RAW_BODIES = [
    b"",
    b"{",
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"\x00",
    b"null",
    b"[]",
    b'"plan_id"',
    b"[" * 50_000,  # deeper than the JSON decoder's recursion limit
    b'{"a":' * 50_000,
    b'{"plan_id": "' + PLUS.encode() + b'", "plan_id": 7}',  # duplicate keys
    json.dumps({"x": HUGE * 10}).encode(),  # 1 MB
]


def object_bodies(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Objects with the operation's own fields (hostile or plausible values), extra keys too."""
    fuzzed = {name: st.one_of(strategy, json_values) for name, strategy in fields.items()}
    return st.builds(
        lambda known, extra: {**extra, **known},
        st.fixed_dictionaries({}, optional=fuzzed),
        st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    )


DEEP = (b"[" * 50_000, b'{"a":' * 50_000)


def api_bodies(fields: dict[str, st.SearchStrategy], *, deep: bool = True) -> st.SearchStrategy:
    """(content_type, bytes): mostly JSON objects; also other JSON values and raw garbage."""
    as_json = st.one_of(object_bodies(fields), object_bodies(fields), json_values).map(
        lambda v: json.dumps(v).encode()
    )
    raw = st.sampled_from([b for b in RAW_BODIES if deep or b not in DEEP])
    content_type = st.sampled_from(
        ["application/json", "application/json", "text/plain", "application/x-www-form-urlencoded"]
    )
    return st.tuples(content_type, st.one_of(as_json, as_json, raw))


IDEMPOTENCY_KEYS = st.one_of(
    st.none(),
    st.sampled_from(["", " ", "\x00", "k\x00ey", "ключ-🙂", "k" * 256, "k" * 10_000, "\t"]),
    st.text(min_size=1, max_size=40),
    st.uuids().map(str),
)
BOOLS = st.sampled_from([True, False])
# Money as people mistype it, or as other parsers would read it (issue 13 item 18): exponents,
# NaN/Infinity, other digit scripts, separators, signs, currency signs, too many decimals.
MONEY_TRAPS = [
    "1e3",
    "1E3",
    "1e-2",
    "1e999999999",
    "-1e3",
    "NaN",
    "nan",
    "sNaN",
    "Infinity",
    "-Infinity",
    "inf",
    "١٢",  # Arabic-Indic digits
    "１２",  # full-width digits
    "1_000",
    "1,000",
    "$20",
    "20.005",
    "+20",
    " 20 ",
    "0x10",
    ".5",
    "5.",
    "20\n",
    "9" * 40,
]
AMOUNTS = st.sampled_from(
    ["15.00", "20", 5, "10000.00", "10000.01", "0.01", "-5.00", 10**30, *MONEY_TRAPS]
)


@pytest.fixture
def hostile(settings):
    settings.CODING_PLANS_PURCHASE_ENABLED = True
    settings.PURCHASE_RATE_LIMIT_PER_MINUTE = 0  # unlimited: the fuzz is not about rate limits
    settings.LOGIN_RATE_LIMIT_PER_MINUTE = 0
    settings.BYOK_KEY_RATE_LIMIT_PER_MINUTE = 0
    settings.SIGNUP_RATE_LIMIT_PER_HOUR = 0
    settings.GATEWAY_RATE_LIMIT_PER_MINUTE = 1_000_000
    settings.GATEWAY_RATE_LIMIT_PER_USER_PER_MINUTE = 1_000_000
    settings.MINIMAX_TIMEOUT_SECONDS = 1


def _envelope_ok(response) -> bool:
    try:
        data = json.loads(response.content)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and isinstance(error.get("code"), str)


def judge(response, before: dict, where: str, *, api: bool) -> None:
    status = response.status_code
    assert status < 500, f"{where}: HTTP {status}"
    if 400 <= status < 500:
        assert snapshot() == before, f"{where}: HTTP {status} changed state"
        # django-ninja answers a method a path does not have with its own plain-text 405
        # ("Method not allowed"), outside our exception handlers: reported, not fixed here.
        if api and status != 405:
            assert _envelope_ok(response), f"{where}: HTTP {status} without the error envelope"


# --- API bodies --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiOp:
    name: str
    method: str
    path: Callable[[World], str]
    who: str  # "a" (owns a live plan and its installed entry) or "b" (credits, no plan)
    fields: dict[str, st.SearchStrategy] = field(default_factory=dict)
    idempotency: bool = False
    deep: bool = True  # also send JSON nested deeper than the decoder's recursion limit


API_OPS = [
    ApiOp(
        "byok-add",
        "POST",
        lambda w: "/api/v1/byok",
        "b",
        {
            "provider_id": st.sampled_from(["minimax", "openai", ""]),
            "api_key": st.sampled_from(["sk-fuzz-good-key-000001", "short"]),
        },
    ),
    ApiOp(
        "byok-patch",
        "PATCH",
        lambda w: f"/api/v1/byok/{w.a.ids['key_id']}",
        "a",
        {"api_key": st.sampled_from(["sk-fuzz-replaced-000001"]), "enabled": BOOLS},
    ),
    ApiOp("byok-delete", "DELETE", lambda w: f"/api/v1/byok/{w.a.ids['key_id']}", "a"),
    ApiOp("byok-test", "POST", lambda w: f"/api/v1/byok/{w.a.ids['key_id']}/test", "a"),
    ApiOp(
        "purchase",
        "POST",
        lambda w: "/api/v1/coding-plans/purchases",
        "b",
        {"plan_id": st.sampled_from([PLUS, MAX, "no-such-plan"])},
        idempotency=True,
    ),
    ApiOp(
        "cancel",
        "POST",
        lambda w: f"/api/v1/coding-plans/subscriptions/{w.a.ids['subscription_id']}/cancel",
        "a",
    ),
    ApiOp(
        "resume",
        "POST",
        lambda w: f"/api/v1/coding-plans/subscriptions/{w.a.ids['subscription_id']}/resume",
        "a",
    ),
    ApiOp(
        "auto-top-up",
        "PUT",
        lambda w: "/api/v1/credits/auto-top-up",
        "a",
        {"enabled": BOOLS, "amount_usd": AMOUNTS},
    ),
    ApiOp("intent-put", "PUT", lambda w: f"/api/v1/coding-plans/{MAX}/availability-intent", "b"),
    ApiOp(
        "gateway",
        "POST",
        lambda w: "/api/v1/gateway/chat/completions",
        "a",
        {
            "model": st.sampled_from(["minimax/MiniMax-M2", "openai/gpt-4", "minimax/", "x"]),
            "messages": st.sampled_from([[{"role": "user", "content": "hi"}], [], [{}]]),
            "stream": BOOLS,
            "max_tokens": st.sampled_from([1, -1, 10**30]),
        },
        deep=False,  # see test_gateway_deeply_nested_json_is_a_400
    ),
]


@pytest.mark.parametrize("op", API_OPS, ids=lambda op: op.name)
def test_api_body_fuzz_never_500_and_4xx_changes_nothing(op, world, hostile):
    person = getattr(world, op.who)
    client = person.bearer()
    path = op.path(world)

    @FUZZ
    @given(body=api_bodies(op.fields, deep=op.deep), key=IDEMPOTENCY_KEYS)
    def run(body, key):
        content_type, data = body
        headers = {}
        if op.idempotency and key is not None:
            headers["HTTP_IDEMPOTENCY_KEY"] = key
        before = snapshot()
        response = client.generic(op.method, path, data, content_type=content_type, **headers)
        judge(response, before, f"{op.method} {path} {data[:80]!r} key={key!r:.40}", api=True)

    run()


@pytest.mark.parametrize("body", DEEP, ids=["arrays", "objects"])
def test_gateway_deeply_nested_json_is_a_400(world, hostile, body):
    response = world.a.bearer().post(
        "/api/v1/gateway/chat/completions", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert _envelope_ok(response)


def test_purchase_idempotency_keys_fuzz(world, hostile):
    """Malformed keys on an otherwise valid purchase: 400, or a purchase made exactly once."""
    client = world.b.bearer()

    @FUZZ
    @given(key=IDEMPOTENCY_KEYS)
    def run(key):
        before = snapshot()
        headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
        response = client.post(
            "/api/v1/coding-plans/purchases",
            json.dumps({"plan_id": PLUS}),
            content_type="application/json",
            **headers,
        )
        judge(response, before, f"purchase key={key!r:.60}", api=True)
        if response.status_code == 400:
            assert response.json()["error"]["code"] == "idempotency_key_missing"

    run()


PATH_PARAMS = st.one_of(
    st.sampled_from(
        ["\x00", "%00", "..", "-1", "0", "1e3", "99999999999999999999999", HUGE[:5000], "🙂", "١"]
    ),
    st.text(min_size=1, max_size=30),
)


def test_api_path_and_query_fuzz(world, hostile):
    """Hostile path parameters and query strings on every read and on the intent routes."""
    client = world.a.bearer()
    sub = world.a.ids["subscription_id"]

    @FUZZ_PATHS
    @given(value=PATH_PARAMS, method=st.sampled_from(["GET", "PUT", "DELETE"]))
    def run(value, method):
        quoted = quote(value, safe="")
        for path in (
            f"/api/v1/coding-plans/{quoted}/availability-intent",
            f"/api/v1/coding-plans/subscriptions/{quoted}",
            f"/api/v1/coding-plans/subscriptions/{quoted}/charges",
            f"/api/v1/byok/{quoted}",
        ):
            before = snapshot()
            response = client.generic(method, path)
            judge(response, before, f"{method} {path[:120]}", api=True)
        for query in (
            f"/api/v1/coding-plans/subscriptions/{sub}/charges?cursor={quoted}",
            f"/api/v1/coding-plans/subscriptions?include_terminal={quoted}",
        ):
            before = snapshot()
            judge(client.get(query), before, f"GET {query[:120]}", api=True)

    run()


# --- page forms --------------------------------------------------------------------------------

form_text = st.one_of(
    st.sampled_from([s for s in NASTY_STRINGS if "\ud800" not in s]),
    st.text(max_size=30).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
)
form_values = st.one_of(form_text, st.lists(form_text, min_size=2, max_size=3))


@dataclass(frozen=True)
class FormOp:
    name: str
    path: Callable[[World], str]
    who: str  # "anonymous", "a", "b", "superuser"
    fields: tuple[str, ...]


FORM_OPS = [
    FormOp(
        "signup", lambda w: "/accounts/signup/", "anonymous", ("email", "full_name", "password")
    ),
    FormOp("login", lambda w: "/accounts/login/", "anonymous", ("username", "password", "next")),
    FormOp("account-delete", lambda w: "/account/delete/", "a", ("confirm", "password")),
    FormOp("token-create", lambda w: "/account/tokens/", "a", ("name",)),
    FormOp(
        "token-revoke",
        lambda w: f"/account/tokens/{w.a.ids['token_id']}/revoke/",
        "a",
        ("confirm",),
    ),
    FormOp("auto-top-up", lambda w: "/credits/auto-top-up/", "a", ("enabled", "amount_usd")),
    FormOp("byok-add", lambda w: "/byok/add/", "b", ("provider_id", "api_key")),
    FormOp(
        "byok-replace",
        lambda w: f"/byok/{w.a.ids['key_id']}/replace/",
        "a",
        ("api_key", "confirm"),
    ),
    FormOp(
        "byok-toggle", lambda w: f"/byok/{w.a.ids['key_id']}/toggle/", "a", ("enabled", "confirm")
    ),
    FormOp("byok-test", lambda w: f"/byok/{w.a.ids['key_id']}/test/", "a", ("confirm",)),
    FormOp("byok-delete", lambda w: f"/byok/{w.a.ids['key_id']}/delete/", "a", ("confirm",)),
    FormOp(
        "purchase",
        lambda w: "/subscriptions/coding-plans/purchase/",
        "b",
        ("plan_id", "idempotency_key"),
    ),
    FormOp(
        "cancel",
        lambda w: f"/subscriptions/coding-plans/{w.a.ids['subscription_id']}/cancel/",
        "a",
        ("confirm",),
    ),
    FormOp(
        "resume",
        lambda w: f"/subscriptions/coding-plans/{w.a.ids['subscription_id']}/resume/",
        "a",
        ("confirm",),
    ),
    FormOp(
        "record-revocation",
        lambda w: f"/admin/inventory/credential/{w.ids['inventory.credential']}/record-revocation/",
        "superuser",
        ("outcome", "note", "confirm"),
    ),
]

PLAUSIBLE = {
    "confirm": st.sampled_from(["on", "yes", "1"]),
    "enabled": st.sampled_from(["on", "0", "1"]),
    "amount_usd": st.sampled_from(["15.00", "0", "-5", "10000.01", *MONEY_TRAPS]),
    "provider_id": st.sampled_from(["minimax"]),
    "plan_id": st.sampled_from([PLUS, MAX]),
    "outcome": st.sampled_from(["revoked", "revocation_failed"]),
}


def form_bodies(fields: tuple[str, ...]) -> st.SearchStrategy:
    optional = {name: st.one_of(form_values, PLAUSIBLE.get(name, form_values)) for name in fields}
    return st.fixed_dictionaries({}, optional=optional)


def _client(world: World, who: str) -> Client:
    if who == "anonymous":
        return Client(raise_request_exception=False)
    return getattr(world, who).session()


@pytest.mark.parametrize("op", FORM_OPS, ids=lambda op: op.name)
def test_form_fuzz_never_500_and_4xx_changes_nothing(op, world, hostile):
    client = _client(world, op.who)
    path = op.path(world)

    @FUZZ
    @given(data=form_bodies(op.fields))
    def run(data):
        before = snapshot()
        body = urlencode(data, doseq=True)
        response = client.generic(
            "POST", path, body, content_type="application/x-www-form-urlencoded"
        )
        judge(response, before, f"POST {path} {body[:100]!r}", api=False)

    run()


@pytest.mark.parametrize("amount", MONEY_TRAPS)
def test_auto_top_up_form_answers_a_form_error_for_each_money_trap(amount, world, hostile):
    # Issue 13 item 18: "1e3" answered 500 (InvalidAmount escaped the view). Every trap is a
    # form error on the page (200 re-render) or a saved setting (302), never a 500.
    client = world.a.session()
    before = snapshot()
    response = client.post("/credits/auto-top-up/", {"enabled": "on", "amount_usd": amount})
    judge(response, before, f"auto-top-up amount_usd={amount!r:.60}", api=False)
    assert response.status_code in (200, 302, 400)
    if amount.strip() not in ("20", "+20"):
        assert response.status_code == 200, amount
        assert "Enter an amount in USD" in response.content.decode()
        assert snapshot() == before


def test_auto_top_up_form_amount_fuzz_never_500(world, hostile):
    # Issue 13 item 18: any text for amount_usd -> a form re-render (200/400) or a redirect.
    client = world.a.session()

    @FUZZ
    @given(
        amount=st.one_of(
            st.sampled_from(MONEY_TRAPS), form_text, st.from_regex(r"\A[0-9eE.+-]{1,12}\Z")
        ),
        enabled=st.sampled_from(["on", ""]),
    )
    def run(amount, enabled):
        before = snapshot()
        response = client.post("/credits/auto-top-up/", {"enabled": enabled, "amount_usd": amount})
        judge(response, before, f"auto-top-up amount_usd={amount!r:.60}", api=False)
        assert response.status_code in (200, 302, 400), amount

    run()


def test_page_query_and_path_fuzz(world, hostile):
    client = world.a.session()
    sub = world.a.ids["subscription_id"]

    @FUZZ_PATHS
    @given(value=PATH_PARAMS)
    def run(value):
        quoted = quote(value, safe="")
        for method, path in (
            ("GET", f"/subscriptions/coding-plans/{sub}/?cursor={quoted}"),
            ("GET", f"/credits/?before={quoted}"),
            ("GET", f"/subscriptions/?show={quoted}"),
            ("GET", f"/subscriptions/coding-plans/{quoted}/"),
            ("POST", f"/subscriptions/coding-plans/plans/{quoted}/notify/"),
            ("POST", f"/subscriptions/coding-plans/plans/{quoted}/notify/withdraw/"),
            ("GET", f"/accounts/login/?next={quoted}"),
        ):
            before = snapshot()
            response = client.generic(method, path)
            judge(response, before, f"{method} {path[:120]}", api=False)

    run()


# --- 1 MB upload lines -------------------------------------------------------------------------

MEGABYTE_LINES = [
    "k" * 1_000_000,  # no separator
    "sk-" + "k" * 1_000_000 + "::up-1",  # a key far over 512 characters
    "sk-fuzz-upload-000001::" + "u" * 1_000_000,  # an upstream plan id far over 200
    "sk-fuzz-upload-0000\x00" + "::up-1",  # NUL inside the key
    "sk-fuzz-upload-000002::up-\x00" + "x" * 1_000_000,
    "sk-fuzz-üñí-000003::up-1",
    "::" * 500_000,
]


def _credential_state():
    from inventory.models import Credential, InventoryUpload

    return (
        list(Credential.objects.order_by("id").values_list("id", "state")),
        InventoryUpload.objects.filter(status="stored").count(),
    )


def test_upload_service_refuses_megabyte_lines_and_stores_nothing(db, standin):
    from inventory.upload import upload_credentials

    before = _credential_state()
    text = "\n".join([*MEGABYTE_LINES, "sk-fuzz-upload-good-0001::up-good"])
    report = upload_credentials(plan_id=PLUS, text=text, actor="system:test", now=timezone.now())
    assert not report.ok
    assert [e["line"] for e in report.errors] == list(range(1, len(MEGABYTE_LINES) + 1))
    assert all(len(str(e["reason"])) < 200 for e in report.errors)  # no line echoed back
    assert _credential_state() == before
    assert standin.state.calls() == []  # nothing validated when the file is malformed


def test_upload_command_refuses_megabyte_lines(db, standin, tmp_path):
    before = _credential_state()
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(MEGABYTE_LINES), encoding="utf-8")
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command(
            "upload_inventory", PLUS, str(path), "--json", stdout=out, stderr=io.StringIO()
        )
    report = json.loads(out.getvalue())
    assert report["stored"] == 0
    assert len(report["errors"]) == len(MEGABYTE_LINES)
    assert len(out.getvalue()) < 5_000
    assert _credential_state() == before
    # Not UTF-8 at all: a clear refusal, not a traceback.
    path.write_bytes(b"\xff\xfe" + b"\x00k" * 500_000)
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("upload_inventory", PLUS, str(path), stdout=io.StringIO())
    assert _credential_state() == before


def test_admin_upload_form_refuses_megabyte_lines(world, django_capture_on_commit_callbacks):
    client = world.superuser.session()
    before = _credential_state()
    url = "/admin/inventory/credential/upload/"
    for line in MEGABYTE_LINES[:3]:
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(url, {"plan_id": PLUS, "lines": line})
        assert response.status_code in (200, 302, 400), response.status_code
    upload = SimpleUploadedFile("keys.txt", "\n".join(MEGABYTE_LINES).encode())
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"plan_id": PLUS, "file": upload})
    assert response.status_code in (200, 302, 400)
    if response.status_code == 302:
        status = client.get(response["Location"])
        assert status.status_code == 200
        assert "k" * 1000 not in status.content.decode()
    garbage = SimpleUploadedFile("keys.txt", b"\xff\xfe\x00" * 1000)
    response = client.post(url, {"plan_id": PLUS, "file": garbage})
    assert response.status_code < 500
    for plan in ("no-such-plan", "\x00", HUGE):
        assert client.post(url, {"plan_id": plan, "lines": "sk-x-00000001::u"}).status_code < 500
    assert _credential_state() == before


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "application/x-www-form-urlencoded"]
)
def test_api_refuses_a_megabyte_body_cleanly(world, hostile, content_type):
    client = world.a.bearer()
    before = snapshot()
    for method, path in (
        ("POST", "/api/v1/byok"),
        ("PUT", "/api/v1/credits/auto-top-up"),
        ("POST", "/api/v1/coding-plans/purchases"),
        ("POST", "/api/v1/gateway/chat/completions"),
    ):
        body = json.dumps({"api_key": "k" * 3_000_000, "plan_id": "p" * 3_000_000})
        response = client.generic(
            method, path, body, content_type=content_type, HTTP_IDEMPOTENCY_KEY="k"
        )
        judge(response, before, f"{method} {path}", api=True)


@pytest.mark.parametrize("key", ["\x00", "key-with-\x00-inside"])
def test_nul_in_the_idempotency_key_is_refused_like_a_missing_key(world, hostile, key):
    """PostgreSQL text cannot hold NUL: this used to be a 500 (DataError) on both paths."""
    before = snapshot()
    response = world.b.bearer().post(
        "/api/v1/coding-plans/purchases",
        json.dumps({"plan_id": PLUS}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "idempotency_key_missing"
    page = world.b.session().post(
        "/subscriptions/coding-plans/purchase/", {"plan_id": PLUS, "idempotency_key": key}
    )
    assert page.status_code == 400
    assert snapshot() == before


def test_body_over_the_upload_limit_is_a_413_in_the_envelope(world, hostile, settings):
    """Django refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE; the API says so in its envelope
    (it used to be Django's bare HTML 400)."""
    body = json.dumps({"provider_id": "minimax", "api_key": "k" * (3 * 1024 * 1024)})
    response = world.a.bearer().post("/api/v1/byok", body, content_type="application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
