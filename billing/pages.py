"""Sections that higher apps add to the /credits page (U7, SPEC M1).

Billing owns the page but must not import the apps above it; an app that has something to show
there (payments: add credits by card, the saved card, card payments) registers a callable at
start-up. Each callable takes the request and returns a dict with `template` and `context`, or
None to show nothing.
"""

from __future__ import annotations

from collections.abc import Callable

_sections: list[Callable] = []


def register_credits_section(section: Callable) -> None:
    if section not in _sections:
        _sections.append(section)


def credits_sections(request) -> list[dict]:
    return [s for s in (section(request) for section in _sections) if s]
