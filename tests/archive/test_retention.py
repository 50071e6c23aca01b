"""`manage.py apply_retention`: a hot day leaves only once its archive was read back and verified
and no legal hold touches it; partitions dropped whole or ward-days deleted row by row; rollups
and HL7 messages past their retention, held ones kept; every drop audited with its counts."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection

from audit.models import AuditEvent
from audit.trail import Actor
from telemetry.archive.layout import manifest_key, ward_prefix
from telemetry.archive.objects import ObjectStore
from telemetry.engine import RollupProcessor, engine_batch
from telemetry.lifecycle import retention
from telemetry.lifecycle.holds import legal_hold_release, legal_hold_set
from telemetry.lifecycle.models import RetentionDay
from telemetry.models import Hl7Message
from telemetry.storage import ensure_partition, partition_name
from tests.archive.support import at, day_rows, overwrite, sql, two_wards

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

OFFICER = Actor(user_id=None, username="compliance-officer", role="compliance")


@pytest.fixture(autouse=True)
def _short_retention(settings: Any, yesterday: dt.date) -> Iterator[None]:
    """Yesterday is past every retention; the run looks back three days. Yesterday's partition
    exists before and after each test: a drop is DDL, which the end of a test does not undo."""
    settings.PERFUSE_RETENTION_READINGS_DAYS = 0
    settings.PERFUSE_RETENTION_BATCHES_DAYS = 0
    settings.PERFUSE_RETENTION_ROLLUPS_DAYS = 0
    settings.PERFUSE_RETENTION_HL7_DAYS = 2
    settings.PERFUSE_RETENTION_LOOKBACK_DAYS = 3
    with connection.cursor() as cursor:
        ensure_partition(cursor, "telemetry_reading", yesterday)
    yield
    with connection.cursor() as cursor:
        ensure_partition(cursor, "telemetry_reading", yesterday)


def _command(name: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    try:
        call_command(name, *args, "--json", stdout=out)
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, json.loads(out.getvalue())


command = sync_to_async(_command)


def _ward_days(answer: dict[str, Any], day: dt.date) -> dict[str, dict[str, Any]]:
    return {w["ward"]: w for w in answer["ward_days"] if w["day"] == day.isoformat()}


async def _partition_exists(day: dt.date) -> bool:
    return bool((await sql("SELECT to_regclass(%s) IS NOT NULL", [partition_name(day)]))[0][0])


async def _rows_of(ward_pseudonyms: list[str], day: dt.date) -> int:
    lo = at(day, 0)
    found = await sql(
        "SELECT count(*) FROM telemetry_reading r JOIN telemetry_patient p ON p.id = r.patient_id "
        "WHERE p.pseudonym = ANY(%s) AND r.sample_time >= %s AND r.sample_time < %s",
        [ward_pseudonyms, lo, lo + dt.timedelta(days=1)],
    )
    return int(found[0][0])


async def _events(action: str) -> list[dict[str, Any]]:
    return [e.detail async for e in AuditEvent.objects.filter(action=action).order_by("id")]


async def test_a_verified_day_is_dropped_whole_audited_and_restorable(archive: ObjectStore, yesterday):
    """Against a directory and a real SeaweedFS bucket."""
    await two_wards(yesterday)
    today_before = await sql("SELECT count(*) FROM telemetry_reading WHERE sample_time >= %s", [at(yesterday, 86400)])
    await command("archive", "--day", yesterday.isoformat())
    status, dry = await command("apply_retention", "--dry-run")
    assert status == 0 and dry["dry_run"] and dry["readings_dropped"] == 540 and dry["days_dropped"] == []
    assert len(await day_rows(yesterday)) == 540  # a dry run deletes nothing

    status, answer = await command("apply_retention")
    assert status == 0
    found = _ward_days(answer, yesterday)
    assert {w: (d["archived"], d["verified"], d["held"], d["readings_dropped"]) for w, d in found.items()} == {
        "icu-a": (True, True, False, 510),
        "icu-b": (True, True, False, 30),
    }
    assert answer["days_dropped"] == [yesterday.isoformat()]
    assert not await _partition_exists(yesterday)
    assert await day_rows(yesterday) == []
    # Today's readings (b1's batch crossed midnight) stay, and so does that batch.
    assert await sql("SELECT count(*) FROM telemetry_reading WHERE sample_time >= %s", [at(yesterday, 86400)]) == (
        today_before
    )
    assert found["icu-a"]["batches_dropped"] == 5 and found["icu-b"]["batches_dropped"] == 0
    assert await sql("SELECT count(*) FROM telemetry_signed_batch") == [(1,)]
    dropped = await _events("retention.readings_dropped")
    assert [(d["ward"], d["readings"], d["how"]) for d in dropped] == [
        ("icu-a", 510, "partition"),
        ("icu-b", 30, "partition"),
    ]
    assert [(d["ward"], d["batches"]) for d in await _events("retention.batches_dropped")] == [("icu-a", 5)]
    row = await RetentionDay.objects.aget(day=yesterday, ward="icu-a")
    assert (row.verified, row.readings_dropped, row.hot_readings, row.dropped_at is not None) == (True, 510, 0, True)

    # A second run finds the day dropped and still verified, and drops nothing more.
    status, again = await command("apply_retention")
    assert status == 0 and again["readings_dropped"] == 0 and _ward_days(again, yesterday)["icu-a"]["verified"]
    # The archive brings it back.
    status, restored = await command("restore_archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    assert status == 0 and restored["inserted"] == 510


async def test_an_unarchived_day_is_kept_and_the_run_says_so(file_archive, yesterday):
    await two_wards(yesterday)
    status, answer = await command("apply_retention")
    assert status == 1
    found = _ward_days(answer, yesterday)
    assert {w: (d["archived"], d["verified"], d["readings_dropped"], d["problems"]) for w, d in found.items()} == {
        "icu-a": (False, False, 0, ["not archived"]),
        "icu-b": (False, False, 0, ["not archived"]),
    }
    assert len(await day_rows(yesterday)) == 540 and await _partition_exists(yesterday)
    assert await _events("retention.readings_dropped") == []


async def test_one_ward_archived_its_rows_go_and_the_partition_stays_for_the_other(file_archive, yesterday):
    await two_wards(yesterday)
    await command("archive", "--day", yesterday.isoformat(), "--ward", "icu-b")
    status, answer = await command("apply_retention")
    assert status == 1  # icu-a is not archived
    found = _ward_days(answer, yesterday)
    assert (found["icu-a"]["readings_dropped"], found["icu-b"]["readings_dropped"]) == (0, 30)
    assert await _partition_exists(yesterday) and answer["days_dropped"] == []
    assert (await _rows_of(["p-a1", "p-a2"], yesterday), await _rows_of(["p-b1"], yesterday)) == (510, 0)
    assert [(d["ward"], d["how"]) for d in await _events("retention.readings_dropped")] == [("icu-b", "rows")]


async def test_a_tampered_archive_blocks_the_drop(yesterday, file_archive):
    await two_wards(yesterday)
    await command("archive", "--day", yesterday.isoformat())
    manifest = json.loads(file_archive.get(manifest_key(yesterday, "icu-a")) or b"")
    key = ward_prefix(yesterday, "icu-a") + manifest["readings"]["file"]
    data = bytearray(file_archive.get(key) or b"")
    data[len(data) // 2] ^= 0x01
    overwrite(file_archive, key, bytes(data))
    status, answer = await command("apply_retention")
    assert status == 1
    found = _ward_days(answer, yesterday)
    assert (found["icu-a"]["verified"], found["icu-a"]["readings_dropped"], found["icu-a"]["batches_dropped"]) == (
        False,
        0,
        0,
    )
    assert found["icu-a"]["problems"] == [f"{key}: SHA-256 or size differs from the manifest"]
    assert await _rows_of(["p-a1", "p-a2"], yesterday) == 510
    assert await _rows_of(["p-b1"], yesterday) == 0  # the intact ward-day went
    assert await sql("SELECT count(*) FROM telemetry_signed_batch") == [(6,)]


def _roll_up() -> None:
    engine_batch([RollupProcessor()], now=dt.datetime.now(dt.UTC))


def _hl7(subject: str, control_id: str, age: dt.timedelta) -> None:
    Hl7Message.objects.create(
        received_at=dt.datetime.now(dt.UTC) - age,
        sender="EHR^HOSP",
        control_id=control_id,
        message_type="ADT^A01",
        raw=b"MSH|...",
        digest="0" * 64,
        ack_code="AA",
        ack="MSA|AA",
        subject=subject,
    )


async def test_a_legal_hold_stops_a_drop_that_would_otherwise_happen(file_archive, yesterday):
    await two_wards(yesterday)
    await sync_to_async(_roll_up)()
    await command("archive", "--day", yesterday.isoformat())
    for subject, control_id in [("p-a1", "m-1"), ("p-b1", "m-2"), ("", "m-3")]:
        await sync_to_async(_hl7)(subject, control_id, dt.timedelta(days=3))
    await sync_to_async(_hl7)("p-b1", "m-4", dt.timedelta(hours=1))
    hold = await sync_to_async(legal_hold_set)(pseudonym="p-a1", reason="litigation 2026-17", actor=OFFICER)

    status, answer = await command("apply_retention")
    assert status == 0  # kept for a hold, not for a problem
    found = _ward_days(answer, yesterday)
    assert (found["icu-a"]["verified"], found["icu-a"]["held"], found["icu-a"]["readings_dropped"]) == (True, True, 0)
    assert (found["icu-b"]["held"], found["icu-b"]["readings_dropped"]) == (False, 30)
    assert await _rows_of(["p-a1", "p-a2"], yesterday) == 510 and await _partition_exists(yesterday)
    # The held patient's rollups stay, the others' go; the held patient's HL7 messages stay.
    held_rollups = await sql(
        "SELECT count(*) FROM telemetry_rollup_1m r JOIN telemetry_patient p ON p.id = r.patient_id "
        "WHERE p.pseudonym = 'p-a1'"
    )
    assert held_rollups[0][0] > 0
    others = "FROM telemetry_rollup_1m r JOIN telemetry_patient p ON p.id = r.patient_id WHERE p.pseudonym <> 'p-a1'"
    today = at(yesterday, 86400)
    assert await sql(f"SELECT count(*) {others} AND r.bucket < %s", [today]) == [(0,)]
    assert (await sql(f"SELECT count(*) {others} AND r.bucket >= %s", [today]))[0][0] > 0  # not past retention
    assert sorted([m async for m in Hl7Message.objects.values_list("control_id", flat=True)]) == ["m-1", "m-4"]
    assert answer["hl7_deleted"] == 2

    # A ward hold keeps a ward whose patients have no hold of their own.
    await sync_to_async(legal_hold_release)(hold_id=hold.pk, reason="case closed", actor=OFFICER)
    ward_hold = await sync_to_async(legal_hold_set)(ward_code="icu-a", reason="inquiry", actor=OFFICER)
    status, answer = await command("apply_retention")
    assert _ward_days(answer, yesterday)["icu-a"]["held"] and await _rows_of(["p-a1", "p-a2"], yesterday) == 510

    # Released, the next run drops it.
    await sync_to_async(legal_hold_release)(hold_id=ward_hold.pk, reason="inquiry closed", actor=OFFICER)
    status, answer = await command("apply_retention")
    assert status == 0 and _ward_days(answer, yesterday)["icu-a"]["readings_dropped"] == 510
    assert await _rows_of(["p-a1", "p-a2"], yesterday) == 0
    actions = [e.action async for e in AuditEvent.objects.filter(action__startswith="legal_hold.").order_by("id")]
    assert actions == ["legal_hold.set", "legal_hold.released", "legal_hold.set", "legal_hold.released"]


async def test_the_application_role_drops_only_through_the_functions_and_only_past_days(yesterday):
    """The suite connects as the application role: it owns no partition, and the SECURITY
    DEFINER functions refuse what retention must never do."""
    today = at(yesterday, 86400).date()
    with pytest.raises(Exception, match="must be owner"):
        await sql(f"DROP TABLE {partition_name(yesterday)}")
    with pytest.raises(Exception, match="is not a past day"):
        await sql("SELECT telemetry_reading_day_drop(%s)", [today])
    with pytest.raises(Exception, match="less than a day ago"):
        await sql("SELECT telemetry_hl7_retention_delete(now() - interval '1 hour', '{}')")
    with pytest.raises(Exception, match="permission denied"):
        await sql("DELETE FROM telemetry_hl7message")


async def test_readings_arriving_between_the_check_and_the_drop_roll_the_drop_back(
    file_archive, yesterday, monkeypatch
):
    a1, _, _ = await two_wards(yesterday)
    await command("archive", "--day", yesterday.isoformat())
    recheck = retention._holds_lock_and_recheck
    calls: list[int] = []

    def late_reading_then_recheck(ward_days: list[Any]) -> None:
        # Once, in the readings drop: a reading that reached the hot store after the archive was
        # verified (as late data could).
        if calls or not any(w.day == yesterday for w in ward_days):
            recheck(ward_days)
            return
        calls.append(1)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO telemetry_reading (device_id, patient_id, metric, seq, sample_time, value, raw_value, "
                "raw_unit) SELECT id, NULL, 'tissue_o2', 9999, %s, 50, 50, '%%' FROM telemetry_device "
                "WHERE device_id = %s",
                [at(yesterday, 3600), a1.device_id],
            )
        recheck(ward_days)

    monkeypatch.setattr(retention, "_holds_lock_and_recheck", late_reading_then_recheck)
    status, answer = await command("apply_retention")
    found = _ward_days(answer, yesterday)
    assert status == 1 and answer["readings_dropped"] == 0 and answer["days_dropped"] == []
    assert "541 readings in the hot store, 540 archived and verified" in found["icu-a"]["problems"][-1]
    assert await _partition_exists(yesterday) and len(await day_rows(yesterday)) == 540  # rolled back, late row too
    assert await _events("retention.readings_dropped") == []
