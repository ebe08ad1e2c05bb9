"""Stock health (SPEC H1, H2): the daily re-validation of `available` credentials, and the staff's
re-test of a quarantined one.

Each key makes the upload's own live check (I3, `_check_key`: the one call to the provider's key
validation in this module, the same function `inventory.upload` uses), at most `concurrency` at
once and spread so no more than `CODING_PLANS_HEALTH_MAX_RPS` requests start in any second. A key
the provider rejects (401/403, `invalid_key`) moves to `quarantined` and is never sold; any
other failure leaves it `available` for the next run. The checks run with no transaction open
and no row lock held; each outcome is then recorded in its own short transaction, re-checking
that the credential is still `available` (a purchase may have claimed it meanwhile).

A run is one `StockHealthRun`. Only one runs at a time (a PostgreSQL advisory lock). A run cut off
half-way (a deploy, a killed worker) is left unfinished; the next run continues it — the same
record — with the credentials not checked since it started, in id order.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q

from adminops.audit import record_event
from catalog import get_plan
from codingplans import crypto
from inventory.errors import HealthRunInProgress, InvalidCredentialState
from inventory.models import Credential, StockHealthRun
from inventory.services import lock_credential
from upstream.providers import registry
from upstream.providers.base import Provider

HEALTH_ACTOR = "system:stock-health"
DEFAULT_CONCURRENCY = 10
MAX_CONCURRENCY = 10  # SPEC H1: concurrency ≤ 10
DEFAULT_MAX_RPS = 5.0
BATCH_SIZE = 100
# An unfinished run older than this is closed instead of continued: the next one starts afresh.
RESUME_WITHIN = timedelta(hours=24)
# pg_try_advisory_lock key: one stock health run at a time, across processes.
_ADVISORY_LOCK = 0x5E417_4EA17

# Our own wording for a quarantine or a failed re-test (never the provider's text, SPEC S1).
CHECK_NOTES = {
    "invalid_key": "the provider rejected the key (401/403)",
    "network": "the provider could not be reached or did not answer in time",
    "http": "the provider returned an error status",
    "invalid_response": "the provider sent a response that was not a valid completion",
    "unreadable": "the stored key can no longer be decrypted",
}


@dataclass(frozen=True)
class KeyVerdict:
    ok: bool
    error: str | None = None  # invalid_key (rejected: quarantine) or a transient kind

    @property
    def rejected(self) -> bool:
        return self.error == "invalid_key"


def _provider(plan_id: str) -> Provider:
    """The provider of a credential's plan (SPEC V1: stock health is per provider)."""
    plan = get_plan(plan_id)
    return registry.provider(plan.provider_id if plan is not None else None)


def _check_key(
    api_key: str, *, provider: Provider, client: httpx.Client | None = None
) -> KeyVerdict:
    """The provider's live key validation, as the upload runs it (I3): the one call site in
    stock health."""
    result = provider.check_key(api_key, client=client)
    return KeyVerdict(result.ok, result.error)


def _make_client(provider: Provider, concurrency: int) -> httpx.Client:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return provider.make_client(limits=limits)


def max_rps() -> float:
    value = float(getattr(settings, "CODING_PLANS_HEALTH_MAX_RPS", DEFAULT_MAX_RPS))
    return value if value > 0 else DEFAULT_MAX_RPS


# Start times are spaced 10 % wider than 1 / rps: a request that leaves its thread late (a busy
# CPU) must not bring it closer to the next than the limit allows, as the provider counts them.
PACING_MARGIN = 1.1


class Pacer:
    """Start times spaced `PACING_MARGIN / rps` apart across all worker threads: never more
    than `rps` requests reach the provider in any one second."""

    def __init__(self, rps: float):
        self.interval = PACING_MARGIN / rps
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            slot = max(time.monotonic(), self._next)
            self._next = slot + self.interval
        delay = slot - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_ADVISORY_LOCK])
        (got,) = cursor.fetchone()
    if not got:
        raise HealthRunInProgress()
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_ADVISORY_LOCK])


def _open_run(*, now: datetime, trigger: str) -> StockHealthRun:
    """The unfinished run to continue (started within RESUME_WITHIN), or a new one."""
    with transaction.atomic(durable=True):
        unfinished = list(
            StockHealthRun.objects.select_for_update()
            .filter(finished_at__isnull=True)
            .order_by("-started_at", "-id")
        )
        for stale in unfinished:
            if stale.started_at >= now - RESUME_WITHIN and stale is unfinished[0]:
                continue
            stale.finished_at = now  # abandoned: its credentials are checked by the new run
            stale.save(update_fields=["finished_at"])
        if unfinished and unfinished[0].finished_at is None:
            run = unfinished[0]
            run.resumed += 1
            run.save(update_fields=["resumed"])
            return run
        return StockHealthRun.objects.create(trigger=trigger, started_at=now)


def _due_batch(run: StockHealthRun, after_id: int) -> list[tuple[int, str, str]]:
    """The next available credentials not checked since the run started, in id order."""
    return list(
        Credential.objects.filter(
            Q(health_checked_at__isnull=True) | Q(health_checked_at__lt=run.started_at),
            state=Credential.State.AVAILABLE,
            created_at__lt=run.started_at,
            id__gt=after_id,
        )
        .order_by("id")
        .values_list("id", "encrypted_key", "plan_id")[:BATCH_SIZE]
    )


def _record(run: StockHealthRun, credential_id: int, verdict: KeyVerdict, now: datetime) -> str:
    """One outcome, in its own transaction: `quarantined`, `checked` or `error` (transient,
    left available). A credential no longer available (sold meanwhile) is left alone."""
    with transaction.atomic(durable=True):
        if verdict.rejected:
            credential = (
                Credential.objects.select_for_update()
                .filter(pk=credential_id, state=Credential.State.AVAILABLE)
                .first()
            )
            if credential is None:
                outcome = "skipped"
            else:
                note = CHECK_NOTES["invalid_key"]
                credential.state = Credential.State.QUARANTINED
                credential.quarantined_at = now
                credential.health_checked_at = now
                credential.health_note = note
                credential.save(
                    update_fields=["state", "quarantined_at", "health_checked_at", "health_note"]
                )
                record_event(
                    actor=HEALTH_ACTOR,
                    subject=credential,
                    event_type="credential.quarantined",
                    now=now,
                    old={"state": Credential.State.AVAILABLE},
                    new={"state": credential.state, "reason": note, "run_id": run.pk},
                )
                outcome = "quarantined"
        else:
            Credential.objects.filter(pk=credential_id, state=Credential.State.AVAILABLE).update(
                health_checked_at=now
            )
            outcome = "checked" if verdict.ok else "error"
        increments = {"checked": F("checked") + 1}
        if outcome == "quarantined":
            increments["quarantined"] = F("quarantined") + 1
        elif outcome == "error":
            increments["errors"] = F("errors") + 1
        StockHealthRun.objects.filter(pk=run.pk).update(**increments)
    return outcome


def run_stock_health(
    *,
    now: datetime,
    trigger: str = StockHealthRun.Trigger.OTHER,
    concurrency: int = DEFAULT_CONCURRENCY,
    rps: float | None = None,
    clock: Callable[[], datetime] | None = None,
) -> StockHealthRun:
    """Re-validate every `available` credential not checked since this run started (H1).
    `now` is the run's start (a new run) — the time each outcome is recorded comes from
    `clock` (default: `now`). Raises HealthRunInProgress when another run holds the lock."""
    concurrency = max(1, min(int(concurrency), MAX_CONCURRENCY))
    pacer = Pacer(rps or max_rps())
    clock = clock or (lambda: now)
    quarantined_ids: set[int] = set()
    with _exclusive():
        run = _open_run(now=now, trigger=trigger)
        after_id = 0
        # One pooled client per provider (each has its own base URL), made as a run meets it.
        clients: dict[str, httpx.Client] = {}
        with contextlib.ExitStack() as open_clients, ThreadPoolExecutor(concurrency) as pool:

            def client_for(provider: Provider) -> httpx.Client:
                if provider.provider_id not in clients:
                    clients[provider.provider_id] = open_clients.enter_context(
                        _make_client(provider, concurrency)
                    )
                return clients[provider.provider_id]

            def check(encrypted: str, provider: Provider, http: httpx.Client) -> KeyVerdict:
                try:
                    api_key = crypto.decrypt(encrypted)
                except crypto.SecretUnavailable:
                    return KeyVerdict(False, "unreadable")
                pacer.wait()
                return _check_key(api_key, provider=provider, client=http)

            while batch := _due_batch(run, after_id):
                after_id = batch[-1][0]
                futures = {}
                for pk, encrypted, plan_id in batch:
                    provider = _provider(plan_id)
                    futures[pool.submit(check, encrypted, provider, client_for(provider))] = pk
                for future in as_completed(futures):
                    outcome = _record(run, futures[future], future.result(), clock())
                    if outcome == "quarantined":
                        quarantined_ids.add(futures[future])
        run.refresh_from_db()
        run.finished_at = clock()
        run.save(update_fields=["finished_at"])
    _after_quarantine(quarantined_ids, clock())
    return run


def _after_quarantine(credential_ids: set[int], now: datetime) -> None:
    """Quarantined stock is stock gone: the low-stock alert of each plan concerned (O3)."""
    if not credential_ids:
        return
    from inventory.alerts import check_low_stock

    plans = set(Credential.objects.filter(pk__in=credential_ids).values_list("plan_id", flat=True))
    for plan_id in sorted(plans):
        check_low_stock(plan_id=plan_id, now=now)


# --- Staff re-test (SPEC H2) --------------------------------------------------------------------


def retest_credential(*, credential_id: object, actor: str, now: datetime) -> KeyVerdict:
    """Re-test a quarantined credential; when the provider accepts it again it returns to
    `available` (and the plan counts as restocked). The check runs before any lock; the outcome
    is recorded under the credential's lock, if it is still quarantined. Both outcomes are
    audited."""
    credential = Credential.objects.filter(pk=_pk(credential_id)).first()
    if credential is None or credential.state != Credential.State.QUARANTINED:
        raise InvalidCredentialState(
            "Only a quarantined credential can be re-tested."
            if credential is not None
            else "There is no such credential."
        )
    try:
        verdict = _check_key(
            crypto.decrypt(credential.encrypted_key), provider=_provider(credential.plan_id)
        )
    except crypto.SecretUnavailable:
        verdict = KeyVerdict(False, "unreadable")
    with transaction.atomic(durable=True):
        credential = lock_credential(credential.pk)
        if credential.state != Credential.State.QUARANTINED:
            raise InvalidCredentialState("The credential left quarantine meanwhile.")
        if verdict.ok:
            had_stock = Credential.objects.filter(
                plan_id=credential.plan_id, state=Credential.State.AVAILABLE
            ).exists()
            credential.state = Credential.State.AVAILABLE
            credential.quarantined_at = None
            credential.health_checked_at = now
            credential.health_note = ""
            credential.save(
                update_fields=["state", "quarantined_at", "health_checked_at", "health_note"]
            )
            record_event(
                actor=actor,
                subject=credential,
                event_type="credential.returned_to_stock",
                now=now,
                old={"state": Credential.State.QUARANTINED},
                new={"state": credential.state},
            )
            if not had_stock:
                plan_id = credential.plan_id
                transaction.on_commit(lambda: _announce_restock(plan_id), robust=True)
        else:
            note = CHECK_NOTES.get(verdict.error or "", "the re-test failed")
            credential.health_checked_at = now
            credential.health_note = note
            credential.save(update_fields=["health_checked_at", "health_note"])
            record_event(
                actor=actor,
                subject=credential,
                event_type="credential.retest_failed",
                now=now,
                old={"state": credential.state},
                new={"state": credential.state, "reason": note},
            )
    return verdict


def _pk(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _announce_restock(plan_id: str) -> None:
    from inventory.alerts import rearm_low_stock
    from inventory.signals import announce_restock

    rearm_low_stock(plan_id=plan_id)
    announce_restock(plan_id)
