"""The provider registry (SPEC V1): provider id → its module's `PROVIDER`.

Which modules are providers is a setting, `CODING_PLANS_PROVIDER_MODULES` (provider id →
dotted module path), next to the catalog that names each plan's provider: adding a provider is
its module, its settings (base URL, name) and its catalog entries — nothing else
(tests/upstream/test_third_provider.py). Loaded once per value of the setting, so a lookup on
the gateway's hot path is a dictionary read.
"""

from __future__ import annotations

import importlib

from django.conf import settings

from upstream.providers.base import Provider

_loaded: tuple[object, dict[str, Provider]] | None = None


class UnknownProvider(LookupError):
    pass


def _providers() -> dict[str, Provider]:
    global _loaded
    modules = settings.CODING_PLANS_PROVIDER_MODULES
    loaded = _loaded
    if loaded is not None and loaded[0] is modules:
        return loaded[1]
    providers: dict[str, Provider] = {}
    for provider_id, path in modules.items():
        provider = importlib.import_module(path).PROVIDER
        if provider.provider_id != provider_id:
            raise ValueError(f"{path} is provider {provider.provider_id!r}, not {provider_id!r}")
        providers[provider_id] = provider
    _loaded = (modules, providers)
    return providers


def get(provider_id: object) -> Provider | None:
    """The provider with this id, or None (an unknown id, or not a string)."""
    if not isinstance(provider_id, str):
        return None
    return _providers().get(provider_id)


def provider(provider_id: object) -> Provider:
    """The provider with this id; UnknownProvider when there is none."""
    found = get(provider_id)
    if found is None:
        raise UnknownProvider(str(provider_id)[:40])
    return found


def all_providers() -> list[Provider]:
    """Every registered provider, in the setting's order."""
    return list(_providers().values())


def provider_ids() -> list[str]:
    return list(_providers())
