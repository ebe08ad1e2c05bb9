"""E-mail plumbing shared by every app.

- `StderrConsoleBackend`: development e-mail on stderr, so commands that print JSON on stdout
  (`run_billing_sweep`, `inventory_report --json`) stay machine-readable.
- `send_templated`: one multipart message (plain text + HTML) from a pair of templates
  `<name>.txt` / `<name>.html` (issue 19, SPEC E1). The HTML templates extend
  `email/base.html`, which carries the inline styles mail clients need.
- `spelled_utc`: a time as customers read it in an e-mail, in UTC with the date spelled out
  ("Friday, 9 January 2026 at 14:00 UTC"): an e-mail has no browser to turn it into local time.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.console import EmailBackend
from django.template.loader import render_to_string


class StderrConsoleBackend(EmailBackend):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("stream", sys.stderr)
        super().__init__(*args, **kwargs)


def spelled_utc(moment: datetime) -> str:
    """'Friday, 9 January 2026 at 14:00 UTC' (English names, whatever the locale)."""
    moment = moment.astimezone(UTC)
    return f"{moment:%A}, {moment.day} {moment:%B %Y} at {moment:%H:%M} UTC"


def spelled_date(moment: datetime) -> str:
    """'9 January 2026' (the UTC date), for subject lines."""
    moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%B %Y}"


def site_url(path: str = "/") -> str:
    """An absolute link to this site for e-mails sent without a request (CODING_PLANS_SITE_URL)."""
    return settings.CODING_PLANS_SITE_URL.rstrip("/") + path


def render_templated(template: str, context: dict) -> tuple[str, str]:
    """The plain-text and HTML bodies of `template` (`<template>.txt`, `<template>.html`)."""
    context = {"site_url": site_url(""), **context}
    text = render_to_string(f"{template}.txt", context)
    html = render_to_string(f"{template}.html", context)
    return text, html


def send_templated(*, to: str, subject: str, template: str, context: dict) -> None:
    """Send one multipart (text + HTML) message; SMTP errors propagate to the caller, which
    decides whether to retry (a Celery task) or log (a page)."""
    text, html = render_templated(template, context)
    message = EmailMultiAlternatives(
        subject=subject, body=text, from_email=settings.DEFAULT_FROM_EMAIL, to=[to]
    )
    message.attach_alternative(html, "text/html")
    message.send()
