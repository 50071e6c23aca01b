"""`manage.py archive` and `restore_archive` against a directory and a real SeaweedFS: Parquet +
signed batches + manifest per ward-day, read back and verified, idempotent, write-once, a day
restored row for row with its chart."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.test import AsyncClient

from audit.models import AuditEvent
from telemetry.archive.layout import manifest_key, ward_prefix
from telemetry.archive.objects import FileStore, ObjectStore, WriteOnceConflict
from telemetry.archive.verify import archive_day_check, archive_day_verified
from telemetry.archive.writer import archive_day, archive_days, archive_due, day_wards, manifest_read
from telemetry.engine import RollupProcessor, engine_batch
from telemetry.ingest.keep import body_decompress
from telemetry.models import Device, Patient, Ward
from telemetry.selectors import patient_series
from tests import factories
from tests.archive.support import at, day_rows, ingest, overwrite, sql, two_wards
from tests.ingest_helpers import send

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ingest_clients")]

make_device = sync_to_async(factories.device)


def _command(name: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    try:
        call_command(name, *args, "--json", stdout=out)
        status = 0
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, json.loads(out.getvalue())


command = sync_to_async(_command)


def _roll_up() -> None:
    engine_batch([RollupProcessor()], now=dt.datetime.now(dt.UTC))


roll_up = sync_to_async(_roll_up)


def _series(pseudonym: str, day: dt.date) -> list[Any]:
    """The chart's trace of the patient's SpO2 at 1-minute (10:00 to 11:00) and 1-hour (the day) buckets."""
    patient = Patient.objects.get(pseudonym=pseudonym)
    hour = patient_series(
        patient_id=patient.id, metric="spo2", start=at(day, 36000), end=at(day, 39600), max_points=100
    )
    whole = patient_series(patient_id=patient.id, metric="spo2", start=at(day, 0), end=at(day, 86400), max_points=50)
    return [hour, whole]


series = sync_to_async(_series)


async def test_archive_writes_parquet_batches_and_a_manifest_per_ward_day(archive: ObjectStore, yesterday):
    a1, a2, _ = await two_wards(yesterday)
    status, answer = await command("archive", "--day", yesterday.isoformat())
    assert status == 0
    by_ward = {r["ward"]: r for r in answer["results"]}
    assert {w: (r["status"], r["rows"], r["batches"]) for w, r in by_ward.items()} == {
        "icu-a": ("written", 3 * (120 + 50), 5),
        "icu-b": ("written", 3 * 10, 1),
    }
    manifest = json.loads(archive.get(manifest_key(yesterday, "icu-a")) or b"")
    assert manifest["schema"] == "perfuse.archive.manifest/1" and manifest["day"] == yesterday.isoformat()
    assert manifest["pipeline"]["commit"] not in ("", "unknown") and manifest["pipeline"]["version"]
    assert manifest["readings"]["rows"] == 510
    assert manifest["readings"]["min_sample_time"] == at(yesterday, 36000.123456).isoformat().replace("+00:00", "Z")
    assert [(d["device"], d["rows"], d["seq_min"], d["seq_max"], d["pseudonyms"]) for d in manifest["devices"]] == [
        (a1.device_id, 360, 1, 120, ["p-a1"]),
        (a2.device_id, 150, 1, 50, ["p-a2"]),
    ]
    # The manifest is written last; every file it names is there with its SHA-256.
    prefix = ward_prefix(yesterday, "icu-a")
    assert answer["results"][0]["files_written"][-1] == manifest_key(yesterday, "icu-a")
    assert sorted(archive.keys(prefix)) == sorted(
        [prefix + name for name in manifest["files"]] + [prefix + "manifest.json"]
    )
    readings = pq.ParquetFile(io.BytesIO(archive.get(prefix + manifest["readings"]["file"]) or b""))
    assert readings.metadata.num_rows == 510
    assert readings.num_row_groups == 2  # one per device: a patient-day
    assert readings.metadata.row_group(0).column(0).compression == "ZSTD"
    table = readings.read()
    assert set(table.column_names) >= {
        c[0]
        for c in await sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'telemetry_reading'")
    }
    batches = pq.read_table(io.BytesIO(archive.get(prefix + manifest["batches"]["file"]) or b""))
    assert batches.num_rows == 5 and set(batches.column("key_id").to_pylist()) == {a1.key_id, a2.key_id}
    # Ward B's batch crosses midnight: only yesterday's part of its readings is archived now.
    assert await sync_to_async(archive_day_verified)(day=yesterday, ward_code="icu-a")
    assert await sync_to_async(archive_day_verified)(day=yesterday, ward_code="icu-b")
    assert await sql(
        "SELECT action, detail->>'ward', (detail->>'rows')::int FROM audit_auditevent "
        "WHERE action = 'archive.written' ORDER BY detail->>'ward'"
    ) == [("archive.written", "icu-a", 510), ("archive.written", "icu-b", 30)]


async def test_a_second_run_writes_nothing_and_a_moved_device_stays_with_its_ward_day(archive: ObjectStore, yesterday):
    a1, _, _ = await two_wards(yesterday)
    await command("archive", "--day", yesterday.isoformat())
    keys = {key: archive.get(key) for key in archive.keys("")}
    # The device moves to ward B after its day was archived with ward A.
    await sync_to_async(Device.objects.filter(device_id=a1.device_id).update)(
        ward=await sync_to_async(Ward.objects.get)(code="icu-b")
    )
    status, answer = await command("archive", "--day", yesterday.isoformat())
    assert status == 0
    assert {(r["ward"], r["status"], r["files_written"] == []) for r in answer["results"]} == {
        ("icu-a", "archived", True),
        ("icu-b", "archived", True),
    }
    assert {key: archive.get(key) for key in archive.keys("")} == keys
    wards = await sync_to_async(day_wards)(day=yesterday, store=archive)
    assert a1.device_id in [d.device_id for d in wards["icu-a"]]


async def test_late_readings_after_archiving_make_the_day_stale_and_unverified(archive: ObjectStore, yesterday):
    a1, _, _ = await two_wards(yesterday)
    await command("archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    await ingest(a1, yesterday, batches=1, per_batch=1, start=70000)  # a gateway that was offline
    status, answer = await command("archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    assert status == 1 and answer["results"][0]["status"] == "stale"
    check = await sync_to_async(archive_day_check)(day=yesterday, ward_code="icu-a", store=archive)
    assert not check.ok and check.problems == ["the hot store holds other rows: 513 against 510 archived"]


async def test_a_device_whose_whole_day_arrived_after_archiving_makes_the_day_stale(archive: ObjectStore, yesterday):
    await two_wards(yesterday)
    await command("archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    late = await make_device("icu-a", patient="p-late")
    await ingest(late, yesterday, batches=1, per_batch=2)
    status, answer = await command("archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    assert status == 1 and answer["results"][0]["status"] == "stale"
    check = await sync_to_async(archive_day_check)(day=yesterday, ward_code="icu-a", store=archive)
    assert check.problems == [f"the hot store holds readings of devices the manifest does not list: {late.device_id}"]


async def test_an_existing_object_with_other_content_is_an_error_and_is_kept(archive: ObjectStore, yesterday, tmp_path):
    await two_wards(yesterday)
    # The names the run will use (content-addressed): learn them from a run into a throwaway store.
    scratch = FileStore(tmp_path / "scratch")
    await sync_to_async(archive_day)(day=yesterday, ward_code="icu-a", store=scratch)
    manifest = json.loads(scratch.get(manifest_key(yesterday, "icu-a")) or b"")
    readings_key = ward_prefix(yesterday, "icu-a") + manifest["readings"]["file"]
    planted = tmp_path / "planted"
    planted.write_bytes(b"not the readings")
    assert archive.put_once(readings_key, planted)
    with pytest.raises(WriteOnceConflict):
        await sync_to_async(archive_day)(day=yesterday, ward_code="icu-a", store=archive)
    assert archive.get(readings_key) == b"not the readings"
    assert archive.get(manifest_key(yesterday, "icu-a")) is None
    # The store itself: the same bytes again are fine, other bytes never replace them.
    assert not archive.put_once(readings_key, planted)
    other = tmp_path / "other"
    other.write_bytes(b"other bytes")
    with pytest.raises(WriteOnceConflict):
        archive.put_once(readings_key, other)
    assert archive.get(readings_key) == b"not the readings"


async def test_a_tampered_archived_file_is_detected(archive: ObjectStore, yesterday, tmp_path):
    await two_wards(yesterday)
    await command("archive", "--day", yesterday.isoformat())
    manifest = json.loads(archive.get(manifest_key(yesterday, "icu-a")) or b"")
    key = ward_prefix(yesterday, "icu-a") + manifest["readings"]["file"]
    data = bytearray(archive.get(key) or b"")
    data[len(data) // 2] ^= 0x01
    overwrite(archive, key, bytes(data))  # as someone with write access to the bucket could
    assert not await sync_to_async(archive_day_verified)(day=yesterday, ward_code="icu-a")
    check = await sync_to_async(archive_day_check)(day=yesterday, ward_code="icu-a", store=archive)
    assert check.problems == [f"{key}: SHA-256 or size differs from the manifest"]
    assert await sync_to_async(archive_day_verified)(day=yesterday, ward_code="icu-b")
    with pytest.raises(CommandError, match="not restorable"):
        await command("restore_archive", "--day", yesterday.isoformat(), "--ward", "icu-a")


def _chart_equal(after: list[Any], before: list[Any]) -> bool:
    """The same traces: buckets, counts, averages, minima and maxima exactly. The mean signal
    quality only to float4 precision: the engine folds qualities in as psycopg reads a `real`
    (0.8), the rebuild sums them as `real::float8` (0.800000011920929), as readings_assign does."""
    for a, b in zip(after, before, strict=True):
        assert a.resolution == b.resolution and len(a.points) == len(b.points)
        for p, q in zip(a.points, b.points, strict=True):
            assert {k: v for k, v in p.items() if k != "quality"} == {k: v for k, v in q.items() if k != "quality"}
            assert p["quality"] == pytest.approx(q["quality"], rel=1e-6)
    return True


async def test_restore_puts_the_day_back_row_for_row_and_the_chart_shows_it(archive: ObjectStore, yesterday):
    a1, _, _ = await two_wards(yesterday)
    await roll_up()
    before = await day_rows(yesterday)
    chart = await series("p-a1", yesterday)
    assert [(s.resolution, len(s.points)) for s in chart] == [("1m", 2), ("1h", 1)]
    await command("archive", "--day", yesterday.isoformat())
    lo = at(yesterday, 0)
    hi = lo + dt.timedelta(days=1)
    # The day leaves the hot store, rollups included (as retention would drop it).
    await sql("DELETE FROM telemetry_reading WHERE sample_time >= %s AND sample_time < %s", [lo, hi])
    await sql("DELETE FROM telemetry_rollup_1m WHERE bucket >= %s AND bucket < %s", [lo, hi])
    await sql("DELETE FROM telemetry_rollup_1h WHERE bucket >= %s AND bucket < %s", [lo, hi])
    await sql("DELETE FROM telemetry_signed_batch")
    assert [s.points for s in await series("p-a1", yesterday)] == [[], []]
    status, answer = await command("restore_archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    assert status == 0 and (answer["rows"], answer["inserted"], answer["batches"]) == (510, 510, 5)
    status, answer = await command("restore_archive", "--day", yesterday.isoformat(), "--ward", "icu-b")
    assert (answer["rows"], answer["inserted"]) == (30, 30)
    assert await day_rows(yesterday) == before  # every column, every row
    assert _chart_equal(await series("p-a1", yesterday), chart)
    # Restoring again puts nothing twice.
    status, answer = await command("restore_archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    assert (answer["inserted"], answer["present"]) == (0, 510)
    assert await day_rows(yesterday) == before
    events = await sync_to_async(list)(AuditEvent.objects.filter(action="archive.restored").order_by("id"))
    assert [(e.detail["ward"], e.detail["inserted"], e.detail["pseudonyms"]) for e in events] == [
        ("icu-a", 510, ["p-a1", "p-a2"]),
        ("icu-b", 30, ["p-b1"]),
        ("icu-a", 0, ["p-a1", "p-a2"]),
    ]
    # The restored batches verify again from the hot store.
    status, answer = await command("verify_batch", "--device", a1.device_id, "--seq", "41")
    assert status == 0 and [(b["readings"], b["matched"]) for b in answer["batches"]] == [(120, 120)]


async def test_verify_batch_from_the_archive_after_the_day_left_the_hot_store(archive: ObjectStore, yesterday):
    a1, _, _ = await two_wards(yesterday)
    (batch_id,) = [r[0] for r in await sql("SELECT min(id) FROM telemetry_signed_batch")]
    await command("archive", "--day", yesterday.isoformat())
    await sql("DELETE FROM telemetry_reading")
    await sql("DELETE FROM telemetry_signed_batch")
    day = yesterday.isoformat()
    status, answer = await command(
        "verify_batch", "--source", "archive", "--day", day, "--device", a1.device_id, "--seq", "77"
    )
    assert status == 0 and answer["source"] == "archive"
    assert [(b["signature_valid"], b["readings"], b["matched"]) for b in answer["batches"]] == [(True, 120, 120)]
    status, answer = await command(
        "verify_batch", "--source", "archive", "--day", day, "--ward", "icu-a", "--batch", str(batch_id)
    )
    assert status == 0 and answer["batches"][0]["id"] == batch_id
    t = at(yesterday, 36000 + 76.123456).isoformat()
    status, answer = await command(
        "verify_batch",
        "--source",
        "archive",
        "--day",
        day,
        "--device",
        a1.device_id,
        "--seq",
        "77",
        "--metric",
        "spo2",
        "--sample-time",
        t,
    )
    assert status == 0 and len(answer["batches"]) == 1
    # A batch file rewritten with another body: the device's signature exposes it.
    manifest = json.loads(archive.get(manifest_key(yesterday, "icu-a")) or b"")
    key = ward_prefix(yesterday, "icu-a") + manifest["batches"]["file"]
    table = pq.read_table(io.BytesIO(archive.get(key) or b""))
    bodies = [b.replace(b'"value":55.', b'"value":45.') for b in table.column("body").to_pylist()]
    index = table.schema.get_field_index("body")
    forged = table.set_column(index, table.schema.field(index), pa.array(bodies, pa.binary()))
    out = io.BytesIO()
    pq.write_table(forged, out, compression="zstd")
    overwrite(archive, key, out.getvalue())
    status, answer = await command("verify_batch", "--source", "archive", "--day", day, "--batch", str(batch_id))
    assert status == 1 and not answer["batches"][0]["signature_valid"]


async def test_the_scheduled_run_archives_days_once_they_are_old_enough(file_archive, yesterday, settings):
    await two_wards(yesterday)
    now = dt.datetime.now(dt.UTC)
    settings.PERFUSE_ARCHIVE_AFTER_DAYS = 2
    assert await sync_to_async(archive_due)(now=now) == []
    settings.PERFUSE_ARCHIVE_AFTER_DAYS = 1
    done = await sync_to_async(archive_due)(now=now)
    assert sorted((r.day, r.ward, r.status) for r in done) == [
        (yesterday, "icu-a", "written"),
        (yesterday, "icu-b", "written"),
    ]
    assert await sync_to_async(archive_due)(now=now) == []  # archived days are not reported again


async def test_archive_jobs_archives_ward_days_in_worker_processes_with_the_same_files(
    file_archive: FileStore, tmp_path, yesterday
):
    """`archive --jobs 2`: each ward-day in a forked worker with its own connection and store,
    the same files as one after the other; small signed bodies (kept as they came) and
    compressed ones side by side in one device's batch file, each the exact bytes signed."""
    await two_wards(yesterday)
    mixed = await make_device("icu-a", patient="p-a3")
    small = factories.reading(1, at(yesterday, 50000.5))
    assert (await send(AsyncClient(), mixed, [small])).json()["accepted"] == 1
    large = [factories.reading(n, at(yesterday, 50000.5 + n)) for n in range(2, 42)]
    assert (await send(AsyncClient(), mixed, large)).json()["accepted"] == 40
    codecs = await sql(
        "SELECT b.body_codec FROM telemetry_signed_batch b JOIN telemetry_device d ON d.id = b.device_id "
        "WHERE d.device_id = %s ORDER BY b.id",
        [mixed.device_id],
    )
    assert codecs == [("identity",), ("zstd",)]

    one, two = FileStore(tmp_path / "one"), FileStore(tmp_path / "two")
    sequential = await sync_to_async(archive_days)(days=[yesterday], store=one)
    [(session,)] = await sql("SELECT pg_backend_pid()")
    parallel = await sync_to_async(archive_days)(days=[yesterday], store=two, jobs=2)
    # The workers were forked with this process's database session open, and left it alone.
    assert await sql("SELECT pg_backend_pid()") == [(session,)]
    assert (
        [(r.ward, r.status, r.rows, r.batches) for r in parallel]
        == [(r.ward, r.status, r.rows, r.batches) for r in sequential]
        == [("icu-a", "written", 510 + 41, 7), ("icu-b", "written", 30, 1)]
    )
    for ward in ("icu-a", "icu-b"):
        manifest_one, manifest_two = (manifest_read(store, yesterday, ward) for store in (one, two))
        assert manifest_one is not None and manifest_two is not None
        assert manifest_two["files"] == manifest_one["files"]
    # The archived bodies are the bytes each device signed, whatever the hot store kept them as.
    manifest = manifest_read(two, yesterday, "icu-a")
    assert manifest is not None
    batches = pq.read_table(two.root / ward_prefix(yesterday, "icu-a") / manifest["batches"]["file"])
    kept = {
        pk: body_decompress(bytes(body), size=size, codec=codec)
        for pk, body, size, codec in await sql("SELECT id, body, body_size, body_codec FROM telemetry_signed_batch")
    }
    archived = dict(zip(batches.column("id").to_pylist(), batches.column("body").to_pylist(), strict=True))
    assert archived == {pk: kept[pk] for pk in archived} and len(archived) == 7
    assert archived[max(archived)] == factories.batch_body(mixed, large)
    assert await sql("SELECT count(*) FROM audit_auditevent WHERE action = 'archive.written'") == [(4,)]


async def test_free_text_and_unassigned_rows_and_bodies_fetched_in_several_ranges_round_trip(
    file_archive: FileStore, yesterday, monkeypatch
):
    """The export packs rows as binary in PostgreSQL, text as codes into the device-day's values:
    device-chosen strings with quotes, commas, line breaks, backslashes and non-ASCII come back
    exactly, a device without a patient (NULL
    patient and pseudonym) too, and a device-day whose bodies exceed one fetch comes in several
    id ranges (a row group each) with every body the exact bytes signed."""
    import telemetry.archive.packed as packed

    await sync_to_async(factories.ward)("icu-a")
    odd = await make_device("icu-a", patient="p-odd")
    loose = await make_device("icu-a")  # no patient
    firmware = 'fw "2,4"\nß\\x'
    client = AsyncClient()
    for n in range(1, 6):
        item = factories.reading(n, at(yesterday, 3600 + n), calibration_id='cal,"q"\r\n' if n % 2 else None)
        assert (await send(client, odd, [item], firmware=firmware)).json()["accepted"] == 1
        assert (await send(client, loose, [factories.reading(n, at(yesterday, 3600 + n))])).json()["accepted"] == 1
    bodies = await sql("SELECT max(octet_length(body)) FROM telemetry_signed_batch")
    monkeypatch.setattr(packed, "BATCH_BYTES_PER_FETCH", int(bodies[0][0]) * 2)  # two bodies a fetch
    before = await day_rows(yesterday)
    [result] = await sync_to_async(archive_days)(days=[yesterday], store=file_archive)
    assert (result.status, result.rows, result.batches) == ("written", 10, 10)

    manifest = manifest_read(file_archive, yesterday, "icu-a")
    assert manifest is not None
    readings = pq.read_table(file_archive.root / ward_prefix(yesterday, "icu-a") / manifest["readings"]["file"])
    assert sorted(readings.column("firmware").to_pylist(), key=str) == [None] * 5 + [firmware] * 5
    assert sorted(readings.column("calibration_id").to_pylist(), key=str) == [None] * 7 + ['cal,"q"\r\n'] * 3
    assert sorted(readings.column("pseudonym").to_pylist(), key=str) == [None] * 5 + ["p-odd"] * 5
    batches_file = pq.ParquetFile(file_archive.root / ward_prefix(yesterday, "icu-a") / manifest["batches"]["file"])
    assert batches_file.num_row_groups == 6  # per device: 5 bodies, two a fetch
    batches = batches_file.read()
    signed = {pk: bytes(body) for pk, body in await sql("SELECT id, body FROM telemetry_signed_batch")}
    assert dict(zip(batches.column("id").to_pylist(), batches.column("body").to_pylist(), strict=True)) == signed
    order = list(zip(batches.column("device_id").to_pylist(), batches.column("id").to_pylist(), strict=True))
    assert order == sorted(order)  # device by device, each in id order

    lo = at(yesterday, 0)
    await sql("DELETE FROM telemetry_reading WHERE sample_time >= %s AND sample_time < %s", [lo, at(yesterday, 86400)])
    await sql("DELETE FROM telemetry_signed_batch")
    status, answer = await command("restore_archive", "--day", yesterday.isoformat(), "--ward", "icu-a")
    assert status == 0 and (answer["inserted"], answer["batches"]) == (10, 10)
    assert await day_rows(yesterday) == before  # every column, every row
