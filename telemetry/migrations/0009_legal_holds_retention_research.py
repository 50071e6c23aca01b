"""Legal holds, the retention job's ward-day findings, research exports; and the two SECURITY
DEFINER functions retention deletes through (telemetry/storage.py): a past day's partition (or
TimescaleDB chunks) of telemetry_reading, and old HL7 messages the application role cannot DELETE."""

import uuid

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from telemetry.storage import (
    DAY_DROP_FUNCTION_REVERSE_SQL,
    DAY_DROP_FUNCTION_SQL,
    HL7_RETENTION_FUNCTION_REVERSE_SQL,
    HL7_RETENTION_FUNCTION_SQL,
)


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0008_merge_hospital_fleet_archive"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ResearchExport",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("start", models.DateTimeField()),
                ("end", models.DateTimeField()),
                ("purpose", models.CharField(max_length=300)),
                ("created_at", models.DateTimeField()),
                ("expires_at", models.DateTimeField()),
                ("patients", models.PositiveIntegerField()),
                ("rows", models.PositiveIntegerField()),
                ("parameters", models.JSONField(default=dict)),
                (
                    "requester",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="research_exports",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "ward",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="research_exports",
                        to="telemetry.ward",
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at"],
            },
        ),
        migrations.CreateModel(
            name="ResearchFile",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=60)),
                ("content_type", models.CharField(max_length=60)),
                ("content", models.BinaryField()),
                ("sha256", models.CharField(max_length=64)),
                (
                    "export",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="files", to="telemetry.researchexport"
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="ResearchSubject",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("offset_sealed", models.BinaryField()),
                (
                    "export",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="subjects",
                        to="telemetry.researchexport",
                    ),
                ),
                (
                    "patient",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="telemetry.patient"
                    ),
                ),
            ],
        ),
        migrations.CreateModel(
            name="RetentionDay",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day", models.DateField()),
                ("ward", models.CharField(max_length=40)),
                ("archived", models.BooleanField(default=False)),
                ("verified", models.BooleanField(default=False)),
                ("held", models.BooleanField(default=False)),
                ("hot_readings", models.BigIntegerField(default=0)),
                ("readings_dropped", models.BigIntegerField(default=0)),
                ("batches_dropped", models.BigIntegerField(default=0)),
                ("dropped_at", models.DateTimeField(blank=True, null=True)),
                ("problems", models.TextField(blank=True, default="")),
                ("checked_at", models.DateTimeField()),
            ],
            options={
                "ordering": ["-day", "ward"],
                "constraints": [models.UniqueConstraint(fields=("day", "ward"), name="retention_day_once")],
            },
        ),
        migrations.CreateModel(
            name="LegalHold",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("scope", models.CharField(choices=[("patient", "Patient"), ("ward", "Ward")], max_length=10)),
                ("reason", models.CharField(max_length=300)),
                ("set_at", models.DateTimeField()),
                ("set_by", models.CharField(max_length=150)),
                ("released_at", models.DateTimeField(blank=True, null=True)),
                ("released_by", models.CharField(blank=True, default="", max_length=150)),
                ("release_reason", models.CharField(blank=True, default="", max_length=300)),
                (
                    "patient",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, to="telemetry.patient"
                    ),
                ),
                (
                    "ward",
                    models.ForeignKey(
                        blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, to="telemetry.ward"
                    ),
                ),
            ],
            options={
                "ordering": ["-set_at"],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            models.Q(("patient__isnull", False), ("scope", "patient"), ("ward__isnull", True)),
                            models.Q(("patient__isnull", True), ("scope", "ward"), ("ward__isnull", False)),
                            _connector="OR",
                        ),
                        name="legal_hold_one_target",
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("released_at__isnull", True)),
                        fields=("patient",),
                        name="one_open_hold_per_patient",
                    ),
                    models.UniqueConstraint(
                        condition=models.Q(("released_at__isnull", True)),
                        fields=("ward",),
                        name="one_open_hold_per_ward",
                    ),
                ],
            },
        ),
        migrations.AddIndex(
            model_name="researchexport",
            index=models.Index(fields=["expires_at"], name="telemetry_r_expires_e4edd2_idx"),
        ),
        migrations.AddConstraint(
            model_name="researchfile",
            constraint=models.UniqueConstraint(fields=("export", "name"), name="research_file_once"),
        ),
        migrations.AddConstraint(
            model_name="researchsubject",
            constraint=models.UniqueConstraint(fields=("export", "patient"), name="research_subject_once"),
        ),
        migrations.RunSQL(DAY_DROP_FUNCTION_SQL, DAY_DROP_FUNCTION_REVERSE_SQL),
        migrations.RunSQL(HL7_RETENTION_FUNCTION_SQL, HL7_RETENTION_FUNCTION_REVERSE_SQL),
    ]
