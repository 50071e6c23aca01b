"""`manage.py seed_demo`: wards and one staff user per role for `make run`. Idempotent: a second
run reuses the users and prints the same TOTP secrets. Patients and devices come from
`simulate_fleet --demo`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from audit.access.roles import ADMIN, CLINICIAN, COMPLIANCE, DEVICE_ADMIN, ONCALL
from audit.access.staff import staff_upsert, totp_secret_base32
from telemetry.models import Ward

DEMO_PASSWORD = "perfuse-demo-2026"  # noqa: S105 (a published demo credential, local demo only)
WARDS = [("icu-demo", "ICU Demo"), ("ward-b", "Ward B")]
USERS = [
    ("clinician", CLINICIAN, ["icu-demo"]),
    ("oncall", ONCALL, ["icu-demo"]),
    ("compliance", COMPLIANCE, []),
    ("devadmin", DEVICE_ADMIN, []),
    ("admin", ADMIN, []),
    ("clinician-b", CLINICIAN, ["ward-b"]),
]


class Command(BaseCommand):
    help = "Create the demo wards and staff users (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            for code, name in WARDS:
                Ward.objects.update_or_create(code=code, defaults={"name": name})
            accounts = [
                staff_upsert(username=u, role=r, ward_codes=w, password=DEMO_PASSWORD, validate_password=False)
                for u, r, w in USERS
            ]
        self.stdout.write(
            f"Demo staff (password for all: {DEMO_PASSWORD}); add each TOTP secret to an authenticator app:"
        )
        for account in accounts:
            wards = ",".join(w.code for w in account.user.staff.wards.all()) or "-"
            self.stdout.write(
                f"  {account.user.username:<12} {account.role:<13} wards={wards:<9} "
                f"totp_secret={totp_secret_base32(account.totp)}\n      {account.totp.config_url}"
            )
        self.stdout.write(
            "No authenticator app at hand? `.venv/bin/python manage.py demo_totp USERNAME` prints the current code."
        )
