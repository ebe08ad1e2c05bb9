"""Shared checks for the billing tests."""

from __future__ import annotations

from django.db.models import Count, OuterRef, Subquery, Sum

from billing.models import CreditAccount, LedgerEntry


def ledger_state(user) -> tuple[int, int, int | None, int]:
    """(cached balance, sum of entry amounts, last entry's balance_after, entry count)."""
    last = LedgerEntry.objects.filter(account=OuterRef("pk")).order_by("-id")
    row = (
        CreditAccount.objects.filter(user=user)
        .annotate(
            total=Sum("entries__amount_micros"),
            count=Count("entries"),
            last=Subquery(last.values("balance_after_micros")[:1]),
        )
        .values_list("balance_micros", "total", "last", "count")
        .get()
    )
    balance, total, last_after, count = row
    return balance, total or 0, last_after, count
