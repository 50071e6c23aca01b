"""A research cohort on a ward: patients with identities and readings (outliers included)."""

from __future__ import annotations

import datetime as dt

from django.db import connection, transaction

from telemetry.models import Device, Patient, PatientIdentity
from tests import factories
from tests.readings import Row, insert_readings

START = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=6)
OUTLIERS = {0: 2.0, 1: 99.5}  # patient index → a rare value


def cohort(ward_code: str, n: int, prefix: str = "p-r") -> dict[str, list[dt.datetime]]:
    """n patients on the ward, 30 tissue-O2 readings a minute apart each (plus an outlier for the
    first two), with an MRN and a name; their sample times by pseudonym."""
    times: dict[str, list[dt.datetime]] = {}
    for i in range(n):
        pseudonym = f"{prefix}{i}"
        dev = factories.device(ward_code, patient=pseudonym)
        patient = Patient.objects.get(pseudonym=pseudonym)
        PatientIdentity.objects.update_or_create(
            patient=patient, defaults={"mrn": f"MRN-{prefix}-77{i}", "name": f"Jane Doe-{prefix}{i}"}
        )
        device_pk = Device.objects.get(device_id=dev.device_id).pk
        start = START + dt.timedelta(seconds=7 * i)
        rows = [
            Row(device_pk, patient.pk, "tissue_o2", seq, start + dt.timedelta(minutes=seq), 50.0 + i + seq % 5, 0.9)
            for seq in range(1, 31)
        ]
        if i in OUTLIERS:
            rows.append(Row(device_pk, patient.pk, "tissue_o2", 31, start + dt.timedelta(minutes=31), OUTLIERS[i], 0.5))
        with transaction.atomic(), connection.cursor() as cursor:
            insert_readings(cursor, rows)
        times[pseudonym] = sorted(r.sample_time for r in rows)
    return times
