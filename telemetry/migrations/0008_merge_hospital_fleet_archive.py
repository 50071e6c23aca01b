from django.db import migrations


class Migration(migrations.Migration):
    """Joins the lines of work merged together (calibrations and stays, HL7 in and out, broker
    certificates and gateways, signed batches): each added its own tables."""

    dependencies = [
        ("telemetry", "0005_signed_batch"),
        ("telemetry", "0006_merge_calibrations_stays"),
        ("telemetry", "0007_ingest_commit_notify"),
        ("telemetry", "0007_oru_outbox"),
    ]

    operations = []
