"""Telemetry's signals: how telemetry, which sits below the alarms app and must not import it,
lets it act inside the same transaction. Sent by telemetry's services; received in
alerts/receivers.py (connected by AlertsConfig.ready)."""

from __future__ import annotations

import django.dispatch

# Sent inside the reprocessing transaction by telemetry.calibrations.readings_reprocess with
# device_id (str), spans ([(patient_pk, first, last sample_time changed)]) and reprocessing.
readings_reprocessed = django.dispatch.Signal()
