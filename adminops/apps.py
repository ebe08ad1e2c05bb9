from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AdminopsConfig(AppConfig):
    name = "adminops"

    def ready(self) -> None:
        from adminops.roles import on_post_migrate

        # Once per migrate (sent for this app), after every app's permissions exist.
        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="adminops.staff_roles")
