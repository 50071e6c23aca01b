"""`manage.py apply_retention`: what leaves the hot store, and only what may (docs/retention.md).

Per data class, a retention in days (settings PERFUSE_RETENTION_*_DAYS):

- **Readings.** A past day older than the retention is looked at ward by ward (the ward-days of
  the archive, `telemetry.archive.writer.day_wards`). A ward-day is *cleared* when its manifest
  was written and read back and verified (`archive_day_check`: every file's SHA-256, size and
  rows, the rows per device, the hot store's counts) and no open legal hold touches it (a hold on
  its ward, or on a patient whose readings or pseudonym it holds). When every ward-day of the day
  is cleared, the day's partition is dropped (TimescaleDB: its chunks) through the SECURITY
  DEFINER function `telemetry_reading_day_drop`; otherwise the cleared ward-days' rows are
  DELETEd and the partition stays for the others. Either way the rows removed are counted inside
  the deleting transaction and compared with the manifests: a row that arrived after the check
  (or any other difference) rolls the drop back. The holds are locked (SHARE) in that transaction,
  so a hold set meanwhile waits for it or is seen by it.
- **Signed batches.** Those of a cleared ward-day older than their own retention whose readings
  lie within the day (a batch across midnight also within the previous day, when that ward-day is
  cleared too in this run).
- **Rollups** (plain PostgreSQL; TimescaleDB's continuous aggregates are not touched): buckets
  older than the retention, except those of held patients and of held wards' devices.
- **HL7 messages**: received before the retention, except those about held patients, through
  `telemetry_hl7_retention_delete` (the table is insert-only for the application role).
- **Audit**: shown, never deleted: the trail is append-only and the application's role cannot
  delete it (audit/hardening.py).
- **Research exports** past their expiry are deleted with their files.

Each deletion is audited with its counts; `--dry-run` reports what would go and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from audit.trail import SYSTEM, Actor, audit_record
from telemetry.archive.layout import day_bounds
from telemetry.archive.objects import ObjectStore
from telemetry.archive.verify import archive_day_check
from telemetry.archive.writer import archive_store, day_manifests, day_wards, hot_counts
from telemetry.lifecycle.holds import HeldSet, held_set
from telemetry.lifecycle.models import ResearchExport, RetentionDay
from telemetry.storage import hl7_messages_delete, reading_day_drop, timescale_in_use

ROLLUP_TABLES = ("telemetry_rollup_1m", "telemetry_rollup_1h")
_HELD_PATIENT_ROWS = (
    "SELECT 1 FROM telemetry_reading WHERE patient_id = ANY(%s::bigint[]) AND device_id = ANY(%s::bigint[]) "
    "AND sample_time >= %s AND sample_time < %s LIMIT 1"
)
_DELETE_READINGS = (
    "DELETE FROM telemetry_reading WHERE device_id = ANY(%s::bigint[]) AND sample_time >= %s AND sample_time < %s"
)
_DELETE_BATCHES = (
    "DELETE FROM telemetry_signed_batch WHERE device_id = ANY(%s::bigint[]) AND max_sample_time >= %s "
    "AND max_sample_time < %s AND min_sample_time >= %s"
)
_COUNT_BATCHES = _DELETE_BATCHES.replace("DELETE FROM", "SELECT count(*) FROM", 1)


class RetentionChanged(Exception):
    """The hot store changed between the check and the drop: the drop was rolled back."""


@dataclass(frozen=True)
class DataClass:
    name: str
    setting: str
    days: int
    applied: str  # how Perfuse applies it


def retention_classes() -> list[DataClass]:
    """The configured retention of each data class, for the page and the report."""
    s = settings
    return [
        DataClass("readings", "PERFUSE_RETENTION_READINGS_DAYS", s.PERFUSE_RETENTION_READINGS_DAYS,
                  "hot day dropped once archived, verified and not held"),
        DataClass("signed batches", "PERFUSE_RETENTION_BATCHES_DAYS", s.PERFUSE_RETENTION_BATCHES_DAYS,
                  "deleted with cleared ward-days (kept in the archive)"),
        DataClass("rollups", "PERFUSE_RETENTION_ROLLUPS_DAYS", s.PERFUSE_RETENTION_ROLLUPS_DAYS,
                  "older buckets deleted, held patients and wards kept (plain PostgreSQL)"),
        DataClass("HL7 messages", "PERFUSE_RETENTION_HL7_DAYS", s.PERFUSE_RETENTION_HL7_DAYS,
                  "older messages deleted, held patients' kept"),
        DataClass("audit", "PERFUSE_RETENTION_AUDIT_DAYS", s.PERFUSE_RETENTION_AUDIT_DAYS,
                  "never deleted by Perfuse: the trail is append-only"),
    ]  # fmt: skip


@dataclass
class WardDay:
    day: dt.date
    ward: str
    archived: bool = False
    verified: bool = False
    held: bool = False
    devices: list[int] = field(default_factory=list)
    hot_readings: int = 0
    readings_dropped: int = 0
    batches_dropped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def cleared(self) -> bool:
        return self.verified and not self.held

    def as_json(self) -> dict[str, Any]:
        found = asdict(self)
        found["day"] = self.day.isoformat()
        found["cleared"] = self.cleared
        del found["devices"]
        return found


@dataclass
class RetentionReport:
    dry_run: bool
    ward_days: list[WardDay] = field(default_factory=list)
    days_dropped: list[str] = field(default_factory=list)  # whole partitions (or chunks)
    rollups_deleted: dict[str, int] = field(default_factory=dict)
    hl7_deleted: int = 0
    research_expired: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ward_days": [w.as_json() for w in self.ward_days],
            "days_dropped": self.days_dropped,
            "readings_dropped": sum(w.readings_dropped for w in self.ward_days),
            "batches_dropped": sum(w.batches_dropped for w in self.ward_days),
            "rollups_deleted": self.rollups_deleted,
            "hl7_deleted": self.hl7_deleted,
            "research_expired": self.research_expired,
        }


def _cutoff(now: dt.datetime, days: int) -> dt.date:
    """Days before this one are past the retention: a day goes once `days` whole days followed it."""
    return now.date() - dt.timedelta(days=days)


def _window(now: dt.datetime) -> list[dt.date]:
    """The days a run looks at: back LOOKBACK days before each cutoff (readings, batches)."""
    lookback = dt.timedelta(days=settings.PERFUSE_RETENTION_LOOKBACK_DAYS)
    days: set[dt.date] = set()
    for retention in (settings.PERFUSE_RETENTION_READINGS_DAYS, settings.PERFUSE_RETENTION_BATCHES_DAYS):
        cutoff = _cutoff(now, retention)
        days.update(cutoff - dt.timedelta(days=n) for n in range(1, lookback.days + 1))
    return sorted(days)


def _touched_by_hold(ward_day: WardDay, manifest: dict[str, Any] | None, held: HeldSet) -> bool:
    if ward_day.ward in held.ward_codes:
        return True
    if held.empty:
        return False
    archived = {p for d in (manifest or {}).get("devices", []) for p in d.get("pseudonyms", [])}
    if archived & held.pseudonyms:
        return True
    lo, hi = day_bounds(ward_day.day)
    with connection.cursor() as cursor:
        cursor.execute(_HELD_PATIENT_ROWS, [sorted(held.patient_ids), ward_day.devices, lo, hi])
        return cursor.fetchone() is not None


def ward_day_examine(
    *,
    day: dt.date,
    ward_code: str,
    devices: list[int],
    manifest: dict[str, Any] | None,
    store: ObjectStore,
    held: HeldSet,
) -> WardDay:
    """Archived? verified (its archive read back whole from the store)? held? — for one ward-day."""
    found = WardDay(day, ward_code)
    found.archived = manifest is not None
    listed = [int(d["device_pk"]) for d in manifest["devices"]] if manifest else []
    found.devices = sorted(set(devices) | set(listed))
    found.hot_readings = sum(hot_counts(found.devices, day).values()) if found.devices else 0
    if manifest is not None:
        check = archive_day_check(day=day, ward_code=ward_code, store=store)
        found.verified, found.problems = check.ok, list(check.problems)
    else:
        found.problems.append("not archived")
    found.held = _touched_by_hold(found, manifest, held)
    return found


def _day_examine(day: dt.date, store: ObjectStore, held: HeldSet) -> list[WardDay]:
    hot = {ward: [d.pk for d in devices] for ward, devices in day_wards(day=day, store=store).items()}
    manifests = day_manifests(store, day)
    return [
        ward_day_examine(
            day=day, ward_code=w, devices=hot.get(w, []), manifest=manifests.get(w), store=store, held=held
        )
        for w in sorted(set(hot) | set(manifests))
    ]


def _holds_lock_and_recheck(ward_days: list[WardDay]) -> None:
    """Lock the holds for the rest of the transaction and mark ward-days a hold now touches."""
    with connection.cursor() as cursor:
        cursor.execute("LOCK TABLE telemetry_legalhold IN SHARE MODE")
    held = held_set()
    for w in ward_days:
        w.held = w.held or _touched_by_hold(w, None, held)


def _readings_drop(day: dt.date, ward_days: list[WardDay], actor: Actor) -> bool:
    """Drop the cleared ward-days' readings of `day`, in one transaction; True when the whole
    day's partition went. Raises RetentionChanged (rolled back) when the counts differ."""
    with transaction.atomic():
        _holds_lock_and_recheck(ward_days)
        due = [w for w in ward_days if w.cleared and w.hot_readings]
        if not due:
            return False
        expected = sum(w.hot_readings for w in due)
        whole = len(due) == len([w for w in ward_days if w.hot_readings])
        with connection.cursor() as cursor:
            dropped = reading_day_drop(cursor, day) if whole else None
            if dropped is None:
                whole = False
                lo, hi = day_bounds(day)
                cursor.execute(_DELETE_READINGS, [sorted({d for w in due for d in w.devices}), lo, hi])
                dropped = cursor.rowcount
        if dropped != expected:
            raise RetentionChanged(f"{day}: {dropped} readings in the hot store, {expected} archived and verified")
        for w in due:
            w.readings_dropped = w.hot_readings
            audit_record(
                actor=actor,
                action="retention.readings_dropped",
                detail={"day": day.isoformat(), "ward": w.ward, "readings": w.hot_readings,
                        "how": "partition" if whole else "rows"},
            )  # fmt: skip
        return whole


def _batches_span(w: WardDay, by_key: dict[tuple[dt.date, str], WardDay]) -> tuple[Any, ...]:
    lo, hi = day_bounds(w.day)
    previous = by_key.get((w.day - dt.timedelta(days=1), w.ward))
    since = lo - dt.timedelta(days=1) if previous is not None and previous.cleared else lo
    return w.devices, lo, hi, since


def _batches_drop(w: WardDay, by_key: dict[tuple[dt.date, str], WardDay], actor: Actor, dry_run: bool) -> None:
    if not (w.cleared and w.devices):
        return
    with transaction.atomic(), connection.cursor() as cursor:
        if not dry_run:
            _holds_lock_and_recheck([w])
            if not w.cleared:
                return
        cursor.execute(_COUNT_BATCHES if dry_run else _DELETE_BATCHES, list(_batches_span(w, by_key)))
        w.batches_dropped = int(cursor.fetchone()[0]) if dry_run else cursor.rowcount
        if w.batches_dropped and not dry_run:
            audit_record(
                actor=actor,
                action="retention.batches_dropped",
                detail={"day": w.day.isoformat(), "ward": w.ward, "batches": w.batches_dropped},
            )


def _finding_save(w: WardDay, now: dt.datetime) -> None:
    values = {
        "archived": w.archived,
        "verified": w.verified,
        "held": w.held,
        "hot_readings": w.hot_readings - w.readings_dropped,
        "problems": "; ".join(w.problems)[:2000],
        "checked_at": now,
    }
    row, _ = RetentionDay.objects.update_or_create(day=w.day, ward=w.ward, defaults=values)
    if w.readings_dropped or w.batches_dropped:
        row.readings_dropped += w.readings_dropped
        row.batches_dropped += w.batches_dropped
        if w.readings_dropped and row.dropped_at is None:
            row.dropped_at = now
        row.save(update_fields=["readings_dropped", "batches_dropped", "dropped_at"])


def _held_filter(held: HeldSet) -> tuple[str, list[Any]]:
    return (
        " AND (patient_id IS NULL OR NOT patient_id = ANY(%s::bigint[])) AND NOT device_id = ANY(%s::bigint[])",
        [sorted(held.patient_ids), sorted(held.device_ids)],
    )


def _rollups_delete(now: dt.datetime, dry_run: bool, actor: Actor) -> dict[str, int]:
    if timescale_in_use():
        return {}
    cutoff = dt.datetime.combine(_cutoff(now, settings.PERFUSE_RETENTION_ROLLUPS_DAYS), dt.time(), tzinfo=dt.UTC)
    counts: dict[str, int] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE telemetry_legalhold IN SHARE MODE")
        where, params = _held_filter(held_set())
        for table in ROLLUP_TABLES:
            verb = "SELECT count(*) FROM" if dry_run else "DELETE FROM"
            cursor.execute(f"{verb} {table} WHERE bucket < %s{where}", [cutoff, *params])
            counts[table] = int(cursor.fetchone()[0]) if dry_run else cursor.rowcount
        if not dry_run and any(counts.values()):
            audit_record(
                actor=actor, action="retention.rollups_deleted", detail={"before": cutoff.isoformat(), **counts}
            )
    return counts


def _hl7_delete(now: dt.datetime, dry_run: bool, actor: Actor) -> int:
    before = dt.datetime.combine(_cutoff(now, settings.PERFUSE_RETENTION_HL7_DAYS), dt.time(), tzinfo=dt.UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE telemetry_legalhold IN SHARE MODE")
        keep = sorted(held_set().pseudonyms)
        if dry_run:
            cursor.execute(
                "SELECT count(*) FROM telemetry_hl7message WHERE received_at < %s AND NOT (subject = ANY(%s::text[]))",
                [before, keep],
            )
            return int(cursor.fetchone()[0])
        deleted = hl7_messages_delete(cursor, before=before, keep=keep)
        if deleted:
            audit_record(
                actor=actor,
                action="retention.hl7_deleted",
                detail={"before": before.isoformat(), "messages": deleted, "kept_subjects": len(keep)},
            )
        return deleted


def research_exports_expire(*, now: dt.datetime, dry_run: bool = False, actor: Actor = SYSTEM) -> int:
    """Delete research exports (and their files and sealed offsets) whose expiry passed."""
    gone = 0
    with transaction.atomic():
        for export in ResearchExport.objects.select_for_update(skip_locked=True).filter(expires_at__lt=now)[:200]:
            gone += 1
            if not dry_run:
                audit_record(
                    actor=actor,
                    action="research.export.expired",
                    detail={"export": str(export.pk), "ward_id": export.ward_id, "files": export.files.count()},
                )
                export.delete()
    return gone


def _readings_and_batches(report: RetentionReport, now: dt.datetime, store: ObjectStore, actor: Actor) -> None:
    readings_cutoff = _cutoff(now, settings.PERFUSE_RETENTION_READINGS_DAYS)
    batches_cutoff = _cutoff(now, settings.PERFUSE_RETENTION_BATCHES_DAYS)
    held = held_set()
    for day in _window(now):
        ward_days = _day_examine(day, store, held)
        report.ward_days.extend(ward_days)
        if day < readings_cutoff and ward_days:
            if report.dry_run:
                for w in ward_days:
                    w.readings_dropped = w.hot_readings if w.cleared else 0
            else:
                try:
                    if _readings_drop(day, ward_days, actor):
                        report.days_dropped.append(day.isoformat())
                except RetentionChanged as exc:
                    for w in ward_days:
                        w.problems.append(str(exc))
    by_key = {(w.day, w.ward): w for w in report.ward_days}
    for w in report.ward_days:
        if w.day < batches_cutoff:
            _batches_drop(w, by_key, actor, report.dry_run)
        if not report.dry_run:
            _finding_save(w, now)


def retention_apply(
    *, now: dt.datetime | None = None, dry_run: bool = False, store: ObjectStore | None = None, actor: Actor = SYSTEM
) -> RetentionReport:
    """One retention run over every data class (see the module docstring)."""
    now = now or dt.datetime.now(dt.UTC)
    report = RetentionReport(dry_run=dry_run)
    _readings_and_batches(report, now, store or archive_store(), actor)
    report.rollups_deleted = _rollups_delete(now, dry_run, actor)
    report.hl7_deleted = _hl7_delete(now, dry_run, actor)
    report.research_expired = research_exports_expire(now=now, dry_run=dry_run, actor=actor)
    return report


def retention_days(*, limit: int = 400) -> list[RetentionDay]:
    """The last run's findings per ward-day, newest day first, for the page."""
    return list(RetentionDay.objects.all()[:limit])
