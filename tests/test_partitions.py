"""Daily partitions on plain PostgreSQL: kept ahead by the engine, late data parked in the default
partition and moved when its day's partition is created."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection

from telemetry.engine import storage_housekeeping
from telemetry.storage import partition_name
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
    late_day = (now - dt.timedelta(days=40)).date()
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
