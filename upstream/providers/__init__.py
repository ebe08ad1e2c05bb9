"""The upstream providers (SPEC V1): one module per provider behind one interface
(`upstream.providers.base.Provider`), found by provider id in the registry
(`upstream.providers.registry`). Only the provider modules and the catalog's settings name a
provider; everything else asks the registry (tests/upstream/test_provider_names.py)."""
