"""`manage.py seed_demo_roster`: after `seed_demo`, an on-call roster for the demo ward and email
addresses for the demo staff, so an escalation of `make run` reaches the rostered nurse by email
at the local SMTP sink (README). Idempotent: a ward that has a current or coming shift is left
as it is; addresses already set are kept."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from alerts.models import OnCallShift
from alerts.services import shift_create_operator
from telemetry.models import Ward

WARD = "icu-demo"
# (who, hours from the top of the current hour, hours, note): a handover of half an hour.
SHIFTS = [("oncall", -1, 12, "on-call nurse"), ("clinician", 10.5, 12, "night cover")]
EMAIL_DOMAIN = "example.org"  # reserved for examples (RFC 2606): the demo's mail goes to the sink only


class Command(BaseCommand):
    help = "Give the demo ward an on-call roster and the demo staff email addresses (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model().objects.filter(staff__isnull=False, email="")
        for user in users:
            user.email = f"{user.get_username()}@{EMAIL_DOMAIN}"
            user.save(update_fields=["email"])
        ward = Ward.objects.filter(code=WARD).first()
        now = timezone.now()
        if ward is None or OnCallShift.objects.filter(ward=ward, ends_at__gt=now).exists():
            self.stdout.write("On-call roster: kept as it is (see /alarms/oncall/).")
            return
        top = now.replace(minute=0, second=0, microsecond=0)
        with transaction.atomic():
            for username, start, hours, note in SHIFTS:
                person = get_user_model().objects.get(username=username)
                begins = top + dt.timedelta(hours=start)
                shift_create_operator(
                    ward=ward, person=person, starts_at=begins, ends_at=begins + dt.timedelta(hours=hours), note=note
                )
        self.stdout.write(f"On-call roster for {WARD}: " + ", ".join(f"{u} ({n})" for u, _, _, n in SHIFTS))
