"""Uploading credentials (SPEC I1–I3): parse, validate live, store — all or nothing.

Parse and de-duplicate first (within the file and against every credential ever stored),
validate every key live against the plan's provider (SPEC V1) with bounded concurrency, then
store everything in one transaction — or nothing. The report names lines and reasons, never
keys. The admin's two-step upload (recorded, then processed in the background) is in
`inventory.upload_jobs`; the command and the tests call `upload_credentials` directly.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from django.db import IntegrityError, transaction

from adminops.audit import record_event
from catalog import get_plan
from codingplans import crypto
from inventory.errors import UnknownPlan
from inventory.models import Credential, InventoryUpload
from upstream.providers import registry
from upstream.providers.base import KeyCheck, Provider

DEFAULT_VALIDATION_CONCURRENCY = 10
MAX_LINES = 10_000
_UPSTREAM_ID_SHAPE = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass
class UploadReport:
    stored: int = 0
    errors: list[dict[str, object]] = field(default_factory=list)
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.message

    def as_json(self) -> dict[str, object]:
        return {"stored": self.stored, "errors": self.errors}


@dataclass(frozen=True)
class _Line:
    number: int
    api_key: str
    upstream_plan_id: str
    fingerprint: str


def _parse(text: str, provider: Provider) -> tuple[list[_Line], list[dict[str, object]]]:
    """One credential per line, `<api key>::<upstream plan id>`; blank lines ignored (I1)."""
    lines: list[_Line] = []
    errors: list[dict[str, object]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, upstream_id = line.partition("::")
        key, upstream_id = key.strip(), upstream_id.strip()
        if not sep:
            errors.append(
                {"line": number, "reason": "malformed: expected <api key>::<upstream plan id>"}
            )
            continue
        if not provider.has_key_shape(key):
            errors.append(
                {
                    "line": number,
                    "reason": f"malformed: the API key is empty or not {provider.key_shape_text}",
                }
            )
            continue
        if not _UPSTREAM_ID_SHAPE.match(upstream_id):
            errors.append(
                {
                    "line": number,
                    "reason": "malformed: the upstream plan id is empty or not a single token",
                }
            )
            continue
        fp = crypto.fingerprint(key)
        if fp in seen:
            errors.append(
                {"line": number, "reason": f"duplicate of line {seen[fp]} in this upload"}
            )
            continue
        seen[fp] = number
        lines.append(_Line(number, key, upstream_id, fp))
    return lines, errors


def count_credential_lines(text: str) -> int:
    """Non-blank lines: what an upload will try to store (blank lines are ignored, I1)."""
    return sum(1 for line in text.splitlines() if line.strip())


def line_limit_message(count: int) -> str:
    """Why an upload of `count` credential lines is refused for its size, or "" if it is not.
    The admin's form asks before queueing; `upload_credentials` asks again when it runs."""
    if count > MAX_LINES:
        return f"Too many lines: at most {MAX_LINES} credentials per upload."
    return ""


def _validate_live(
    lines: list[_Line],
    provider: Provider,
    *,
    concurrency: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, object]], int, bool]:
    """One minimal call per key (I3), at most `concurrency` at once, each with the client timeout.

    Returns (errors, keys left unchecked, whether the provider was unreachable). Once it is
    unreachable or times out, the upload is rejected whatever the other keys would say, so the
    keys not yet sent are not tried: a rejected upload then takes about one timeout, not one
    timeout per `concurrency` keys (a 10,000-line file would otherwise hang for hours).
    """
    concurrency = max(1, min(int(concurrency), 50))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    errors: list[dict[str, object]] = []
    done = 0
    skipped = 0
    unreachable = threading.Event()

    def check(line: _Line, http: httpx.Client) -> KeyCheck | None:
        if unreachable.is_set():  # set by whichever worker saw it first, before it takes more
            return None
        result = provider.check_key(line.api_key, client=http)
        if result.error == "network":
            unreachable.set()
        return result

    with provider.make_client(limits=limits) as http, ThreadPoolExecutor(concurrency) as pool:
        futures = {pool.submit(check, line, http): line for line in lines}
        for future in as_completed(futures):
            result = future.result()
            if result is None:
                skipped += 1
                continue
            if not result.ok:
                reason = provider.validation_reason(result.error)
                line = futures[future]
                errors.append({"line": line.number, "reason": f"failed live validation: {reason}"})
            done += 1
            if progress is not None:
                progress(done)
    return errors, skipped, unreachable.is_set()


def upload_credentials(
    *,
    plan_id: str,
    text: str,
    actor: str,
    now: datetime,
    concurrency: int = DEFAULT_VALIDATION_CONCURRENCY,
    progress: Callable[[int, int], None] | None = None,
    upload: InventoryUpload | None = None,
) -> UploadReport:
    """Parse, de-duplicate (within the file and against every credential ever stored), validate
    live, then store all or nothing (I1–I3). The report names lines and reasons, never keys."""
    plan = get_plan(plan_id)
    if plan is None:
        raise UnknownPlan()
    provider = registry.provider(plan.provider_id)
    report = UploadReport()
    lines, report.errors = _parse(text, provider)
    report.message = line_limit_message(len(lines) + len(report.errors))
    if report.message:
        return report
    if not lines and not report.errors:
        report.message = "The upload holds no credentials."
        return report
    known = set(
        Credential.objects.filter(fingerprint__in=[line.fingerprint for line in lines]).values_list(
            "fingerprint", flat=True
        )
    )
    fresh = []
    for line in lines:
        if line.fingerprint in known:
            report.errors.append(
                {
                    "line": line.number,
                    "reason": "duplicate of a credential already stored (in any state)",
                }
            )
        else:
            fresh.append(line)
    if report.errors:
        report.errors.sort(key=lambda e: e["line"])
        report.message = "Nothing was stored. Fix the lines listed and upload the whole file again."
        return report

    total = len(fresh)
    report.errors, unchecked, unreachable = _validate_live(
        fresh,
        provider,
        concurrency=concurrency,
        progress=(lambda done: progress(done, total)) if progress else None,
    )
    if report.errors:
        report.errors.sort(key=lambda e: e["line"])
        if unreachable:
            report.message = (
                f"Nothing was stored: {provider.name} could not be reached or did not answer in "
                "time"
                + (f" ({unchecked} credential(s) were not checked)" if unchecked else "")
                + ". Try the whole upload again later."
            )
        else:
            report.message = "Nothing was stored: some credentials failed live validation."
        return report

    try:
        with transaction.atomic(durable=True):
            Credential.objects.bulk_create(
                [
                    Credential(
                        plan_id=plan_id,
                        state=Credential.State.AVAILABLE,
                        encrypted_key=crypto.encrypt(line.api_key),
                        fingerprint=line.fingerprint,
                        upstream_plan_id=line.upstream_plan_id,
                        upload=upload,
                        created_at=now,
                    )
                    for line in fresh
                ]
            )
            record_event(
                actor=actor,
                # The admin upload's own row (as its start and rejection are), so filtering the
                # trail by that upload shows its whole story; a command upload has no row.
                subject=upload if upload is not None else ("inventory.plan", plan_id),
                event_type="inventory.uploaded",
                now=now,
                new={"plan_id": plan_id, "stored": total},
            )
            # robust: the credentials are stored once this commits; a broker that is down must
            # not turn a stored upload into an error (the operator would re-upload duplicates).
            transaction.on_commit(lambda: _after_restock(plan_id), robust=True)
    except IntegrityError:
        # The same key was stored by a concurrent upload between our check and the insert.
        # Name the clashing lines (I2), as the check before validation would have.
        clashing = set(
            Credential.objects.filter(
                fingerprint__in=[line.fingerprint for line in fresh]
            ).values_list("fingerprint", flat=True)
        )
        reason = "duplicate of a credential stored meanwhile by another upload"
        report.message = "Nothing was stored: a credential in this file was uploaded meanwhile."
        report.errors = [
            {"line": line.number, "reason": reason}
            for line in fresh
            if line.fingerprint in clashing
        ] or [{"line": 0, "reason": reason}]
        return report
    report.stored = total
    return report


def _after_restock(plan_id: str) -> None:
    from inventory.alerts import rearm_low_stock
    from inventory.signals import announce_restock

    rearm_low_stock(plan_id=plan_id)
    announce_restock(plan_id)
