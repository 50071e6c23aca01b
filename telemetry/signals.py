"""Signals telemetry sends so that higher layers can act without being imported here (the layers
of tests/config/test_import_layers.py point down only).

Sent inside the patient-flow transaction (telemetry/stays.py), so a receiver's writes commit or
roll back with the act. Receiver: alerts/receivers.py (open alarms resolve with cause
`discharged`; alarms over reprocessed values are re-explained). A transfer sends none: an
alarm keeps the ward it was raised on (alerts/models.py).
"""

from __future__ import annotations

from django.dispatch import Signal

# kwargs: patient (telemetry.models.Patient, already discharged), at (datetime), actor
# (audit.trail.Actor), cause ("discharged" or "admit_cancelled").
patient_discharged = Signal()

# Sent inside the reprocessing transaction by telemetry.calibrations with device_id (str),
# spans ([(patient_pk, first, last sample_time changed)]) and reprocessing (Reprocessing).
readings_reprocessed = Signal()
