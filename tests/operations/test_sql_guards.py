"""Guards for the hand-written SQL fast path (issue 14).

The purchase, the renewal, the claim and the ledger write their rows with statements of our
own (codingplans.sql, issue 8) instead of the ORM, so nothing of Django's checks their columns.
These tests hold three rules the ORM would otherwise hold for us:

- each raw write comes from the app that owns the table (an app exports a fragment or a
  function, as billing.entry_ctes does, instead of another app writing its rows);
- every NOT NULL column of a table written by hand is named in the INSERT (the model's Python
  defaults do not exist in the database);
- a row written that way passes `full_clean()`.
"""

from __future__ import annotations

import ast
import importlib
import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.apps import apps
from django.db import models
from django.utils import timezone

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["accounts", "adminops", "billing", "byok", "catalog", "gateway", "inventory",
           "subscriptions", "upstream", "codingplans"]  # fmt: skip
# codingplans.sql builds generic statements from whatever model its caller names; the callers
# are checked instead (the `sql.insert(Model, …)` scan below).
GENERIC = {"codingplans.sql"}

_WRITE = re.compile(
    r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+(\{[^}]+\}|\"?[a-z_]+\"?)(?:\s*\(([^)]*)\))?",
    re.IGNORECASE,
)

# Every raw write in the product: (module, the statement's table placeholder) -> the model it
# writes. A new hand-written write must be added here, which makes its owner a reviewed choice.
RAW_WRITES: dict[tuple[str, str], str] = {
    ("accounts.tokens", "{token}"): "accounts.ApiToken",  # last use, sync and async (issue 20)
    ("adminops.audit", "{sql.table(AuditEvent)}"): "adminops.AuditEvent",
    ("billing.services", "{account}"): "billing.CreditAccount",
    ("billing.services", "{entry}"): "billing.LedgerEntry",
    ("byok.services", "{table}"): "byok.ByokKey",
    ("inventory.services", "{table}"): "inventory.Credential",
    ("subscriptions.sweep", "{term}"): "subscriptions.ChargedTerm",
    ("subscriptions.sweep", "{subscription}"): "subscriptions.Subscription",
    ("subscriptions.purchase", "{subscription}"): "subscriptions.Subscription",
    ("subscriptions.purchase", "{term}"): "subscriptions.ChargedTerm",
    ("subscriptions.purchase", "{intent}"): "subscriptions.AvailabilityIntent",
    ("subscriptions.purchase", "{request}"): "subscriptions.PurchaseRequest",
    ("subscriptions.emails", "{email}"): "subscriptions.CustomerEmail",  # issue 20
}


def _modules():
    for app in PRODUCT:
        for path in sorted((ROOT / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            module = module.removesuffix(".__init__")
            if module not in GENERIC:
                yield module, ast.parse(path.read_text())


def _sql_texts(tree: ast.AST):
    """String literals and f-strings (their `{expr}` parts as written) that write rows."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = ast.unparse(node)[2:-1]
        else:
            continue
        for match in _WRITE.finditer(text):
            verb = match.group(1).split()[0].upper()
            if verb == "UPDATE" and not re.match(r"\s*SET\b", text[match.end(2) :], re.I):
                continue  # prose ("update the …"), not a statement
            yield verb, match.group(2), match.group(3)


def _raw_writes():
    found = {}
    for module, tree in _modules():
        for verb, target, columns in _sql_texts(tree):
            found.setdefault((module, target), []).append((verb, columns))
    return found


def _owner(module: str) -> str:
    return module.split(".")[0]


def test_every_raw_sql_write_is_listed_and_made_by_the_app_owning_its_table():
    found = _raw_writes()
    assert set(found) == set(RAW_WRITES), (
        "hand-written writes changed: list each in RAW_WRITES with the model it writes"
    )
    for (module, _target), label in RAW_WRITES.items():
        model = apps.get_model(label)
        assert model._meta.app_label == _owner(module), (
            f"{module} writes {label}'s table: call a function or compose a fragment that "
            f"{model._meta.app_label} exports instead"
        )


def test_lean_orm_style_writes_name_a_model_of_their_own_app():
    """`sql.insert(Model, …)` / `sql.update(…)` / `sql.insert_unless_conflict(…)` callers."""
    seen = 0
    for module, tree in _modules():
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"insert", "update", "insert_unless_conflict"}
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"sql", "sql_helpers"}
                and node.args
                and isinstance(node.args[0], ast.Name)
            ):
                continue
            model = getattr(importlib.import_module(module), node.args[0].id)
            assert issubclass(model, models.Model)
            assert model._meta.app_label == _owner(module), (
                f"{module} writes {model.__name__} ({model._meta.app_label}) by hand"
            )
            seen += 1
    assert seen, "the scan found no lean writes at all: it no longer sees them"


def _required_columns(model) -> set[str]:
    return {
        field.column
        for field in model._meta.concrete_fields
        if not field.null and not field.primary_key and field.db_default is models.NOT_PROVIDED
    }


def test_every_hand_written_insert_names_each_not_null_column():
    for (module, target), label in RAW_WRITES.items():
        model = apps.get_model(label)
        for verb, columns in _raw_writes()[(module, target)]:
            if verb != "INSERT":
                continue
            if columns is None or "{" in columns:  # generated from the model's own column list
                assert module == "adminops.audit"
                from adminops.audit import _COLUMNS

                named = set(_COLUMNS)
            else:
                named = {c.strip().strip('"') for c in columns.split(",")}
            missing = _required_columns(model) - named
            assert not missing, f"{module} inserts into {label} without {sorted(missing)}"


@pytest.mark.django_db(transaction=True)
def test_rows_written_by_the_purchase_and_the_renewal_pass_full_clean(make_user, stock, settings):
    """SPEC P4, L2, L4: the rows of the one-statement activation and renewal (its receipt's
    e-mail row included) and of the sweep's top-up attempt are valid models."""
    from adminops.models import AuditEvent
    from billing.models import CreditAccount, LedgerEntry, TopUpAttempt
    from billing.services import set_auto_top_up
    from byok.models import ByokKey
    from inventory.models import Credential
    from subscriptions.models import ChargedTerm, CustomerEmail, PurchaseRequest, Subscription
    from subscriptions.purchase import purchase_plan
    from subscriptions.sweep import run_billing_sweep

    settings.CODING_PLANS_TOP_UP_BACKEND = "simulated-approve"
    stock("minimax-token-plan-plus", 2)
    now = timezone.now()
    user = make_user(credits_usd=100)
    short = make_user(credits_usd=20)  # the purchase only: short at the renewal, top-up on
    set_auto_top_up(user=short, enabled=True, amount_micros=20_000_000, actor="test", now=now)
    ids = [
        purchase_plan(
            user=buyer, plan_id="minimax-token-plan-plus", idempotency_key="k-guards", now=now
        ).subscription_id
        for buyer in (user, short)
    ]
    subscription = Subscription.objects.get(pk=ids[0])
    run_billing_sweep(now=subscription.current_period_end + timedelta(minutes=1))
    assert ChargedTerm.objects.filter(subscription=subscription).count() == 2
    assert CustomerEmail.objects.filter(kind="renewal_receipt").count() == 1
    assert TopUpAttempt.objects.filter(subscription_id=ids[1]).count() == 1

    for model in (
        Subscription, ChargedTerm, PurchaseRequest, ByokKey, Credential, CreditAccount,
        LedgerEntry, AuditEvent, CustomerEmail, TopUpAttempt,
    ):  # fmt: skip
        rows = list(model.objects.all())
        assert rows, model
        for row in rows:
            row.full_clean()
