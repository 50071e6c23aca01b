from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Models load only now (tests/config/test_import_layers.py NESTED_ALLOWED says why).
        from alerts.receivers import receivers_connect

        receivers_connect()
