"""SPEC S1 secrets scan: canary keys, tokens and passwords are planted everywhere, every route
is driven (happy paths, bad input, other users' ids, anonymous, upstream failures) and no
response body, header, cookie or log line may contain any of them.

Routes are enumerated from the Django URL resolver (the django-ninja API included), so a route
added later is covered automatically — or fails `test_every_route_can_be_driven` until its path
parameters are named in tests/security/world.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.core.cache import cache
from django.db import connections, transaction
from django.test import AsyncClient, Client, override_settings
from django.urls import Resolver404, resolve

from standins.minimax import FAILURE_MODES
from tests.security.world import (
    ADMIN_FORM_BODIES,
    API_BODIES,
    BAD_API_BODIES,
    FORM_BODIES,
    Actor,
    Route,
    World,
    admin_actions,
    admin_param_sets,
    all_routes,
    customer_param_sets,
    foreign_param_sets,
    unknown_params,
)

pytestmark = pytest.mark.django_db

ROUTES = all_routes()
CUSTOMER_ROUTES = [r for r in ROUTES if r.kind in ("page", "api")]
ADMIN_ROUTES = [r for r in ROUTES if r.kind == "admin"]
SAFE = ("GET", "HEAD", "OPTIONS")
# Ciphertexts must not be displayed, but SQL debug logs legitimately carry them as parameters.
NOT_CHECKED_IN_LOGS = ("ciphertext-",)

_idempotency = itertools.count(1)


# --- capture and checks -----------------------------------------------------------------------


class LogCapture(logging.Handler):
    """Everything any logger emits at DEBUG, as a handler would write it (message, traceback,
    stack and string `extra=` attributes), before any redaction."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
        "message",
        "asctime",
        "_redacted",
    }

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            parts = [self.format(record)]
        except Exception as exc:  # a broken format string is logged as its parts
            parts = [f"{record.msg!r} {record.args!r} ({type(exc).__name__})"]
        if record.stack_info:
            parts.append(record.stack_info)
        for name, value in vars(record).items():
            if name not in self._STANDARD and isinstance(value, str):
                parts.append(f"{name}={value}")
        self.lines.append("\n".join(parts))


@pytest.fixture
def captured_logs(caplog):
    """Root at DEBUG with our handler; noisy libraries at DEBUG too; SQL logged as well.

    The redacting record factory is switched off meanwhile: the redaction filter is only the
    second line of defence (tested in test_redaction.py); here no code may log a secret at all."""
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(logging.LogRecord)
    capture = LogCapture()
    root = logging.getLogger()
    caplog.set_level(logging.DEBUG)
    loud = ["django", "django.request", "django.db.backends", "httpx", "httpcore", "celery"]
    previous = {name: logging.getLogger(name).level for name in loud}
    for name in loud:
        logging.getLogger(name).setLevel(logging.DEBUG)
    # Loggers that do not propagate to the root get the handler directly.
    isolated = [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    # First in line: handler filters (the console's redaction) rewrite the shared record.
    root.handlers.insert(0, capture)
    for logger in isolated:
        logger.addHandler(capture)
    debug_cursors = {alias: connections[alias].force_debug_cursor for alias in connections}
    for alias in connections:
        connections[alias].force_debug_cursor = True
    yield capture, caplog
    for alias, value in debug_cursors.items():
        connections[alias].force_debug_cursor = value
    for logger in isolated:
        logger.removeHandler(capture)
    root.removeHandler(capture)
    for name, level in previous.items():
        logging.getLogger(name).setLevel(level)
    logging.setLogRecordFactory(factory)


class Scan:
    def __init__(self, world: World, logs: LogCapture, caplog) -> None:
        self.world = world
        self.logs = logs
        self.caplog = caplog
        self.problems: list[str] = []
        self.requests = 0

    # checks
    def check(self, text: str, where: str, *, staff: bool) -> None:
        found = self.world.secrets.find(text, staff=staff)
        if found:
            self.problems.append(f"{where}: {sorted(found)}")

    def check_response(
        self, response, where: str, *, staff: bool, content: bytes | None = None
    ) -> None:
        self.requests += 1
        if response.status_code == 500:
            self.problems.append(f"{where}: HTTP 500")
        if content is None:
            content = (
                b"".join(response) if getattr(response, "streaming", False) else response.content
            )
        self.check(content.decode("utf-8", errors="replace"), f"{where} body", staff=staff)
        for name, value in response.items():
            self.check(f"{name}: {value}", f"{where} header {name}", staff=staff)
        for morsel in response.cookies.values():
            self.check(morsel.OutputString(), f"{where} cookie {morsel.key}", staff=staff)

    def check_logs(self) -> None:
        lines = list(self.logs.lines)
        for record in self.caplog.records:
            lines.append(record.getMessage() + "\n" + (record.exc_text or ""))
        for line in lines:
            found = {
                label
                for label in self.world.secrets.find(line, staff=True)
                if not label.startswith(NOT_CHECKED_IN_LOGS)
            }
            if found:
                self.problems.append(f"log line {line[:300]!r}: {sorted(found)}")

    def assert_clean(self) -> None:
        self.check_logs()
        assert self.requests > 0
        assert not self.problems, "\n".join(dict.fromkeys(self.problems))

    # requests
    def send(
        self,
        client: Client,
        method: str,
        path: str,
        *,
        body: Any = None,
        as_json: bool,
        staff: bool,
        follow: bool = True,
        query: str = "",
    ):
        kwargs: dict[str, Any] = {}
        if method == "POST":
            kwargs["HTTP_IDEMPOTENCY_KEY"] = f"canary-{next(_idempotency)}"
        url = path + query
        where = f"{method} {url} [{getattr(client, '_actor', 'anonymous')}]"
        if _is_async_view(path):
            data = body if isinstance(body, str) else json.dumps(body) if body is not None else ""
            response, content = async_to_sync(_async_request)(client, method, url, data, kwargs)
            self.check_response(response, where, staff=staff, content=content)
            return response
        if method in SAFE:
            response = client.generic(method, url, **kwargs)
        elif as_json:
            data = body if isinstance(body, str) else json.dumps(body) if body is not None else ""
            response = client.generic(method, url, data, content_type="application/json", **kwargs)
        else:
            response = getattr(client, method.lower())(url, body or {}, **kwargs)
        self.check_response(response, where, staff=staff)
        hops = 0
        while follow and response.status_code in (301, 302, 303, 307, 308) and hops < 3:
            location = response["Location"]
            if not location.startswith("/"):
                break
            response = client.get(location)
            self.check_response(response, f"{where} → GET {location}", staff=staff)
            hops += 1
        return response


def _is_async_view(path: str) -> bool:
    try:
        return iscoroutinefunction(resolve(path.split("?", 1)[0]).func)
    except Resolver404:
        return False


async def _async_request(client: Client, method: str, url: str, data: str, extra: dict):
    """An async view (the gateway) through AsyncClient, its streamed body read in the same event
    loop that produced it. Same identity as `client`: its headers and cookies."""
    headers = {
        key[5:].replace("_", "-").title(): value
        for key, value in {**client.defaults, **extra}.items()
        if key.startswith("HTTP_")
    }
    async_client = AsyncClient(
        raise_request_exception=False, enforce_csrf_checks=client.handler.enforce_csrf_checks
    )
    async_client.cookies = client.cookies
    # Headers per request: AsyncClient(headers=...) stores WSGI names, which ASGI requests drop.
    if method in SAFE:
        response = await async_client.generic(method, url, headers=headers)
    else:
        response = await async_client.generic(
            method, url, data, content_type="application/json", headers=headers
        )
    if getattr(response, "streaming", False):
        content = b"".join([chunk async for chunk in response.streaming_content])
    else:
        content = response.content
    return response, content


@contextlib.contextmanager
def rolled_back():
    """A block whose writes are undone; services' `atomic(durable=True)` may nest in it, as in
    Django's TestCase."""
    block = transaction.atomic()
    block._from_testcase = True
    block.__enter__()
    try:
        yield
    finally:
        transaction.set_rollback(True)
        block.__exit__(None, None, None)


@dataclass(frozen=True)
class UpstreamCall:
    route: Route
    method: str
    actor: str
    body_index: int


def discover_upstream_calls(world: World, standin_server) -> list[UpstreamCall]:
    """Which customer requests reach MiniMax: every route's real requests, as the customers
    whose objects can (an own key; a plan), each route in a block that is rolled back."""
    scan = Scan(world.fork(), LogCapture(), caplog=None)
    found = []
    for route in CUSTOMER_ROUTES:
        for name in ("byok_owner", "plan_owner"):
            actor = world.actors[name]
            own_sets = customer_param_sets(route, world, actor)
            if own_sets is None:
                continue
            with rolled_back():
                cache.clear()
                client = customer_client(route, actor)
                for method in sorted(
                    methods_for(route), key=lambda m: (m not in SAFE, m == "DELETE")
                ):
                    for i, body in enumerate(valid_bodies(route, method, scan.world, actor)):
                        before = len(standin_server.state.calls())
                        scan.send(
                            client,
                            method,
                            route.fill(own_sets[0]),
                            body=body,
                            as_json=route.kind == "api",
                            staff=False,
                        )
                        if len(standin_server.state.calls()) > before:
                            found.append(UpstreamCall(route, method, name, i))
    cache.clear()
    return found


@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker, standin_server):
    """Built once per module inside a transaction that is rolled back at the end; each test runs
    in a savepoint inside it (pytest-django's `db`), so whatever a test changes is undone."""
    with (
        django_db_blocker.unblock(),
        override_settings(
            MINIMAX_API_BASE_URL=standin_server.url,
            MINIMAX_TIMEOUT_SECONDS=2,
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend",
        ),
    ):
        with rolled_back():
            standin_server.state.reset()
            world = World.build()
            world.upstream_calls = discover_upstream_calls(world, standin_server)
            standin_server.state.reset()
            yield world
        standin_server.state.reset()


@pytest.fixture
def world(shared_world, standin):
    cache.clear()  # cached quota or rate-limit counters from another test must not mask a path
    return shared_world.fork()


@pytest.fixture
def scan(world, captured_logs):
    capture, caplog = captured_logs
    return Scan(world, capture, caplog)


# --- clients ----------------------------------------------------------------------------------


def session_client(actor: Actor | None, *, csrf: bool = False) -> Client:
    client = Client(raise_request_exception=False, enforce_csrf_checks=csrf)
    if actor is not None:
        client.force_login(actor.user)
        client._actor = f"{actor.name} session"
    return client


def bearer_client(actor: Actor | None, token: str | None = None) -> Client:
    token = token if token is not None else actor.token
    client = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {token}")
    client._actor = f"{actor.name if actor else 'nobody'} bearer"
    return client


def customer_client(route: Route, actor: Actor) -> Client:
    return bearer_client(actor) if route.kind == "api" else session_client(actor)


def methods_for(route: Route) -> tuple[str, ...]:
    if route.methods:
        return route.methods
    if route.kind == "api":
        return ("GET", "POST", "PUT", "PATCH", "DELETE")
    return ("GET", "POST")


def valid_bodies(route: Route, method: str, world: World, actor: Actor) -> list[Any]:
    if route.kind == "api":
        factories = API_BODIES.get((method, route.pattern))
        return (
            [f(world, actor) for f in factories] if factories else [None if method in SAFE else {}]
        )
    if method in SAFE:
        return [None]
    factories = FORM_BODIES.get(route.name or "")
    return [f(world, actor) for f in factories] if factories else [{}]


def placeholder_params(route: Route, world: World) -> dict[str, Any]:
    """For anonymous probes: the ids of `other`'s objects."""
    return customer_param_sets(route, world, world.other)[0]


# --- the enumeration itself -------------------------------------------------------------------


def test_every_route_can_be_driven(world):
    """A new route whose path parameters we cannot fill fails here until it is named in
    tests/security/world.py (PATH_PARAMS / FOREIGN_PARAMS, or ADMIN_SPECIAL for the admin)."""
    problems = []
    for route in ROUTES:
        if route.kind == "admin":
            try:
                admin_param_sets(route, world)
            except LookupError as exc:
                problems.append(str(exc))
        elif unknown_params(route):
            problems.append(f"{route}: unknown path parameters {sorted(unknown_params(route))}")
    assert not problems, "\n".join(problems)


def test_enumeration_sees_the_routes_built_so_far():
    patterns = {r.pattern for r in ROUTES}
    for expected in (
        "byok/",
        "byok/<int:key_id>/replace/",
        "api/v1/byok",
        "api/v1/byok/<int:key_id>/test",
        "api/v1/credits",
        "account/",
        "accounts/login/",
        "admin/",
    ):
        assert expected in patterns
    byok_item = next(r for r in ROUTES if r.pattern == "api/v1/byok/<int:key_id>")
    assert byok_item.methods == ("DELETE", "GET", "PATCH")


# --- customer pages and API -------------------------------------------------------------------


def drive_customer_route(route: Route, world: World, scan: Scan) -> None:
    methods = methods_for(route)
    as_json = route.kind == "api"
    unfillable = bool(unknown_params(route))
    assert not unfillable, f"{route}: see test_every_route_can_be_driven"

    # Nobody logged in, or a token that is not ours.
    anon_path = route.fill(placeholder_params(route, world))
    anonymous = [session_client(None)]
    if route.kind == "api":
        anonymous += [
            bearer_client(None, token="cp_" + "x" * 40),
            bearer_client(None, token=world.secrets.new("unknown-token", prefix="cp_")),
        ]
    for client, method in itertools.product(anonymous, methods):
        scan.send(client, method, anon_path, body={}, as_json=as_json, staff=False)

    probed = False
    for actor in world.customers:
        own_sets = customer_param_sets(route, world, actor)
        if own_sets is None:
            continue  # this actor has no such object
        own = own_sets[0]
        client = customer_client(route, actor)
        path = route.fill(own)
        if not probed:  # the error-path probes once, as the first customer who has the objects
            probed = True
            probe_errors(route, world, scan, actor, client, own)
        # Real requests last: they may delete or replace what the probes needed.
        for method in sorted(methods, key=lambda m: (m not in SAFE, m == "DELETE")):
            for body in valid_bodies(route, method, world, actor):
                scan.send(client, method, path, body=body, as_json=as_json, staff=False)


def probe_errors(route: Route, world: World, scan: Scan, actor: Actor, client, own) -> None:
    methods = methods_for(route)
    as_json = route.kind == "api"
    path = route.fill(own)
    # Someone else's ids, and ids that do not exist.
    for params in foreign_param_sets(route, world, own):
        for method in methods:
            body = valid_bodies(route, method, world, actor)[-1]
            scan.send(client, method, route.fill(params), body=body, as_json=as_json, staff=False)
    # The session cookie without the CSRF token.
    unsafe = [m for m in methods if m not in SAFE]
    csrf_client = session_client(actor, csrf=True)
    for method in unsafe:
        body = valid_bodies(route, method, world, actor)[-1] if as_json else {}
        scan.send(csrf_client, method, path, body=body, as_json=as_json, staff=False)
    # Junk query strings and bodies.
    for method in methods:
        if method in SAFE:
            junk = "?cursor=%00junk&before=x&include_terminal=maybe&page=-1"
            scan.send(client, method, path, as_json=as_json, staff=False, query=junk)
        elif as_json:
            for body in BAD_API_BODIES:
                scan.send(client, method, path, body=body, as_json=True, staff=False)
        else:
            body = {"junk": "x" * 600}
            scan.send(client, method, path, body=body, as_json=False, staff=False)


@pytest.mark.parametrize("route", CUSTOMER_ROUTES, ids=str)
def test_customer_route_leaks_no_secret(route, world, scan):
    drive_customer_route(route, world, scan)
    scan.assert_clean()


# --- admin ------------------------------------------------------------------------------------


def drive_admin_route(route: Route, world: World, scan: Scan) -> None:
    staff = session_client(world.staff)
    methods = methods_for(route)
    param_sets = admin_param_sets(route, world)
    # Customers and anonymous visitors get the admin log-in, nothing else.
    for actor in (None, world.actors["byok_owner"]):
        scan.send(
            session_client(actor), "GET", route.fill(param_sets[0]), as_json=False, staff=False
        )
    for i, params in enumerate(param_sets):
        path = route.fill(params)
        scan.send(staff, "GET", path, as_json=False, staff=True)
        if "POST" in methods and (i == 0 or i == len(param_sets) - 1):
            scan.send(staff, "POST", path, body={}, as_json=False, staff=True)
    path = route.fill(param_sets[0])
    if route.name and route.name.endswith("_changelist"):
        scan.send(staff, "GET", path, as_json=False, staff=True, query="?q=canary&o=-1")
        model = route.admin_model
        pks = [str(pk) for pk in model._default_manager.values_list("pk", flat=True)]
        for action in admin_actions(model):
            body = {"action": action, "_selected_action": pks, "index": "0"}
            scan.send(staff, "POST", path, body=body, as_json=False, staff=True)
    for factory in ADMIN_FORM_BODIES.get(route.name or "", []):
        scan.send(staff, "POST", path, body=factory(world, world.staff), as_json=False, staff=True)
    if route.name == "login":
        wrong = world.secrets.new("admin-wrong-pw", prefix="pw-canary-")
        for password in (wrong, world.staff.password):
            body = {"username": world.staff.email, "password": password}
            scan.send(session_client(None), "POST", path, body=body, as_json=False, staff=True)


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=str)
def test_admin_route_leaks_no_secret(route, world, scan):
    drive_admin_route(route, world, scan)
    scan.assert_clean()


# --- upstream failures ------------------------------------------------------------------------


def test_discovery_found_the_upstream_callers(world):
    callers = {(c.route.pattern, c.method) for c in world.upstream_calls}
    assert ("api/v1/byok/<int:key_id>/test", "POST") in callers
    assert ("byok/<int:key_id>/test/", "POST") in callers
    assert ("api/v1/gateway/chat/completions", "POST") in callers
    assert ("api/v1/coding-plans/subscriptions/<int:subscription_id>/quota", "GET") in callers


@pytest.mark.parametrize("mode", sorted(FAILURE_MODES))
def test_upstream_failure_modes_leak_nothing(mode, world, scan, settings, standin):
    """Every request that reaches MiniMax (found by `discover_upstream_calls`), replayed while
    the stand-in fails in each way it can."""
    settings.MINIMAX_TIMEOUT_SECONDS = 0.3
    standin.state.configure({"failure": mode, "timeout_sleep_s": 0.6, "trickle_interval_s": 0.05})
    for call in world.upstream_calls:
        actor = world.actors[call.actor]
        (own,) = customer_param_sets(call.route, world, actor)
        body = valid_bodies(call.route, call.method, world, actor)[call.body_index]
        scan.send(
            customer_client(call.route, actor),
            call.method,
            call.route.fill(own),
            body=body,
            as_json=call.route.kind == "api",
            staff=False,
        )
    # The scan really reached MiniMax with the planted keys.
    sent = {c["key"] for c in standin.state.calls()}
    assert world.secrets.values["byok-key"] in sent
    scan.assert_clean()


def test_rejected_key_leaks_nothing(world, scan, standin):
    standin.state.configure({"accepted_keys": []})
    owner = world.actors["byok_owner"]
    key_id = owner.ids["key_id"]
    scan.send(
        bearer_client(owner), "POST", f"/api/v1/byok/{key_id}/test", as_json=True, staff=False
    )
    scan.send(
        session_client(owner), "POST", f"/byok/{key_id}/test/", body={}, as_json=False, staff=False
    )
    assert standin.state.calls()
    scan.assert_clean()
