"""Daily partitions on plain PostgreSQL: kept ahead by the engine, late data parked in the default
partition and moved when its day's partition is created."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from telemetry.engine import storage_housekeeping
from telemetry.storage import PARTITIONS_PER_RUN, partition_name
from tests.readings import Row, insert_readings

pytestmark = pytest.mark.django_db


def _partition_of(device_id: int) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT tableoid::regclass::text FROM telemetry_reading WHERE device_id = %s", [device_id]
        )
        return [row[0] for row in cursor.fetchall()]


def _exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [table])
        return cursor.fetchone()[0] is not None


def test_late_data_lands_in_default_and_moves_into_its_new_partition() -> None:
    now = dt.datetime.now(dt.UTC)
    late_day = (now - dt.timedelta(days=20)).date()  # late, but inside the ingest horizon (30 days)
    late = dt.datetime.combine(late_day, dt.time(23, 59, 30), tzinfo=dt.UTC)
    rows = [Row(31, 310, "tissue_o2", i, late + dt.timedelta(seconds=10 * i), 60.0 + i, 0.9) for i in range(6)]
    with connection.cursor() as cursor:
        assert insert_readings(cursor, rows) == 6
    assert not _exists(partition_name(late_day))
    assert _partition_of(31) == ["telemetry_reading_default"]

    created = storage_housekeeping(now=now)

    # The readings straddle midnight: each day gets its partition and its rows.
    assert partition_name(late_day) in created
    assert partition_name(late_day + dt.timedelta(days=1)) in created
    assert sorted(_partition_of(31)) == [partition_name(late_day), partition_name(late_day + dt.timedelta(days=1))]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_reading WHERE device_id = 31")
        assert cursor.fetchone()[0] == 6
        cursor.execute("SELECT count(*) FROM telemetry_reading_default")
        assert cursor.fetchone()[0] == 0
    # A retransmit is still recognised as a duplicate across the move.
    with connection.cursor() as cursor:
        assert insert_readings(cursor, rows) == 0


def test_housekeeping_keeps_partitions_a_week_ahead() -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=20)
    ahead = (later + dt.timedelta(days=7)).date()
    assert not _exists(partition_name(ahead))
    created = storage_housekeeping(now=later)
    assert partition_name(ahead) in created
    assert _exists(partition_name(ahead))
    assert storage_housekeeping(now=later) == []


def _one_reading_per_day(device_id: int, days: list[dt.date]) -> list[Row]:
    noon = dt.time(12, 0)
    return [
        Row(device_id, None, "tissue_o2", i, dt.datetime.combine(d, noon, tzinfo=dt.UTC), 60.0, 0.9)
        for i, d in enumerate(days)
    ]


def test_housekeeping_creates_no_partition_for_a_day_outside_the_horizon() -> None:
    # Rows ingest would refuse (older than PERFUSE_INGEST_MAX_AGE_DAYS, or far ahead) that reached
    # the table another way: they stay in the default partition, readable, and cost no partition.
    now = dt.datetime.now(dt.UTC)
    days = [
        (now - dt.timedelta(days=40)).date(),
        (now - dt.timedelta(days=3650)).date(),
        (now + dt.timedelta(days=30)).date(),
        dt.date(1, 1, 1),
        dt.date(9999, 12, 30),
    ]
    with connection.cursor() as cursor:
        assert insert_readings(cursor, _one_reading_per_day(32, days)) == len(days)

    assert storage_housekeeping(now=now) == []

    assert not any(_exists(partition_name(day)) for day in days)
    assert _partition_of(32) == ["telemetry_reading_default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_reading WHERE device_id = 32")
        assert cursor.fetchone()[0] == len(days)


def test_housekeeping_creates_a_bounded_number_of_partitions_per_run() -> None:
    now = dt.datetime.now(dt.UTC)
    days = [(now - dt.timedelta(days=n)).date() for n in range(2, 30)]  # a month of late data
    assert len(days) > PARTITIONS_PER_RUN
    with connection.cursor() as cursor:
        assert insert_readings(cursor, _one_reading_per_day(33, days)) == len(days)

    runs = []
    while created := storage_housekeeping(now=now):
        runs.append(created)
        assert len(runs) <= len(days)  # each run makes progress

    assert all(len(created) <= PARTITIONS_PER_RUN for created in runs)
    assert len(runs) > 1
    assert sorted(name for created in runs for name in created) == sorted(partition_name(day) for day in days)
    assert sorted(_partition_of(33)) == sorted(partition_name(day) for day in days)
