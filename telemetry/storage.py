"""DDL for the readings store: a TimescaleDB hypertable when the extension exists, daily range
partitions on plain PostgreSQL. Called from migrations; the engine keeps the partitions.

Partitions are created by `telemetry_partition_ensure`, a SECURITY DEFINER function owned by the
role that migrates: attaching a partition takes ownership of the parent table, which the
application's role must not have (it owns nothing, audit/hardening.py), so the engine calls the
function and may create exactly this — a day's partition of telemetry_reading — and nothing else.

The idempotency key (device, metric, seq, sample_time) is the primary key, ordered
(device_id, metric, sample_time, seq) so the same index also serves per-device time ranges.
TimescaleDB requires every unique index to contain the time column; ours does.

Partitions exist for the days ingest can store (back to PERFUSE_INGEST_MAX_AGE_DAYS, a week
ahead) and no others: a row of another day (written some other way) stays in the default
partition, where it is still read, rather than cost a table per stray day; and each upkeep run
creates at most PARTITIONS_PER_RUN tables, so a burst of late data is spread over a few runs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.db import connection

READING_COLUMNS = """
    device_id bigint NOT NULL,
    patient_id bigint,
    metric text NOT NULL,
    seq bigint NOT NULL,
    sample_time timestamptz NOT NULL,
    value double precision NOT NULL,
    raw_value double precision NOT NULL,
    raw_unit text NOT NULL,
    signal_quality real,
    calibration_id text,
    firmware text,
    ingest_time timestamptz NOT NULL DEFAULT now(),
    ingest_txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    PRIMARY KEY (device_id, metric, sample_time, seq)
"""

PARTITION_DAYS_AHEAD = 7
PARTITIONS_PER_RUN = 16
# Readings accepted at the horizon's edge shortly before midnight reach upkeep a day later.
_HORIZON_SLACK = dt.timedelta(days=1)


def timescale_wanted(cursor: Any) -> bool:
    """True when TimescaleDB should be used: setting 'on', or 'auto' and the extension is available."""
    mode = getattr(settings, "PERFUSE_TIMESCALE", "auto")
    if mode == "off":
        return False
    cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    available = cursor.fetchone() is not None
    if mode == "on" and not available:
        raise RuntimeError("PERFUSE_TIMESCALE=on but the timescaledb extension is not available")
    return available


def timescale_active(cursor: Any) -> bool:
    """True when telemetry_reading is a hypertable (decided once, at migration time)."""
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if cursor.fetchone() is None:
        return False
    cursor.execute("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'telemetry_reading'")
    return cursor.fetchone() is not None


_timescale_by_alias: dict[str, bool] = {}


def timescale_in_use() -> bool:
    """`timescale_active` on Django's connection, asked once per process and database alias: the
    backend is fixed when migration 0002 runs."""
    alias = connection.alias
    if alias not in _timescale_by_alias:
        with connection.cursor() as cursor:
            _timescale_by_alias[alias] = timescale_active(cursor)
    return _timescale_by_alias[alias]


def partition_name(day: dt.date) -> str:
    return f"telemetry_reading_p{day:%Y%m%d}"


PARTITION_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION telemetry_partition_ensure(parent text, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  name text := parent || '_p' || to_char(day, 'YYYYMMDD');
  lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
  hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
  IF parent <> 'telemetry_reading' THEN
    RAISE EXCEPTION 'telemetry_partition_ensure: % is not the partitioned readings table', parent;
  END IF;
  IF to_regclass(format('public.%I', name)) IS NOT NULL THEN
    RETURN false;
  END IF;
  EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name, parent);
  EXECUTE format('WITH moved AS (DELETE FROM public.%I WHERE sample_time >= $1 AND sample_time < $2 RETURNING *) '
                 'INSERT INTO public.%I SELECT * FROM moved', parent || '_default', name) USING lo, hi;
  EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I FOR VALUES FROM (%L) TO (%L)', parent, name, lo, hi);
  RETURN true;
END $$;
REVOKE ALL ON FUNCTION telemetry_partition_ensure(text, date) FROM PUBLIC;
"""


def ensure_partition(cursor: Any, table: str, day: dt.date) -> bool:
    """Create the daily partition of `table` for `day` if missing; return True if created.

    Rows that landed in the default partition for that day (late data while the partition did
    not exist) are moved into the new partition before it is attached, so creation never fails.
    """
    cursor.execute("SELECT telemetry_partition_ensure(%s, %s)", [table, day])
    return bool(cursor.fetchone()[0])


def ensure_partitions(
    cursor: Any, *, today: dt.date, days_ahead: int = PARTITION_DAYS_AHEAD, limit: int | None = None
) -> list[str]:
    """Partitions from yesterday to `days_ahead` days ahead, at most `limit` new ones."""
    created: list[str] = []
    for offset in range(-1, days_ahead + 1):
        if limit is not None and len(created) >= limit:
            break
        day = today + dt.timedelta(days=offset)
        if ensure_partition(cursor, "telemetry_reading", day):
            created.append(partition_name(day))
    return created


def drain_default_partition(
    cursor: Any, *, first: dt.date, last: dt.date, limit: int, table: str = "telemetry_reading"
) -> list[str]:
    """Give up to `limit` days in [first, last] that have rows in the default partition (late data
    whose day had no partition yet) their own partition, newest first, moving the rows; return
    the partitions created. Rows of days outside [first, last] stay where they are."""
    if limit <= 0:
        return []
    lo = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
    hi = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    cursor.execute(
        f"SELECT DISTINCT (sample_time AT TIME ZONE 'UTC')::date FROM {table}_default "
        "WHERE sample_time >= %s AND sample_time < %s ORDER BY 1 DESC LIMIT %s",
        [lo, hi, limit],
    )
    days = [row[0] for row in cursor.fetchall()]
    return [f"{table}_p{day:%Y%m%d}" for day in days if ensure_partition(cursor, table, day)]


def partitions_upkeep(
    cursor: Any, *, now: dt.datetime, max_age_days: int, limit: int = PARTITIONS_PER_RUN
) -> list[str]:
    """Plain PostgreSQL: the coming days' partitions, then partitions for late rows parked in the
    default partition, only for days inside the ingest horizon and at most `limit` in all."""
    today = now.date()
    created = ensure_partitions(cursor, today=today, limit=limit)
    first = (now - dt.timedelta(days=max_age_days) - _HORIZON_SLACK).date()
    last = today + dt.timedelta(days=PARTITION_DAYS_AHEAD)
    return created + drain_default_partition(cursor, first=first, last=last, limit=limit - len(created))


def create_reading_storage(cursor: Any, *, today: dt.date) -> str:
    if timescale_wanted(cursor):
        cursor.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        cursor.execute(f"CREATE TABLE telemetry_reading ({READING_COLUMNS})")
        cursor.execute("SELECT create_hypertable('telemetry_reading', by_range('sample_time', INTERVAL '1 day'))")
        backend = "timescaledb"
    else:
        cursor.execute(f"CREATE TABLE telemetry_reading ({READING_COLUMNS}) PARTITION BY RANGE (sample_time)")
        cursor.execute("CREATE TABLE telemetry_reading_default PARTITION OF telemetry_reading DEFAULT")
        cursor.execute(PARTITION_FUNCTION_SQL)
        ensure_partitions(cursor, today=today)
        backend = "postgresql"
    cursor.execute("CREATE INDEX telemetry_reading_patient_time ON telemetry_reading (patient_id, metric, sample_time)")
    # One row per committed ingest request: the engine finds new readings through it.
    cursor.execute(
        """
        CREATE TABLE telemetry_ingest_log (
            id bigserial PRIMARY KEY,
            txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
            device_id bigint NOT NULL,
            min_sample_time timestamptz NOT NULL,
            max_sample_time timestamptz NOT NULL,
            accepted integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    cursor.execute("CREATE INDEX telemetry_ingest_log_txid ON telemetry_ingest_log (txid)")
    return backend


# Every row written to the ingest log (one per device and ingest transaction, whichever writer:
# one request, a gateway message, a group commit) queues a NOTIFY on this channel, which
# PostgreSQL delivers only once the writing transaction has committed (none after a rollback,
# one per transaction however many rows: identical notifications are folded). `run_engine`
# LISTENs on it (telemetry/engine.py). A trigger rather than a statement in each writer, so no
# write path can forget it.
INGEST_CHANNEL = "perfuse_ingest"
INGEST_NOTIFY_SQL = f"""
CREATE FUNCTION telemetry_ingest_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{INGEST_CHANNEL}', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER telemetry_ingest_log_notify AFTER INSERT ON telemetry_ingest_log
    FOR EACH ROW EXECUTE FUNCTION telemetry_ingest_notify();
"""
INGEST_NOTIFY_REVERSE_SQL = """
DROP TRIGGER IF EXISTS telemetry_ingest_log_notify ON telemetry_ingest_log;
DROP FUNCTION IF EXISTS telemetry_ingest_notify();
"""


def drop_reading_storage(cursor: Any) -> None:
    cursor.execute("DROP TABLE IF EXISTS telemetry_ingest_log")
    cursor.execute("DROP TABLE IF EXISTS telemetry_reading CASCADE")


# Retention (telemetry/lifecycle/retention.py) drops a past day of readings through this SECURITY
# DEFINER function owned by the migrating role: dropping a partition (or TimescaleDB chunks) needs
# ownership of telemetry_reading, which the application role must not have. It can drop exactly a
# past day's partition of telemetry_reading (or its 1-day chunks) and nothing else, and returns
# the rows it dropped (NULL: the day has no partition of its own), which the caller compares with
# the archive's manifests inside the same transaction — a difference rolls the drop back.
DAY_DROP_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION telemetry_reading_day_drop(day date) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  name text := 'telemetry_reading_p' || to_char(day, 'YYYYMMDD');
  lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
  hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
  part regclass;
  n bigint;
BEGIN
  IF day >= (now() AT TIME ZONE 'UTC')::date THEN
    RAISE EXCEPTION 'telemetry_reading_day_drop: % is not a past day', day;
  END IF;
  IF to_regclass('public.telemetry_reading_default') IS NULL THEN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
      RAISE EXCEPTION 'telemetry_reading_day_drop: telemetry_reading is neither partitioned nor a hypertable';
    END IF;
    SELECT count(*) INTO n FROM public.telemetry_reading WHERE sample_time >= lo AND sample_time < hi;
    PERFORM public.drop_chunks('public.telemetry_reading', older_than => hi, newer_than => lo);
    RETURN n;
  END IF;
  part := to_regclass(format('public.%I', name));
  IF part IS NULL OR NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = part
                                 AND inhparent = 'public.telemetry_reading'::regclass) THEN
    RETURN NULL;
  END IF;
  EXECUTE format('ALTER TABLE public.telemetry_reading DETACH PARTITION public.%I', name);
  EXECUTE format('SELECT count(*) FROM public.%I', name) INTO n;
  EXECUTE format('DROP TABLE public.%I', name);
  RETURN n;
END $$;
REVOKE ALL ON FUNCTION telemetry_reading_day_drop(date) FROM PUBLIC;
"""
DAY_DROP_FUNCTION_REVERSE_SQL = "DROP FUNCTION IF EXISTS telemetry_reading_day_drop(date);"

# The raw HL7 store is INSERT/SELECT-only for the application role (audit/hardening.py). Its
# retention deletes through this function, which deletes only messages received more than a day
# before now (so a run cannot wipe what was just received) and keeps those whose subject is in
# `keep` (the pseudonyms under a legal hold).
HL7_RETENTION_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION telemetry_hl7_retention_delete(before timestamptz, keep text[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  n bigint;
BEGIN
  IF before > now() - interval '1 day' THEN
    RAISE EXCEPTION 'telemetry_hl7_retention_delete: % is less than a day ago', before;
  END IF;
  DELETE FROM public.telemetry_hl7message WHERE received_at < before AND NOT (subject = ANY(keep));
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;
REVOKE ALL ON FUNCTION telemetry_hl7_retention_delete(timestamptz, text[]) FROM PUBLIC;
"""
HL7_RETENTION_FUNCTION_REVERSE_SQL = "DROP FUNCTION IF EXISTS telemetry_hl7_retention_delete(timestamptz, text[]);"


def reading_day_drop(cursor: Any, day: dt.date) -> int | None:
    """Drop the day's partition (or chunks); the rows dropped, None when it has no partition."""
    cursor.execute("SELECT telemetry_reading_day_drop(%s)", [day])
    found = cursor.fetchone()[0]
    return None if found is None else int(found)


def hl7_messages_delete(cursor: Any, *, before: dt.datetime, keep: list[str]) -> int:
    cursor.execute("SELECT telemetry_hl7_retention_delete(%s, %s::text[])", [before, keep])
    return int(cursor.fetchone()[0])
