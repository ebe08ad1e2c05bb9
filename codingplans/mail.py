"""Development e-mail: the console backend, on stderr, so commands that print JSON on stdout
(`run_billing_sweep`, `inventory_report --json`) stay machine-readable."""

import sys

from django.core.mail.backends.console import EmailBackend


class StderrConsoleBackend(EmailBackend):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("stream", sys.stderr)
        super().__init__(*args, **kwargs)
