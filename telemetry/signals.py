"""Signals telemetry sends so that higher layers can act without being imported here (the layers
of tests/config/test_import_layers.py point down only).

Both are sent inside the patient-flow transaction (telemetry/stays.py), so a receiver's writes
commit or roll back with the act. Receivers: alerts/receivers.py (open alarms resolve with cause
`discharged`; open alarms follow a transferred patient to the new ward).
"""

from __future__ import annotations

from django.dispatch import Signal

# kwargs: patient (telemetry.models.Patient, already discharged), at (datetime), actor
# (audit.trail.Actor), cause ("discharged" or "admit_cancelled").
patient_discharged = Signal()

# kwargs: patient (already on the new ward), previous_ward_id (int), at, actor.
patient_transferred = Signal()
