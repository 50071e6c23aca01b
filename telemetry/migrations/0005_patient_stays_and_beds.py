"""Beds and stays (telemetry/stays.py): every existing patient gets the stay its row describes."""

import django.db.models.deletion
from django.db import migrations, models


def stays_backfill(apps, schema_editor):
    Patient = apps.get_model("telemetry", "Patient")
    PatientStay = apps.get_model("telemetry", "PatientStay")
    PatientStay.objects.bulk_create(
        PatientStay(patient_id=p.id, ward_id=p.ward_id, start=p.admitted_at, end=p.discharged_at)
        for p in Patient.objects.all()
    )


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0004_partition_function"),
    ]

    operations = [
        migrations.AddField(
            model_name="patient",
            name="bed",
            field=models.CharField(blank=True, default="", max_length=40),
        ),
        migrations.CreateModel(
            name="PatientStay",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("bed", models.CharField(blank=True, default="", max_length=40)),
                ("start", models.DateTimeField()),
                ("end", models.DateTimeField(blank=True, null=True)),
                (
                    "patient",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="stays", to="telemetry.patient"
                    ),
                ),
                (
                    "ward",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="stays", to="telemetry.ward"
                    ),
                ),
            ],
            options={
                "ordering": ["start"],
                "indexes": [
                    models.Index(fields=["patient", "start"], name="telemetry_p_patient_1eb06d_idx"),
                    models.Index(fields=["ward", "start"], name="telemetry_p_ward_id_0acaaf_idx"),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        condition=models.Q(("end__isnull", True)), fields=("patient",), name="one_open_stay_per_patient"
                    )
                ],
            },
        ),
        migrations.RunPython(stays_backfill, migrations.RunPython.noop),
    ]
