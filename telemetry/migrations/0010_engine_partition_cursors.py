"""The engine's single watermark EngineCursor("engine") becomes one cursor per partition,
"engine:<p>/<P>" with P = PERFUSE_ENGINE_PARTITIONS, each starting at the old position: nothing
the single engine processed is processed again, nothing it had not is skipped
(telemetry/engine.py). `run_engine` does the same at start (partition_cursors_ensure) when the
partition count changed since; this migration makes the readers (history, /metrics) see the new
cursors from the first request after the upgrade. Backwards: one cursor at the slowest partition's
position, which may repeat work (never skips it). It refuses to run while an engine runs."""

from typing import Any

from django.conf import settings
from django.db import migrations

ENGINE_LOCK_KEY = 0x7065_7266_0001  # telemetry.engine.ADVISORY_LOCK_KEY, as of this migration


def forwards(apps: Any, schema_editor: Any) -> None:
    partitions = int(settings.PERFUSE_ENGINE_PARTITIONS)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT position FROM telemetry_enginecursor WHERE name = 'engine' FOR UPDATE")
        row = cursor.fetchone()
        if row is None:
            return  # never ran: the engine creates its cursors at 0
        # An engine of the previous version holds this lock while it runs, and would recreate
        # its cursor at 0 once it is gone (processing everything again): it must be stopped first.
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [ENGINE_LOCK_KEY])
        if not cursor.fetchone()[0]:
            raise RuntimeError("a run_engine is running: stop every run_engine, then migrate")
        cursor.execute(
            "INSERT INTO telemetry_enginecursor (name, position, updated_at) "
            "SELECT 'engine:' || p || '/' || %s, %s, now() FROM generate_series(0, %s - 1) AS p "
            "ON CONFLICT (name) DO NOTHING",
            [partitions, row[0], partitions],
        )
        cursor.execute("DELETE FROM telemetry_enginecursor WHERE name = 'engine'")


def backwards(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO telemetry_enginecursor (name, position, updated_at) "
            "SELECT 'engine', min(position), now() FROM telemetry_enginecursor WHERE name LIKE 'engine:%%' "
            "HAVING count(*) > 0 ON CONFLICT (name) DO NOTHING"
        )
        cursor.execute("DELETE FROM telemetry_enginecursor WHERE name LIKE 'engine:%%'")


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0009_legal_holds_retention_research")]
    operations = [migrations.RunPython(forwards, backwards)]
