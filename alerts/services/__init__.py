"""Every write of the alarm app, one function per act (STYLE.md): alarm transitions and staff
acts on alarms and pauses (alerts/services/alarms.py), alarm rule versions
(alerts/services/rules.py), the on-call roster (alerts/services/roster.py) and the notification
outbox's sending side (alerts/services/deliveries.py; rows are written by alerts/notifiers.py).
What they refuse is in alerts/errors.py. Import the acts from here.
"""

from alerts.services.alarms import (
    AUDIO_PAUSE_MAX_S,
    alarm_accept,
    alarm_acknowledge,
    alarm_condition_clear,
    alarm_decline,
    alarm_raise,
    alarm_recur,
    alarm_timers,
    alarms_resolve_discharged,
    console_audio_pause,
    patient_pause,
)
from alerts.services.deliveries import Claim, deliveries_claim, delivery_record, retry_delay
from alerts.services.roster import shift_create, shift_create_operator, shift_delete, shift_update, shift_validate
from alerts.services.rules import (
    RULE_LIMITS,
    rule_current_ward,
    rule_effective,
    rule_ensure_ward_default,
    rule_override_remove,
    rule_update,
    rule_validate,
)

__all__ = [
    "AUDIO_PAUSE_MAX_S",
    "RULE_LIMITS",
    "Claim",
    "alarm_accept",
    "alarm_acknowledge",
    "alarm_condition_clear",
    "alarm_decline",
    "alarm_raise",
    "alarm_recur",
    "alarm_timers",
    "alarms_resolve_discharged",
    "console_audio_pause",
    "deliveries_claim",
    "delivery_record",
    "patient_pause",
    "retry_delay",
    "rule_current_ward",
    "rule_effective",
    "rule_ensure_ward_default",
    "rule_override_remove",
    "rule_update",
    "rule_validate",
    "shift_create",
    "shift_create_operator",
    "shift_delete",
    "shift_update",
    "shift_validate",
]
