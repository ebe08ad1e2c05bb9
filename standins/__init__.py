"""Development and test doubles of the upstream providers (issue 14: out of the product's import
path). `make dev` runs them and the tests start them on loopback; product code never imports them
(the import-linter contract in `make lint` holds that), except the `seed_demo` dev command.
"""

from __future__ import annotations

import importlib


def server_class(provider_id: str):
    """The stand-in server class for a provider (module `standins.<provider id>`, class
    `StandinServer`), or None when there is none."""
    try:
        module = importlib.import_module(f"standins.{provider_id}")
    except ModuleNotFoundError:
        return None
    return getattr(module, "StandinServer", None)
