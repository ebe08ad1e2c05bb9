"""The provider interface (SPEC V1) and the readings every provider's answers come down to.

A provider module subclasses `Provider` and says: what its keys look like (`key_pattern`),
where its API is (`base_url_setting`, `chat_path`), how a key is validated (`validation_body`,
`validation_passed`), whether and how it reports quota (`reports_quota`, `fetch_quota`), how
the gateway shapes a request for it (`upstream_body`) and how its answers read
(`read_status`, `read_chat_body`). A reader returns a `Reading`: a `Kind` and the numbers
that go with it (the HTTP status or the provider's numeric error code, the seconds to wait out
a rate limit). Callers turn a reading into their own typed error (the key check's `KeyCheck`,
the quota's `UpstreamError`, the gateway's `gateway/errors.py`); nothing of the provider's text
leaves a provider module, only those numbers.

The provider's name (for messages) comes from the catalog (`catalog.provider_name`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import httpx
from django.conf import settings

from catalog import provider_name
from upstream.errors import UpstreamError
from upstream.providers import http


class Kind(StrEnum):
    OK = "ok"
    KEY_REJECTED = "key_rejected"  # HTTP 401/403, or a key error reported in a 200's body
    RATE_LIMITED = "rate_limited"  # HTTP 429, or a rate-limit error reported in a 200's body
    NO_ACTIVE_PLAN = "no_active_plan"  # the quota endpoint: the key has no live plan
    PROVIDER_ERROR = "provider_error"  # any other status or error
    INVALID = "invalid_response"  # not the answer's shape


@dataclass(frozen=True, slots=True)
class Reading:
    kind: Kind
    http_status: int | None = None  # a PROVIDER_ERROR's HTTP status, when that was the error
    code: int | None = None  # a PROVIDER_ERROR's numeric error code in the body, when that was it
    retry_after: int | None = None  # a RATE_LIMITED's whole seconds to wait (1–3600)


OK = Reading(Kind.OK)
INVALID = Reading(Kind.INVALID)
KEY_REJECTED = Reading(Kind.KEY_REJECTED)
PROVIDER_ERROR = Reading(Kind.PROVIDER_ERROR)

# HTTP statuses (every provider, every endpoint): 200 is the only success.
KEY_REJECTED_STATUSES = frozenset({401, 403})
RATE_LIMITED_STATUS = 429

# Retry-After on a rate limit (SPEC G3): the provider's own when it gave a usable one (seconds,
# or an HTTP date), as whole seconds within these bounds; otherwise the default.
DEFAULT_RETRY_AFTER_SECONDS = 10
MAX_RETRY_AFTER_SECONDS = 3600

RATE_LIMITED_IN_BODY = Reading(Kind.RATE_LIMITED, retry_after=DEFAULT_RETRY_AFTER_SECONDS)


def read_status(status: int, headers: Mapping[str, str] | None = None) -> Reading:
    """An HTTP status (with the answer's headers, for a rate limit's Retry-After)."""
    if status == 200:
        return OK
    if status in KEY_REJECTED_STATUSES:
        return KEY_REJECTED
    if status == RATE_LIMITED_STATUS:
        value = headers.get("Retry-After") if headers is not None else None
        return Reading(Kind.RATE_LIMITED, retry_after=retry_after_seconds(value))
    return Reading(Kind.PROVIDER_ERROR, http_status=status)


def retry_after_seconds(value: str | None) -> int:
    """A `Retry-After` header's value as whole seconds from now, within 1–3600; the default when
    there is none or it cannot be used."""
    value = value.strip() if value else ""
    seconds = None
    if value.isascii() and value.isdigit():
        seconds = int(value[:12])
    elif value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            seconds = math.ceil((when - dt.datetime.now(dt.UTC)).total_seconds())
    if seconds is None:
        return DEFAULT_RETRY_AFTER_SECONDS
    return min(max(seconds, 1), MAX_RETRY_AFTER_SECONDS)


@dataclass(frozen=True)
class KeyCheck:
    """The outcome of a key validation / key test (SPEC I3, B1). `error`: invalid_key |
    network | http | invalid_response (| unreadable, a stored key we cannot decrypt); `message`
    is ours, naming the provider, never its text."""

    ok: bool
    error: str | None = None
    message: str = field(default="", compare=False)


KEY_CHECK_ERRORS = ("invalid_key", "network", "http", "invalid_response", "unreadable")
UNREADABLE_KEY_MESSAGE = "The stored key can no longer be read; replace it with a new key."

# What a key looks like unless a provider says otherwise: one token of printable ASCII, 8 to
# 512 characters (the inventory upload, I1, and BYOK, B1).
DEFAULT_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{8,512}$")


class QuotaNotReported(Exception):
    """`fetch_quota` on a provider that does not report quota (SPEC V3): callers ask
    `reports_quota` first."""


class Provider:
    """One upstream provider (SPEC V1). Subclasses set the class attributes and override what
    differs; one instance per module, `PROVIDER`, which the registry finds by provider id."""

    provider_id: ClassVar[str]
    # Settings holding the API's base URL and the client timeout (seconds, capped at 10).
    base_url_setting: ClassVar[str]
    timeout_setting: ClassVar[str]
    # The chat completions endpoint, under the base URL: key validation and the gateway.
    chat_path: ClassVar[str] = "/chat/completions"
    # A model to show in examples and messages (`<provider_id>/<example_model>`).
    example_model: ClassVar[str]
    key_pattern: ClassVar[re.Pattern[str]] = DEFAULT_KEY_PATTERN
    key_shape_text: ClassVar[str] = "a single token of 8–512 characters"
    reports_quota: ClassVar[bool] = False

    # -- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The provider's name, from the catalog (SPEC C2)."""
        return provider_name(self.provider_id)

    def __repr__(self) -> str:
        return f"<Provider {self.provider_id}>"

    # -- keys -----------------------------------------------------------------------------
    def has_key_shape(self, value: object) -> bool:
        """Whether `value` (already trimmed) can be one of this provider's API keys."""
        return isinstance(value, str) and self.key_pattern.fullmatch(value) is not None

    # -- HTTP -----------------------------------------------------------------------------
    def base_url(self) -> str:
        return str(getattr(settings, self.base_url_setting)).rstrip("/")

    def timeout_seconds(self) -> float:
        seconds = float(getattr(settings, self.timeout_setting, http.MAX_TIMEOUT_SECONDS))
        return min(seconds, http.MAX_TIMEOUT_SECONDS)

    def make_client(self, **kwargs: Any) -> httpx.Client:
        """A bounded client on this provider's base URL (e.g. for many key checks at once)."""
        return http.make_client(self.base_url(), self.timeout_seconds(), **kwargs)

    def request_json(
        self,
        method: str,
        path: str,
        api_key: str,
        *,
        body: Any = None,
        client: httpx.Client | None = None,
    ) -> tuple[int, Any]:
        """One bounded call (`upstream.providers.http.request_json`)."""
        return http.request_json(
            method,
            path,
            api_key,
            name=self.name,
            seconds=self.timeout_seconds(),
            body=body,
            client=client,
            base_url=self.base_url(),
        )

    # -- key validation (SPEC I3, B1) ------------------------------------------------------
    def validation_body(self) -> dict[str, Any]:
        """A minimal chat completion: one token."""
        return {
            "model": self.example_model,
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 1,
        }

    def validation_passed(self, payload: Any) -> bool:
        """Whether a 200 answer to the validation call is a finished completion: by default, a
        `choices[0].finish_reason` is present."""
        try:
            finish = payload["choices"][0]["finish_reason"]
        except (TypeError, KeyError, IndexError):
            return False
        return isinstance(finish, str) and bool(finish)

    def check_key(self, api_key: str, *, client: httpx.Client | None = None) -> KeyCheck:
        """Validation / key test: one minimal chat completion, non-mutating."""
        try:
            status, data = self.request_json(
                "POST", self.chat_path, api_key, body=self.validation_body(), client=client
            )
        except UpstreamError as exc:
            return self.key_check(exc.kind if exc.kind in KEY_CHECK_ERRORS else "network")
        kind = self.read_status(status).kind
        if kind is Kind.KEY_REJECTED:
            return self.key_check("invalid_key")
        if kind is not Kind.OK:
            return self.key_check("http")
        if self.validation_passed(data):
            return KeyCheck(True, None, f"{self.name} accepted a test call.")
        return self.key_check("invalid_response")

    def key_check(self, error: str) -> KeyCheck:
        """A failed key check, with our message for it."""
        return KeyCheck(False, error, self.key_check_message(error))

    def key_check_message(self, error: str | None) -> str:
        name = self.name
        return {
            "invalid_key": f"{name} rejected this key.",
            "network": f"{name} could not be reached or did not answer in time.",
            "http": f"{name} returned an error; try again later.",
            "invalid_response": f"{name} sent a response we could not understand.",
            "unreadable": UNREADABLE_KEY_MESSAGE,
        }.get(error or "", f"{name} could not check this key.")

    def validation_reason(self, error: str | None) -> str:
        """Why an inventory upload's key failed live validation (SPEC I2), for the report."""
        name = self.name
        return {
            "invalid_key": f"{name} rejected the key (invalid or already deactivated)",
            "network": f"{name} could not be reached or did not answer in time",
            "http": f"{name} returned an error status",
            "invalid_response": f"{name} sent a response that was not a valid completion",
        }.get(error or "", "validation failed")

    # -- quota (SPEC Q1, Q2, V3) -----------------------------------------------------------
    def fetch_quota(self, api_key: str) -> list[dict[str, Any]]:
        """The normalized quota windows (SPEC Q1), or UpstreamError (Q2)."""
        raise QuotaNotReported(self.provider_id)

    def quota_not_reported_message(self) -> str:
        return f"{self.name} does not report usage, so there are no quota windows to show."

    # -- the gateway (SPEC G1–G3, V4) ------------------------------------------------------
    def chat_url(self) -> str:
        return self.base_url() + self.chat_path

    def upstream_body(self, body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
        """The body sent upstream for a gateway request: the caller's, with the bare model."""
        return {**body, "model": upstream_model}

    def read_status(self, status: int, headers: Mapping[str, str] | None = None) -> Reading:
        return read_status(status, headers)

    def read_chat_body(self, payload: Mapping[str, Any]) -> Reading:
        """A chat completion's JSON object answered with HTTP 200: OK unless it reports an error
        (and carries no choices)."""
        return OK
