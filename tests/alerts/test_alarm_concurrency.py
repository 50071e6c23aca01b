"""Two people acknowledge the same alarm at the same moment: one wins, both are audited."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection

from alerts.errors import AlarmConflict
from alerts.models import Alarm
from alerts.services import alarm_acknowledge, alarm_raise, rule_current_ward
from audit.models import AuditEvent
from audit.trail import Actor
from telemetry.models import Patient
from tests import factories
from tests.alarm_factories import staff, verified


@pytest.mark.django_db(transaction=True)
def test_two_simultaneous_acknowledgements_one_wins_both_audited() -> None:
    factories.device(patient="pt-race")
    patient = Patient.objects.select_related("ward").get(pseudonym="pt-race")
    now = dt.datetime.now(dt.UTC)
    alarm = alarm_raise(
        patient=patient, rule=rule_current_ward(patient.ward), kind="low", onset=now, now=now, explain={}
    )
    users = [verified(staff(f"nurse-{i}", "oncall", [patient.ward])) for i in range(2)]
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def acknowledge(user: object) -> None:
        actor = Actor(user.pk, user.username, "oncall")  # type: ignore[attr-defined]
        try:
            barrier.wait(timeout=10)
            alarm_acknowledge(alarm_id=alarm.pk, user=user, actor=actor, note=f"by {actor.username}")  # type: ignore[arg-type]
            results[actor.username] = "won"
        except AlarmConflict as exc:
            results[actor.username] = exc.code
        finally:
            connection.close()

    threads = [threading.Thread(target=acknowledge, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results.values()) == ["already_acknowledged", "won"]
    winner = next(name for name, r in results.items() if r == "won")
    alarm.refresh_from_db()
    assert alarm.state == Alarm.State.ACKNOWLEDGED and alarm.acknowledged_by.username == winner
    assert alarm.ack_note == f"by {winner}"
    audited = sorted(AuditEvent.objects.filter(action="alarm.acknowledged").values_list("actor_username", "outcome"))
    assert sorted(o for _, o in audited) == ["allowed", "denied"]
    assert {name for name, _ in audited} == {"nurse-0", "nurse-1"}
    assert alarm.transitions.filter(cause="acknowledged").count() == 1
