"""Bulk FHIR export of a ward (`Group/{ward}/$export`): a durable job the engine runs.

Why the engine and not a worker of its own: the job is a bounded read of the hot store, like the
rollups, and `manage.py run_engine` already runs (one owner at a time, restarted by `make run`);
ExportProcessor is listed in settings.PERFUSE_ENGINE_PROCESSORS and each `tick` writes at most
PERFUSE_FHIR_EXPORT_CHUNK_ROWS resources, so alarm timers in the same loop wait at most that
long. The work is a plan fixed at the request — the resource types, then per patient and metric
a keyset walk through the readings (telemetry.selectors.readings_after) — and a cursor. Each
tick writes its chunks and moves the cursor in one transaction (a savepoint inside the engine's
tick): a crash or restart resumes where the last commit left off, never writing a chunk twice.
A bug in the job marks it failed instead of failing the engine's tick.

Every export is audited: the request (with the patients it covers) by the access layer, and,
when the files are ready, one disclosure event per patient in the requester's name
(`patient.fhir.export`, listed in the accounting of disclosures). The files are readable only by
the requester (audit.access.policy.export_read) and deleted PERFUSE_FHIR_EXPORT_RETENTION_SECONDS
after the job finished (the deletion audited as `fhir.export.expired`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction

from audit.access.policy import ward_export_read
from audit.trail import SYSTEM, Actor, audit_record
from config.replica import on_replica
from config.users import StaffUser
from dashboard.fhir import resources
from dashboard.fhir.selectors import device_view
from dashboard.models import FhirExport, FhirExportChunk
from telemetry.models import Device, Patient
from telemetry.selectors import ReadingKey, StoredReading, reading_next_time, readings_after
from telemetry.units import METRICS

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("Patient", "Device", "Observation")
DISCLOSING_TYPES = frozenset({"Patient", "Observation"})
DISCLOSURE_ACTION = "patient.fhir.export"
WINDOW = dt.timedelta(hours=1)  # of sample time: the most one export query walks


class ExportBusy(Exception):
    """The user already has PERFUSE_FHIR_EXPORT_MAX_ACTIVE exports queued."""


@dataclass(frozen=True)
class Step:
    resource_type: str
    patient: int | None = None  # index into the job's patients (Observation steps)
    metric: str | None = None


def export_steps(job: FhirExport) -> list[Step]:
    steps: list[Step] = []
    for resource_type in job.types:
        if resource_type == "Observation":
            steps.extend(Step("Observation", i, m) for i in range(len(job.patients)) for m in METRICS)
        else:
            steps.append(Step(resource_type))
    return steps


def _actor_fields(actor: Actor) -> dict[str, Any]:
    return {
        "user_id": actor.user_id,
        "username": actor.username,
        "role": actor.role,
        "source_address": actor.source_address,
        "user_agent": actor.user_agent,
    }


def export_request(
    *,
    user: StaffUser,
    actor: Actor,
    ward_code: str,
    types: list[str],
    since: dt.datetime | None,
    request_url: str,
    now: dt.datetime,
) -> FhirExport:
    """Queue an export of the ward, its authorization audited with the patients it covers."""
    with transaction.atomic():
        ward, patients = ward_export_read(
            user=user,
            actor=actor,
            ward_code=ward_code,
            action="fhir.export.requested",
            detail={"types": types, "since": since.isoformat() if since else None},
        )
        assert user.pk is not None  # ward_export_read refused anonymous callers
        active = FhirExport.objects.select_for_update().filter(requester_id=user.pk, state=FhirExport.State.QUEUED)
        if len(active) >= settings.PERFUSE_FHIR_EXPORT_MAX_ACTIVE:
            raise ExportBusy
        job = FhirExport(
            requester_id=user.pk,
            actor=_actor_fields(actor),
            ward=ward,
            types=types,
            since=since,
            request_url=request_url[:2000],
            patients=[[p.id, p.pseudonym] for p in patients],
            cursor={"step": 0, "after": None, "chunks": {}},
            transaction_time=now,
        )
        job.steps = len(export_steps(job))
        job.save()
    return job


def export_progress(job: FhirExport) -> str:
    step = int(job.cursor.get("step", 0))
    return f"{round(100 * step / job.steps) if job.steps else 100}% ({step} of {job.steps} steps)"


def export_outputs(job: FhirExport) -> list[tuple[str, int]]:
    """(resource type, resources) of each non-empty output file, in the job's type order."""
    counts: dict[str, int] = {}
    for resource_type, lines in FhirExportChunk.objects.filter(export=job).values_list("resource_type", "lines"):
        counts[resource_type] = counts.get(resource_type, 0) + lines
    return [(t, counts[t]) for t in job.types if counts.get(t)]


def export_chunk_ids(*, export_id: Any, resource_type: str) -> list[int]:
    return list(
        FhirExportChunk.objects.filter(export_id=export_id, resource_type=resource_type)
        .order_by("seq")
        .values_list("id", flat=True)
    )


def export_chunk_body(chunk_id: int) -> str | None:
    return FhirExportChunk.objects.filter(id=chunk_id).values_list("body", flat=True).first()


def export_cancel(*, job: FhirExport) -> None:
    """Bulk Data cancellation: the job and whatever it wrote are gone (the caller audits)."""
    FhirExport.objects.filter(pk=job.pk).delete()


# ---- the job, run by the engine ----------------------------------------------------------------


def _lines(step: Step, job: FhirExport, budget: int) -> tuple[list[dict[str, Any]], Any, bool, int]:
    """The resources of `step` after the cursor: (resources, new keyset position, step done, cost
    against the loop's budget)."""
    if step.resource_type == "Patient":
        patients = Patient.objects.filter(id__in=[pk for pk, _ in job.patients]).order_by("pseudonym")
        views = [resources.PatientView(p.pseudonym, p.discharged_at is None) for p in patients]
        found = [resources.patient_resource(v, mrn_system=settings.PERFUSE_FHIR_MRN_SYSTEM) for v in views]
        return found, None, True, max(1, len(found))
    if step.resource_type == "Device":
        devices = Device.objects.filter(ward_id=job.ward_id).select_related("ward").order_by("device_id")
        found = [resources.device_resource(device_view(d)) for d in devices]
        return found, None, True, max(1, len(found))
    return _observation_page(step, job, budget)


def _readings_from(
    patient_pk: int, metric: str, since: dt.datetime | None, after: ReadingKey | None, budget: int
) -> tuple[dt.datetime, list[StoredReading]] | None:
    """The end of the next WINDOW of the patient's readings after `after`, and its readings (at
    most `budget`); None when there are no more."""
    start = reading_next_time(patient_id=patient_pk, metric=metric, after=after)
    if start is None:
        return None
    until = start + WINDOW
    return until, readings_after(
        patient_id=patient_pk, metric=metric, ingested_since=since, after=after, until=until, limit=budget
    )


def _observation_page(step: Step, job: FhirExport, budget: int) -> tuple[list[dict[str, Any]], Any, bool, int]:
    """The next readings of one patient and metric, from at most one WINDOW of sample time: with
    `_since`, most readings may fail the ingest-time filter, and a window bounds what one query
    walks. A window that returns nothing still costs SCAN_COST, so a loop walks few of them."""
    assert step.patient is not None and step.metric is not None
    metric = step.metric
    patient_pk, pseudonym = job.patients[step.patient]
    raw = job.cursor.get("after")
    after = (dt.datetime.fromisoformat(raw[0]), int(raw[1]), int(raw[2])) if raw else None
    # The readings may come from the replica once it holds this job (committed when the export
    # was requested, so it also holds every reading committed before); never waited for here, in
    # the engine's loop. The job's own writes (chunks, cursor) go to the primary.
    found = on_replica(
        lambda: _readings_from(patient_pk, metric, job.since, after, budget),
        seen=job,
        in_transaction=True,
        catch_up=0.0,
    )
    if found is None:
        return [], None, True, 1
    until, rows = found
    if len(rows) == budget:
        position = [rows[-1].sample_time.isoformat(), rows[-1].device_pk, rows[-1].seq]
    else:
        position = [until.isoformat(), -1, -1]  # past every reading sampled before `until`
    scan_cost = max(1, settings.PERFUSE_FHIR_EXPORT_CHUNK_ROWS // 10)
    return [resources.observation_raw(r, pseudonym=pseudonym) for r in rows], position, False, max(len(rows), scan_cost)


def _write_chunk(job: FhirExport, resource_type: str, found: list[dict[str, Any]]) -> None:
    chunks: dict[str, int] = job.cursor.setdefault("chunks", {})
    seq = chunks.get(resource_type, 0)
    FhirExportChunk.objects.create(
        export=job,
        resource_type=resource_type,
        seq=seq,
        lines=len(found),
        body="".join(orjson.dumps(r).decode() + "\n" for r in found),
    )
    chunks[resource_type] = seq + 1


def _finish(job: FhirExport, now: dt.datetime) -> None:
    job.state = FhirExport.State.DONE
    job.finished_at = now
    job.expires_at = now + dt.timedelta(seconds=settings.PERFUSE_FHIR_EXPORT_RETENTION_SECONDS)
    if DISCLOSING_TYPES & set(job.types):
        actor = Actor(**job.actor)
        for _, pseudonym in job.patients:
            audit_record(
                actor=actor,
                action=DISCLOSURE_ACTION,
                subject=pseudonym,
                detail={
                    "export": str(job.id),
                    "ward": job.ward.code,
                    "types": job.types,
                    "since": job.since.isoformat() if job.since else None,
                },
            )


def export_advance(job: FhirExport, *, now: dt.datetime, budget: int) -> None:
    """One unit of work: chunks of the next steps, up to `budget` resources (an empty step counts
    as one, a window of sample time at least SCAN_COST, so a ward of quiet patients is not one
    loop per patient and metric, nor a selective `_since` an unbounded scan), the cursor moved
    past them."""
    steps = export_steps(job)
    left = budget
    while left > 0 and int(job.cursor.get("step", 0)) < len(steps):
        index = int(job.cursor.get("step", 0))
        step = steps[index]
        found, position, done, cost = _lines(step, job, left)
        if found:
            _write_chunk(job, step.resource_type, found)
        job.cursor["step"], job.cursor["after"] = (index + 1, None) if done else (index, position)
        left -= cost
    if int(job.cursor["step"]) >= len(steps):
        _finish(job, now)
    job.save()


def export_claim() -> FhirExport | None:
    """The oldest queued export no one else is writing (call inside a transaction)."""
    return (
        FhirExport.objects.select_for_update(skip_locked=True)
        .select_related("ward")
        .filter(state=FhirExport.State.QUEUED)
        .order_by("transaction_time")
        .first()
    )


def export_fail(*, job: FhirExport, error: str, now: dt.datetime) -> None:
    retention = dt.timedelta(seconds=settings.PERFUSE_FHIR_EXPORT_RETENTION_SECONDS)
    FhirExport.objects.filter(pk=job.pk).update(
        state=FhirExport.State.FAILED, error=error[:500], finished_at=now, expires_at=now + retention
    )
    audit_record(actor=SYSTEM, action="fhir.export.failed", detail={"export": str(job.id), "error": error[:200]})


def _expired(now: dt.datetime) -> Iterator[FhirExport]:
    yield from FhirExport.objects.select_for_update(skip_locked=True).filter(expires_at__lt=now)[:100]


def export_expire(*, now: dt.datetime) -> int:
    """Delete the exports (and their files) whose retention ended, each deletion audited."""
    gone = 0
    for job in _expired(now):
        audit_record(actor=SYSTEM, action="fhir.export.expired", detail={"export": str(job.id), "ward_id": job.ward_id})
        job.delete()
        gone += 1
    return gone


# Whether anything expired or queued exists, in one plain statement: the engine's timers ask five
# times a second, nearly always to learn there is nothing, and the two locking ORM queries behind
# it (compiled each time, each in a savepoint) cost the engine more than everything else a tick does.
_WORK_SQL = (
    f"SELECT EXISTS (SELECT 1 FROM {FhirExport._meta.db_table} WHERE expires_at < %s), "
    f"EXISTS (SELECT 1 FROM {FhirExport._meta.db_table} WHERE state = %s)"
)


def _work(now: dt.datetime) -> tuple[bool, bool]:
    """(some export's retention ended, some export is queued), read without locking: what the
    tick then claims is locked and read again (skip locked), so a stale answer only defers work
    to the next tick."""
    with connection.cursor() as cursor:
        cursor.execute(_WORK_SQL, [now, FhirExport.State.QUEUED.value])
        expired, queued = cursor.fetchone()
    return bool(expired), bool(queued)


class ExportProcessor:
    """Engine processor: expiry, then up to PERFUSE_FHIR_EXPORT_CHUNK_ROWS resources of the oldest
    queued export per loop."""

    def process(self, rows: list[Any], *, now: dt.datetime) -> None:
        return None

    def tick(self, *, now: dt.datetime) -> None:
        expired, queued = _work(now)
        if expired:
            with transaction.atomic():
                export_expire(now=now)
        if not queued:
            return
        with transaction.atomic():
            job = export_claim()
            if job is None:
                return
            try:
                with transaction.atomic():
                    export_advance(job, now=now, budget=settings.PERFUSE_FHIR_EXPORT_CHUNK_ROWS)
            except (OperationalError, InterfaceError):
                raise  # the connection is gone: the engine reconnects and the job resumes
            except Exception as exc:
                log.exception("FHIR export %s failed", job.pk)
                export_fail(job=job, error=f"{type(exc).__name__}: {exc}", now=now)
