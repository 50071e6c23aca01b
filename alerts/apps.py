from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Receivers of telemetry's signals import models, which Django loads after apps.py.
        import alerts.receivers  # noqa: F401
