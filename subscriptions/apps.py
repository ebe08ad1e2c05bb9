from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "subscriptions"

    def ready(self) -> None:
        # Inventory announces restocks upward through a signal (issue 14): the availability
        # intents, and so the "back in stock" e-mail, live here.
        from inventory.signals import plan_restocked
        from subscriptions.receivers import queue_availability_notices

        plan_restocked.connect(queue_availability_notices, dispatch_uid="subscriptions.restock")

        # Billing announces an auto top-up's outcome (SPEC L4, M4): the past-due e-mail.
        from billing.signals import top_up_settled
        from subscriptions.receivers import top_up_outcome

        top_up_settled.connect(top_up_outcome, dispatch_uid="subscriptions.top_up_outcome")
