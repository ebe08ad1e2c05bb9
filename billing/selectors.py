"""Reads for the credits page and API."""

from __future__ import annotations

from billing.models import CreditAccount, LedgerEntry


def credit_account_for(user) -> CreditAccount:
    account = CreditAccount.objects.filter(user=user).first()
    return account or CreditAccount(user=user, balance_micros=0)


def ledger_page(user, *, before_id: int | None = None, limit: int = 50) -> list[LedgerEntry]:
    """Newest first, keyset-paginated by id (entries are append-only, so ids order them)."""
    entries = LedgerEntry.objects.filter(account__user=user).order_by("-id")
    if before_id is not None:
        entries = entries.filter(id__lt=before_id)
    return list(entries[:limit])


def top_up_for_term(*, subscription_id: int, due_at) -> dict | None:
    """The auto top-up attempt of one due term, as the subscription page shows it (SPEC M4, U4):
    status, amount, the decline reason in plain words, where to authenticate."""
    from billing.models import TopUpAttempt
    from billing.topup import decline_words

    attempt = TopUpAttempt.objects.filter(subscription_id=subscription_id, due_at=due_at).first()
    if attempt is None:
        return None
    return {
        "status": attempt.status,
        "amount_micros": attempt.amount_micros,
        "decline_reason": decline_words(attempt.decline_code)
        if attempt.status == TopUpAttempt.Status.DECLINED
        else "",
        "action_url": attempt.action_url
        if attempt.status == TopUpAttempt.Status.REQUIRES_ACTION
        else "",
    }
