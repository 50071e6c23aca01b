from django.db import migrations


class Migration(migrations.Migration):
    """Joins two lines of work that added independent tables and fields."""

    dependencies = [
        ("telemetry", "0005_calibrations_managed"),
        ("telemetry", "0005_patient_stays_and_beds"),
    ]

    operations = []
