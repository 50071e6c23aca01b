import datetime as dt

from django.db import migrations

from telemetry.storage import create_reading_storage, drop_reading_storage


def forwards(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        create_reading_storage(cursor, today=dt.datetime.now(dt.UTC).date())


def backwards(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        drop_reading_storage(cursor)


class Migration(migrations.Migration):
    dependencies = [("telemetry", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
