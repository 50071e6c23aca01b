"""De-identified research export of a cohort: a ward's patients over a time span (issue 11.5,
docs/retention.md).

The cohort is every reading a patient produced while lying on the ward (their stays there) in
[start, end). The files carry no identity and no pseudonym:

- **Subjects re-keyed per export**: `subject` = HMAC-SHA256(secret, pseudonym), first 20 hex
  digits, with a 32-byte secret drawn for this export and discarded when it is built: never
  stored, never in the files, so two exports of the same patient cannot be linked, nor a
  subject traced back to a pseudonym by anyone, Perfuse included.
- **Dates shifted per patient**: every time of a patient moves by the same random whole number
  of days (within ±PERFUSE_RESEARCH_DATE_SHIFT_DAYS, never 0), so intervals, time of day and
  weekday rhythm within a patient stay true while calendar dates do not. The offsets are kept
  server-side only, AES-GCM-sealed under a key derived from SECRET_KEY (ResearchSubject), so
  compliance can answer for an export; they are not in the files.
- **Rare values capped**: per metric, values outside the cohort's p-th and (100-p)-th
  percentiles (PERFUSE_RESEARCH_CLIP_PERCENT, default 1) are clipped to them; the bounds are
  listed in the export's parameters and in its `about.json`.
- **Small cohorts refused**: fewer than PERFUSE_RESEARCH_MIN_PATIENTS patients with readings
  (k, default 5) is refused, as is more than PERFUSE_RESEARCH_MAX_ROWS readings.
- Columns: subject, metric, unit, time (shifted, UTC), value (canonical unit, clipped), signal
  quality. No device, calibration, firmware, sequence, ingest time, ward or bed.

The export, its purpose and its parameters are audited: `research.export.created` once, and
one `research.export` disclosure per patient (subject: the pseudonym, purpose: the stated
purpose), which the patient's accounting of disclosures lists. The files are readable only by
the requester (audit.access.policy.requester_read) and deleted PERFUSE_RESEARCH_RETENTION_HOURS
after the export by the retention job (`research.export.expired`).

The export is built in the request, bounded by MAX_ROWS (a cohort beyond it is refused, not
queued).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import secrets
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import connections, transaction

from audit.trail import Actor, audit_record
from config.replica import on_replica, read_alias
from telemetry.errors import RegistryError
from telemetry.lifecycle.models import ResearchExport, ResearchFile, ResearchSubject
from telemetry.models import Patient, Ward
from telemetry.units import METRICS

SCHEMA = "perfuse.research.readings/1"
MAX_SPAN = dt.timedelta(days=400)
_COHORT_SQL = """
    SELECT r.patient_id, r.metric, r.sample_time, r.value, r.signal_quality
    FROM telemetry_reading r
    JOIN telemetry_patientstay s ON s.patient_id = r.patient_id AND s.ward_id = %s
        AND r.sample_time >= s.start AND (s."end" IS NULL OR r.sample_time < s."end")
    WHERE r.patient_id IS NOT NULL AND r.sample_time >= %s AND r.sample_time < %s
        AND s.start < %s AND (s."end" IS NULL OR s."end" > %s)
    ORDER BY r.patient_id, r.metric, r.sample_time, r.seq
    LIMIT %s
"""
_COLUMNS = pa.schema(
    [
        pa.field("subject", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("signal_quality", pa.float32()),
    ],
    metadata={"perfuse.schema": SCHEMA},
)


@dataclass(frozen=True)
class Cohort:
    patients: dict[int, str]  # patient id → pseudonym (never leaves this module's caller)
    table: pa.Table  # patient_id, metric, sample_time, value, signal_quality


def _offsets_key() -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"perfuse research date offsets")
    return hkdf.derive(settings.SECRET_KEY.encode())


def offset_seal(*, export_id: str, patient_id: int, days: int) -> bytes:
    nonce = secrets.token_bytes(12)
    aad = f"{export_id}:{patient_id}".encode()
    return nonce + AESGCM(_offsets_key()).encrypt(nonce, str(days).encode(), aad)


def offset_unseal(subject: ResearchSubject) -> int:
    """The date offset (days) of one patient in one export: for compliance, never for the files."""
    sealed = bytes(subject.offset_sealed)
    aad = f"{subject.export_id}:{subject.patient_id}".encode()
    return int(AESGCM(_offsets_key()).decrypt(sealed[:12], sealed[12:], aad))


def _random_offset() -> int:
    span = settings.PERFUSE_RESEARCH_DATE_SHIFT_DAYS
    while True:
        days = secrets.randbelow(2 * span + 1) - span
        if days:
            return days


def cohort_read(*, ward: Ward, start: dt.datetime, end: dt.datetime) -> Cohort:
    limit = settings.PERFUSE_RESEARCH_MAX_ROWS
    with connections[read_alias()].cursor() as cursor:
        cursor.execute(_COHORT_SQL, [ward.pk, start, end, end, start, limit + 1])
        rows = cursor.fetchall()
    if len(rows) > limit:
        raise RegistryError(f"the cohort holds more than {limit} readings: export a shorter span", code="too_large")
    names = ["patient_id", "metric", "sample_time", "value", "signal_quality"]
    table = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
    ids = sorted({r[0] for r in rows})
    patients = dict(Patient.objects.filter(id__in=ids).values_list("id", "pseudonym"))
    return Cohort(patients, table)


def _clip(table: pa.Table, percent: int) -> tuple[pa.Array, dict[str, list[float]]]:
    """Values clipped per metric to the cohort's [p, 100-p] percentiles; the bounds used."""
    values = table.column("value").to_pylist()
    metrics = table.column("metric").to_pylist()
    bounds: dict[str, list[float]] = {}
    for metric in sorted(set(metrics)):
        picked = pc.filter(table.column("value"), pc.equal(table.column("metric"), metric))
        lo, hi = pc.quantile(picked, q=[percent / 100, 1 - percent / 100], interpolation="nearest").to_pylist()
        bounds[metric] = [lo, hi]
    clipped = [min(max(v, bounds[m][0]), bounds[m][1]) for v, m in zip(values, metrics, strict=True)]
    return pa.array(clipped, pa.float64()), bounds


def _deidentified(cohort: Cohort, secret: bytes, offsets: dict[int, int], values: pa.Array) -> pa.Table:
    ids = cohort.table.column("patient_id").to_pylist()
    subjects = {
        pk: hmac.new(secret, pseudonym.encode(), hashlib.sha256).hexdigest()[:20]
        for pk, pseudonym in cohort.patients.items()
    }
    times = cohort.table.column("sample_time").to_pylist()
    metrics = cohort.table.column("metric").to_pylist()
    table = pa.table(
        {
            "subject": [subjects[pk] for pk in ids],
            "metric": metrics,
            "unit": [METRICS[m].canonical if m in METRICS else "" for m in metrics],
            "time": [t + dt.timedelta(days=offsets[pk]) for t, pk in zip(times, ids, strict=True)],
            "value": values,
            "signal_quality": cohort.table.column("signal_quality").cast(pa.float32()),
        },
        schema=_COLUMNS,
    )
    return table.sort_by([("subject", "ascending"), ("metric", "ascending"), ("time", "ascending")])


def _files(table: pa.Table, about: dict[str, object]) -> list[tuple[str, str, bytes]]:
    parquet = io.BytesIO()
    pq.write_table(table, parquet, compression="zstd", store_schema=False)
    csv = io.BytesIO()
    pacsv.write_csv(table, csv)
    return [
        ("readings.parquet", "application/vnd.apache.parquet", parquet.getvalue()),
        ("readings.csv", "text/csv", csv.getvalue()),
        ("about.json", "application/json", json.dumps(about, indent=2, sort_keys=True).encode() + b"\n"),
    ]


def _span_check(start: dt.datetime, end: dt.datetime, now: dt.datetime, purpose: str) -> None:
    if not purpose.strip():
        raise RegistryError("state the research purpose", code="purpose_required")
    if not start < end <= now + dt.timedelta(minutes=1):
        raise RegistryError("the span must start before it ends, and end by now", code="invalid_range")
    if end - start > MAX_SPAN:
        raise RegistryError(f"the span is longer than {MAX_SPAN.days} days", code="range_too_long")


def research_export_create(
    *,
    requester_id: int,
    actor: Actor,
    ward_code: str,
    start: dt.datetime,
    end: dt.datetime,
    purpose: str,
    now: dt.datetime | None = None,
) -> ResearchExport:
    """Build and keep a de-identified export of the cohort (module docstring), audited as a
    disclosure of each patient in it. The caller has decided the requester may export."""
    now = now or dt.datetime.now(dt.UTC)
    _span_check(start, end, now, purpose)
    ward = Ward.objects.filter(code=ward_code).first()
    if ward is None:
        raise RegistryError(f"no ward {ward_code!r}", code="unknown_ward")
    k = settings.PERFUSE_RESEARCH_MIN_PATIENTS
    with transaction.atomic():
        # The cohort may come from the replica (config.replica): nothing is written before it.
        cohort = on_replica(lambda: cohort_read(ward=ward, start=start, end=end), in_transaction=True)
        if len(cohort.patients) < k:
            raise RegistryError(
                f"the cohort has {len(cohort.patients)} patients with readings; at least {k} are needed",
                code="cohort_too_small",
            )
        return _export_build(cohort, requester_id, actor, ward, start, end, purpose.strip()[:300], now)


def _export_build(
    cohort: Cohort,
    requester_id: int,
    actor: Actor,
    ward: Ward,
    start: dt.datetime,
    end: dt.datetime,
    purpose: str,
    now: dt.datetime,
) -> ResearchExport:
    secret = secrets.token_bytes(32)  # this export's re-keying secret: never stored
    offsets = {pk: _random_offset() for pk in cohort.patients}
    values, bounds = _clip(cohort.table, settings.PERFUSE_RESEARCH_CLIP_PERCENT)
    parameters: dict[str, object] = {
        "min_patients": settings.PERFUSE_RESEARCH_MIN_PATIENTS,
        "clip_percent": settings.PERFUSE_RESEARCH_CLIP_PERCENT,
        "clip_bounds": bounds,
        "date_shift_days": settings.PERFUSE_RESEARCH_DATE_SHIFT_DAYS,
        "subject_key": "HMAC-SHA256, per-export secret, not kept",
    }
    about = {"schema": SCHEMA, "subjects": len(cohort.patients), "rows": cohort.table.num_rows, **parameters}
    export = ResearchExport.objects.create(
        requester_id=requester_id,
        ward=ward,
        start=start,
        end=end,
        purpose=purpose,
        created_at=now,
        expires_at=now + dt.timedelta(hours=settings.PERFUSE_RESEARCH_RETENTION_HOURS),
        patients=len(cohort.patients),
        rows=cohort.table.num_rows,
        parameters=parameters,
    )
    for name, content_type, content in _files(_deidentified(cohort, secret, offsets, values), about):
        sha = hashlib.sha256(content).hexdigest()
        ResearchFile.objects.create(export=export, name=name, content_type=content_type, content=content, sha256=sha)
    for pk, days in offsets.items():
        sealed = offset_seal(export_id=str(export.pk), patient_id=pk, days=days)
        ResearchSubject.objects.create(export=export, patient_id=pk, offset_sealed=sealed)
    _export_audit(export, cohort, actor)
    return export


def _export_audit(export: ResearchExport, cohort: Cohort, actor: Actor) -> None:
    detail = {
        "export": str(export.pk),
        "ward": export.ward.code,
        "start": export.start.isoformat(),
        "end": export.end.isoformat(),
        "rows": export.rows,
        "parameters": export.parameters,
    }
    audit_record(
        actor=actor,
        action="research.export.created",
        purpose=export.purpose,
        detail={**detail, "patients": export.patients},
    )
    for pseudonym in sorted(cohort.patients.values()):
        audit_record(actor=actor, action="research.export", subject=pseudonym, purpose=export.purpose, detail=detail)


def research_exports_of(requester_id: int) -> list[ResearchExport]:
    return list(
        ResearchExport.objects.filter(requester_id=requester_id).select_related("ward").prefetch_related("files")[:100]
    )


def research_file(*, export_id: str, name: str) -> tuple[ResearchExport | None, ResearchFile | None]:
    """The unexpired export (if any) and its file of that name (if any), for the access decision."""
    export = ResearchExport.objects.filter(pk=export_id, expires_at__gt=dt.datetime.now(dt.UTC)).first()
    found = ResearchFile.objects.filter(export=export, name=name).first() if export else None
    return export, found
