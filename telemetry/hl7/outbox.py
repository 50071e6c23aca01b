"""The durable ORU outbox: filled by the engine, emptied by the MLLP sender (telemetry/hl7/sender.py).

Filling (OruProcessor, an engine processor: settings.PERFUSE_ENGINE_PROCESSORS). `process(rows)`
receives each committed reading exactly once, inside the transaction that moves the engine's
watermark (telemetry/engine.py), and adds the validated ones — assigned to a patient, a metric in
PERFUSE_HL7_ORU_METRICS, signal quality absent or at least PERFUSE_HL7_ORU_MIN_QUALITY — to
telemetry_orupartial: count and sum per patient, interval (PERFUSE_HL7_ORU_INTERVAL seconds,
aligned to UTC like the rollups), metric and device. `tick(now)` closes the intervals that ended
PERFUSE_HL7_ORU_GRACE_SECONDS ago: one OruMessage per patient and interval, its payload the
means, in interval order, and marks the partials sent (`sent_n = n`). A reading that arrives
after its interval was sent bumps `n` past `sent_n`, and the next tick sends the interval again
with all its means, as a correction (OBR-25/OBX-11 C). Partials and messages commit with the
watermark, so a crash neither loses an interval nor writes it twice. Nothing happens while
PERFUSE_HL7_ORU_TARGET is unset.

Emptying. `oru_claim` takes, per patient, only the oldest message not yet done: a patient's next
message waits until the previous one is done (AA) or dead (AR), which keeps delivery in order per
patient. One UPDATE over a `FOR UPDATE SKIP LOCKED` sub-select: two senders never take the same
row, and a sender never takes a message whose predecessor another sender holds (the predecessor
is still undone in its snapshot). A claim is `sending` with a lease; a sender that dies mid-send
leaves it to be claimed again when the lease ends, under the same MSH-10 (at least once: the EHR
drops the repeat by MSH-10). `oru_text` builds the HL7 text before the first attempt (hl7apy is
slow, ~30 ms a message, so this happens in the sender, never in the engine) and stores it, so
every attempt sends the same bytes. `oru_record` is conditional on the claim (state `sending`
and the same attempt number): AA → `done` (audited `hl7.oru_sent`: patient data left for the
EHR); AE, a timeout or a broken connection → `retry` after config.retry's back-off, for as long
as it takes (a stopped receiver delays, never loses); AR → `dead`, audited, kept with its error
in the dead-letter list, where alerts/integration.py raises the technical alarm.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from audit.trail import Actor, audit_record
from config.retry import backoff
from telemetry.hl7.oru import Addressing, Observation, Results, oru_build
from telemetry.models import OruMessage, Patient, PatientIdentity
from telemetry.selectors import EPOCH, ReadingRow

State = OruMessage.State
SENDER = Actor(user_id=None, username="hl7-oru", role="system")  # who disclosed results to the EHR
CLOSE_EVERY = dt.timedelta(seconds=1)
HOUSEKEEPING_EVERY = dt.timedelta(minutes=10)
# Partials are kept this long after their interval was sent; a reading older than that is not sent.
PARTIAL_KEEP = dt.timedelta(days=1)
DONE_KEEP = dt.timedelta(days=7)  # done messages (they carry the MRN) are deleted after this
CLOSE_LIMIT = 500  # intervals per tick: a backlog is written over several ticks


def oru_enabled() -> bool:
    return bool(settings.PERFUSE_HL7_ORU_TARGET)


def interval_floor(t: dt.datetime, seconds: int) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=(t - EPOCH).total_seconds() // seconds * seconds)


def control_id_for(message_id: int) -> str:
    """MSH-10: 20 characters (the limit before v2.5), fixed for the row's every attempt."""
    return f"PFU{message_id:017d}"


# ---- filling: the engine processor ------------------------------------------------------------


class OruProcessor:
    def __init__(self) -> None:
        self._next_close = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._next_housekeeping = dt.datetime.min.replace(tzinfo=dt.UTC)

    def process(self, rows: list[ReadingRow], *, now: dt.datetime) -> None:
        if oru_enabled():
            oru_partials_add(rows=rows, now=now)

    def tick(self, *, now: dt.datetime) -> None:
        if not oru_enabled() or now < self._next_close:
            return
        self._next_close = now + CLOSE_EVERY
        oru_intervals_close(now=now)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_EVERY
            oru_housekeeping(now=now)


def _validated(row: ReadingRow, metrics: set[str], oldest: dt.datetime) -> bool:
    quality = row.signal_quality
    return (
        row.patient_id is not None
        and row.metric in metrics
        and row.sample_time >= oldest
        and (quality is None or quality >= settings.PERFUSE_HL7_ORU_MIN_QUALITY)
    )


def oru_partials_add(*, rows: list[ReadingRow], now: dt.datetime) -> int:
    """Fold validated readings into the interval partials; returns how many readings counted."""
    seconds = settings.PERFUSE_HL7_ORU_INTERVAL
    metrics, oldest = set(settings.PERFUSE_HL7_ORU_METRICS), now - PARTIAL_KEEP
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        if not _validated(row, metrics, oldest):
            continue
        key = (row.patient_id, interval_floor(row.sample_time, seconds), row.metric, row.device_id)
        part = sums.setdefault(key, [0, 0.0, row.sample_time])
        part[0] += 1
        part[1] += row.value
        part[2] = max(part[2], row.sample_time)
    if not sums:
        return 0
    columns: list[list[Any]] = [[] for _ in range(7)]
    for key, values in sums.items():
        for column, item in zip(columns, (*key, *values), strict=True):
            column.append(item)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO telemetry_orupartial AS p
                (patient_id, interval_start, metric, device_id, n, value_sum, last_sample_time, sent_n)
            SELECT u.*, 0 FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::bigint[], %s::bigint[],
                                      %s::float8[], %s::timestamptz[]) AS u
            ON CONFLICT ON CONSTRAINT oru_partial_key DO UPDATE SET
                n = p.n + excluded.n,
                value_sum = p.value_sum + excluded.value_sum,
                last_sample_time = greatest(p.last_sample_time, excluded.last_sample_time)
            """,
            columns,
        )
    return sum(values[0] for values in sums.values())


_DUE_SQL = """
    WITH due AS (
        SELECT DISTINCT patient_id, interval_start FROM telemetry_orupartial
        WHERE n > sent_n AND interval_start <= %(cutoff)s
        ORDER BY interval_start, patient_id LIMIT %(limit)s
    )
    SELECT p.id, p.patient_id, p.interval_start, p.metric, d.device_id, p.n, p.value_sum, p.sent_n
    FROM telemetry_orupartial AS p
    JOIN due USING (patient_id, interval_start)
    JOIN telemetry_device AS d ON d.id = p.device_id
    ORDER BY p.interval_start, p.patient_id, p.metric, d.device_id
    FOR UPDATE OF p
"""


def oru_intervals_close(*, now: dt.datetime, limit: int = CLOSE_LIMIT) -> int:
    """Write one outbox message per patient and interval that ended more than the grace period
    ago and has readings not sent yet; returns how many messages were written."""
    seconds = settings.PERFUSE_HL7_ORU_INTERVAL
    cutoff = now - dt.timedelta(seconds=seconds + settings.PERFUSE_HL7_ORU_GRACE_SECONDS)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_DUE_SQL, {"cutoff": cutoff, "limit": limit})
        groups: dict[tuple[int, dt.datetime], list[tuple[Any, ...]]] = defaultdict(list)
        for row in cursor.fetchall():
            groups[(row[1], row[2])].append(row)
        if not groups:
            return 0
        patients = Patient.objects.select_related("ward").in_bulk({pid for pid, _ in groups})
        ids = _message_ids(len(groups))
        width = dt.timedelta(seconds=seconds)
        OruMessage.objects.bulk_create(
            _message(message_id, patients[pid], start, width, parts, now)
            for message_id, ((pid, start), parts) in zip(ids, groups.items(), strict=True)
        )
        cursor.execute(
            "UPDATE telemetry_orupartial SET sent_n = n WHERE id = ANY(%s::bigint[])",
            [[part[0] for parts in groups.values() for part in parts]],
        )
    return len(groups)


def _message_ids(count: int) -> list[int]:
    """Ids for new outbox rows, known before the insert: MSH-10 is made from them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence('telemetry_orumessage', 'id')) FROM generate_series(1, %s)",
            [count],
        )
        return [row[0] for row in cursor.fetchall()]


def _message(
    message_id: int, patient: Patient, start: dt.datetime, width: dt.timedelta, parts: list[Any], now: dt.datetime
) -> OruMessage:
    observations = [
        {"metric": metric, "device": device, "mean": total / n, "count": n}
        for _, _, _, metric, device, n, total, _ in parts
    ]
    return OruMessage(
        id=message_id,
        control_id=control_id_for(message_id),
        patient=patient,
        interval_start=start,
        interval_end=start + width,
        correction=any(part[7] > 0 for part in parts),
        payload={
            "pseudonym": patient.pseudonym,
            "ward": patient.ward.code,
            "bed": patient.bed,
            "observations": observations,
        },
        created_at=now,
        next_attempt_at=now,
    )


def oru_housekeeping(*, now: dt.datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM telemetry_orupartial WHERE n = sent_n AND interval_start < %s", [now - PARTIAL_KEEP]
        )
    OruMessage.objects.filter(state=State.DONE, done_at__lt=now - DONE_KEEP).delete()


# ---- emptying: claims and outcomes for the sender ---------------------------------------------


@dataclass(frozen=True)
class OruClaim:
    message_id: int
    control_id: str
    patient_id: int
    attempt: int


@dataclass(frozen=True)
class AckOutcome:
    """What an attempt got back: the ACK's code (AA, AE, AR), or "" for no ACK at all."""

    code: str
    error: str = ""


_CLAIM_SQL = """
    UPDATE telemetry_orumessage AS m SET state = 'sending', attempts = m.attempts + 1, lease_until = %(lease)s
    WHERE m.id IN (
        SELECT o.id FROM telemetry_orumessage AS o
        WHERE ((o.state IN ('queued', 'retry') AND o.next_attempt_at <= %(now)s)
               OR (o.state = 'sending' AND o.lease_until < %(now)s))
          AND NOT EXISTS (
              SELECT 1 FROM telemetry_orumessage AS e
              WHERE e.patient_id = o.patient_id AND e.id < o.id AND e.state IN ('queued', 'sending', 'retry'))
        ORDER BY o.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING m.id, m.control_id, m.patient_id, m.attempts
"""


def oru_claim(*, now: dt.datetime, limit: int, lease: dt.timedelta) -> list[OruClaim]:
    """Take up to `limit` due messages, at most one per patient (its oldest undone), in id order."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"now": now, "lease": now + lease, "limit": limit})
        return sorted((OruClaim(*row) for row in cursor.fetchall()), key=lambda c: c.message_id)


def oru_text(*, claim: OruClaim, at: dt.datetime) -> str:
    """The message's HL7 text: built (with the MRN from the identity map) and stored before its
    first attempt; the stored text on every later one."""
    row = OruMessage.objects.get(pk=claim.message_id)
    if row.message:
        return row.message
    text = oru_build(oru_results(row), addressing=oru_addressing(), at=at)
    # Two senders may build at once after a lease ran out: the first stored text wins.
    OruMessage.objects.filter(pk=row.pk, message="").update(message=text)
    return OruMessage.objects.values_list("message", flat=True).get(pk=row.pk)


def oru_results(row: OruMessage) -> Results:
    """What the outbox row says, with the patient's MRN from the identity map (PID-3)."""
    payload = row.payload
    mrn = PatientIdentity.objects.filter(patient_id=row.patient_id).values_list("mrn", flat=True).first()
    return Results(
        control_id=row.control_id,
        pseudonym=payload["pseudonym"],
        mrn=mrn or "",
        ward=payload["ward"],
        bed=payload["bed"],
        interval_start=row.interval_start,
        interval_end=row.interval_end,
        observations=[Observation(o["metric"], o["device"], o["mean"], o["count"]) for o in payload["observations"]],
        correction=row.correction,
    )


def oru_addressing() -> Addressing:
    return Addressing(
        application=settings.PERFUSE_HL7_APPLICATION,
        facility=settings.PERFUSE_HL7_FACILITY,
        receiving_application=settings.PERFUSE_HL7_ORU_RECEIVING_APPLICATION,
        receiving_facility=settings.PERFUSE_HL7_ORU_RECEIVING_FACILITY,
        processing_id=settings.PERFUSE_HL7_ORU_PROCESSING_ID,
        mrn_authority=settings.PERFUSE_HL7_MRN_AUTHORITY,
    )


def oru_retry_delay(attempt: int) -> dt.timedelta:
    return backoff(
        attempt, base=settings.PERFUSE_HL7_ORU_RETRY_BASE_SECONDS, cap=settings.PERFUSE_HL7_ORU_RETRY_MAX_SECONDS
    )


def oru_record(*, claim: OruClaim, outcome: AckOutcome, now: dt.datetime) -> str | None:
    """Record one attempt's outcome; returns the new state (None when the claim was lost)."""
    with transaction.atomic():
        row = (
            OruMessage.objects.select_for_update()
            .filter(pk=claim.message_id, state=State.SENDING, attempts=claim.attempt)
            .first()
        )
        if row is None:
            return None
        row.lease_until = None
        row.ack_code = outcome.code
        row.last_error = outcome.error[:500]
        if outcome.code == "AA":
            row.state, row.done_at = State.DONE, now
        elif outcome.code == "AR":
            row.state = State.DEAD
        else:
            row.state, row.next_attempt_at = State.RETRY, now + oru_retry_delay(claim.attempt)
        row.save(update_fields=["state", "done_at", "next_attempt_at", "lease_until", "ack_code", "last_error"])
        if row.state != State.RETRY:
            _audit(row)
        return str(row.state)


def _audit(row: OruMessage) -> None:
    audit_record(
        actor=SENDER,
        action="hl7.oru_sent" if row.state == State.DONE else "hl7.oru_rejected",
        subject=row.payload["pseudonym"],
        detail={
            "control_id": row.control_id,
            "interval_start": row.interval_start.isoformat(),
            "metrics": sorted({o["metric"] for o in row.payload["observations"]}),
            "target": settings.PERFUSE_HL7_ORU_TARGET,
            "attempts": row.attempts,
            "ack": row.ack_code,
            "error": row.last_error,
        },
    )


# ---- the dead-letter list (read and marked by the alerts engine: alerts/integration.py) ---------


@dataclass(frozen=True)
class DeadLetter:
    message_id: int
    control_id: str
    patient_id: int
    interval_start: dt.datetime
    error: str


def oru_dead_letters_unalarmed(*, limit: int = 100) -> list[DeadLetter]:
    rows = OruMessage.objects.filter(state=State.DEAD, alarmed_at__isnull=True).order_by("id")[:limit]
    return [DeadLetter(r.pk, r.control_id, r.patient_id, r.interval_start, r.last_error) for r in rows]


def oru_dead_letters_mark_alarmed(*, message_ids: list[int], at: dt.datetime) -> None:
    OruMessage.objects.filter(pk__in=message_ids, alarmed_at__isnull=True).update(alarmed_at=at)


def oru_accepted_after(*, patient_id: int, message_id: int) -> bool:
    """Whether the EHR accepted a later message of the patient (the rejection is behind it)."""
    return OruMessage.objects.filter(patient_id=patient_id, pk__gt=message_id, state=State.DONE).exists()


def oru_dead_letters(*, limit: int = 200) -> list[OruMessage]:
    """The dead-letter list, oldest first (`manage.py hl7_dead_letters`)."""
    return list(OruMessage.objects.filter(state=State.DEAD).order_by("id")[:limit])


def oru_requeue(*, message_id: int, actor: Actor, now: dt.datetime) -> OruMessage:
    """Send a dead letter's results again, once the integration team fixed what the EHR refused:
    a new outbox message (a new MSH-10: a receiver that keeps answers by MSH-10, as Perfuse's own
    ADT listener does, would repeat its AR), built afresh when first sent; the dead letter is
    kept, marked with the message that replaced it."""
    with transaction.atomic():
        dead = OruMessage.objects.select_for_update().filter(pk=message_id, state=State.DEAD).first()
        if dead is None:
            raise LookupError(f"no dead letter {message_id}")
        [new_id] = _message_ids(1)
        again = OruMessage.objects.create(
            id=new_id,
            control_id=control_id_for(new_id),
            patient_id=dead.patient_id,
            interval_start=dead.interval_start,
            interval_end=dead.interval_end,
            correction=dead.correction,
            payload=dead.payload,
            created_at=now,
            next_attempt_at=now,
        )
        dead.state, dead.last_error = State.REQUEUED, f"requeued as {again.control_id}; {dead.last_error}"[:500]
        dead.save(update_fields=["state", "last_error"])
        audit_record(
            actor=actor,
            action="hl7.oru_requeued",
            subject=dead.payload["pseudonym"],
            detail={"control_id": dead.control_id, "requeued_as": again.control_id},
        )
    return again
