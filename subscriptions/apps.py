from django.apps import AppConfig


class SubscriptionsConfig(AppConfig):
    name = "subscriptions"

    def ready(self) -> None:
        # Inventory announces restocks upward through a signal (issue 14): the availability
        # intents, and so the "back in stock" e-mail, live here.
        from byok.signals import installed_key_rejected
        from inventory.signals import plan_restocked
        from subscriptions.receivers import (
            flag_rejected_installed_key,
            queue_availability_notices,
            replace_on_restock,
        )

        plan_restocked.connect(queue_availability_notices, dispatch_uid="subscriptions.restock")

        # Billing announces an auto top-up's outcome (SPEC L4, M4): the past-due e-mail.
        from billing.signals import top_up_settled
        from subscriptions.receivers import top_up_outcome

        top_up_settled.connect(top_up_outcome, dispatch_uid="subscriptions.top_up_outcome")

        # SPEC H3: dead plan keys are replaced when stock arrives, and flagged when the gateway
        # or the BYOK key test meets one.
        plan_restocked.connect(replace_on_restock, dispatch_uid="subscriptions.restock_replace")
        installed_key_rejected.connect(
            flag_rejected_installed_key, dispatch_uid="subscriptions.key_rejected"
        )
