"""What billing announces to the apps above it (issue 14: a signal sent on commit, never an
upward import).

- `top_up_settled(attempt_id, status)`: an auto top-up attempt reached `approved`, `declined` or
  `requires_action` (SPEC L4, M4). Sent once per change, after the commit; subscriptions tells
  the customer (the past-due e-mail with the reason and the link).
"""

from django.dispatch import Signal

top_up_settled = Signal()
