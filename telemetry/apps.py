from django.apps import AppConfig
from django.core.checks import Tags, register

from telemetry.checks import hl7_tls_check, replica_tls_check, retention_horizon_check


class TelemetryConfig(AppConfig):
    name = "telemetry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        register(hl7_tls_check, Tags.security, deploy=True)
        register(retention_horizon_check, Tags.database, deploy=True)
        register(replica_tls_check, Tags.security, deploy=True)
