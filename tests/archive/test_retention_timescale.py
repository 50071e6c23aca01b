"""The retention's day drop on TimescaleDB (the PGlite test server): `telemetry_reading_day_drop`
drops exactly the day's 1-day chunks with `drop_chunks` and returns the rows it dropped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.readings import Row, insert_readings

pytestmark = pytest.mark.timescale


def _count(conn: psycopg.Connection[Any], lo: dt.datetime, hi: dt.datetime) -> int:
    row = conn.execute(
        "SELECT count(*) FROM telemetry_reading WHERE sample_time >= %s AND sample_time < %s", [lo, hi]
    ).fetchone()
    assert row is not None
    return int(row[0])


DEVICE = 9301  # its own device: the TimescaleDB test server is one database for the whole session


@pytest.fixture
def cleaned(timescale: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """The server is shared by every TimescaleDB test: leave no readings for the next one."""
    yield timescale
    timescale.execute("DELETE FROM telemetry_reading WHERE device_id = %s::bigint", [DEVICE])
    timescale.execute("DELETE FROM telemetry_ingest_log WHERE device_id = %s::bigint", [DEVICE])


def test_the_day_drop_drops_a_past_days_chunks_only(cleaned: psycopg.Connection[Any]) -> None:
    timescale = cleaned
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=3)
    lo = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    hi = lo + dt.timedelta(days=1)
    rows = [Row(DEVICE, None, "tissue_o2", s, lo + dt.timedelta(hours=s % 48 - 12), 60.0, 0.9) for s in range(1, 97)]
    with timescale.transaction(), timescale.cursor() as cursor:
        insert_readings(cursor, rows)
    before, after = _count(timescale, lo - dt.timedelta(days=1), lo), _count(timescale, hi, hi + dt.timedelta(days=1))
    expected = _count(timescale, lo, hi)
    assert expected and before and after
    dropped = timescale.execute("SELECT telemetry_reading_day_drop(%s)", [day]).fetchone()
    assert dropped == (expected,)
    assert _count(timescale, lo, hi) == 0
    # The neighbouring days' chunks are untouched.
    assert _count(timescale, lo - dt.timedelta(days=1), lo) == before
    assert _count(timescale, hi, hi + dt.timedelta(days=1)) == after
    with pytest.raises(psycopg.errors.RaiseException, match="is not a past day"):
        timescale.execute("SELECT telemetry_reading_day_drop(%s)", [dt.datetime.now(dt.UTC).date()])
