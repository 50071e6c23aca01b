from django.apps import AppConfig
from django.core.checks import register

from dashboard.checks import card_metrics_check


class DashboardConfig(AppConfig):
    name = "dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        register(card_metrics_check)
