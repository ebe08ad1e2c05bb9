"""Only the provider modules and the catalog's settings name a provider (SPEC V1, issue 18).

The rule, checked over every product source file (the apps' and the project package's Python,
the templates, the static files): the words "minimax" and "byteplus", in any case, appear only in
- `upstream/providers/<provider id>.py`, each provider's own module;
- `codingplans/settings.py`, which holds the catalog, the providers' names and their settings;
- migrations (history, applied as written).
Nowhere else — not in code, strings, comments or docstrings, and no allowlist: a page, message or
e-mail that needs a provider's name takes it from the catalog (`catalog.provider_name`) or the
registry (`upstream.providers.registry`). Stand-ins (`standins/`), tests, docs and benchmarks are
not product code.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_PACKAGES = (
    "accounts",
    "adminops",
    "billing",
    "byok",
    "catalog",
    "codingplans",
    "gateway",
    "inventory",
    "payments",
    "subscriptions",
    "upstream",
)
PROVIDER_NAMES = re.compile(r"minimax|byteplus", re.IGNORECASE)
SETTINGS = ROOT / "codingplans" / "settings.py"


def _product_files() -> list[Path]:
    files = [path for package in PRODUCT_PACKAGES for path in (ROOT / package).rglob("*.py")]
    for folder in ("templates", "static"):
        files += [path for path in (ROOT / folder).rglob("*") if path.is_file()]
    return sorted(files)


def _allowed(path: Path) -> bool:
    relative = path.relative_to(ROOT)
    if "migrations" in relative.parts or path == SETTINGS:
        return True
    provider_modules = {f"upstream/providers/{pid}.py" for pid in settings.PROVIDERS}
    return relative.as_posix() in provider_modules


def test_only_the_provider_modules_and_the_catalog_name_a_provider():
    files = _product_files()
    assert len(files) > 100  # the scan sees the product
    offenders = []
    for path in files:
        if _allowed(path):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            if PROVIDER_NAMES.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert offenders == [], "provider named outside its module:\n" + "\n".join(offenders)


def test_the_rule_catches_a_mention(tmp_path):
    # The pattern finds every spelling the rule is about.
    for spelling in ("MiniMax", "minimax", "MINIMAX_API_BASE_URL", "BytePlus", "byteplus/x"):
        assert PROVIDER_NAMES.search(f"a line with {spelling} in it")


def test_every_catalog_provider_has_a_module_and_a_name():
    from catalog import all_plans
    from upstream.providers import registry

    for plan in all_plans():
        provider = registry.get(plan.provider_id)
        assert provider is not None, plan.plan_id
        assert provider.name == settings.PROVIDERS[plan.provider_id]
    assert registry.provider_ids() == ["minimax", "byteplus"]
