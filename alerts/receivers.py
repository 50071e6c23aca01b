"""What the alarms app does when telemetry's signals fire (telemetry/signals.py); imported once
by AlertsConfig.ready, after the models are loaded."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from alerts.services.alarms import alarms_reexplain
from telemetry.signals import readings_reprocessed


@receiver(readings_reprocessed, dispatch_uid="alerts.reexplain")
def reexplain_reprocessed(sender: Any, **kwargs: Any) -> None:
    alarms_reexplain(device_id=kwargs["device_id"], spans=kwargs["spans"], reprocessing=kwargs["reprocessing"])
