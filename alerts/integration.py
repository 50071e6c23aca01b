"""The technical alarm of the HL7 results feed, raised by the stream engine (an engine processor:
settings.PERFUSE_ENGINE_PROCESSORS), so the outbox in telemetry never calls up into alerts.

When the EHR answers a results message with AR, the sender moves it to the dead-letter list
(telemetry/hl7/outbox.py). Every second this processor's tick takes the dead letters it has not
alarmed yet and raises `hl7_rejected` (low, technical) on the patient whose results were refused,
in the same transaction that marks the letters alarmed: one alarm per dead letter batch, never a
lost one after a crash. A further rejection while the alarm is open adds its control id; after
the condition cleared, it recurs. The condition clears when the EHR accepted a later message of
the same patient (the feed works again for them); the alarm engine's timers then resolve it
after the suppression window. The dead letters stay listed until the integration team acts
(docs/hl7-results.md, "Dead letters").
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection, transaction

from alerts.models import Alarm
from alerts.services import alarm_condition_clear, alarm_raise, alarm_recur, rule_current_ward
from alerts.vocabulary import OPEN_STATES, Kind
from config.live import iso
from telemetry.hl7.outbox import (
    DeadLetter,
    oru_accepted_after,
    oru_dead_letters_mark_alarmed,
    oru_dead_letters_unalarmed,
)
from telemetry.models import OruMessage, Patient
from telemetry.selectors import ReadingRow

CHECK_EVERY = dt.timedelta(seconds=1)


class IntegrationAlarmProcessor:
    def __init__(self) -> None:
        self._next_check = dt.datetime.min.replace(tzinfo=dt.UTC)

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        return None

    def tick(self, *, now: dt.datetime) -> None:
        if now < self._next_check:
            return
        self._next_check = now + CHECK_EVERY
        if _work():
            hl7_rejections_alarm(now=now)


# Whether hl7_rejections_alarm has anything to do (a dead letter not alarmed yet, or a condition
# that may clear), in one plain statement on partial indexes: nearly always it has not, and its
# ORM queries cost the engine's timers more than all their other reads (docs/benchmarks.md).
_WORK_SQL = (
    f"SELECT EXISTS (SELECT 1 FROM {OruMessage._meta.db_table} WHERE state = %s AND alarmed_at IS NULL) "
    f"OR EXISTS (SELECT 1 FROM {Alarm._meta.db_table} WHERE kind = %s AND state = ANY(%s) AND condition_present)"
)


def _work() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            _WORK_SQL, [OruMessage.State.DEAD.value, Kind.HL7_REJECTED.value, [state.value for state in OPEN_STATES]]
        )
        return bool(cursor.fetchone()[0])


@transaction.atomic
def hl7_rejections_alarm(*, now: dt.datetime) -> int:
    """Raise (or extend) the alarm for new dead letters and clear it where the feed recovered;
    returns how many dead letters were alarmed."""
    letters = oru_dead_letters_unalarmed()
    for letter in letters:
        _alarm(letter, now=now)
    oru_dead_letters_mark_alarmed(message_ids=[letter.message_id for letter in letters], at=now)
    for alarm in _open().filter(condition_present=True).order_by("id"):
        if oru_accepted_after(patient_id=alarm.patient_id, message_id=alarm.explain["message"]):
            alarm_condition_clear(alarm_id=alarm.pk, cleared_at=now, now=now)
    return len(letters)


def _open() -> Any:
    return Alarm.objects.filter(kind=Kind.HL7_REJECTED, state__in=OPEN_STATES)


def _alarm(letter: DeadLetter, *, now: dt.datetime) -> None:
    open_alarm = _open().select_for_update().filter(patient_id=letter.patient_id).first()
    earlier = open_alarm.explain.get("control_ids", []) if open_alarm and open_alarm.condition_present else []
    explain = {
        "at": iso(now),
        "reason": "ack_ar",
        "message": letter.message_id,
        "control_ids": [*earlier, letter.control_id],
        "interval_start": iso(letter.interval_start),
        "error": letter.error,
    }
    if open_alarm is None:
        patient = Patient.objects.select_related("ward").get(pk=letter.patient_id)
        rule = rule_current_ward(patient.ward)
        alarm_raise(patient=patient, rule=rule, kind=Kind.HL7_REJECTED, onset=now, now=now, explain=explain)
    elif not open_alarm.condition_present:
        alarm_recur(alarm_id=open_alarm.pk, onset=now, now=now, explain=explain)
    else:
        open_alarm.explain = {**open_alarm.explain, **explain}
        open_alarm.save(update_fields=["explain"])
