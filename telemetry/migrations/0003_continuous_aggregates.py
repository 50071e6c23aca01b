"""Downsampled views of telemetry_reading at 1 minute and 1 hour (see docs/storage.md).

TimescaleDB: continuous aggregates `telemetry_reading_1m` / `telemetry_reading_1h` (real-time, with
refresh policies) and native compression of raw chunks older than 7 days. Continuous aggregates
cannot be created inside a transaction, hence `atomic = False`.

Plain PostgreSQL: rollup tables `telemetry_rollup_1m` / `telemetry_rollup_1h` holding mergeable
partials (n, sums, min, max) that the engine's RollupProcessor keeps current.

Both expose the same columns (n, value_sum, value_min, value_max, quality_sum, quality_n per
patient, device, metric and bucket), so telemetry/selectors.py reads either with one query.
"""

from django.db import migrations

from telemetry.storage import timescale_active


def _cagg(name: str, width: str) -> str:
    return f"""
        CREATE MATERIALIZED VIEW {name}
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        -- signal_quality is real: sum it as double, or a day of float4 addition loses digits.
        SELECT patient_id, device_id, metric,
               time_bucket(INTERVAL '{width}', sample_time) AS bucket,
               count(*) AS n,
               sum(value) AS value_sum,
               avg(value) AS value_avg,
               min(value) AS value_min,
               max(value) AS value_max,
               sum(signal_quality::double precision) AS quality_sum,
               count(signal_quality) AS quality_n,
               avg(signal_quality::double precision) AS quality_avg
        FROM telemetry_reading
        GROUP BY patient_id, device_id, metric, bucket
        WITH NO DATA
    """


TIMESCALE_FORWARD = [
    _cagg("telemetry_reading_1m", "1 minute"),
    "CREATE INDEX telemetry_reading_1m_patient ON telemetry_reading_1m (patient_id, metric, bucket)",
    # Real-time aggregation only covers buckets past the materialization watermark: a late reading
    # behind it shows once a refresh has run. The refresh window is therefore open-ended
    # (start_offset NULL), so late data of any age, compressed chunks included, is folded in by
    # the next run; a run only recomputes the invalidated ranges, so the open window costs little.
    """SELECT add_continuous_aggregate_policy('telemetry_reading_1m',
           start_offset => NULL, end_offset => INTERVAL '1 minute',
           schedule_interval => INTERVAL '1 minute')""",
    _cagg("telemetry_reading_1h", "1 hour"),
    "CREATE INDEX telemetry_reading_1h_patient ON telemetry_reading_1h (patient_id, metric, bucket)",
    """SELECT add_continuous_aggregate_policy('telemetry_reading_1h',
           start_offset => NULL, end_offset => INTERVAL '1 hour',
           schedule_interval => INTERVAL '30 minutes')""",
    # Segment by the leading columns of the primary key: a device's metric over a chunk compresses
    # into few segments, and late inserts still find their conflict key by segment.
    """ALTER TABLE telemetry_reading SET (
           timescaledb.compress,
           timescaledb.compress_segmentby = 'device_id, metric',
           timescaledb.compress_orderby = 'sample_time DESC, seq')""",
    "SELECT add_compression_policy('telemetry_reading', compress_after => INTERVAL '7 days')",
]

TIMESCALE_REVERSE = [
    "SELECT remove_compression_policy('telemetry_reading', if_exists => true)",
    "SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks('telemetry_reading') c",
    "ALTER TABLE telemetry_reading SET (timescaledb.compress = false)",
    "DROP MATERIALIZED VIEW IF EXISTS telemetry_reading_1h",  # drops its policy too
    "DROP MATERIALIZED VIEW IF EXISTS telemetry_reading_1m",
]


def _rollup(name: str) -> str:
    return f"""
        CREATE TABLE {name} (
            patient_id bigint,
            device_id bigint NOT NULL,
            metric text NOT NULL,
            bucket timestamptz NOT NULL,
            n bigint NOT NULL,
            value_sum double precision NOT NULL,
            value_min double precision NOT NULL,
            value_max double precision NOT NULL,
            quality_sum double precision NOT NULL,
            quality_n bigint NOT NULL,
            -- Readings of an unassigned device (patient_id NULL) are rolled up too.
            CONSTRAINT {name}_key UNIQUE NULLS NOT DISTINCT (patient_id, metric, bucket, device_id)
        )
    """


PLAIN_FORWARD = [_rollup("telemetry_rollup_1m"), _rollup("telemetry_rollup_1h")]
PLAIN_REVERSE = ["DROP TABLE IF EXISTS telemetry_rollup_1h", "DROP TABLE IF EXISTS telemetry_rollup_1m"]


def _run(schema_editor, timescale_sql: list[str], plain_sql: list[str]) -> None:
    with schema_editor.connection.cursor() as cursor:
        statements = timescale_sql if timescale_active(cursor) else plain_sql
        for sql in statements:
            cursor.execute(sql)


def forwards(apps, schema_editor):
    _run(schema_editor, TIMESCALE_FORWARD, PLAIN_FORWARD)


def backwards(apps, schema_editor):
    _run(schema_editor, TIMESCALE_REVERSE, PLAIN_REVERSE)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("telemetry", "0002_reading_storage")]
    operations = [migrations.RunPython(forwards, backwards)]
