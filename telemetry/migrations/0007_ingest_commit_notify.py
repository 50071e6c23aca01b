"""The engine's wake-up on commit: a trigger on telemetry_ingest_log NOTIFYs `perfuse_ingest`
(telemetry/storage.py INGEST_NOTIFY_SQL, telemetry/engine.py)."""

from django.db import migrations

from telemetry.storage import INGEST_NOTIFY_REVERSE_SQL, INGEST_NOTIFY_SQL


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0006_gateway")]
    operations = [migrations.RunSQL(INGEST_NOTIFY_SQL, INGEST_NOTIFY_REVERSE_SQL)]
