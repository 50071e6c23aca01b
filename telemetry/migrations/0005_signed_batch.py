"""The signed batches themselves, kept until archived (telemetry/ingest/keep.py, docs/archive.md)."""

from django.db import migrations

from telemetry.ingest.keep import SIGNED_BATCH_DDL

FORWARD = SIGNED_BATCH_DDL
REVERSE = "DROP TABLE IF EXISTS telemetry_signed_batch"


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0004_partition_function")]
    operations = [migrations.RunSQL(FORWARD, REVERSE)]
