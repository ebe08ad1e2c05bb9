from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = "Card payments"

    def ready(self) -> None:
        # /credits is billing's page; the card-payment section plugs into it from above, so
        # billing never imports payments (docs/architecture.md, layers).
        from billing.pages import register_credits_section
        from payments.views import credits_section

        register_credits_section(credits_section)

        # The `stripe` auto top-up backend (SPEC M4), plugged in from above the same way.
        from billing.topup import BACKENDS
        from payments.topup import StripeTopUp

        BACKENDS[StripeTopUp.name] = StripeTopUp
