"""What the alarms app does when telemetry's patient flow or reprocessing acts (telemetry/signals.py): connected
in AlertsConfig.ready, so telemetry (a lower layer) never imports the alarms app."""

from __future__ import annotations

import datetime as dt
from typing import Any

from alerts.services.alarms import alarms_reexplain, alarms_resolve_discharged
from audit.trail import Actor
from telemetry.models import Patient
from telemetry.signals import patient_discharged, readings_reprocessed


def _discharged(*, patient: Patient, at: dt.datetime, actor: Actor, cause: str, **_: Any) -> None:
    alarms_resolve_discharged(patient=patient, at=at, actor=actor, cause=cause)


def _reprocessed(*, device_id: str, spans: list[Any], reprocessing: Any, **_: Any) -> None:
    alarms_reexplain(device_id=device_id, spans=spans, reprocessing=reprocessing)


def receivers_connect() -> None:
    patient_discharged.connect(_discharged, dispatch_uid="alerts.discharged")
    readings_reprocessed.connect(_reprocessed, dispatch_uid="alerts.reprocessed")
