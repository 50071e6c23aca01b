"""Storage on TimescaleDB (the PGlite test server) and its equivalence with plain PostgreSQL.

The TimescaleDB side is reached with psycopg directly (the server takes one connection at a
time); the plain-PostgreSQL side is the Django test database, its rollups kept by the engine.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import psycopg
import pytest
from django.db import connection, transaction

from telemetry.engine import RollupProcessor, engine_batch
from telemetry.selectors import Series, patient_series, series_on
from tests.conftest import migrate_timescale
from tests.readings import Row, insert_readings, signal

pytestmark = pytest.mark.timescale

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _scalar(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def test_migrations_create_hypertable_aggregates_policies_and_compression(timescale: psycopg.Connection[Any]) -> None:
    hypertables = conn_rows(timescale, "SELECT hypertable_name FROM timescaledb_information.hypertables")
    assert ("telemetry_reading",) in hypertables
    caggs = dict(
        conn_rows(
            timescale,
            "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates",
        )
    )
    assert caggs == {"telemetry_reading_1m": False, "telemetry_reading_1h": False}
    jobs = {
        (proc, table): config
        for proc, table, config in conn_rows(
            timescale, "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs"
        )
    }
    assert jobs[("policy_compression", "telemetry_reading")]["compress_after"] == "7 days"
    # Open-ended refresh windows: late data of any age is folded in by the next policy run.
    assert jobs[("policy_refresh_continuous_aggregate", "telemetry_reading_1m")]["start_offset"] is None
    assert jobs[("policy_refresh_continuous_aggregate", "telemetry_reading_1h")]["start_offset"] is None
    settings = dict(
        conn_rows(
            timescale,
            "SELECT attname, segmentby_column_index FROM timescaledb_information.compression_settings "
            "WHERE hypertable_name = 'telemetry_reading' AND segmentby_column_index IS NOT NULL",
        )
    )
    assert settings == {"device_id": 1, "metric": 2}
    # The plain-PostgreSQL rollup tables are not created next to the continuous aggregates.
    assert _scalar(timescale, "SELECT to_regclass('telemetry_rollup_1m')") is None


def conn_rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def run_refresh_policies(conn: psycopg.Connection[Any]) -> None:
    """Run the continuous-aggregate refresh jobs now, as TimescaleDB's scheduler would (the test
    server has no background workers)."""
    jobs = conn_rows(
        conn,
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_refresh_continuous_aggregate'",
    )
    assert len(jobs) == 2
    for (job_id,) in jobs:
        conn.execute("CALL run_job(%s)", [job_id])


def test_late_data_into_a_compressed_chunk(timescale: psycopg.Connection[Any]) -> None:
    old = NOW.replace(second=0) - dt.timedelta(days=10)
    rows = signal(device_id=9001, patient_id=901, start=old, count=120, step=dt.timedelta(seconds=1), seed=1)
    assert insert_readings(timescale.cursor(), rows) == 120
    compressed = conn_rows(
        timescale,
        "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('telemetry_reading', "
        "older_than => INTERVAL '7 days') c",
    )
    assert compressed
    chunk = _scalar(
        timescale,
        "SELECT is_compressed FROM timescaledb_information.chunks WHERE hypertable_name = 'telemetry_reading' "
        "AND range_start <= %s AND range_end > %s",
        [old, old],
    )
    assert chunk is True
    run_refresh_policies(timescale)  # the aggregates' watermark is now past the old chunk
    # A gateway retransmits the same batch plus readings it had buffered: duplicates are skipped,
    # new readings land in the compressed chunk, all by the ingest path's INSERT … ON CONFLICT.
    late = signal(device_id=9001, patient_id=901, start=old, count=180, step=dt.timedelta(seconds=1), seed=1)
    assert insert_readings(timescale.cursor(), late) == 60
    assert insert_readings(timescale.cursor(), late) == 0
    count = _scalar(timescale, "SELECT count(*) FROM telemetry_reading WHERE device_id = 9001")
    assert count == 180
    # Behind the watermark, late rows reach the aggregates through the refresh policy.
    run_refresh_policies(timescale)
    series = series_on(
        timescale.cursor(),
        timescale=True,
        patient_id=901,
        metric="tissue_o2",
        start=old,
        end=old + dt.timedelta(minutes=3),
        max_points=100,
    )
    assert series.resolution == "1m"
    assert [p["count"] for p in series.points] == [60, 60, 60]


def test_migration_0003_reverses_and_reapplies(timescale_url: str) -> None:
    migrate_timescale(timescale_url, "telemetry", "0002")
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert conn_rows(conn, "SELECT view_name FROM timescaledb_information.continuous_aggregates") == []
        assert (
            conn_rows(conn, "SELECT 1 FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'") == []
        )
        assert _scalar(conn, "SELECT count(*) FROM timescaledb_information.compression_settings") == 0
    migrate_timescale(timescale_url, "telemetry")
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert len(conn_rows(conn, "SELECT view_name FROM timescaledb_information.continuous_aggregates")) == 2


# --- equivalence --------------------------------------------------------------------------------

PATIENT = 4242
START = NOW.replace(second=0) - dt.timedelta(hours=8)


def _dataset() -> tuple[list[Row], list[Row]]:
    """Two devices on one patient for 6 hours (one every 20 s, some without quality), a third
    device of another patient, and a late batch that arrives after the first batches."""
    step = dt.timedelta(seconds=20)
    first = (
        signal(device_id=7001, patient_id=PATIENT, start=START, count=1080, step=step, seed=11)
        + signal(
            device_id=7002, patient_id=PATIENT, start=START + dt.timedelta(seconds=7), count=900, step=step, seed=12
        )
        + signal(device_id=7003, patient_id=PATIENT + 1, start=START, count=300, step=step, seed=13)
    )
    # Readings 6 hours long: then a gateway flushes an hour it had buffered (out of order, late)
    # and a retransmit of already stored readings.
    late = (
        signal(
            device_id=7002,
            patient_id=PATIENT,
            start=START + dt.timedelta(hours=5, seconds=7),
            count=180,
            step=step,
            seed=14,
            first_seq=901,
        )
        + first[:50]
    )
    return first, late


def _close(key: str, a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        # Signal quality is stored as real (float4): the drivers may read it as 0.84 or 0.8399999737.
        tolerance = 1e-6 if key == "quality" else 1e-9
        return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)
    return a == b


def _assert_same(timescale_series: Series, postgres_series: Series) -> None:
    assert timescale_series.resolution == postgres_series.resolution
    assert len(timescale_series.points) == len(postgres_series.points)
    for ts_point, pg_point in zip(timescale_series.points, postgres_series.points, strict=True):
        assert ts_point.keys() == pg_point.keys()
        for key in ts_point:
            assert _close(key, ts_point[key], pg_point[key]), (key, ts_point, pg_point)


WINDOWS = [
    # (start offset, length, max_points, expected resolution)
    (dt.timedelta(hours=1), dt.timedelta(minutes=30), 200, "raw"),
    (dt.timedelta(hours=4, minutes=30, seconds=13), dt.timedelta(minutes=90), 100, "1m"),
    (dt.timedelta(0), dt.timedelta(hours=7), 100, "1h"),
]


@pytest.mark.django_db(transaction=True)
def test_series_selector_gives_the_same_answers_on_both_backends(timescale: psycopg.Connection[Any]) -> None:
    first, late = _dataset()

    # TimescaleDB: the first batches are materialized by the refresh policy, the late batch lands
    # behind the materialization watermark, and the next policy run folds it in.
    with timescale.transaction():
        insert_readings(timescale.cursor(), first)
    run_refresh_policies(timescale)
    with timescale.transaction():
        insert_readings(timescale.cursor(), late)
    run_refresh_policies(timescale)

    # PostgreSQL: the engine rolls up the first batches; the late batch is committed but not yet
    # processed, so the selector must take it from the raw table past the watermark.
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, first)
    batch = engine_batch([RollupProcessor()], now=NOW)
    assert batch.readings == len(first)
    with transaction.atomic(), connection.cursor() as cursor:
        insert_readings(cursor, late)
        cursor.execute("SELECT count(*) FROM telemetry_rollup_1m")
        assert cursor.fetchone()[0] > 0

    for offset, length, max_points, resolution in WINDOWS:
        window = {
            "patient_id": PATIENT,
            "metric": "tissue_o2",
            "start": START + offset,
            "end": START + offset + length,
            "max_points": max_points,
        }
        on_timescale = series_on(timescale.cursor(), timescale=True, **window)
        on_postgres = patient_series(**window)
        assert on_postgres.resolution == resolution
        assert on_postgres.points
        _assert_same(on_timescale, on_postgres)

    # After the engine catches up the answers are unchanged (the partials moved, nothing doubled).
    engine_batch([RollupProcessor()], now=NOW)
    for offset, length, max_points, _ in WINDOWS[1:]:
        window = {
            "patient_id": PATIENT,
            "metric": "tissue_o2",
            "start": START + offset,
            "end": START + offset + length,
            "max_points": max_points,
        }
        _assert_same(series_on(timescale.cursor(), timescale=True, **window), patient_series(**window))
