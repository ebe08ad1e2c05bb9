"""A third provider made up for tests/providers/test_third_provider.py (issue 18 acceptance):
its module and its own stand-in, nothing else. Registered at test time through the settings
(`CODING_PLANS_PROVIDER_MODULES`, `PROVIDERS`, a catalog entry)."""

from __future__ import annotations

from standins import minimax as standin_kit
from upstream.providers.base import Provider


class Acme(Provider):
    provider_id = "acme"
    base_url_setting = "ACME_API_BASE_URL"
    timeout_setting = "ACME_TIMEOUT_SECONDS"
    chat_path = "/v2/chat"
    example_model = "acme-coder"


PROVIDER = Acme()


class _AcmeHandler(standin_kit._Handler):
    """Acme's API: chat completions at `/v2/chat`, OpenAI's shapes, no quota endpoint."""

    NAME = "Acme"
    DEFAULT_MODEL = "acme-coder"
    CHAT_PATHS = ("/v2/chat",)
    QUOTA_PATHS = ()


class AcmeStandin(standin_kit.StandinServer):
    HANDLER = _AcmeHandler
