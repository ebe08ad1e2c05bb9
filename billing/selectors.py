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
