"""Customer e-mails about subscriptions (issue 19, SPEC E1): the purchase receipt, each renewal's
receipt, the renewal reminder, "cancellation scheduled" and "plan ended".

How one gets sent, exactly once per event:

1. The service that makes the event records its e-mail inside its own transaction: a
   `CustomerEmail` row, unique on (kind, event key), written with one prepared INSERT ... ON
   CONFLICT DO NOTHING — a second record of the same event (a re-run sweep, a retried request)
   writes nothing. It is an outbox row: it commits with the change or not at all. "Cancellation
   scheduled" and "plan ended" add one line, `emails.record(kind, subscription_id, event_at)`;
   the purchase and the renewal write their receipt's row in their own statement
   (`record_cte`) and hand its id to `deliver_after_commit` (issue 20). The sweep's reminders,
   which no other change carries, are recorded and queued at once by `queue`.
2. After the commit, `dispatch` queues its sending: inside `batched_delivery()` (the sweep) a
   hundred ids to one `send_customer_emails` task; in a request, through the process's
   publisher thread, which queues whatever ids arrive within LINGER seconds as one task, so a
   request never pays for a Celery publish (issue 20); with eager Celery (the tests), the task
   runs in place.
3. The task claims the row (`pending` → `sending`, one UPDATE; a duplicate delivery finds it
   claimed or `sent` and sends nothing), renders the message from the database as it is now
   (amounts in USD, times in UTC with the date spelled out, never a key), sends it with no
   transaction open and no row lock held, and marks it `sent`. A mail server that fails puts the
   row back to `pending` and the task retries with back-off.
4. The hourly sweep calls `sweep_emails`: it finds reminder candidates (keyset-batched like due
   subscriptions) and re-queues rows left `pending` (the broker was down at step 2, or the
   process died before its publisher queued them) or stuck in `sending` (a worker died
   mid-send).

No event loses its e-mail to a crash: every row commits with its change (a reminder's row is
written before it is queued, and a reminder not yet recorded is found again by the next sweep),
and a row whose id never reached the broker (the process died, the broker was down) is still
`pending`, so step 4 queues it again.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue as queues
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from billing.models import CreditAccount
from billing.topup import top_up_available
from codingplans import sql
from codingplans.mail import send_templated, site_url, spelled_date, spelled_utc
from codingplans.money import display_usd
from subscriptions.models import ChargedTerm, CustomerEmail, Subscription

logger = logging.getLogger(__name__)

Kind = CustomerEmail.Kind
Status = CustomerEmail.Status
PURCHASE_RECEIPT = Kind.PURCHASE_RECEIPT
RENEWAL_RECEIPT = Kind.RENEWAL_RECEIPT
RENEWAL_REMINDER = Kind.RENEWAL_REMINDER
CANCELLATION_SCHEDULED = Kind.CANCELLATION_SCHEDULED
PLAN_ENDED = Kind.PLAN_ENDED

REMINDER_LEAD = timedelta(days=3)  # SPEC E1: 3 days before the period end
STALE_CLAIM = timedelta(minutes=10)  # a claim this old belongs to a worker that died
MAX_ATTEMPTS = 10  # the sweep stops re-queuing an e-mail that failed this often

# SPEC E1: "plan ended (with the reason)", in plain words.
ENDED_BECAUSE = {
    Subscription.Reason.USER_REQUESTED: (
        "You canceled it, so it ended at the end of its paid period, as you asked."
    ),
    Subscription.Reason.INSUFFICIENT_CREDITS: (
        "Your credit balance did not cover its renewal price of {price} and automatic top-up "
        "was off, so it could not be renewed."
    ),
    Subscription.Reason.PAYMENT_FAILED: (
        "Your credit balance did not cover its renewal price of {price}, and no payment "
        "arrived within the grace period."
    ),
    Subscription.Reason.ADMINISTRATIVE: (
        "An operator ended it. Contact support if you did not expect this."
    ),
    Subscription.Reason.ACCOUNT_DELETED: "Your account was deleted.",
}


def event_key(subscription_id: int, event_at: datetime | None = None) -> str:
    if event_at is None:
        return str(subscription_id)
    return f"{subscription_id}:{event_at.astimezone(UTC).isoformat()}"


# --- recording and queuing ---------------------------------------------------------------------


def record(kind: str, subscription_id: int, event_at: datetime | None = None) -> None:
    """The one line a service adds inside its transaction: this event's e-mail row is written
    now, in that transaction (an outbox row: it commits with the change or not at all, so a
    process that dies right after the commit leaves it `pending` for the sweep to queue), and its
    sending is queued once the transaction commits. A second call for the same event (a re-run
    sweep, a retried request) writes and queues nothing."""
    deliver_after_commit(_insert(kind, subscription_id, event_at))


class _Batch:
    """E-mails recorded in a `batched_delivery()` block, queued as one task per
    DELIVERY_BATCH_SIZE of them."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def add(self, email_id: int) -> None:
        self.ids.append(email_id)
        if len(self.ids) >= DELIVERY_BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        ids, self.ids = self.ids, []
        _publish(ids)


def _publish(ids: list[int]) -> None:
    """Queue one task sending these recorded e-mails. A broker that is down is logged: the rows
    stay pending and the sweep queues them again."""
    if not ids:
        return
    from subscriptions.tasks import send_customer_emails

    try:
        send_customer_emails.delay(ids)
    except Exception:
        logger.exception("customer e-mails %s… not sent now; the sweep queues them again", ids[0])


def _publish_batches(ids: list[int]) -> None:
    for start in range(0, len(ids), DELIVERY_BATCH_SIZE):
        _publish(ids[start : start + DELIVERY_BATCH_SIZE])


class _Publisher:
    """One thread per process queuing the e-mails that requests record, a batch per task.

    Queuing a Celery task costs a purchase more CPU than its own statements (issue 20), and
    receipts need not leave in the same millisecond: a request hands the id over and returns;
    this thread takes the first id, sleeps LINGER seconds while more arrive, and queues them
    a hundred to a task.
    A process that exits normally queues what it holds (atexit); one that is killed leaves the
    rows pending, and the sweep queues them again (`requeue_unsent`)."""

    LINGER = 0.1

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.ids: queues.SimpleQueue[int] = queues.SimpleQueue()
        self.thread = threading.Thread(
            target=self._run, name="customer-email-publisher", daemon=True
        )
        self.thread.start()
        atexit.register(self.drain)

    def add(self, email_id: int) -> None:
        self.ids.put(email_id)

    def _run(self) -> None:
        while True:
            first = self.ids.get()
            # Sleep rather than wait on the queue: a waiting thread would be woken (and take
            # the GIL from the request threads) for every id that arrives.
            time.sleep(self.LINGER)
            _publish_batches([first, *self._taken()])

    def _taken(self) -> list[int]:
        ids = []
        while True:
            try:
                ids.append(self.ids.get_nowait())
            except queues.Empty:
                return ids

    def drain(self) -> None:
        _publish_batches(self._taken())


_publisher: _Publisher | None = None
_publisher_lock = threading.Lock()


def _process_publisher() -> _Publisher:
    """This process's publisher, started on first use (and again in a forked child, which
    inherits the object but not the thread)."""
    global _publisher
    publisher = _publisher
    if publisher is not None and publisher.pid == os.getpid():
        return publisher
    with _publisher_lock:
        if _publisher is None or _publisher.pid != os.getpid():
            _publisher = _Publisher()
        return _publisher


DELIVERY_BATCH_SIZE = 100
_batch: ContextVar[_Batch | None] = ContextVar("subscriptions_emails_batch", default=None)


@contextmanager
def batched_delivery():
    """Within the block, the e-mails `queue` records are queued DELIVERY_BATCH_SIZE to a task
    (and the rest when the block ends) rather than one task each: the sweep renews thousands,
    and queuing a Celery task costs more CPU than a renewal's own statements (issue 20). An
    e-mail whose batch was never queued (the process died) stays `pending`, and a later sweep
    queues it again (`requeue_unsent`), as when the broker is down."""
    batch = _Batch()
    token = _batch.set(batch)
    try:
        yield
    finally:
        _batch.reset(token)
        batch.flush()


def send_customer_emails(*, email_ids: list[int], now: datetime) -> dict[str, int]:
    """`send_customer_email` for each of a batch (the sweep's receipts): one that fails with a
    mail error is queued again on its own, with that task's retries."""
    import smtplib

    outcomes: dict[str, int] = {}
    for email_id in email_ids:
        try:
            outcome = send_customer_email(email_id=email_id, now=now)
        except (smtplib.SMTPException, OSError):
            logger.warning("customer e-mail %s failed in a batch; queued on its own", email_id)
            _deliver(email_id)
            outcome = "requeued"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


# The e-mail's row as a common table expression of a service's own statement: the purchase
# and the renewal record their receipt in the statement that charges for it (issue 20), so the
# row exists exactly when the charge commits, without a round trip or a commit of its own, and
# with no window in which a crash loses the e-mail. `queue` runs the same expression on its
# own, one lean prepared statement (issue 20: through the ORM's get_or_create in its own
# transaction, recording a receipt took five round trips).
_RECORD_CTE = """
    {name} AS (
        INSERT INTO {email} (kind, event_key, subscription_id, event_at, status, created_at,
            attempts, last_error)
        SELECT %({name}_kind)s, %({name}_key)s, %({name}_subscription)s, %({name}_event_at)s,
            %({name}_status)s, %({name}_created_at)s, 0, ''
        FROM {source}
        ON CONFLICT (kind, event_key) DO NOTHING
        RETURNING id
    )
"""


def record_cte(name: str, *, source: str) -> str:
    """A `name AS (INSERT … RETURNING id)` common table expression recording an e-mail once
    per row of `source` (another CTE of the statement: written only if the change it tells
    of was), with `queue`'s once-per-event rule; its parameters are `record_params(name, …)`.
    `name` returns the new row's id, or nothing when the event already has its e-mail; the
    caller hands that id to `deliver_after_commit`."""
    return _RECORD_CTE.format(name=name, email=sql.table(CustomerEmail), source=source)


def record_params(
    name: str, kind: str, subscription_id: int, event_at: datetime | None = None
) -> dict[str, object]:
    """The parameters of `record_cte(name, …)` for this event. `created_at` is the wall clock
    for every e-mail row, however it is written: delivery bookkeeping (`requeue_unsent` judges
    staleness by it), not the event's time, which is `event_at`."""
    return {
        f"{name}_kind": kind,
        f"{name}_key": event_key(subscription_id, event_at),
        f"{name}_subscription": subscription_id,
        f"{name}_event_at": event_at,
        f"{name}_status": Status.PENDING,
        f"{name}_created_at": timezone.now(),
    }


@cache
def _record_sql() -> str:
    return f"WITH {record_cte('recorded', source='(SELECT 1) AS one')} SELECT id FROM recorded"  # noqa: S608 - table name from the model


def _insert(kind: str, subscription_id: int, event_at: datetime | None) -> int | None:
    """The event's CustomerEmail row; its id, or None when the event has its e-mail already
    (another hook, a re-run sweep, recorded it)."""
    row = sql.execute(_record_sql(), record_params("recorded", kind, subscription_id, event_at))
    return None if row is None else row.id


def queue(kind: str, subscription_id: int, *, event_at: datetime | None = None) -> bool:
    """Record the e-mail for this event and queue its sending at once (the sweep's reminders,
    which no other change carries); False when the event already has its e-mail (nothing is
    queued twice)."""
    email_id = _insert(kind, subscription_id, event_at)
    if email_id is None:
        return False
    dispatch(email_id)
    return True


def deliver_after_commit(email_id: int | None) -> None:
    """Queue the sending of an e-mail whose row the caller's transaction wrote (`record_cte`),
    once that transaction commits; None (the event had its e-mail already) queues nothing."""
    if email_id is not None:
        transaction.on_commit(lambda: dispatch(email_id), robust=True)


def dispatch(email_id: int) -> None:
    """Queue the sending of a recorded e-mail: with the enclosing `batched_delivery()` block's
    batch, in place when Celery runs tasks eagerly (nothing to batch), else through this
    process's publisher thread."""
    batch = _batch.get()
    if batch is not None:
        batch.add(email_id)
    elif _eager():
        _deliver(email_id)
    else:
        _process_publisher().add(email_id)


def _eager() -> bool:
    from celery import current_app

    return bool(current_app.conf.task_always_eager)


def _deliver(email_id: int) -> None:
    from subscriptions.tasks import send_customer_email

    try:
        send_customer_email.delay(email_id)
    except Exception:  # the broker is down (or, eagerly run, the send failed): the sweep retries
        logger.exception("customer e-mail %s not sent now; the sweep queues it again", email_id)


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    to: str
    subject: str
    template: str
    context: dict


def send_customer_email(*, email_id: int, now: datetime) -> str:
    """Send one recorded e-mail unless it is sent or being sent (SPEC E1: once per event).
    Returns "sent", "skipped" or "already". A mail-server error puts it back to pending and
    propagates (the task retries)."""
    claimed = (
        CustomerEmail.objects.filter(pk=email_id)
        .filter(
            Q(status=Status.PENDING) | Q(status=Status.SENDING, claimed_at__lt=now - STALE_CLAIM)
        )
        .update(status=Status.SENDING, claimed_at=now, attempts=F("attempts") + 1)
    )
    if not claimed:
        return "already"
    email = CustomerEmail.objects.select_related("subscription__user").get(pk=email_id)
    try:
        message = compose(email)
        if message is not None:
            send_templated(
                to=message.to,
                subject=message.subject,
                template=message.template,
                context=message.context,
            )
    except Exception as exc:
        CustomerEmail.objects.filter(pk=email_id, status=Status.SENDING).update(
            status=Status.PENDING, last_error=exc.__class__.__name__[:100]
        )
        raise
    status = Status.SENT if message is not None else Status.SKIPPED
    CustomerEmail.objects.filter(pk=email_id, status=Status.SENDING).update(
        status=status, sent_at=now if message is not None else None, last_error=""
    )
    return str(status)


def compose(email: CustomerEmail) -> Message | None:
    """The message for a recorded e-mail, from the database as it is now; None when it should
    not go out (the account is gone, the reminder was turned off or no longer applies)."""
    subscription = email.subscription
    user = subscription.user
    if user.deleted_at is not None or not user.is_active:
        return None
    price = display_usd(subscription.price_micros)
    context = {
        "plan_name": subscription.plan_name,
        "provider_name": settings.PROVIDERS.get(subscription.provider_id, subscription.provider_id),
        "price": price,
        "period_days": subscription.billing_period_days,
        "subscription_url": site_url(f"/subscriptions/coding-plans/{subscription.pk}/"),
        "credits_url": site_url("/credits/"),
        "account_url": site_url("/account/#notifications"),
        "byok_url": site_url("/byok/"),
        "subscriptions_url": site_url("/subscriptions/"),
    }
    plan = context["plan_name"]
    if email.kind in (PURCHASE_RECEIPT, RENEWAL_RECEIPT):
        terms = ChargedTerm.objects.select_related("ledger_entry").filter(subscription=subscription)
        if email.kind == PURCHASE_RECEIPT:
            term = terms.order_by("period_start").first()
        else:
            term = terms.filter(period_start=email.event_at).first()
        if term is None:
            return None
        amount = display_usd(term.amount_micros)
        context |= {
            "amount": amount,
            "charged_at": spelled_utc(term.charged_at),
            "period_start": spelled_utc(term.period_start),
            "period_end": spelled_utc(term.period_end),
            "balance_after": display_usd(term.ledger_entry.balance_after_micros),
            "receipt_number": f"CP-{term.pk:06d}",
        }
        if email.kind == PURCHASE_RECEIPT:
            subject = f"Receipt: {plan}, {amount}"
            template = "subscriptions/email/purchase_receipt"
        else:
            subject = f"Receipt: {plan} renewed, {amount}"
            template = "subscriptions/email/renewal_receipt"
    elif email.kind == RENEWAL_REMINDER:
        if not user.renewal_reminders or not _reminder_applies(subscription, email.event_at):
            return None
        account = CreditAccount.objects.get(user_id=user.pk)
        balance = account.balance_micros
        context |= {
            # On but with no processor configured (SPEC M7): it cannot run, so say that.
            "auto_top_up_on": account.auto_top_up_enabled,
            "renews_at": spelled_utc(subscription.current_period_end),
            "balance": display_usd(balance),
            "shortfall": display_usd(subscription.price_micros - balance),
        }
        subject = (
            f"Add credits: your {plan} renews on {spelled_date(subscription.current_period_end)}"
        )
        template = "subscriptions/email/renewal_reminder"
    elif email.kind == CANCELLATION_SCHEDULED:
        context |= {
            "access_until": spelled_utc(subscription.current_period_end),
            "requested_at": spelled_utc(email.event_at or subscription.updated_at),
        }
        subject = f"Your {plan} is set to end on {spelled_date(subscription.current_period_end)}"
        template = "subscriptions/email/cancellation_scheduled"
    elif email.kind == PLAN_ENDED:
        if subscription.status != Subscription.Status.CANCELED:
            return None
        reason = subscription.cancellation_reason or ""
        context |= {
            "ended_at": spelled_utc(subscription.canceled_at or subscription.updated_at),
            "reason": ENDED_BECAUSE.get(reason, "It was ended.").format(price=price),
            "reason_code": reason,
        }
        subject = f"Your {plan} has ended"
        template = "subscriptions/email/plan_ended"
    else:
        return None
    return Message(to=user.email, subject=subject, template=template, context=context)


def _reminder_applies(subscription: Subscription, period_end: datetime | None) -> bool:
    """Still true at sending time: the same period is about to renew and will not be paid."""
    if (
        subscription.status != Subscription.Status.ACTIVE
        or subscription.cancel_at_period_end
        or subscription.current_period_end != period_end
    ):
        return False
    account = CreditAccount.objects.filter(user_id=subscription.user_id).first()
    if account is None or account.balance_micros >= subscription.price_micros:
        return False
    return not (account.auto_top_up_enabled and top_up_available())


# --- the sweep's part --------------------------------------------------------------------------


def reminder_candidates(now: datetime):
    """Live subscriptions whose period ends within REMINDER_LEAD, that will renew (not
    canceling), whose balance does not cover the price, with auto top-up off (or no processor
    to run it), whose owner wants reminders, and that have no reminder for this period yet."""
    accounts = CreditAccount.objects.filter(
        user_id=OuterRef("user_id"), balance_micros__lt=OuterRef("price_micros")
    )
    if top_up_available():
        accounts = accounts.filter(auto_top_up_enabled=False)
    reminded = CustomerEmail.objects.filter(
        subscription_id=OuterRef("pk"),
        kind=RENEWAL_REMINDER,
        event_at=OuterRef("current_period_end"),
    )
    return (
        Subscription.objects.filter(
            status=Subscription.Status.ACTIVE,
            cancel_at_period_end=False,
            current_period_end__gt=now,
            current_period_end__lte=now + REMINDER_LEAD,
            user__is_active=True,
            user__deleted_at__isnull=True,
            user__renewal_reminders=True,
        )
        .filter(Exists(accounts))
        .exclude(Exists(reminded))
    )


def sweep_emails(*, now: datetime, batch_size: int, deadline: float) -> int:
    """The sweep's e-mail work (SPEC E1), after the due subscriptions: queue each reminder due
    now, in (period end, id) keyset batches within the sweep's time budget, then re-queue
    e-mails left unsent. Returns the reminders queued (SweepRun's `reminders_sent`)."""
    queued = 0
    cursor: tuple[datetime, int] | None = None
    while time.monotonic() < deadline:
        batch = reminder_candidates(now).order_by("current_period_end", "id")
        if cursor is not None:
            batch = batch.filter(
                Q(current_period_end__gt=cursor[0])
                | Q(current_period_end=cursor[0], id__gt=cursor[1])
            )
        rows = list(batch.values_list("id", "current_period_end")[:batch_size])
        if not rows:
            break
        for subscription_id, period_end in rows:
            cursor = (period_end, subscription_id)
            try:
                queued += queue(RENEWAL_REMINDER, subscription_id, event_at=period_end)
            except Exception:
                logger.exception("renewal reminder for subscription %s failed", subscription_id)
    requeue_unsent(limit=batch_size)
    return queued


def requeue_unsent(*, limit: int = 1000) -> int:
    """Queue again e-mails recorded but not sent: left pending (the broker was down, or every
    retry failed) or claimed by a worker that died. Each is still sent at most once.

    Judged by the wall clock, as `created_at` and `claimed_at` are stamped (delivery
    bookkeeping), not by the sweep's `now`: a sweep run for another instant (a catch-up, a
    test's clock) would otherwise take a row its own transaction recorded a moment ago, whose
    sending is already queued by that commit's hook, for one left behind."""
    now = timezone.now()
    stuck = (
        CustomerEmail.objects.filter(attempts__lt=MAX_ATTEMPTS)
        .filter(
            Q(status=Status.PENDING, created_at__lt=now - STALE_CLAIM)
            | Q(status=Status.SENDING, claimed_at__lt=now - STALE_CLAIM)
        )
        .order_by("created_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    ids = list(stuck)
    for email_id in ids:
        _deliver(email_id)
    return len(ids)
