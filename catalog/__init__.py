"""The catalog (SPEC C1–C3), read from settings: changes go through code review, not the admin."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from codingplans.money import format_usd


@dataclass(frozen=True)
class Plan:
    plan_id: str
    provider_id: str
    name: str
    price_micros: int
    billing_period_days: int
    features: tuple[str, ...]
    low_stock_threshold: int

    @property
    def provider_name(self) -> str:
        return provider_name(self.provider_id)

    @property
    def price_usd(self) -> str:
        return format_usd(self.price_micros)

    @property
    def cadence(self) -> str:
        """ "$20.00 / 30 days" (C2)."""
        return f"${self.price_usd} / {self.billing_period_days} days"


def provider_name(provider_id: str) -> str:
    """A provider's name as customers read it (SPEC C2); its id when the catalog has none."""
    return settings.PROVIDERS.get(provider_id, provider_id)


# The plans built from the catalog setting they came from: every purchase and renewal looks a
# plan up several times, and building them all each time was a measurable part of a purchase
# (issue 20). Held with the setting's own list, so a catalog replaced in settings (a deploy, a
# test's override) is read afresh; the setting is replaced, never mutated in place.
_built: tuple[object, list[Plan], dict[str, Plan]] | None = None


def _plans() -> tuple[list[Plan], dict[str, Plan]]:
    global _built
    catalog = settings.CODING_PLANS_CATALOG
    built = _built
    if built is None or built[0] is not catalog:
        plans = [
            Plan(
                plan_id=entry["plan_id"],
                provider_id=entry["provider_id"],
                name=entry["name"],
                price_micros=int(entry["price_micros"]),
                billing_period_days=int(entry["billing_period_days"]),
                features=tuple(entry.get("features", ())),
                low_stock_threshold=int(entry.get("low_stock_threshold", 0)),
            )
            for entry in catalog
        ]
        by_id: dict[str, Plan] = {}
        for plan in plans:
            by_id.setdefault(plan.plan_id, plan)  # the first entry of an id, as before
        built = _built = (catalog, plans, by_id)
    return built[1], built[2]


def all_plans() -> list[Plan]:
    return list(_plans()[0])


def get_plan(plan_id: object) -> Plan | None:
    if not isinstance(plan_id, str):
        return None
    return _plans()[1].get(plan_id)


def plan_ids() -> list[str]:
    return [plan.plan_id for plan in all_plans()]


def providers_in_catalog() -> list[str]:
    """The provider ids the catalog sells plans of, in catalog order (SPEC V2: the Subscription
    Center groups plans by provider)."""
    return list(dict.fromkeys(plan.provider_id for plan in all_plans()))
