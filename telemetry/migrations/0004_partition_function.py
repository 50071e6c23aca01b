"""Daily partitions through a SECURITY DEFINER function owned by the migrating role, so the
application's role can keep them ahead without owning telemetry_reading (telemetry/storage.py).
Databases migrated after this change got the function from 0002 already; this installs it on
older ones (CREATE OR REPLACE). Kept on the way back: 0002's storage code calls it."""

from django.db import migrations

from telemetry.storage import PARTITION_FUNCTION_SQL


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0003_continuous_aggregates")]
    operations = [migrations.RunSQL(PARTITION_FUNCTION_SQL, migrations.RunSQL.noop)]
