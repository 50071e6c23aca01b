"""`manage.py demo_totp USERNAME`: the current TOTP code of a user, for the local demo only.

Someone trying `make run` without an authenticator app can still log in. Refused unless the
settings enable demo tools (config/settings/dev.py does; production never does).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice


class Command(BaseCommand):
    help = "Print the current TOTP code of a demo user (demo settings only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        if not getattr(settings, "PERFUSE_DEMO_TOOLS", False):
            raise CommandError("demo tools are disabled in these settings")
        device = TOTPDevice.objects.filter(user__username=options["username"], confirmed=True).first()
        if device is None:
            raise CommandError(f"no confirmed TOTP device for {options['username']!r}")
        code = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift)
        self.stdout.write(f"{code:0{device.digits}d}")
