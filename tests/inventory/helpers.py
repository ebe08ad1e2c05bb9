"""Small helpers shared by the inventory tests (no fixtures: those live in tests/conftest.py)."""

from __future__ import annotations

import itertools
import json
from typing import Any

PLAN = "minimax-token-plan-plus"
OTHER_PLAN = "minimax-token-plan-max"

_serial = itertools.count(1)


def new_keys(n: int, prefix: str = "sk-up") -> list[str]:
    """Unique, well-formed API keys the stand-in accepts (it rejects only `invalid…`)."""
    return [f"{prefix}-{next(_serial):06d}-Zq8w" for _ in range(n)]


def lines_for(keys: list[str], upstream: str = "mm-plan") -> str:
    return "\n".join(f"{key}::{upstream}-{i}" for i, key in enumerate(keys, start=1))


def assert_no_key(keys: list[str], *texts: Any) -> None:
    """SPEC I2/I6: reports, messages, output and exceptions never carry a key."""
    for text in texts:
        blob = text if isinstance(text, str) else json.dumps(text, default=str)
        for key in keys:
            assert key not in blob, "a raw key leaked into a report or message"
